"""The PEFT tuner layer: wraps any module and adds sparse deltas to its parameters (weight, bias, ...)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn

from ..kernel.weights import add_sparse, effective_values
from ..format.config import SparseDeltaConfig
from ..format.encoding import EncodedTensor
from ..format.record import TensorRecord
from ..format.validate import check_encoded
from ..methods.base import FullDelta, SparseDelta


class SparseDeltaStore(nn.Module):
    """One adapter's stored deltas for one module: ``<param>_values`` (fp32), ``<param>_index``,
    ``<param>_partition`` and (format version 2) ``<param>_factors`` (fp32 ``[P, R]``)."""

    def __init__(self, records: dict[str, TensorRecord], factors: dict[str, list[float]]) -> None:
        super().__init__()
        self.records = records
        self.factors = {param: list(f) for param, f in factors.items()}  # per parameter, indexed by partition id
        for param, record in records.items():
            self.register_parameter(f"{param}_values", nn.Parameter(torch.zeros(record.nnz), requires_grad=False))
            if record.encoding != "dense":
                index_bytes = record.require(param, "index_bytes", "PEFT loading sizes the index with")
                self.register_buffer(f"{param}_index", torch.zeros(index_bytes, dtype=torch.uint8))
            if record.partition:
                self.register_buffer(f"{param}_partition", torch.zeros(record.nnz, dtype=torch.uint8))
            if record.factors:
                self.register_buffer(f"{param}_factors", torch.ones(record.factors, dtype=torch.float32))

    def encoded(self, param: str) -> EncodedTensor:
        record = self.records[param]
        return EncodedTensor(
            encoding=record.encoding,
            shape=record.shape,
            values=getattr(self, f"{param}_values"),
            index=getattr(self, f"{param}_index", None),
            partition=getattr(self, f"{param}_partition", None),
            factors=getattr(self, f"{param}_factors", None),
        )

    def delta(self, param: str, device: torch.device) -> SparseDelta:
        """The stored delta of one parameter with every factor applied (fp32 effective values, on ``device``)."""
        encoded = self.encoded(param)
        indices = check_encoded(param, encoded, len(self.factors[param]), "being applied")
        if indices is None:  # stored dense: positions implicit
            return FullDelta(effective_values(encoded, self.factors[param]).to(device), encoded.shape)
        indices = indices.to(device)
        return SparseDelta(indices, effective_values(encoded, self.factors[param], indices=indices), encoded.shape)


def home_device(module: nn.Module) -> torch.device | None:
    """Where a module's weights are used: their device, or for weights offloaded by accelerate (on the meta device
    until a hook loads them) the hook's execution device, else the CPU; None for a module without weights."""
    weights = list(module.parameters(recurse=False))
    if not weights:
        return None
    if weights[0].device.type != "meta":
        return weights[0].device
    device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    return torch.device("cpu") if device is None else torch.device(device)


