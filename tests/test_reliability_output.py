"""Output folders: never an input, one writer at a time, all or nothing, mount points, umask, disk errors."""

import errno
import logging
import os
import shutil
import subprocess
import sys

import pytest

from dppa_peft.core import output
from dppa_peft.prune import pipeline
from dppa_peft.cli import main
from dppa_peft.publish.adapter import SparseDeltaAdapter
from dppa_peft.core.output import atomic_directory
from tests.cli_args import prune_argv, run_prune
from tests.hub_fixtures import REPO_ROOT


def _prune(pair, out, *extra):
    return run_prune(*pair, out, *extra, rate=0.9)


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def pair_copy(tmp_path_factory, llama_pair):
    """A private copy of the tiny pair, so tests that try to destroy inputs cannot hurt other tests."""
    root = tmp_path_factory.mktemp("inputs")
    return tuple(shutil.copytree(p, root / p.name) for p in llama_pair)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, pair_copy):
    out = tmp_path_factory.mktemp("adapter") / "a"
    assert _prune(pair_copy, out) == 0
    return out


@pytest.mark.parametrize("which", ["finetuned", "base"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_prune_refuses_out_equal_to_an_input(pair_copy, which, overwrite, capsys):
    target = pair_copy[1] if which == "finetuned" else pair_copy[0]
    before = _tree(target)
    assert _prune(pair_copy, target, *(["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert f"is the input {target}" in err and "destroy an input" in err and "pass --overwrite" not in err
    assert _tree(target) == before


def test_prune_refuses_out_inside_an_input(pair_copy, capsys):
    assert _prune(pair_copy, pair_copy[1] / "adapter") == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert not (pair_copy[1] / "adapter").exists()


def test_prune_refuses_out_containing_an_input(pair_copy, capsys):
    parent = pair_copy[0].parent
    before = _tree(parent)
    assert _prune(pair_copy, parent, "--overwrite") == 2
    assert "overlaps the input" in capsys.readouterr().err
    assert _tree(parent) == before


def test_prune_refuses_a_symlink_to_an_input(pair_copy, tmp_path, capsys):
    link = tmp_path / "link"
    link.symlink_to(pair_copy[1])
    assert _prune(pair_copy, link, "--overwrite") == 2
    assert "is the input" in capsys.readouterr().err


def test_merge_refuses_out_equal_to_base_or_adapter(pair_copy, adapter_dir, capsys):
    for out in (pair_copy[0], adapter_dir):
        before = _tree(out)
        assert (
            main(
                ["merge", "--base", str(pair_copy[0]), "--adapter", str(adapter_dir), "--out", str(out), "--overwrite"]
            )
            == 2
        )
        assert "destroy an input" in capsys.readouterr().err
        assert _tree(out) == before


def test_amplify_refuses_out_equal_to_the_adapter(adapter_dir, capsys):
    before = _tree(adapter_dir)
    assert main(["amplify", str(adapter_dir), "--out", str(adapter_dir), "--overwrite", "--factors", "1.5"]) == 2
    assert "destroy an input" in capsys.readouterr().err
    assert _tree(adapter_dir) == before


@pytest.mark.parametrize("fmt", ["sparse-delta", "supertuning"])
def test_export_refuses_out_equal_to_the_adapter(pair_copy, adapter_dir, fmt, capsys):
    before = _tree(adapter_dir)
    assert (
        main(
            ["export", str(adapter_dir), str(adapter_dir), "--format", fmt, "--base", str(pair_copy[0]), "--overwrite"]
        )
        == 2
    )
    assert "destroy an input" in capsys.readouterr().err
    assert _tree(adapter_dir) == before


def test_output_exists_is_checked_before_the_statistics_passes(pair_copy, tmp_path, monkeypatch, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")

    def never(*args, **kwargs):
        raise AssertionError("the statistics pass ran before the output check")

    monkeypatch.setattr(pipeline, "collect_statistics", never)
    base, ft = pair_copy
    assert run_prune(base, ft, tmp_path / "out", method="dp") == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"


def test_empty_out_is_refused_and_leaves_nothing(pair_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _prune(pair_copy, "") == 2
    assert "empty string" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_out_an_existing_file_is_refused(pair_copy, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _prune(pair_copy, tmp_path / "file", "--overwrite") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


def test_second_writer_of_the_same_out_fails_at_once(pair_copy, tmp_path, capsys):
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "first.txt").write_text("first run")
        assert _prune(pair_copy, tmp_path / "out") == 2
        assert f"another dppa-peft run (pid {os.getpid()}) is writing" in capsys.readouterr().err
    assert _tree(tmp_path / "out") == ["first.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # the lock file is gone too


@pytest.mark.slow
def test_concurrent_prunes_in_two_processes(pair_copy, tmp_path):
    """Two real processes started together: exactly one writes, the other reports the lock or the finished output."""
    base, ft = pair_copy
    argv = [sys.executable, "-m", "dppa_peft", *prune_argv(base, ft, tmp_path / "out")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "another dppa-peft run" in loser or "exists and is not empty" in loser
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert SparseDeltaAdapter(tmp_path / "out").config.method["name"] == "magnitude"


def test_stale_temp_folders_of_dead_runs_are_removed(pair_copy, tmp_path, caplog):
    stale = tmp_path / ".out.tmp-99999-dead"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (tmp_path / ".out.lock").write_text("99999")  # a killed run's lock file: no longer locked
    with caplog.at_level(logging.WARNING, logger="dppa_peft"):
        assert _prune(pair_copy, tmp_path / "out") == 0
    assert "left behind by an interrupted run" in caplog.text and str(stale) in caplog.text
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_existing_empty_folder_is_filled_in_place(pair_copy, tmp_path, monkeypatch):
    """A mount point cannot be renamed (EBUSY): the files are moved into it and the folder itself stays."""
    target = tmp_path / "mnt"
    target.mkdir()
    inode = target.stat().st_ino
    real_replace = os.replace

    def replace(src, dst):
        if os.fspath(dst) == os.fspath(target):
            raise OSError(errno.EBUSY, "Device or resource busy", os.fspath(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    assert _prune(pair_copy, target) == 0
    assert target.stat().st_ino == inode
    assert _tree(target) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_overwrite_replaces_an_existing_folder_and_keeps_it_on_failure(pair_copy, tmp_path, monkeypatch, capsys):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    monkeypatch.setattr(pipeline, "_vocab_size", lambda pair: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _prune(pair_copy, target, "--overwrite")
    assert _tree(target) == ["old.txt"]
    monkeypatch.undo()
    assert _prune(pair_copy, target, "--overwrite") == 0
    assert "old.txt" not in _tree(target) and "adapter_config.json" in _tree(target)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_output_folder_respects_the_umask(pair_copy, tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert _prune(pair_copy, tmp_path / "out") == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == mode
    assert (tmp_path / "out" / "adapter_model.safetensors").stat().st_mode & 0o777 == mode & 0o666


def test_disk_full_is_a_clear_error_and_leaves_nothing(pair_copy, tmp_path, monkeypatch, capsys):
    from dppa_peft.io import checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(checkpoint, "_copy_in_kernel", full)  # where a shard file is assembled
    assert _prune(pair_copy, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "nothing was written" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_read_only_file_system_is_a_clear_error(pair_copy, tmp_path, monkeypatch, capsys):
    def read_only(path):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(output, "_mkdir", read_only)
    assert _prune(pair_copy, tmp_path / "out") == 2
    assert "the file system is read-only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unwritable_parent_is_refused_before_work(pair_copy, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(output.os, "access", lambda path, mode: False)
    assert _prune(pair_copy, tmp_path / "out") == 2
    assert "is not writable" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file modes")
def test_read_only_out_folder_for_real(pair_copy, tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    assert _prune(pair_copy, tmp_path / "ro" / "out") == 2
    assert "not writable" in capsys.readouterr().err
