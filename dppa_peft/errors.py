"""The exceptions that mean "the user's input is wrong" or "the run was stopped", as opposed to a bug.

``UserError`` is a ``ValueError`` whose message names the file, key or tensor at fault and says how to fix it.
The command line prints it as ``error: ...`` and exits with status 2 (a traceback only with ``--debug``); Python
callers can catch it (or ``ValueError``) the usual way.
"""

from __future__ import annotations


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


__all__ = ["Interrupted", "UserError"]
