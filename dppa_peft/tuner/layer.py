"""The PEFT tuner layer: wraps any module and adds sparse deltas to its parameters (weight, bias, ...)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..format.config import SparseDeltaConfig
from ..format.encoding import EncodedTensor, scale_values
from ..methods.base import SparseDelta


class SparseDeltaStore(nn.Module):
    """One adapter's stored deltas for one module: ``<param>_values``, ``<param>_index``, ``<param>_partition``."""

    def __init__(self, records: dict[str, dict[str, Any]], factors: dict[str, list[float]]) -> None:
        super().__init__()
        self.records = records
        self.factors = {param: list(f) for param, f in factors.items()}  # per parameter, indexed by partition id
        for param, record in records.items():
            self.register_parameter(f"{param}_values", nn.Parameter(torch.zeros(record["nnz"]), requires_grad=False))
            if record["encoding"] != "dense":
                self.register_buffer(f"{param}_index", torch.zeros(record["index_bytes"], dtype=torch.uint8))
            if record.get("partition"):
                self.register_buffer(f"{param}_partition", torch.zeros(record["nnz"], dtype=torch.uint8))

    def encoded(self, param: str) -> EncodedTensor:
        record = self.records[param]
        return EncodedTensor(
            encoding=record["encoding"], shape=tuple(record["shape"]), values=getattr(self, f"{param}_values"),
            index=getattr(self, f"{param}_index", None), partition=getattr(self, f"{param}_partition", None),
        )

    def scaled_values(self, param: str) -> torch.Tensor:
        """Stored values times the amplification factor of their partition."""
        encoded = self.encoded(param)
        return scale_values(encoded.values, encoded.partition, self.factors[param])

    def delta(self, param: str, device: torch.device) -> SparseDelta:
        """The stored delta of one parameter with its factors applied (fp32 values, on ``device``)."""
        encoded = self.encoded(param)
        return SparseDelta(encoded.indices().to(device), self.scaled_values(param).float().to(device), encoded.shape)

    def add_to(self, param: str, target: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """``target + sign·δ`` for a parameter whose leading rows may be fewer than the delta's (resized vocab)."""
        indices = self.encoded(param).indices().to(target.device)
        values = (sign * self.scaled_values(param)).to(target.dtype)
        return target.reshape(-1).index_add(0, indices, values).reshape(target.shape)


class SparseDeltaLayer(nn.Module, BaseTunerLayer):
    """A module plus the sparse deltas of one or more adapters, applied in forward or merged into its weights."""

    adapter_layer_names = ("sparse_delta",)
    other_param_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: SparseDeltaConfig, module_name: str) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.module_name = module_name
        self.sparse_delta = nn.ModuleDict({})
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: SparseDeltaConfig, **kwargs: Any) -> None:
        records = config.records_for_module(self.module_name)
        missing = [p for p in records if not isinstance(getattr(self.get_base_layer(), p, None), torch.Tensor)]
        if missing:
            raise ValueError(f"module {self.module_name} has no parameter {missing}; the adapter does not fit this model")
        factors = {param: config.tensor_factors(f"{self.module_name}.{param}") for param in records}
        self.sparse_delta[adapter_name] = SparseDeltaStore(records, factors)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _effective_params(self, adapters: list[str]) -> dict[str, torch.Tensor]:
        base = self.get_base_layer()
        params: dict[str, torch.Tensor] = {}
        for adapter in adapters:
            store = self.sparse_delta[adapter]
            for param in store.records:
                current = params.get(param, getattr(base, param))
                params[param] = store.add_to(param, current)
        return params

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.sparse_delta]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        params = self._effective_params(active)
        return torch.func.functional_call(self.base_layer, params, (x, *args), kwargs, strict=False)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add each adapter's deltas to the base parameters in place."""
        base = self.get_base_layer()
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.sparse_delta:
                continue
            store = self.sparse_delta[adapter]
            for param in store.records:
                tensor = getattr(base, param)
                merged = store.add_to(param, tensor.data)
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"non-finite values after merging adapter {adapter!r} into {self.module_name}")
                tensor.data.copy_(merged)
            self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            store = self.sparse_delta[adapter]
            for param in store.records:
                tensor = getattr(base, param)
                tensor.data.copy_(store.add_to(param, tensor.data, sign=-1.0))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense delta of this module's weight for one adapter."""
        weight = self.get_base_layer().weight
        return self.sparse_delta[adapter_name].add_to("weight", torch.zeros_like(weight))
