"""``PushSpec`` and ``ExportSpec``: publishing an adapter on the Hub, or writing it in another format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..core.choices import EXPORT_FORMATS
from ..core.spec import Source, Spec, fail, option


SUPERTUNING = "supertuning"  # the export format that needs the base (stock PEFT's sparse tuner)


def _check_repo_id(spec: Spec, repo_id: str) -> None:
    if not repo_id.strip() or repo_id.count("/") > 1 or repo_id.startswith("/") or repo_id.endswith("/"):
        fail(f"{spec.key}.repo_id: {repo_id!r} is not a Hub repo id like 'user/name'")


@dataclass(frozen=True, kw_only=True)
class PushSpec(Spec):
    """Publish an adapter on the Hub as ONE commit (adapter files and a fresh card), or its stock-PEFT export."""

    key: ClassVar[str] = "push"
    adapter: Source = option(
        positional=True, metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)"
    )
    repo_id: str = option(positional=True, metavar="REPO_ID", help="target Hub repo, e.g. 'user/llama2-math-dp90'")
    private: bool = option(False, help="create the repo private (refused if the repo already exists and is public)")
    revision: str | None = option(None, help="branch to commit to (created from main if new; default: main)")
    commit_message: str | None = option(None, help="commit message (default: names the method and rate)")
    create_pr: bool = option(False, help="open a pull request against --revision instead of committing to it")
    export_format: str = option(
        "sparse-delta",
        choices=EXPORT_FORMATS,
        help=(
            "'sparse-delta' (this package's compact format; loading needs `import dppa_peft`) or 'supertuning' "
            "(PEFT's built-in sparse tuner: loads with stock PEFT and transformers, larger; needs the base checkpoint)"
        ),
    )
    base: Source | None = option(
        None,
        help=(
            "with --export-format supertuning: the adapter's base model, folder or Hub id (default: the base recorded "
            "in the adapter)"
        ),
    )
    base_model_id: str | None = option(
        None,
        metavar="HUB_ID",
        help=(
            "the Hub id of the base when the adapter was pruned from a local copy (checked against the Hub by sampled "
            "weights when the local base is still there): the pushed config and card name the base by it, so Hub "
            "users can load the adapter"
        ),
    )
    eval_results: str | None = option(
        None,
        metavar="JSON",
        help="lm-eval results JSON (as written by dppa-lm-eval --output_path) to put in the card's model-index",
    )

    def validate(self) -> None:
        self._set(adapter=Source.of(self.adapter), base=None if self.base is None else Source.of(self.base))
        _check_repo_id(self, self.repo_id)
        if self.base is not None and self.export_format != SUPERTUNING:
            fail("push.base: --base only applies to --export-format supertuning (the export needs the base)")
        if self.base_model_id is not None:
            _check_repo_id(self, self.base_model_id)


@dataclass(frozen=True, kw_only=True)
class ExportSpec(Spec):
    """An adapter written in another format to a local folder: stock PEFT's SUPERTUNING, or a copy as is."""

    key: ClassVar[str] = "export"
    adapter: Source = option(
        positional=True, metavar="DIR", help="adapter folder written by `dppa-peft prune` (or a Hub id)"
    )
    out: str = option(positional=True, metavar="OUT", help="output folder (written atomically)")
    export_format: str = option(SUPERTUNING, choices=EXPORT_FORMATS, flag="--format", help="output format")
    base: Source | None = option(
        None, help="supertuning: the adapter's base model, folder or Hub id (default: the base recorded in the adapter)"
    )
    overwrite: bool = option(False, help="replace OUT if it exists")

    def validate(self) -> None:
        self._set(
            adapter=Source.of(self.adapter), out=str(self.out), base=None if self.base is None else Source.of(self.base)
        )
        if not self.out.strip():
            fail("export.out: pass an output folder")
