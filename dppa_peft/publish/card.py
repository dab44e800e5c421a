"""Model cards for sparse delta adapters, made with huggingface_hub's ModelCard / ModelCardData.

The card's metadata holds ``base_model`` (when it is a Hub id), ``library_name: peft``, the tags ``dppa-peft``, the
method and ``sparse-delta``, and, when known, evaluation results as a ``model-index``. Evaluation results come from
the JSON that lm-eval writes (``{"results": {task: {"acc,none": 0.61, ...}}}``) or that bare ``results`` mapping,
given to ``push_to_hub(eval_results=...)`` / ``dppa-peft push --eval-results FILE``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..io.base_ref import BASE_ID_KEY, is_hub_id
from ..format.merge_record import MergeRecord
from .commands import public_command
from .merge_card import build_merge_card
from .stock import SupertuningExport

if TYPE_CHECKING:
    from ..format.config import SparseDeltaConfig

CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{% if stock %}A sparse delta adapter made with [dppa-peft](https://arxiv.org/abs/2403.02799) and **exported to PEFT's
built-in SUPERTUNING format**: it loads with stock PEFT (>= 0.21) and transformers' `load_adapter`, without dppa-peft.
It holds the difference between a fine-tuned model and its base, pruned with `{{ method }}` at rate {{ rate }}.
{% else %}A **sparse delta adapter** made with [dppa-peft](https://arxiv.org/abs/2403.02799): the difference between a
fine-tuned model and its base, pruned with `{{ method }}` at rate {{ rate }}.
{% endif %}
## Pruning plan

| | |
|---|---|
| base model | `{{ base }}` |
| fine-tuned model | `{{ finetuned }}` |
| method | `{{ method }}` (parameters: `{{ params }}`) |
| target pruning rate | {{ rate }} |
| kept density (pruned tensors) | {{ kept_density }} |
| adapter size vs dense delta of the pruned tensors | {{ size_ratio }} |
| tensors stored | {{ n_tensors }} ({{ n_pruned }} pruned, {{ n_dense }} dense) |
{% if factors %}| DPA factors per partition | {{ factors }} |
| DPA partitions (pruning rates) | {{ partition_rates }} |
{% if search %}| DPA search | {{ search }} |
{% endif %}{% if learned %}| learned amplification | {{ learned }} |
{% endif %}{% endif %}{% if stock %}
## Stock PEFT format

| | |
|---|---|
| PEFT type | `SUPERTUNING` (fp32 values + int32 flat indices, DPA factors baked into the values) |
| global sparsity | {{ stock.sparsity }} |
| sparse Linear modules | {{ stock.targets | length }} ({{ stock.kept }} kept + {{ stock.padding }} zero padding entries) |
| modules stored whole (`modules_to_save`) | {{ stock.modules_to_save | length }} |
| file size | {{ stock_mib }} MiB ({{ stock_ratio }} the size of the dppa-peft format) |
{% endif %}{% if evals %}
## Evaluation

| task | metric | value |
|---|---|---|
{% for e in evals %}| {{ e.dataset_name }} | {{ e.metric_type }}{{ " (%s)" % e.metric_config if e.metric_config }} | {{ e.metric_value }} |
{% endfor %}{% endif %}
## Use

```python
{% if not stock %}import dppa_peft  # registers the SPARSE_DELTA adapter type with PEFT
{% endif %}from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{{ base }}")
model = PeftModel.from_pretrained(base, "{{ repo }}").merge_and_unload()
```
{% if not stock %}
Or merge several adapters at load: `dppa-peft merge --base {{ base }} --adapter {{ repo }} --adapter ... --out merged`.
{% endif %}
## Provenance

Made with dppa-peft {{ version }} by:

```
{{ command }}
```
"""


def build_model_card(
    config: "SparseDeltaConfig",
    *,
    repo_id: str | None = None,
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
    stock: SupertuningExport | None = None,
) -> ModelCard:
    """The card of an adapter from its config, plus its Hub id, evaluation results and stock-PEFT export if given."""
    evals = eval_results_from_lm_eval(eval_results) if eval_results else None
    if config.merge and not stock:
        record = MergeRecord.from_dict(config.merge, origin="the adapter's merge record")
        return build_merge_card(record, repo_id=repo_id, evals=evals)
    method = config.method.get("name", "unknown")
    summary = config.summary
    hub_base = base_hub_id(config)
    base = hub_base or shown_ref(config.base_model_name_or_path)
    tags = ["dppa-peft", method, "sparse-delta"] + (["supertuning"] if stock else [])
    data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        tags=tags,
        eval_results=evals,
        model_name=(repo_id or "sparse-delta-adapter").split("/")[-1] if evals else None,
    )
    records = config.tensors.values()
    n_pruned = sum(1 for r in records if r.pruned)
    return ModelCard.from_template(
        data,
        template_str=CARD_TEMPLATE,
        title=f"Sparse delta adapter ({method}, rate {config.method.get('rate')})",
        base=base,
        finetuned=shown_ref(config.provenance.get("finetuned", "unknown")),
        method=method,
        params=config.method.get("params", {}),
        rate=config.method.get("rate"),
        kept_density=_fmt(summary.get("kept_density")),
        size_ratio=_size_line(summary),
        n_tensors=len(config.tensors),
        n_pruned=n_pruned,
        n_dense=len(config.tensors) - n_pruned,
        factors=", ".join(f"{f:.4g}" for f in config.amplification["factors"]) if config.amplification else None,
        partition_rates=config.amplification.get("partition_rates") if config.amplification else None,
        search=_search_line(config.amplification),
        learned=_learned_line(config),
        stock=stock,
        stock_mib=f"{stock.nbytes / 2**20:.2f}" if stock else None,
        stock_ratio=f"{stock.size_ratio:.2f}x" if stock else None,
        evals=evals,
        repo=repo_id or "<this repo or folder>",
        version=config.provenance.get("package_version", "?"),
        command=public_command(config.provenance.get("command")),
    )


