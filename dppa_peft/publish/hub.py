"""Publish an adapter on the Hub: ONE commit with the adapter files and a fresh model card.

The repo is created if needed (``exist_ok``), and the branch too when ``revision`` names a new one. The token comes
from ``token``, else ``HF_TOKEN`` or a saved ``hf auth login``; the endpoint from ``HF_ENDPOINT``. A Hub commit is
atomic, and huggingface_hub does not retry the commit request: when the connection breaks, ``PushError`` says
whether anything was published (it checks the branch head) and that re-running is safe (uploaded files are reused).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants

from ..core.errors import redact
from ..core.hub_errors import PushError, TransportError, describe_hub_error
from ..io.base_ref import BASE_ID_KEY, base_id_record
from ..io.checkpoint import Checkpoint
from ..format.config import SparseDeltaConfig
from ..format.io import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, AdapterFolder
from ..core.spec import Source
from .spec import PushSpec, SUPERTUNING
from .card import load_eval_results, shown_ref, write_model_card
from .commands import public_command
from .export import export_supertuning
from .stock import SupertuningExport


def push_to_hub(
    adapter: AdapterFolder,
    repo_id: str,
    *,
    token: str | bool | None = None,
    eval_results: Mapping[str, Mapping[str, Any]] | str | os.PathLike | None = None,
    base: str | os.PathLike | Source | None = None,
    base_revision: str | None = None,
    **options: Any,
) -> CommitInfo:
    """The keyword form of ``push``: ``options`` are the fields of ``PushSpec`` (``private``, ``revision``,
    ``commit_message``, ``create_pr``, ``export_format``, ``base_model_id``); ``eval_results`` is lm-eval's
    ``results`` mapping or a file of it; ``base`` / ``base_revision`` locate the base of a supertuning export."""
    results = eval_results if isinstance(eval_results, Mapping) else None
    spec = PushSpec(
        adapter=Source.of(adapter),
        repo_id=repo_id,
        base=None if base is None else Source.of(base, base_revision),
        eval_results=None if results is not None or eval_results is None else str(eval_results),
        **options,
    )
    return publish(adapter, spec, token=token, eval_results=results)


def publish(
    adapter: AdapterFolder,
    spec: PushSpec,
    *,
    token: str | bool | None = None,
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
) -> CommitInfo:
    """Push ``adapter`` to ``spec.repo_id`` as one commit on ``spec.revision`` (default 'main'); returns the commit
    info.

    ``export_format`` 'supertuning' pushes the stock-PEFT export instead (``base`` locates the base it needs,
    default: the one recorded in the adapter). ``eval_results`` (lm-eval's ``results`` mapping; default: read from
    the file ``spec.eval_results``) goes into the card's model-index. ``private`` applies when the repo is created; pushing with it to an existing public repo is refused.
    ``base_model_id`` names the Hub id of a base pruned from a local copy (checked against the Hub by sampled weights
    when the local base is still there), unless prune recorded it already. The pushed config names the base by its
    Hub id when one is known, and records the command without local paths.
    """
    if eval_results is None and spec.eval_results:
        eval_results = load_eval_results(spec.eval_results)
    adapter.verify()  # never publish a damaged adapter
    api = HfApi(token=token)
    repo_id = spec.repo_id
    with tempfile.TemporaryDirectory(prefix="dppa-push-") as tmp:
        staged = Path(tmp)
        config_file = hub_config_file(adapter.directory, staged / "config", spec.base_model_id, token)
        config = SparseDeltaConfig.from_pretrained(str(config_file.parent))
        stock = None
        if spec.export_format == SUPERTUNING:
            stock = export_supertuning(
                adapter,
                staged / "export",
                base=None if spec.base is None else spec.base.ref,
                base_revision=None if spec.base is None else spec.base.revision,
                token=token,
                repo_id=repo_id,
                progress=False,
            )
            _set_base(stock.directory / CONFIG_FILE, config.base_model_name_or_path)
            files = {name: stock.directory / name for name in (CONFIG_FILE, WEIGHTS_FILE)}
        else:
            files = {CONFIG_FILE: config_file, WEIGHTS_FILE: adapter.directory / WEIGHTS_FILE}
        files[CARD_FILE] = write_model_card(staged, config, repo_id=repo_id, eval_results=eval_results, stock=stock)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
        message = spec.commit_message or _default_message(adapter, stock)
        return commit_files(
            api, repo_id, operations, message, private=spec.private, revision=spec.revision, create_pr=spec.create_pr
        )


def hub_config_file(
    source: Path, folder: Path, base_model_id: str | None = None, token: str | bool | None = None
) -> Path:
    """Write the ``adapter_config.json`` of adapter folder ``source`` as published into ``folder`` (may be
    ``source``): the base named by its Hub id when one is known (``base_model_id``, checked; or recorded at prune),
    provenance without local paths. Returns the file."""
    data = json.loads((source / CONFIG_FILE).read_text())
    provenance = dict(data.get("provenance") or {})
    if base_model_id is not None:
        base = data.get("base_model_name_or_path")
        local = Path(base).is_dir() if base else False
        record = (
            base_id_record(base, Checkpoint.open(base), base_model_id, token)
            if local
            else {BASE_ID_KEY: base_model_id, "base_model_id_checked": False}
        )
        provenance.update(record)
    if provenance.get(BASE_ID_KEY):
        data["base_model_name_or_path"] = provenance[BASE_ID_KEY]
    if "command" in provenance:
        provenance["command"] = public_command(provenance["command"])
    if "finetuned" in provenance:
        provenance["finetuned"] = shown_ref(provenance["finetuned"])
    data["provenance"] = provenance
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return folder / CONFIG_FILE


def _set_base(config_file: Path, base: str) -> None:
    """Name ``base`` as the base model in an exported PEFT config file."""
    data = json.loads(config_file.read_text())
    data["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def commit_files(
    api: HfApi,
    repo_id: str,
    operations: list[CommitOperationAdd],
    message: str,
    *,
    private: bool,
    revision: str | None,
    create_pr: bool,
    description: str | None = None,
) -> CommitInfo:
    head = None
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.repo_info(repo_id).private:
            raise ValueError(
                f"{repo_id} already exists and is public; --private only applies to a new repo: make it "
                "private on the Hub first, or push without --private"
            )
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        head = api.repo_info(repo_id, revision=revision).sha
        return api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            commit_description=description,
            revision=revision,
            create_pr=create_pr,
        )
    except TransportError as err:
        raise PushError(_interrupted(api, repo_id, revision, head, err)) from err
    except Exception as err:
        clear = describe_hub_error(err, repo_id, revision)
        if clear is None:
            raise
        if head is not None:  # the Hub answered the commit with an error: it applied nothing
            clear = type(clear)(f"{clear}; nothing was published")
        raise clear from err


def _interrupted(api: HfApi, repo_id: str, revision: str | None, head: str | None, err: Exception) -> str:
    """What a broken connection left on the Hub, and what to do."""
    branch = revision or "main"
    what = redact(
        f"the connection to the Hub ({constants.ENDPOINT}) broke while pushing to {repo_id}@{branch} "
        f"({type(err).__name__}: {err})"
    )
    safe = "your adapter folder is unchanged; re-running the same command is safe (files already uploaded are reused)"
    if head is None:
        return f"{what}; no commit was attempted, so nothing was published; {safe}"
    try:
        now = api.repo_info(repo_id, revision=branch).sha
    except Exception:  # the Hub is still unreachable
        now = None
    if now is None:  # say what is certain
        return (
            f"{what}; could not check the branch afterwards, but a Hub commit is all-or-nothing: {branch} holds "
            f"either its previous commit {head[:8]} or the complete new one; {safe}"
        )
    if now == head:
        return f"{what}; nothing was published ({branch} is still at {head[:8]}); {safe}"
    return (
        f"{what}; {branch} moved from {head[:8]} to {now[:8]}: the commit was probably applied, check the repo; {safe}"
    )


def _default_message(adapter: AdapterFolder, stock: SupertuningExport | None) -> str:
    method = adapter.config.method
    kind = "stock-PEFT SUPERTUNING export of a sparse delta adapter" if stock else "sparse delta adapter"
    return f"Upload {kind} ({method.get('name', 'unknown')}, rate {method.get('rate')}) with dppa-peft"
