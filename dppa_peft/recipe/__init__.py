"""YAML recipes: a list of prune and merge steps run one after the other (``dppa-peft run``)."""
