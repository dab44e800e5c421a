"""Merging: combine the deltas of N fine-tunes of one base into one delta, tensor by tensor."""