def _learned_line(config: "SparseDeltaConfig") -> str | None:
    """One line about learned amplification (``amplification.learned``), or None."""
    learned = (config.amplification or {}).get("learned")
    if not learned:
        return None
    stats = learned["factor_stats"]
    factor_bytes = 4 * sum(math.prod(r.factors) for r in config.tensors.values() if r.factors)
    total = sum(r.stored_bytes or 0 for r in config.tensors.values())
    sources = ", ".join(f"`{source}`" for t in learned.get("teachers", []) for source in t.get("sources", []))
    partitions = len((config.amplification or {}).get("partition_rates") or ())
    covers = learned["granularity"] + " granularity" + (f", {partitions} partitions" if partitions > 1 else "")
    covers += ", dense tensors' rows too" if learned.get("dense") else ""
    return (
        f"{stats['count']} factors ({covers}; {stats['min']:.3g} to "
        f"{stats['max']:.3g}, mean {stats['mean']:.3g}) learned by KL distillation from the dense fine-tune "
        f"on {sources} in {learned['steps_run']} Adam steps; held-out KL {learned['heldout_kl_before']:.4g} -> "
        f"{learned['heldout_kl_after']:.4g}; factor tables {factor_bytes / max(total, 1):.2%} of the adapter"
    )


def _search_line(amplification: dict | None) -> str | None:
    """One line about the DPA factor search, or None when the factors were not searched."""
    search = (amplification or {}).get("search")
    if not search:
        return None
    objective = search.get("objective", {})
    return (
        f"{search['strategy']} search, DPA method {search['dpa_method']}, {search['calls']} calls of objective "
        f"`{objective.get('name')}` on `{objective.get('split')}`; score {search.get('final_score')}"
    )


def write_model_card(directory: str | os.PathLike, config: "SparseDeltaConfig", **options: Any) -> Path:
    """Write ``README.md`` into ``directory`` (options as in ``build_model_card``)."""
    path = Path(directory) / "README.md"
    build_model_card(config, **options).save(path)
    return path


def load_eval_results(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read evaluation results: lm-eval's output JSON or its bare ``results`` mapping ``{task: {metric: value}}``."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read evaluation results from {path}: {err}") from err
    results = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(isinstance(v, dict) for v in results.values()):
        raise ValueError(f"{path} is not lm-eval output: expected {{'results': {{task: {{metric: value}}}}}}")
    return results


def eval_results_from_lm_eval(results: Mapping[str, Mapping[str, Any]]) -> list[EvalResult]:
    """One ``EvalResult`` per metric of each task ('acc,none' -> metric 'acc').

    lm-eval names every metric ``<metric>,<filter>``; other numeric entries (``sample_len``, ``samples``, ...) are
    bookkeeping, and ``*_stderr`` entries are errors, not metrics: both are skipped.
    """
    out = []
    for task, metrics in sorted(results.items()):
        name = str(metrics.get("alias", task)).strip() or task
        for key, value in sorted(metrics.items()):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or "," not in key or "_stderr" in key:
                continue
            metric, _, filter_name = key.partition(",")
            out.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=task,
                    dataset_name=name,
                    metric_type=metric,
                    metric_value=float(value),
                    metric_config=filter_name if filter_name not in ("", "none") else None,
                )
            )
    if not out:
        raise ValueError("the evaluation results hold no numeric metric")
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _size_line(summary: Mapping[str, Any]) -> str:
    ratio = summary.get("size_ratio")
    if ratio is None:
        return "n/a"
    line = f"{ratio:.1%}"
    if summary.get("adapter_bytes") is not None and summary.get("dense_delta_bytes"):
        line += f" ({summary['adapter_bytes'] / 2**20:.2f} MiB vs {summary['dense_delta_bytes'] / 2**20:.2f} MiB)"
    return line


def base_hub_id(config: "SparseDeltaConfig") -> str | None:
    """The base's Hub id: recorded by ``--base-model-id`` (or a Hub base), else the stored base if it is one."""
    recorded = config.provenance.get(BASE_ID_KEY)
    base = config.base_model_name_or_path
    return recorded or (base if is_hub_id(base) else None)


def shown_ref(ref: str | None) -> str:
    """A model reference as a card shows it: a Hub id as is, a local path as ``<local>/<basename>``."""
    if not ref or is_hub_id(ref):
        return ref or "unknown"
    return f"<local>/{Path(ref).name}"
