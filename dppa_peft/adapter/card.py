"""Model cards for sparse delta adapters, made with huggingface_hub's ModelCard / ModelCardData."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from .config import SparseDeltaConfig

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A **sparse delta adapter** made with [dppa-peft](https://arxiv.org/abs/2403.02799): the difference between a
fine-tuned model and its base, pruned with `{{ method }}` at rate {{ rate }}.

| | |
|---|---|
| base model | `{{ base }}` |
| method | `{{ method }}` (parameters: `{{ params }}`) |
| target pruning rate | {{ rate }} |
| kept density (pruned tensors) | {{ kept_density }} |
| adapter size vs dense delta of the pruned tensors | {{ size_ratio }} |
| tensors stored | {{ n_tensors }} ({{ n_pruned }} pruned, {{ n_dense }} dense) |
{% if factors %}| DPA factors per partition | {{ factors }} |
| DPA partitions (pruning rates) | {{ partition_rates }} |
{% if search %}| DPA search | {{ search }} |
{% endif %}{% endif %}
## Use

```python
import dppa_peft  # registers the SPARSE_DELTA adapter type with PEFT
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{{ base }}")
model = PeftModel.from_pretrained(base, "<this repo or folder>").merge_and_unload()
```

## Provenance

{{ provenance }}
"""


def build_model_card(config: "SparseDeltaConfig") -> ModelCard:
    """The card of an adapter from its config alone."""
    method = config.method.get("name", "unknown")
    summary = config.summary
    data = ModelCardData(
        base_model=config.base_model_name_or_path if _is_hub_id(config.base_model_name_or_path) else None,
        library_name="peft",
        tags=["dppa-peft", method, "sparse-delta"],
    )
    records = config.tensors.values()
    n_pruned = sum(1 for r in records if r.get("pruned"))
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        title=f"Sparse delta adapter ({method}, rate {config.method.get('rate')})",
        base=config.base_model_name_or_path,
        method=method,
        params=config.method.get("params", {}),
        rate=config.method.get("rate"),
        kept_density=_fmt(summary.get("kept_density")),
        size_ratio=_fmt(summary.get("size_ratio")),
        n_tensors=len(config.tensors),
        n_pruned=n_pruned,
        n_dense=len(config.tensors) - n_pruned,
        factors=config.amplification.get("factors") if config.amplification else None,
        partition_rates=config.amplification.get("partition_rates") if config.amplification else None,
        search=_search_line(config.amplification),
        provenance=f"`{config.provenance.get('command', 'python API')}` (dppa-peft "
                   f"{config.provenance.get('package_version', '?')})",
    )


def _search_line(amplification: dict | None) -> str | None:
    """One line about the DPA factor search, or None when the factors were not searched."""
    search = (amplification or {}).get("search")
    if not search:
        return None
    objective = search.get("objective", {})
    return (f"{search['strategy']} search, DPA method {search['dpa_method']}, {search['calls']} calls of objective "
            f"`{objective.get('name')}` on `{objective.get('split')}`; score {search.get('final_score')}")


def write_model_card(directory: Path, config: "SparseDeltaConfig") -> None:
    build_model_card(config).save(Path(directory) / "README.md")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _is_hub_id(ref: str | None) -> bool:
    return bool(ref) and ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
