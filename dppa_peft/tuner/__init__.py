"""The PEFT side: config, compact encoding, tuner layer and model, and their registration with PEFT."""

from typing import cast

from peft import mapping
from peft.utils import PeftType

from ..format.config import SparseDeltaConfig, SparseDeltaType
from ..format.fingerprint import BaseModelMismatchError
from .model import SparseDeltaModel


def register_with_peft() -> None:
    """Make PEFT (and transformers' ``load_adapter``) know the SPARSE_DELTA adapter type."""
    key = cast(PeftType, SparseDeltaType.SPARSE_DELTA)  # PEFT types its tables by its closed enum; any str works
    mapping.PEFT_TYPE_TO_CONFIG_MAPPING[key] = SparseDeltaConfig
    mapping.PEFT_TYPE_TO_TUNER_MAPPING[key] = SparseDeltaModel
    mapping.PEFT_TYPE_TO_PREFIX_MAPPING[key] = SparseDeltaModel.prefix


register_with_peft()

__all__ = ["BaseModelMismatchError", "SparseDeltaConfig", "SparseDeltaModel", "SparseDeltaType", "register_with_peft"]
