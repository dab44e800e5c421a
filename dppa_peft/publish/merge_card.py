"""Model cards of merges: a merged model folder (``merge_to_folder``) or a merged sparse adapter (``merge_to_adapter``).

The card names the base, every adapter (Hub id and revision, or a local folder's name: no local paths), its
weight and pruning method, the merge mode with its options, and the dtype; its metadata has ``base_model`` (when
a Hub id) with ``base_model_relation: merge`` (model folders) and the tags ``dppa-peft``, ``merge`` and the mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .commands import public_command

if TYPE_CHECKING:
    from ..format.merge_record import MergeRecord

MERGE_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{% if adapter %}A **merged sparse delta adapter** made with [dppa-peft](https://arxiv.org/abs/2403.02799): the
{{ n }} adapter{{ "s" if n != 1 }} below combined with merge mode `{{ mode }}` into one adapter (union of their supports, values = the
merged delta, every amplification factor baked in). It loads like any other dppa-peft adapter.
{% else %}A model merged with [dppa-peft](https://arxiv.org/abs/2403.02799): the base plus the {{ n }} sparse delta
adapter{{ "s" if n != 1 }} below, combined with merge mode `{{ mode }}`. It loads with plain transformers.
{% endif %}
## Merge

| | |
|---|---|
| base model | `{{ base }}` |
| merge mode | `{{ mode }}` (options: `{{ params }}`) |
| {{ "stored values" if adapter else "weights dtype" }} | {{ dtype }} |

## Adapters

| # | adapter | weight | pruning method | rate | made from base |
|---|---|---|---|---|---|
{% for a in adapters %}| {{ loop.index }} | `{{ shown(a.ref, a.revision) }}` | {{ a.weight }} | `{{ a.method.get("name", "?") }}` | {{ a.method.get("rate") }} | `{{ shown(a.base_model) }}` |
{% endfor %}{% if evals %}
## Evaluation

| task | metric | value |
|---|---|---|
{% for e in evals %}| {{ e.dataset_name }} | {{ e.metric_type }}{{ " (%s)" % e.metric_config if e.metric_config }} | {{ e.metric_value }} |
{% endfor %}{% endif %}
{% if learned %}## Learned factors

Learned by `{{ mode }}` before summing: objective `{{ learned.objective }}`, granularity `{{ learned.granularity }}`,
{{ learned.steps_run }} Adam steps (lr {{ learned.lr }}) in {{ "%.1f" % learned.seconds }} s; held-out {{ learned.objective }}
{{ "%.4g" % learned.heldout_kl_before }} at the plain sum, {{ "%.4g" % learned.heldout_kl_after }} with the learned factors
(step {{ learned.best_step }}); {{ learned.factor_stats.count }} factors in [{{ "%.3g" % learned.factor_stats.min }},
{{ "%.3g" % learned.factor_stats.max }}], mean {{ "%.3g" % learned.factor_stats.mean }}. The loss curves are in the merge
record.{% if learned.dense %} The tensors kept dense outside the pruning scope (embeddings, `lm_head`, norms) have
learned row factors too (`learn_dense`).{% endif %}{% if learned.partition_rates %} A factor per row and magnitude
partition of each adapter's kept entries (partition rates {{ learned.partition_rates | join(", ") }}).{% endif %}

{% endif %}## Use

```python
{% if adapter %}import dppa_peft  # registers the SPARSE_DELTA adapter type with PEFT
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{{ base_id }}"), "{{ repo }}")
{% else %}from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("{{ repo }}")
{% endif %}```

Replay the merge (identical weights): `dppa-peft merge --from-record {{ record_file }} {{ out_flag }} OUT`.

## Provenance

Made with dppa-peft {{ version }} by:

```
{{ command }}
```
"""


def build_merge_card(
    record: "MergeRecord", *, repo_id: str | None = None, evals: list[EvalResult] | None = None
) -> ModelCard:
    """The card of a merged model folder or merged adapter, from its merge record (plus its Hub id and evaluation
    results, as ``publish.card.eval_results_from_lm_eval`` makes them, when published)."""
    adapter = record.output == "adapter"
    base = record.base.ref if _is_hub_id(record.base) else None
    # base_model_relation is a card field without a parameter of its own
    relation: dict[str, Any] = {"base_model_relation": "merge"} if base and not adapter else {}
    data = ModelCardData(
        base_model=base,
        library_name="peft" if adapter else "transformers",
        tags=["dppa-peft", "merge", record.mode] + (["sparse-delta"] if adapter else []),
        eval_results=evals,
        model_name=(repo_id or "merged").split("/")[-1] if evals else None,
        **relation,
    )
    return ModelCard.from_template(
        data,
        template_str=MERGE_CARD_TEMPLATE,
        title=f"{'Merged sparse delta adapter' if adapter else 'Merged model'} ({record.mode}, "
        f"{len(record.adapters)} adapter{'s' if len(record.adapters) != 1 else ''})",
        adapter=adapter,
        n=len(record.adapters),
        mode=record.mode,
        params=_public(record.params),
        base=_shown(record.base.ref, record.base.revision),
        base_id=base or "path/to/base",
        shown=_shown,
        dtype=(record.value_dtype if adapter else record.dtype) or "as the base",
        adapters=record.adapters,
        record_file="adapter_config.json" if adapter else "dppa_merge.json",
        out_flag="--out-adapter" if adapter else "--out",
        version=record.package_version or "?",
        command=public_command(record.command),
        evals=evals,
        repo=repo_id or "<this repo or folder>",
        learned=record.learned,
    )


def write_merge_card(directory: str | os.PathLike, record: "MergeRecord") -> Path:
    """Write ``README.md`` (the merge card) into ``directory``."""
    path = Path(directory) / "README.md"
    build_merge_card(record).save(path)
    return path


def _shown(ref: str | None, revision: str | None = None) -> str:
    """A reference as a card shows it: a Hub id with its revision, a local folder by its name only (no paths)."""
    if ref and Path(ref).is_absolute():
        return f"{Path(ref).name} (local folder)"
    return f"{ref}@{revision}" if revision else str(ref)


def _public(value: Any) -> Any:
    """Mode options as a card shows them: absolute paths (a learned mode's calibration files) by their name only."""
    if isinstance(value, dict):
        return {key: _public(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_public(item) for item in value]
    return Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value


def _is_hub_id(source: object) -> bool:
    ref = getattr(source, "ref", "")
    return bool(ref) and not Path(ref).is_absolute() and ref.count("/") == 1
