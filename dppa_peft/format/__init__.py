"""The adapter on disk: compact encoding, config, fingerprint, folder I/O."""

# The config subclasses PeftConfig. Importing peft here, before config.py runs, means the SPARSE_DELTA registration
# that follows peft's import (``dppa_peft.__init__``) never finds config.py half-initialised.
import peft  # noqa: F401
