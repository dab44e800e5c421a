"""PEFT's own ``PeftModel.push_to_hub`` for a model holding SPARSE_DELTA adapters: the files and card of
``dppa-peft push``, as ONE commit, on a new or an existing repo.

transformers' ``PushToHubMixin.push_to_hub`` (which ``PeftModel`` inherits) loads the repo's card, or on a new repo
an empty template, before it calls ``save_pretrained``, and writes that card over the ``README.md`` which
``save_pretrained`` wrote: nothing a tuner or a config writes into the folder survives it. So the tuner gives each
``PeftModel`` that loads a SPARSE_DELTA adapter this ``push_to_hub`` (on that instance only; see
``tuner.model.register_peft_push``): ``save_pretrained`` (PEFT's compact files), then for every SPARSE_DELTA adapter
folder in it the config and card that ``dppa-peft push`` publishes (base named by its Hub id, the command without
local paths, the card naming ``repo_id``), committed with the same checks and errors as ``dppa-peft push``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..format.config import SparseDeltaType
from ..format.io import CONFIG_FILE


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: Sequence[str] | None = None,
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
    base_model_id: str | None = None,
) -> Any:
    """``PeftModel.push_to_hub`` (transformers' arguments) writing dppa-peft's config and card; returns the commit
    info. ``eval_results`` (lm-eval's results) and ``base_model_id`` are those of ``dppa-peft push``; ``private``
    on an existing public repo is refused, as there."""
    from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

    from ..format.config import SparseDeltaConfig
    from ..publish.card import write_model_card
    from ..publish.hub import commit_files, hub_config_file

    with tempfile.TemporaryDirectory(prefix="dppa-peft-push-") as tmp:
        root = Path(tmp)
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        for config_file in sorted(root.rglob(CONFIG_FILE)):  # the "default" adapter at the root, others in <name>/
            folder = config_file.parent
            if json.loads(config_file.read_text()).get("peft_type") != SparseDeltaType.SPARSE_DELTA.value:
                continue
            hub_config_file(folder, folder, base_model_id, token)
            config = SparseDeltaConfig.from_pretrained(str(folder))
            card_file = write_model_card(folder, config, repo_id=repo_id, eval_results=eval_results)
            if tags:
                card = ModelCard.load(card_file)
                card.data.tags = [*(card.data.tags or []), *(t for t in tags if t not in (card.data.tags or []))]
                card.save(card_file)
        operations = [
            CommitOperationAdd(path_in_repo=path.relative_to(root).as_posix(), path_or_fileobj=str(path))
            for path in sorted(root.rglob("*"))
            if path.is_file()
        ]
        message = commit_message or "Upload sparse delta adapter with PEFT push_to_hub and dppa-peft"
        return commit_files(
            HfApi(token=token),
            repo_id,
            operations,
            message,
            private=bool(private),
            revision=revision,
            create_pr=create_pr,
            description=commit_description,
        )
