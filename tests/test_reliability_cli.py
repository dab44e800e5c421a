"""The command line's error contract: user errors print one ``error:`` line and exit 2; signals end cleanly."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dppa_peft.cli import main
from dppa_peft.core.errors import Interrupted, UserError
from tests.cli_args import prune_argv, run_prune
from tests.hub_fixtures import REPO_ROOT


@pytest.mark.parametrize("debug", [False, True])
def test_user_error_is_one_line_and_exit_2_with_the_traceback_only_with_debug(debug, tmp_path, capsys):
    assert run_prune(tmp_path / "nosuch", tmp_path / "x", tmp_path / "o", method=None, debug=debug) == 2
    err = capsys.readouterr().err
    assert "error: no such folder" in err and ("Traceback" in err) == debug


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
    assert Interrupted(signal.SIGTERM, "SIGTERM").exit_status == 143


def test_keyboard_interrupt_exits_130_and_removes_the_temp_folder(tmp_path, llama_pair, monkeypatch, capsys):
    from dppa_peft.prune import pipeline

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_prune_one", stop)
    assert run_prune(*llama_pair, tmp_path / "out") == 130
    assert "stopped by SIGINT" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


SLOW_PRUNE = textwrap.dedent("""
    import sys, time
    from dppa_peft.prune import pipeline
    original = pipeline._prune_one
    def slow(*args, **kwargs):
        record = original(*args, **kwargs)
        print("writing", flush=True)
        time.sleep(60)
        return record
    pipeline._prune_one = slow
    from dppa_peft.cli import main
    raise SystemExit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_delivered_mid_prune_in_process(tmp_path, llama_pair, signum, status, monkeypatch, capsys):
    """A real signal to this process while the adapter is being written: exit 128+n, nothing left behind."""
    from dppa_peft.prune import pipeline

    original = pipeline._prune_one

    def signalled(*args, **kwargs):
        record = original(*args, **kwargs)
        os.kill(os.getpid(), signum)
        return record

    monkeypatch.setattr(pipeline, "_prune_one", signalled)
    assert run_prune(*llama_pair, tmp_path / "out") == status
    assert f"stopped by {signal.Signals(signum).name}" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are restored


@pytest.mark.slow
def test_sigterm_to_a_real_process_mid_prune_leaves_nothing(tmp_path, llama_pair):
    """A separate process killed with SIGTERM (whose default action skips all cleanup) while it writes."""
    signum, status = signal.SIGTERM, 143
    out_root = tmp_path / "outs"
    out_root.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_PRUNE, *prune_argv(*llama_pair, out_root / "a")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    for line in proc.stdout:  # the child prints "writing" once its output folder exists; EOF: it ended early
        if line.strip() == "writing":
            break
    else:
        pytest.fail(f"the prune ended before writing: {proc.wait()}, {proc.stderr.read()}")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "unfinished outputs were removed" in err and "Traceback" not in err
    assert os.listdir(out_root) == []


def test_credentials_in_hf_endpoint_are_never_printed(tmp_path, monkeypatch, capsys):
    """HF_ENDPOINT carrying user:password@ and a Hub error that repeats the URL: no password, no token printed."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    endpoint = "http://alice:s3cr3tpass@127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwx")

    def unreachable(repo_id, **kwargs):
        raise LocalEntryNotFoundError(
            f"cannot reach {endpoint}/api/models/{repo_id} (token hf_abcdefghijklmnopqrstuvwx)"
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    code = main(
        ["--debug", "prune", "--base", "someone/base", "--finetuned", "someone/ft", "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "could not reach the Hub at http://***@127.0.0.1:9" in err
    assert "Traceback" in err and "s3cr3tpass" not in err and "hf_abcdefghijklmnopqrstuvwx" not in err


def test_redact():
    from dppa_peft.core.errors import redact

    assert redact("at https://u:p@host/x and hf_0123456789abcdef") == "at https://***@host/x and ***"
    assert redact("plain http://host/path stays") == "plain http://host/path stays"


@pytest.mark.slow
def test_real_entry_point_on_a_damaged_checkpoint(tmp_path, llama_pair):
    """``python -m dppa_peft`` itself: a truncated fine-tune file -> exit 2, one error line naming the file."""
    import shutil

    ft = shutil.copytree(llama_pair[1], tmp_path / "ft")
    weights = ft / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = subprocess.run(
        [sys.executable, "-m", "dppa_peft", *prune_argv(llama_pair[0], ft, tmp_path / "out")],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"dppa-peft prune: error: {weights}: header length" in proc.stderr or "truncated" in proc.stderr
    assert not (tmp_path / "out").exists()
