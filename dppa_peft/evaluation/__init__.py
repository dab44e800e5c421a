"""Evaluation: lm-eval task folders, Task-/Domain-Ratio metrics (DPPA eq. 7-8) and result reports."""
