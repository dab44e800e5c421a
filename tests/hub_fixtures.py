"""Pytest fixtures for tests that talk to a local Hub-compatible server (see ``tests/hub_server.py``).

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` when it is imported, so the root
``conftest.py`` must call ``configure_hub_environment()`` at module level, before anything imports
huggingface_hub, transformers, peft, datasets or lm_eval, and register this module with
``pytest_plugins = ["tests.hub_fixtures"]``. Each process (every pytest-xdist worker included) gets its own port,
``HF_HOME`` and server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.hub_server import LocalHub

HUB_USER = "dppa-user"
HUB_TOKEN = "hf_dppa_user_token"  # a dummy token the local server accepts; never a real credential
OTHER_USER = "other-user"
OTHER_TOKEN = "hf_other_user_token"
VALID_TOKENS = {HUB_TOKEN: HUB_USER, OTHER_TOKEN: OTHER_USER}
REPO_ROOT = Path(__file__).resolve().parent.parent

# Variables that would route the cache, token or endpoint somewhere other than HF_HOME and the local server.
_CLEARED_VARIABLES = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
    "HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "HF_XET_CACHE", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN",
    "HUGGINGFACE_CO_STAGING", "HF_DATASETS_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_DISABLE_IMPLICIT_TOKEN",
)  # fmt: skip


_port: int | None = None
_reserved_socket: socket.socket | None = None


def configure_hub_environment() -> None:
    """Reserve a free port on 127.0.0.1 and point the Hugging Face libraries at it, with a fresh HF_HOME.

    Sets HF_ENDPOINT, HF_HOME, HF_TOKEN (a dummy token the local server accepts), HF_HUB_DISABLE_XET=1 (so uploads
    use git-LFS, not Xet), no telemetry and quiet progress bars; unsets offline switches and cache overrides.
    Idempotent in a process. Raises RuntimeError if huggingface_hub was already imported (it would not see them).
    """
    global _port, _reserved_socket
    if _port is not None:
        return
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("configure_hub_environment() must run before anything imports huggingface_hub")
    _reserved_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    _reserved_socket.bind(("127.0.0.1", 0))  # kept bound so nobody else takes the port before the server starts
    _port = _reserved_socket.getsockname()[1]
    hf_home = tempfile.mkdtemp(prefix="dppa-hf-home-")
    atexit.register(shutil.rmtree, hf_home, True)
    for name in _CLEARED_VARIABLES:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "HF_ENDPOINT": f"http://127.0.0.1:{_port}",
            "HF_HOME": hf_home,
            "HF_TOKEN": HUB_TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        }
    )


def run_python(
    code: str,
    env: Mapping[str, str | None] | None = None,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process with this process's environment plus ``env`` (None unsets a variable).

    The repository root is put first on PYTHONPATH. With ``check``, a non-zero exit fails the test and shows the
    child's output.
    """
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
    for name, value in (env or {}).items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result


def unique_repo_id(name: str) -> str:
    """A repo id under the test user that no other test uses (the repo is not created)."""
    name = "".join(c if c.isalnum() else "-" for c in name)[:60].strip("-")
    return f"{HUB_USER}/{name}-{uuid.uuid4().hex[:8]}"


def upload_model(folder: Path, name: str) -> str:
    """Upload a model folder to a new repo of the test user (named after ``name``); returns its id."""
    from huggingface_hub import HfApi

    repo_id = unique_repo_id(name)
    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=folder)
    return repo_id


@pytest.fixture(scope="session")
def local_hub() -> Iterator[LocalHub]:
    """A LocalHub serving on HF_ENDPOINT for the whole session, started on first use; at the end, no request may
    have hit a bug of the server (an answer 500 with its traceback)."""
    if _port is None:
        raise RuntimeError("call tests.hub_fixtures.configure_hub_environment() at the top of the root conftest.py")
    hub = LocalHub(VALID_TOKENS, port=_port).start(listen_socket=_reserved_socket)
    yield hub
    hub.stop()
    assert hub.server_errors == [], hub.server_errors[0]


@pytest.fixture
def hub_repo_id(local_hub: LocalHub, request: pytest.FixtureRequest) -> str:
    """A fresh repo id named after the test (the repo is not created)."""
    return unique_repo_id(request.node.name)


@pytest.fixture(scope="session")
def base_on_hub(local_hub: LocalHub, llama_pair: tuple) -> str:
    """The tiny base (``llama_pair[0]``) on the local Hub, so adapters can name it by its Hub id."""
    return upload_model(llama_pair[0], "base")
