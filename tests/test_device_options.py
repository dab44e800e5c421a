"""Every command that runs a model takes ``--device`` (and ``--dtype``): ``demo`` and ``run`` pass them through to
the work, and an unknown or absent device is an error before any work."""

from __future__ import annotations

import json

import pytest

from dppa_peft.cli import main
from dppa_peft.demo import runner
from dppa_peft.recipe.runner import Recipe, with_device
from dppa_peft.demo.spec import DemoSpec
from dppa_peft.recipe.spec import RunSpec


@pytest.mark.parametrize("device", ["nosuch", "cuda:7"])
def test_demo_refuses_a_bad_device_before_building_anything(tmp_path, capsys, device):
    cache = tmp_path / "zoo"
    assert main(["demo", "--device", device, "--out", str(tmp_path / "out"), "--cache-dir", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and device in err and "Traceback" not in err
    assert not cache.exists() and not (tmp_path / "out").exists()


def test_demo_device_and_dtype_reach_every_step(tmp_path, monkeypatch):
    """The spec's device/dtype go to pruning, amplification, learned merges and lm-eval (the steps recorded here
    instead of run)."""
    seen: dict[str, dict] = {}

    class Zoo:
        base = tmp_path / "base"
        finetunes = {"math": tmp_path / "math"}
        root = tmp_path

    def record(step):
        def work(*args, **kwargs):
            seen[step] = kwargs
            raise StopIteration(step)  # stop after the first step of each kind

        return work

    monkeypatch.setattr(runner, "build_zoo", lambda *a, **k: Zoo)
    monkeypatch.setattr(runner, "prune", record("prune"))
    monkeypatch.setattr(runner, "prune_and_amplify", record("amplify"))
    spec = DemoSpec(out=str(tmp_path / "out"), cache_dir=str(tmp_path), device="cpu", dtype="float32")
    settings = runner.DemoSettings.from_spec(spec)
    assert (settings.device, settings.dtype) == ("cpu", "float32")
    for prunes in (("magnitude",), ("dppa",)):
        one = runner.DemoSettings(prunes=prunes, merges=(), rates=(0.9,), device="cpu", dtype="float32")
        with pytest.raises(StopIteration):
            runner.run_demo(tmp_path / "out", tmp_path, one, progress=False)
    assert seen["prune"]["device"] == "cpu"
    assert seen["amplify"]["device"] == "cpu" and seen["amplify"]["dtype"] == "float32"


def test_demo_settings_record_the_device(tmp_path):
    assert runner.DemoSettings().device == "cpu" and runner.DemoSettings().dtype == "auto"
    assert json.loads(json.dumps({"device": runner.DemoSettings(device="cuda:1").device})) == {"device": "cuda:1"}


def _recipe(tmp_path) -> Recipe:
    path = tmp_path / "r.yaml"
    path.write_text(
        "base: b\noutput_dir: out\nprune: {method: magnitude, rate: 0.8, device: cpu}\n"
        "finetunes: {a: fa, b: fb}\nmerge: {mode: sum}\n"
    )
    return Recipe.load(path)


def test_run_device_and_dtype_replace_every_steps_own(tmp_path):
    recipe = with_device(_recipe(tmp_path), "cuda:1", "bfloat16")
    assert [s.device for s in recipe.steps.values()] == ["cuda:1", "cuda:1", "cuda:1"]
    assert [s.dtype for s in recipe.prunes.values()] == ["bfloat16", "bfloat16"]
    assert recipe.merge is not None and recipe.merge.dtype == "auto"  # the merge's dtype is its output dtype
    assert recipe.steps["merge"] is recipe.merge
    unchanged = _recipe(tmp_path)
    assert with_device(unchanged) is unchanged


def test_run_refuses_a_bad_device_before_any_step(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("base: nosuch\noutput_dir: out\nprune: {method: magnitude, rate: 0.8}\nfinetunes: {a: fa}\n")
    assert main(["run", str(path), "--device", "nosuch:0"]) == 2
    err = capsys.readouterr().err
    assert "--device 'nosuch:0'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert RunSpec(recipe=str(path)).device is None
