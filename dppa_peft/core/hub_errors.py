"""huggingface_hub's exceptions turned into messages that name the problem and the fix.

Reading errors become ``FileNotFoundError`` (nothing there, or not reachable and not cached) or ``ValueError``
(a wrong revision, a refused token); the CLI prints either with exit status 2. Messages never contain a token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from huggingface_hub import constants

from .errors import redact
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # the HTTP client under huggingface_hub: httpx2 from 2.x, httpx before
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    from httpx import TransportError  # type: ignore[no-redef]  # the same role, from the other HTTP client

TOKEN_HINT = "set HF_TOKEN or run `hf auth login`"

__all__ = ["PushError", "TransportError", "describe_hub_error", "hub_errors", "status_code"]


class PushError(ConnectionError):
    """A push that did not complete; the message says whether anything was published."""


def status_code(err: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub HTTP error, if any."""
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def describe_hub_error(err: BaseException, repo_id: str, revision: str | None = None) -> BaseException | None:
    """A FileNotFoundError/ValueError with a clear message for a huggingface_hub error; None for anything else."""
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    endpoint = redact(constants.ENDPOINT)  # HF_ENDPOINT may carry user:password@
    if isinstance(err, RevisionNotFoundError):
        return ValueError(
            f"Hub repo {repo_id!r} has no revision {revision!r}; pass an existing branch, tag or "
            "commit sha (or leave the revision out for 'main')"
        )
    if isinstance(err, GatedRepoError):
        return ValueError(
            f"Hub repo {repo_id!r} is gated: request access on its page, then {TOKEN_HINT} with that account"
        )
    if isinstance(err, RepositoryNotFoundError):
        return FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hub repo visible at {endpoint}; check the id (user/name), "
            f"and for a private repo {TOKEN_HINT} with an account that can read it"
        )
    if isinstance(err, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return FileNotFoundError(
                f"{where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                "forbids downloading it; run once online (without HF_HUB_OFFLINE) to fill the cache"
            )
        return FileNotFoundError(
            f"could not reach the Hub at {endpoint} for {where}, and it is not in the local cache; check the network "
            "(and HF_ENDPOINT) and try again"
        )
    if isinstance(err, EntryNotFoundError):
        return FileNotFoundError(f"Hub repo {where} lacks a file it needs: {err}")
    if isinstance(err, HFValidationError):
        return ValueError(f"{repo_id!r} is not an existing local folder nor a valid Hub id (user/name): {err}")
    if isinstance(err, HfHubHTTPError):
        status = status_code(err)
        if status == 401:
            return ValueError(
                f"the Hub at {endpoint} refused the token for {where} (401 Unauthorized): the token "
                f"is invalid or expired; {TOKEN_HINT} again (the token is never shown)"
            )
        if status == 403:
            return ValueError(
                f"the Hub at {endpoint} forbids this on {where} (403 Forbidden): use a token with "
                f"write access to that namespace ({TOKEN_HINT}) or push under your own user name"
            )
        message = getattr(err, "server_message", None) or str(err).splitlines()[0]
        return ValueError(f"the Hub at {endpoint} answered {status} for {where}: {message}")
    return None


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Re-raise huggingface_hub errors in the block as clear FileNotFoundError/ValueError (original chained)."""
    try:
        yield
    except Exception as err:
        clear = describe_hub_error(err, repo_id, revision)
        if clear is None:
            raise
        raise clear from err
