"""The exceptions that mean "the user's input is wrong" or "the run was stopped", as opposed to a bug.

``UserError`` is a ``ValueError`` whose message names the file, key or tensor at fault and says how to fix it.
The command line prints it as ``error: ...`` and exits with status 2 (a traceback only with ``--debug``); Python
callers can catch it (or ``ValueError``) the usual way.
"""

from __future__ import annotations

import os
import re

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact(text: str) -> str:
    """``text`` without credentials: ``user:password@`` in URLs (e.g. inside HF_ENDPOINT), Hub tokens (``hf_...``)
    and the value of HF_TOKEN become ``***``. Applied to every message the command line prints."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _HF_TOKEN.sub("***", text)
    for name in TOKEN_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


class UserError(ValueError):
    """Bad input from the user: the message names what is wrong (file / key / tensor) and the fix."""


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); temporary outputs are removed on the way out."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(f"interrupted by {name}")
        self.signum = signum
        self.name = name

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + the signal number."""
        return 128 + self.signum


__all__ = ["Interrupted", "UserError", "redact"]
