"""Model cards of merges: a merged model folder (``merge_to_folder``) or a merged sparse adapter (``merge_to_adapter``).

The card names the base, every adapter (Hub id and revision, or a local folder's name: no local paths), its
weight and pruning method, the merge mode with its options, and the dtype; its metadata has ``base_model`` (when
a Hub id) with ``base_model_relation: merge`` (model folders) and the tags ``dppa-peft``, ``merge`` and the mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from ..format.merge_record import MergeRecord

MERGE_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{% if adapter %}A **merged sparse delta adapter** made with [dppa-peft](https://arxiv.org/abs/2403.02799): the
{{ n }} adapters below combined with merge mode `{{ mode }}` into one adapter (union of their supports, values = the
merged delta, every amplification factor baked in). It loads like any other dppa-peft adapter.
{% else %}A model merged with [dppa-peft](https://arxiv.org/abs/2403.02799): the base plus the {{ n }} sparse delta
adapters below, combined with merge mode `{{ mode }}`. It loads with plain transformers.
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
{% for a in adapters %}| {{ loop.index }} | `{{ a.display }}` | {{ a.weight }} | `{{ a.method.get("name", "?") }}` | {{ a.method.get("rate") }} | `{{ a.base_model }}` |
{% endfor %}
{% if learned %}## Learned factors

Learned by `{{ mode }}` before summing: objective `{{ learned.objective }}`, granularity `{{ learned.granularity }}`,
{{ learned.steps_run }} Adam steps (lr {{ learned.lr }}) in {{ "%.1f" % learned.seconds }} s; held-out {{ learned.objective }}
{{ "%.4g" % learned.heldout_kl_before }} at the plain sum, {{ "%.4g" % learned.heldout_kl_after }} with the learned factors
(step {{ learned.best_step }}); {{ learned.factor_stats.count }} factors in [{{ "%.3g" % learned.factor_stats.min }},
{{ "%.3g" % learned.factor_stats.max }}], mean {{ "%.3g" % learned.factor_stats.mean }}. The loss curves are in the merge
record.

{% endif %}## Use

```python
{% if adapter %}import dppa_peft  # registers the SPARSE_DELTA adapter type with PEFT
from peft import PeftModel
from transformers import AutoModelForCausalLM

model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{{ base }}"), "<this repo or folder>")
{% else %}from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("<this repo or folder>")
{% endif %}```

Replay the merge (identical weights): `dppa-peft merge --from-record {{ record_file }} {{ out_flag }} OUT`.

## Provenance

Made with dppa-peft {{ version }} by:

```
{{ command }}
```
"""


def build_merge_card(record: "MergeRecord") -> ModelCard:
    """The card of a merged model folder or merged adapter, from its merge record."""
    adapter = record.output == "adapter"
    base = record.base.ref if _is_hub_id(record.base) else None
    data = ModelCardData(
        base_model=base, library_name="peft" if adapter else "transformers",
        tags=["dppa-peft", "merge", record.mode] + (["sparse-delta"] if adapter else []),
    )
    if base and not adapter:
        data.base_model_relation = "merge"
    return ModelCard.from_template(
        data, template_str=MERGE_CARD_TEMPLATE,
        title=f"{'Merged sparse delta adapter' if adapter else 'Merged model'} ({record.mode}, "
              f"{len(record.adapters)} adapters)",
        adapter=adapter, n=len(record.adapters), mode=record.mode, params=record.params,
        base=record.base.display, dtype=(record.value_dtype if adapter else record.dtype) or "as the base",
        adapters=record.adapters, record_file="adapter_config.json" if adapter else "dppa_merge.json",
        out_flag="--out-adapter" if adapter else "--out", version=record.package_version or "?",
        command=record.command or "python API", learned=record.learned,
    )


def write_merge_card(directory: str | os.PathLike, record: "MergeRecord") -> Path:
    """Write ``README.md`` (the merge card) into ``directory``."""
    path = Path(directory) / "README.md"
    build_merge_card(record).save(path)
    return path


def _is_hub_id(source: object) -> bool:
    ref = getattr(source, "ref", "")
    return bool(ref) and not Path(ref).is_absolute() and ref.count("/") == 1
