"""lm-eval plumbing the stages below evaluation need: the task folders and their manager, scores of a loaded model,
and the Task-/Domain-Ratio."""
