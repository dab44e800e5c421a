"""Output folders written safely: never over an input, one writer at a time, all or nothing.

``atomic_directory(target, inputs=...)`` is the one way the package writes a result folder:

- ``check_output`` refuses, before any work, an empty path, a path that is an existing file, a non-empty folder
  (unless ``overwrite``), and a folder equal to, inside or containing any input, even with ``overwrite``;
- a lock file (``flock``) makes a second run writing the same folder fail at once instead of racing the first;
- everything is written into a temporary folder; on success it is renamed into place (a missing target) or its files
  are moved into the existing folder one atomic rename each (an existing folder may be a mount point, which cannot be
  renamed); on any error or signal the temporary folder is removed;
- temporary folders left by killed runs (``.NAME.tmp-*``) are removed by the next run writing the same folder;
- folders are created with the user's umask; write failures (disk full, read-only) become a ``UserError`` that
  names the folder and says nothing was written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import UserError

logger = logging.getLogger(__name__)

PathRef = str | os.PathLike
INSIDE_PREFIX = ".dppa-peft"  # temp/old/lock names inside an existing target folder
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _local(path: PathRef) -> Path:
    return Path(path).expanduser().resolve()


def overlapping_input(target: PathRef, inputs: Iterable[PathRef | None]) -> Path | None:
    """The first existing local input that ``target`` equals, lies inside, or contains (Hub ids are skipped)."""
    out = _local(target)
    for ref in inputs:
        if ref is None or not Path(ref).expanduser().exists():
            continue
        source = _local(ref)
        if out == source or out in source.parents or source in out.parents:
            return source
    return None


def check_output(target: PathRef, inputs: Iterable[PathRef | None] = (), overwrite: bool = False) -> Path:
    """Refuse an output folder that cannot or must not be written; returns it as a Path. Call it before work."""
    if not str(target).strip():
        raise UserError("the output folder is an empty string; pass a folder name (--out DIR)")
    path = Path(target).expanduser()
    source = overlapping_input(path, inputs)
    if source is not None:
        relation = "is" if _local(path) == source else "overlaps"
        raise UserError(
            f"output folder {path} {relation} the input {source}; writing there would destroy an "
            "input (even with --overwrite). Choose an output folder outside every input"
        )
    if path.exists() and not path.is_dir():
        raise UserError(f"output {path} exists and is a file, not a folder; choose another output folder")
    if path.is_dir() and _user_entries(path) and not overwrite:
        raise UserError(
            f"output folder {path} exists and is not empty; choose another folder or pass --overwrite "
            "(overwrite=True) to replace its content"
        )
    writable = path if path.is_dir() else next(p for p in path.absolute().parents if p.exists())
    if not os.access(writable, os.W_OK | os.X_OK):
        raise UserError(f"cannot write output folder {path}: {writable} is not writable; choose a writable folder")
    return path


def _user_entries(folder: Path) -> list[Path]:
    """Entries of an existing target folder that are not this module's own lock/temp names."""
    return [p for p in folder.iterdir() if not p.name.startswith(INSIDE_PREFIX)]


def _mkdir(path: Path) -> Path:
    """Create a folder with the user's umask (``tempfile.mkdtemp`` would force mode 0700)."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def _temp_name(prefix: str) -> str:
    return f"{prefix}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def output_lock(lock_path: Path, target: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created, then removed at the end) or fail at once."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UserError(
                f"another dppa-peft run (pid {holder}) is writing {target} right now; wait for it to "
                "finish or choose another output folder"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break  # still the file at that path (not one a finishing run just removed)
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)
        os.close(fd)


def _remove_stale(folder: Path, prefix: str) -> None:
    """Remove temp/old folders of dead runs (the caller holds the lock, so no live run owns them)."""
    for stale in sorted(folder.glob(f"{prefix}.tmp-*")) + sorted(folder.glob(f"{prefix}.old-*")):
        logger.warning("removing %s, left behind by an interrupted run", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _translate_write_error(err: OSError, target: Path) -> UserError | None:
    reason = None if err.errno is None else WRITE_ERRNOS.get(err.errno)
    if reason is None:
        return None
    where = f" ({err.filename})" if err.filename else ""
    return UserError(
        f"could not write output folder {target}: {reason}{where}; nothing was written there. Free "
        "space or choose a writable folder, then run again"
    )


@contextlib.contextmanager
def atomic_directory(target: PathRef, overwrite: bool = False, inputs: Iterable[PathRef | None] = ()) -> Iterator[Path]:
    """Yield an empty temp folder; on success its content becomes ``target``, on error or signal it is removed.

    ``inputs`` are the folders the result is computed from (base, fine-tune, adapters): ``target`` must not equal,
    lie inside or contain any of them. See the module docstring for the whole contract.
    """
    inputs = list(inputs)
    target = check_output(target, inputs, overwrite)
    existing = target.is_dir()
    try:
        if existing:
            holder, prefix = target, INSIDE_PREFIX
        else:
            holder, prefix = _mkdir(target.parent), f".{target.name}"
        with output_lock(holder / f"{prefix}.lock", target):
            _remove_stale(holder, prefix)
            check_output(target, inputs, overwrite)  # again, under the lock: another run may have just finished
            tmp = _mkdir(holder / _temp_name(prefix))
            try:
                yield tmp
                if target.is_dir():  # existing, or made by someone else meanwhile: fill it file by file
                    _move_into(tmp, target)
                else:
                    os.replace(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        clear = _translate_write_error(err, target)
        if clear is None:
            raise
        raise clear from err


def _move_into(tmp: Path, target: Path) -> None:
    """Replace the user entries of ``target`` with the entries of ``tmp``, one rename each (restored on error)."""
    old = _mkdir(target / _temp_name(INSIDE_PREFIX).replace(".tmp-", ".old-"))
    moved_old: list[Path] = []
    moved_new: list[Path] = []
    try:
        for entry in _user_entries(target):
            os.replace(entry, old / entry.name)
            moved_old.append(entry)
        for entry in sorted(tmp.iterdir()):
            os.replace(entry, target / entry.name)
            moved_new.append(target / entry.name)
    except BaseException:
        for entry in moved_new:
            os.replace(entry, tmp / entry.name)
        for entry in moved_old:
            os.replace(old / entry.name, entry)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
