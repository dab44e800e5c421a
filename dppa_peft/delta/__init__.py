"""Pairing a base with a fine-tune: which tensors are pruned (``scope``) and the fp32 delta streams (``pair``)."""
