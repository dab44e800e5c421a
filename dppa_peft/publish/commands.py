"""Commands as cards show them: without the local absolute paths of the machine that ran them (a published card
must not reveal the folders of whoever made the adapter)."""

from __future__ import annotations

import re

# an absolute POSIX path (not inside a word or a URL): its folders, then its last part
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])/(?:[^\s,;=:'\"/]+/)*([^\s,;=:'\"/]+)/?")


def public_command(command: str | None) -> str:
    """The command a card shows: every local absolute path reduced to its last part (``--base /home/u/llama`` ->
    ``--base llama``, ``pretrained=/x/m,peft=y`` -> ``pretrained=m,peft=y``); configs keep the command as run."""
    if not command:
        return "python API"
    return _ABSOLUTE_PATH.sub(r"\1", command)
