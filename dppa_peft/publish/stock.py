"""What a stock-PEFT (SUPERTUNING) export wrote: shown by the command line and by the export's model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class SupertuningExport:
    """What an export wrote: the global sparsity, its modules, padding, and sizes."""

    directory: Path
    sparsity: float
    targets: list[str]
    modules_to_save: list[str]
    kept: int
    padding: int
    nbytes: int
    source_bytes: int
    inexact: int = 0  # bf16/fp16 base: kept entries where stock PEFT's arithmetic differs from ``load_merged``

    @property
    def size_ratio(self) -> float:
        """Weights file size vs the dppa-peft adapter's weights file."""
        return self.nbytes / self.source_bytes if self.source_bytes else 0.0

    def line(self) -> str:
        return (
            f"SUPERTUNING sparsity {self.sparsity:.6g}: {len(self.targets)} sparse Linear modules "
            f"({self.kept} kept + {self.padding} zero padding entries), {len(self.modules_to_save)} whole "
            f"modules (modules_to_save); {self.nbytes / 2**20:.2f} MiB = {self.size_ratio:.2f}x the dppa-peft "
            f"adapter ({self.source_bytes / 2**20:.2f} MiB)"
            + (
                f"; {self.inexact} entries differ from load_merged by the base-dtype rounding of their delta (stock "
                "PEFT adds in the base dtype)"
                if self.inexact
                else ""
            )
        )
