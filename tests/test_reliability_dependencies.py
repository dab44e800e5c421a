"""Dependency drift: the installed versions, the pyproject ranges and the constraints.txt pins must agree, and the
transformers <-> peft pair must be one that works together (transformers 5.24 needs peft >= 0.22 for
``active_adapters()``; 0.21.2 is the newest peft here, so the ranges stop transformers below 5.24)."""

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.hub_fixtures import REPO_ROOT


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not an exact pin NAME==VERSION"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra, requirements in project.get("optional-dependencies", {}).items():
        # mergekit (bench) and vLLM (vllm: its own torch, a GPU environment) bring their own worlds: not pinned here
        if extra not in ("bench", "vllm"):
            listed += requirements
    return [Requirement(r) for r in listed]


PINS = _pins()
REQUIREMENTS = _requirements()


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=str)
def test_every_range_admits_its_pin(requirement):
    pin = PINS.get(canonicalize_name(requirement.name))
    assert pin is not None, f"{requirement.name} is a dependency but constraints.txt does not pin it"
    assert requirement.specifier.contains(pin, prereleases=True), (
        f"pyproject says {requirement}, constraints.txt pins {pin}: they disagree"
    )


@pytest.mark.parametrize("requirement", REQUIREMENTS, ids=str)
def test_installed_versions_are_in_range(requirement):
    try:
        installed = Version(metadata.version(requirement.name))
    except metadata.PackageNotFoundError:
        pytest.fail(f"{requirement.name} is required but not installed: pip install -c constraints.txt -e '.[test]'")
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"installed {requirement.name} {installed} is outside {requirement}; reinstall with -c constraints.txt"
    )


def test_installed_transformers_accepts_installed_peft():
    from transformers.integrations.peft import MIN_PEFT_VERSION

    peft = Version(metadata.version("peft"))
    assert peft >= Version(MIN_PEFT_VERSION), (
        f"transformers {metadata.version('transformers')} needs peft >= {MIN_PEFT_VERSION}, found {peft}"
    )


def test_the_pinned_pair_excludes_the_known_bad_combination():
    """transformers >= 5.24 calls peft APIs added in 0.22; with peft < 0.22 the ranges must keep transformers < 5.24."""
    by_name = {canonicalize_name(r.name): r for r in REQUIREMENTS}
    if not by_name["peft"].specifier.contains("0.22.0"):
        assert not by_name["transformers"].specifier.contains("5.24.0")


def test_load_adapter_then_active_adapters_works(tmp_path, llama_pair):
    """The call that broke under drift: transformers' own load_adapter + active_adapters on our adapter type."""
    from transformers import AutoModelForCausalLM

    from dppa_peft import prune

    adapter, _ = prune(*llama_pair, tmp_path / "a", method="magnitude", rate=0.9, progress=False)
    model = AutoModelForCausalLM.from_pretrained(llama_pair[0])
    model.load_adapter(str(adapter.directory), adapter_name="a")
    assert model.active_adapters() == ["a"]
