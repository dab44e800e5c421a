"""The command line parses and answers --help without importing torch, transformers or peft; logs keep progress."""

import json
import resource
import subprocess
import sys

from tests.hub_fixtures import REPO_ROOT

PROBE = """
import json, sys
from dppa_peft.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
loaded = {name: type(sys.modules[name]).__name__ for name in ("torch", "transformers", "peft") if name in sys.modules}
print(json.dumps(loaded), file=sys.stderr)
"""


def _loaded(*argv: str) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stderr.strip().splitlines()[-1])


def test_help_imports_no_heavy_library():
    commands = ("prune", "merge", "eval", "amplify", "inspect", "push", "export", "demo", "run")
    for argv in (["--help"], *([c, "--help"] for c in commands)):
        loaded = _loaded(*argv)
        assert "transformers" not in loaded and "peft" not in loaded, argv
        assert loaded.get("torch", "_Deferred") == "_Deferred", argv  # a placeholder, never the real torch


def test_help_answers_in_under_one_and_a_half_seconds():
    """CPU seconds of the whole ``dppa-peft prune --help`` process (start-up included; wall time on a busy shared
    machine measures the neighbours)."""
    for argv in (["--help"], ["prune", "--help"], ["push", "--help"], ["demo", "--help"]):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "dppa_peft", *argv], cwd=REPO_ROOT, capture_output=True, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        assert seconds < 1.5, (argv, seconds)


def test_a_typo_fails_before_any_work(capsys):
    from dppa_peft.cli import main

    assert (
        main(["prune", "--base", "B", "--finetuned", "F", "--out", "O", "--method", "dp", "--dp-variant", "papr"]) == 2
    )
    assert "dp_variant" in capsys.readouterr().err


def test_progress_is_one_line_per_step_in_a_log(capsys):
    from dppa_peft.core.progress import progress_bar

    assert list(progress_bar(range(3), desc="pruning (dp)", unit="tensor")) == [0, 1, 2]
    err = capsys.readouterr().err
    assert err.startswith("pruning (dp): 3/3 tensor in ") and err.count("\n") == 1
