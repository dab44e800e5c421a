"""Compute on stored deltas: ``weights`` adds sparse deltas to weights (one dtype order for every path)."""