@contextlib.contextmanager
def onloaded(module: nn.Module) -> Iterator[None]:
    """Inside: the tensors of a module offloaded by an accelerate hook are on its execution device (no-op else)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None or not getattr(hook, "offload", False):
        yield
        return
    hook.pre_forward(module)
    try:
        yield
    finally:
        hook.post_forward(module, None)


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
        self._restore: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # base values per merge call
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config)

    def update_layer(self, adapter_name: str, config: SparseDeltaConfig, **kwargs: Any) -> None:
        records = config.records_for_module(self.module_name)
        missing = [p for p in records if not isinstance(getattr(self.get_base_layer(), p, None), torch.Tensor)]
        if missing:
            raise ValueError(
                f"module {self.module_name} has no parameter {missing}; the adapter does not fit this model"
            )
        factors = {param: config.tensor_factors(f"{self.module_name}.{param}") for param in records}
        self.sparse_delta[adapter_name] = SparseDeltaStore(records, factors)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        """Move to the base layer's device only: values and factors stay fp32 whatever the base dtype (PEFT would
        cast them to it), so the kernel sees exactly what ``load_merged`` reads from the file."""
        device = device or home_device(self.get_base_layer())
        store = self.sparse_delta[adapter_name] if adapter_name in self.sparse_delta else None
        if device is None or store is None or any(t.device.type == "meta" for t in store.parameters()):
            return
        store.to(device)

    def store(self, adapter_name: str) -> SparseDeltaStore:
        """The stored deltas of one adapter (``sparse_delta`` holds only ``SparseDeltaStore`` modules)."""
        return cast(SparseDeltaStore, self.sparse_delta[adapter_name])

    def _deltas(self, adapters: list[str], param: str, device: torch.device) -> list[SparseDelta]:
        return [self.store(a).delta(param, device) for a in adapters if param in self.store(a).records]

    def _params_of(self, adapters: list[str]) -> list[str]:
        return sorted({param for a in adapters for param in self.store(a).records})

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.sparse_delta]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        base = self.get_base_layer()
        hook = getattr(base, "_hf_hook", None)
        if hook is not None:
            return self._hooked_forward(base, hook, active, x, *args, **kwargs)
        return torch.func.functional_call(
            self.base_layer, self._effective(base, active), (x, *args), kwargs, strict=False
        )

    def _effective(self, base: nn.Module, active: list[str]) -> dict[str, torch.Tensor]:
        """Base parameter + active adapters' deltas (the kernel) for every parameter the adapters change."""
        params = {}
        with contextlib.ExitStack() as stack:
            for adapter in active:  # stores offloaded by accelerate are loaded for this step only
                stack.enter_context(onloaded(self.sparse_delta[adapter]))
            for param in self._params_of(active):
                weight = getattr(base, param)
                params[param] = add_sparse(weight, self._deltas(active, param, weight.device))
        return params

    def _hooked_forward(self, base: nn.Module, hook: Any, active: list[str], *args: Any, **kwargs: Any) -> Any:
        """A base layer dispatched by accelerate (``device_map``, offloaded to CPU or disk): its hook brings the
        weights to the execution device, the deltas are added to them there, the layer's own forward runs on the
        sums, and the hook offloads again. (``functional_call`` cannot be used: the hook would overwrite the
        substituted weights with the offloaded ones.)"""
        args, kwargs = hook.pre_forward(base, *args, **kwargs)
        params = self._effective(base, active)
        slots = cast(dict[str, torch.Tensor | None], base._parameters)  # plain tensors for one call, as hooks do
        saved = {name: slots[name] for name in params}
        old_forward: Callable[..., Any] = getattr(base, "_old_forward")  # the layer's forward, kept by the hook
        try:
            slots.update(params)
            output = old_forward(*args, **kwargs)
        finally:
            slots.update(saved)
        return hook.post_forward(base, output)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas to the base parameters in place, all in one fp32 accumulation (``add_sparse``).

        The base values at the touched positions are kept (outside the state dict, ``nnz`` values per merged
        parameter), so ``unmerge`` restores the base bit for bit instead of subtracting in the base dtype.
        """
        base = self.get_base_layer()
        adapters = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.sparse_delta]
        if not adapters:
            return
        saved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for param in self._params_of(adapters):
            tensor = getattr(base, param)
            deltas = self._deltas(adapters, param, tensor.device)
            merged = add_sparse(tensor.data, deltas)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"non-finite values after merging adapters {adapters} into {self.module_name}")
            touched = torch.cat([d.indices.long() for d in deltas])
            saved[param] = (touched, tensor.data.reshape(-1)[touched].clone())
            tensor.data.copy_(merged)
        self._restore.append(saved)
        self.merged_adapters.extend(adapters)

    def unmerge(self) -> None:
        """Put back the exact base values saved by ``merge`` (newest merge first)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self._restore:
            for param, (touched, original) in self._restore.pop().items():
                getattr(base, param).data.view(-1)[touched] = original
        self.merged_adapters.clear()

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The dense delta of this module's weight for one adapter (in the weight's dtype)."""
        weight: torch.Tensor = getattr(self.get_base_layer(), "weight")
        return add_sparse(torch.zeros_like(weight), self._deltas([adapter_name], "weight", weight.device))
