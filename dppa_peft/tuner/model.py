"""The PEFT tuner model: injects ``SparseDeltaLayer`` into every module an adapter changes."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from peft import PeftModel
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from ..format.config import SparseDeltaConfig
from ..format.validate import CHECKED_FIELDS, check_config, check_fits_base
from ..format.fingerprint import check_fingerprint
from ..io.models import resize_vocabulary
from ..io.sampling import model_sampler
from .layer import SparseDeltaLayer
from .weighted import add_weighted_adapter


PeftPush = Callable[..., Any]
_PEFT_PUSH: list[PeftPush] = []


def register_peft_push(push: PeftPush) -> None:
    """Set the ``push_to_hub`` of PeftModels that load a SPARSE_DELTA adapter (``tuner.registration`` sets it: ``tuner.push``)."""
    _PEFT_PUSH[:] = [push]


def use_peft_push(model: nn.Module) -> None:
    """Give ``model`` (a PeftModel loading a SPARSE_DELTA adapter) the registered ``push_to_hub``, on this instance
    only: transformers' own writes the repo's old card (or an empty template) over ours (see ``tuner.push``)."""
    if _PEFT_PUSH and isinstance(model, PeftModel) and "push_to_hub" not in vars(model):
        object.__setattr__(model, "push_to_hub", types.MethodType(_PEFT_PUSH[0], model))


def sparse_config(config: PeftConfig) -> SparseDeltaConfig:
    """``config`` as the config of this tuner (PEFT hands the tuner the configs of its own type only)."""
    if not isinstance(config, SparseDeltaConfig):
        raise TypeError(f"a sparse delta model takes SparseDeltaConfig adapters, not {type(config).__name__}")
    return config


class SparseDeltaModel(BaseTuner):
    """Applies sparse delta adapters to a transformers model (or any ``nn.Module`` with matching names)."""

    prefix: str = "sparse_delta"
    tuner_layer_cls = SparseDeltaLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> SparseDeltaConfig:
        peft_config = sparse_config(peft_config)
        check_config({name: getattr(peft_config, name) for name in CHECKED_FIELDS}, "being loaded")  # PEFT's own path
        return peft_config

    def _pre_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        config = sparse_config(config)
        shapes = {n.replace(".base_layer.", "."): tuple(p.shape) for n, p in model.named_parameters()}
        resized = any(isinstance(m, SparseDeltaLayer) for m in model.modules())  # another adapter may have grown it
        check_fits_base(config, shapes, f"adapter {adapter_name!r}", "the model it is loaded on", resized)
        check_fingerprint(config, model_sampler(model), f"adapter {adapter_name!r}", "the model it is loaded on")
        resize_vocabulary(model, config.vocab_size)

    @staticmethod
    def _check_target_module_exists(peft_config: PeftConfig, key: str) -> bool:
        return key in sparse_config(peft_config).module_names

    def _create_and_replace(
        self,
        peft_config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        peft_config = sparse_config(peft_config)
        if isinstance(target, SparseDeltaLayer):
            target.update_layer(adapter_name, peft_config)
            return
        new_module = SparseDeltaLayer(target, adapter_name, peft_config, module_name=current_key)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        # not PEFT's _replace_module: it moves the adapter to the base weight's device, which is the meta device for
        # weights offloaded by accelerate; the layer has put its stores where the base weights are used
        setattr(parent, target_name, new_module)

    add_weighted_adapter = add_weighted_adapter  # PEFT's method; ``tuner.weighted`` (its first argument is the tuner)

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """PEFT's key remapping; the PeftModel loading the adapter (``PeftModel.from_pretrained``, ``load_adapter``)
        also gets dppa-peft's ``push_to_hub`` (``use_peft_push``)."""
        use_peft_push(model)
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: PeftConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """PEFT's selection of the adapter's entries, with values back in their stored dtype (PEFT's own
        ``save_pretrained`` then writes the same tensors as dppa-peft; in memory the values are fp32)."""
        config = sparse_config(config)
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        marker = f".{cls.prefix}.{adapter_name}."
        for key, tensor in selected.items():
            if not key.endswith("_values") or marker not in key:
                continue
            module, _, part = key.rpartition(marker)
            record = config.tensors.get(f"{module.removeprefix('base_model.model.')}.{part.removesuffix('_values')}")
            if record and record.dtype:
                selected[key] = tensor.to(getattr(torch, record.dtype))
        return selected
