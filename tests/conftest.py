"""Test session setup: quiet threads, a local Hub server and its own HF cache per worker, tiny models."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

pytest.register_assert_rewrite("tests.hub_fixtures")
from tests.hub_fixtures import configure_hub_environment  # noqa: E402

configure_hub_environment()  # before anything imports huggingface_hub: HF_ENDPOINT, HF_HOME, HF_TOKEN per worker
pytest_plugins = ["tests.hub_fixtures"]

import torch  # noqa: E402

torch.set_num_threads(1)

from tests.tiny_models import make_base, make_finetune  # noqa: E402


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """A tiny fp32 Llama base and a fine-tune of it (several optimiser steps)."""
    root = tmp_path_factory.mktemp("llama")
    base = make_base(root / "base")
    return base, make_finetune(base, root / "ft", steps=5)


@pytest.fixture(scope="session")
def llama_finetunes(tmp_path_factory: pytest.TempPathFactory, llama_pair: tuple) -> list:
    """Two more fine-tunes of the same base (for multi-adapter tests)."""
    base, _ = llama_pair
    root = tmp_path_factory.mktemp("llama_more")
    return [make_finetune(base, root / f"ft{i}", steps=3, seed=10 + i) for i in range(2)]


@pytest.fixture(scope="session")
def finetune_adapters(tmp_path_factory: pytest.TempPathFactory, llama_pair: tuple, llama_finetunes: list):
    """``finetune_adapters(rate)``: the folders of the llama_finetunes magnitude-pruned at ``rate`` (made once)."""
    from dppa_peft import prune

    made: dict[float, list] = {}

    def at(rate: float) -> list:
        if rate not in made:
            root = tmp_path_factory.mktemp(f"finetune_adapters_{rate}")
            made[rate] = [
                prune(llama_pair[0], ft, root / f"a{i}", method="magnitude", rate=rate, progress=False)[0].directory
                for i, ft in enumerate(llama_finetunes)
            ]
        return made[rate]

    return at


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    """The common test matrix's tiny models (fp32 and bf16) and the adapters pruned from them (tests/matrix.py)."""
    from tests.matrix import Matrix

    return Matrix(tmp_path_factory.mktemp("matrix"))
