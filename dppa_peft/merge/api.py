"""``merge(MergeSpec)``: the one entry point behind ``dppa-peft merge`` and recipe merge steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .spec import MergeSpec


@dataclass(frozen=True)
class MergeOutput:
    """One folder a merge wrote: ``kind`` is 'model' (dense folder) or 'adapter' (merged sparse adapter)."""

    path: Path
    kind: str


def merge(
    spec: MergeSpec, *, token: str | bool | None = None, progress: bool = True, command: str | None = None
) -> list[MergeOutput]:
    """Write what ``spec`` asks for: a dense model folder (``out``), a merged adapter (``out_adapter``), or both;
    with ``from_record``, replay a recorded merge into them."""
    from .loader import replay, write_adapter, write_model
    from .modes import create_mode

    outputs = [(out, kind) for out, kind in ((spec.out, "model"), (spec.out_adapter, "adapter")) if out]
    if spec.from_record is not None:
        for out, kind in outputs:
            replay(
                spec.from_record,
                out,
                output=kind,
                overwrite=spec.overwrite,
                command=command,
                token=token,
                allow_unverified_base=spec.allow_unverified_base,
            )
        return [MergeOutput(Path(out), kind) for out, kind in outputs]
    mode = create_mode(spec.mode, **spec.params)  # one instance for both outputs: a learned mode learns once
    written = []
    if spec.out:
        written.append(MergeOutput(write_model(spec, mode, token=token, progress=progress, command=command), "model"))
    if spec.out_adapter:
        adapter = write_adapter(spec, mode, token=token, progress=progress, command=command)
        written.append(MergeOutput(adapter.directory, "adapter"))
    return written
