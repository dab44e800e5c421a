"""A small Hugging Face Hub-compatible HTTP server for tests (standard library only).

It speaks enough of the Hub protocol for the real ``huggingface_hub`` client (and, through it, transformers and
PEFT) to create repos, push files (regular and git-LFS), create branches, and list, resolve and download files by
branch or commit sha. Storage lives on disk under ``root_dir``:

- ``objects/<sha256>``: content-addressed file contents (regular and LFS alike);
- ``repos/<type>s/<namespace>/<name>/``: ``repo.json`` (owner, visibility), ``refs.json`` (branch -> commit) and
  ``commits/<sha>.json`` (one immutable manifest per commit: parent, message, full file listing).

A commit is published by writing its manifest and then atomically replacing ``refs.json``: readers never see a
half-applied commit. Only Hub-stored contents are served; the server never reaches the internet.

Routes, by the name used in the request log and for fault injection (``ROUTES``):
whoami, create_repo, delete_repo, validate_yaml, agent_harnesses, repo_info, tree, refs, commits, create_branch,
delete_branch, preupload, commit, lfs_batch, lfs_upload, lfs_verify, resolve.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DROPPED = 0  # status recorded for a request whose connection the server dropped on purpose
CLIENT_GONE = 499  # status recorded when the client went away before the server answered

LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5", "*.joblib", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
)  # fmt: skip
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_SEGMENT = r"[^/]+"
_API_REPO = rf"/api/(?P<type>models|datasets|spaces)/(?P<ns>{_SEGMENT})/(?P<name>{_SEGMENT})"
_GIT_REPO = rf"/(?:(?P<type>datasets|spaces)/)?(?P<ns>{_SEGMENT})/(?P<name>{_SEGMENT})"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """An HTTP error answered with the Hub's headers (``X-Error-Code``, ``X-Error-Message``) and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        if code is not None:
            self.headers["X-Error-Code"] = code


@dataclass(frozen=True)
class RepoKey:
    """A repository address: type ("model", "dataset", "space"), namespace and name."""

    type: str
    namespace: str
    name: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def url_path(self) -> str:
        return f"{_URL_PREFIXES[self.type]}{self.repo_id}"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: its content sha256 and size, whether it is LFS, and its git blob oid."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256, self.size))


@dataclass(frozen=True)
class Commit:
    """An immutable commit manifest: the full file listing of the repo at this commit."""

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    author: str
    files: dict[str, FileEntry]


@dataclass(frozen=True)
class RequestRecord:
    """One request as seen by the server: method, logical route, raw path and answered status."""

    method: str
    route: str
    path: str
    status: int


@dataclass
class Request:
    """A parsed request handed to the Hub logic."""

    method: str
    route: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    user: str | None
    body: Iterator[bytes]

    def read_body(self) -> bytes:
        return b"".join(self.body)

    def json(self) -> Any:
        try:
            return json.loads(self.read_body() or b"{}")
        except ValueError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    def repo(self) -> RepoKey:
        repo_type = _REPO_TYPES[self.params.get("type") or "models"]
        return RepoKey(repo_type, self.params["ns"], self.params["name"])


@dataclass
class Response:
    """What the Hub logic answers: status, headers and body bytes."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _regular_entry(sha256: str, content: bytes) -> FileEntry:
    return FileEntry(sha256, len(content), False, _git_blob_oid(content))


def _lfs_entry(sha256: str, size: int) -> FileEntry:
    return FileEntry(sha256, size, True, _git_blob_oid(_lfs_pointer(sha256, size)))


def _is_lfs(path: str, size: int) -> bool:
    name = path.rsplit("/", 1)[-1]
    return size >= LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, pattern) for pattern in LFS_PATTERNS)


def _validate_path(path: Any) -> str:
    if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    if any(part in ("", ".", "..") for part in path.split("/")) or path.split("/")[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class HubStorage:
    """On-disk repositories, commits and content-addressed objects. Mutations are serialised by one lock."""

    def __init__(self, root: Path):
        self.root = root
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.lock = threading.RLock()
        for folder in (self.objects, self.tmp, root / "repos"):
            folder.mkdir(parents=True, exist_ok=True)

    # -- objects ------------------------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> Path:
        return self.objects / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        path = self.object_path(sha256)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def put_bytes(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        if not self.has_object(sha256):
            _write_atomic(self.object_path(sha256), content)
        return sha256

    def put_stream(self, repo: RepoKey, chunks: Iterator[bytes], sha256: str, size: int) -> None:
        """Store a streamed LFS upload for ``repo`` if its sha256 and size match; a partial or wrong upload leaves
        nothing behind."""
        digest, received = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    received += len(chunk)
                    f.write(chunk)
            if received != size or digest.hexdigest() != sha256:
                raise HubError(400, f"Uploaded content does not match oid {sha256} and size {size}")
            os.replace(tmp, self.object_path(sha256))
            _write_atomic(self.repo_dir(repo) / "lfs" / sha256, b"")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def has_lfs(self, repo: RepoKey, sha256: str, size: int | None = None) -> bool:
        """Whether ``repo`` received this LFS object (LFS storage is per repo, as on the Hub)."""
        return (self.repo_dir(repo) / "lfs" / sha256).is_file() and self.has_object(sha256, size)

    # -- repos ----------------------------------------------------------------------------------------------------
    def repo_dir(self, repo: RepoKey) -> Path:
        return self.root / "repos" / f"{repo.type}s" / repo.namespace / repo.name

    def repo_meta(self, repo: RepoKey) -> dict[str, Any] | None:
        path = self.repo_dir(repo) / "repo.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def create_repo(self, repo: RepoKey, owner: str, private: bool) -> bool:
        """Create a repo with an initial commit holding ``.gitattributes``; False if it already exists."""
        with self.lock:
            if self.repo_meta(repo) is not None:
                return False
            folder = self.repo_dir(repo)
            if folder.exists():  # leftovers of a deleted repo
                shutil.rmtree(folder)
            gitattributes = _regular_entry(self.put_bytes(GITATTRIBUTES), GITATTRIBUTES)
            initial = self._write_commit(repo, None, "initial commit", "", owner, {".gitattributes": gitattributes})
            self._write_refs(repo, {"main": initial.oid})
            meta = {"owner": owner, "private": private, "createdAt": _now()}
            _write_atomic(folder / "repo.json", json.dumps(meta).encode())  # written last: the repo now exists
            return True

    def delete_repo(self, repo: RepoKey) -> bool:
        with self.lock:
            if self.repo_meta(repo) is None:
                return False
            (self.repo_dir(repo) / "repo.json").unlink()
            shutil.rmtree(self.repo_dir(repo))
            return True

    # -- refs and commits -----------------------------------------------------------------------------------------
    def refs(self, repo: RepoKey) -> dict[str, str]:
        return json.loads((self.repo_dir(repo) / "refs.json").read_text())

    def _write_refs(self, repo: RepoKey, refs: dict[str, str]) -> None:
        _write_atomic(self.repo_dir(repo) / "refs.json", json.dumps(refs, sort_keys=True).encode())

    def resolve(self, repo: RepoKey, revision: str) -> str | None:
        """The commit oid a branch name or full commit sha designates, or None."""
        refs = self.refs(repo)
        if revision in refs:
            return refs[revision]
        if _COMMIT_RE.match(revision) and (self.repo_dir(repo) / "commits" / f"{revision}.json").is_file():
            return revision
        return None

    def commit(self, repo: RepoKey, oid: str) -> Commit:
        data = json.loads((self.repo_dir(repo) / "commits" / f"{oid}.json").read_text())
        files = {path: FileEntry(**entry) for path, entry in data.pop("files").items()}
        return Commit(files=files, **data)

    def history(self, repo: RepoKey, oid: str) -> list[Commit]:
        """Commits from ``oid`` back to the initial commit, newest first."""
        commits: list[Commit] = []
        current: str | None = oid
        while current is not None:
            commits.append(self.commit(repo, current))
            current = commits[-1].parent
        return commits

    def _write_commit(
        self, repo: RepoKey, parent: str | None, title: str, message: str, author: str, files: dict[str, FileEntry]
    ) -> Commit:
        date = _now()
        listing = {path: entry.__dict__ for path, entry in sorted(files.items())}
        seed = json.dumps([parent, title, message, date, listing, uuid.uuid4().hex]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, title, message, date, author, dict(files))
        record = {**commit.__dict__, "files": listing}
        _write_atomic(self.repo_dir(repo) / "commits" / f"{commit.oid}.json", json.dumps(record).encode())
        return commit

    def publish(
        self,
        repo: RepoKey,
        branch: str,
        build: Callable[[dict[str, FileEntry]], dict[str, FileEntry]],
        title: str,
        message: str,
        author: str,
        parent_commit: str | None = None,
    ) -> Commit:
        """Create a commit on ``branch`` from ``build(current files)`` and switch the branch to it atomically."""
        with self.lock:
            head = self.refs(repo).get(branch)
            if head is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if parent_commit is not None and not head.startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = build(dict(self.commit(repo, head).files))
            commit = self._write_commit(repo, head, title, message, author, files)
            self._write_refs(repo, {**self.refs(repo), branch: commit.oid})
            return commit

    def set_branch(self, repo: RepoKey, branch: str, oid: str | None) -> None:
        """Point ``branch`` at ``oid``, or delete it when ``oid`` is None."""
        with self.lock:
            refs = self.refs(repo)
            if oid is None:
                refs.pop(branch, None)
            else:
                refs[branch] = oid
            self._write_refs(repo, refs)


class _CommitBuilder:
    """Parses and validates a commit NDJSON payload into operations applied to a file listing."""

    def __init__(self, storage: HubStorage, repo: RepoKey, payload: bytes):
        self.storage = storage
        self.repo = repo
        self.header: dict[str, Any] | None = None
        self.operations: list[tuple[str, dict[str, Any]]] = []
        for number, line in enumerate(payload.splitlines(), start=1):
            if line.strip():
                self._add_line(number, line)
        if self.header is None or not str(self.header.get("summary") or "").strip():
            raise HubError(400, "The commit header with a non-empty 'summary' is required")

    def _add_line(self, number: int, line: bytes) -> None:
        try:
            item = json.loads(line)
            key, value = item["key"], item["value"]
        except (ValueError, KeyError, TypeError) as e:
            raise HubError(400, f"Invalid NDJSON line {number}: {e}") from e
        if not isinstance(value, dict):
            raise HubError(400, f"Invalid NDJSON line {number}: 'value' must be an object")
        if key == "header":
            self.header = value
        elif key == "file":
            self.operations.append((key, self._regular_file(value)))
        elif key in ("lfsFile", "deletedFile", "deletedFolder"):
            self.operations.append((key, {**value, "path": _validate_path(value.get("path"))}))
        else:
            raise HubError(400, f"Unknown commit operation {key!r} on line {number}")

    def _regular_file(self, value: dict[str, Any]) -> dict[str, Any]:
        path = _validate_path(value.get("path"))
        if value.get("encoding", "base64") != "base64":
            raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
        try:
            content = base64.b64decode(value.get("content", ""), validate=True)
        except (binascii.Error, ValueError) as e:
            raise HubError(400, f"Invalid base64 content for {path}: {e}") from e
        return {"path": path, "entry": _regular_entry(self.storage.put_bytes(content), content)}

    def apply(self, files: dict[str, FileEntry]) -> dict[str, FileEntry]:
        """Apply every operation in order; raises HubError (nothing published) on the first invalid one."""
        for key, value in self.operations:
            path = value["path"]
            if key == "file":
                files[path] = value["entry"]
            elif key == "lfsFile":
                files[path] = self._lfs_file(value)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            else:
                prefix = path.rstrip("/") + "/"
                removed = [name for name in files if name.startswith(prefix)]
                if not removed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for name in removed:
                    del files[name]
        _check_no_file_folder_clash(files)
        return files

    def _lfs_file(self, value: dict[str, Any]) -> FileEntry:
        sha256, size = str(value.get("oid", "")), value.get("size")
        if value.get("algo", "sha256") != "sha256" or not _SHA256_RE.match(sha256):
            raise HubError(400, f"Invalid LFS oid for {value['path']}")
        if not self.storage.has_lfs(self.repo, sha256):
            raise HubError(422, f"LFS object {sha256} for {value['path']} was not uploaded")
        actual = self.storage.object_path(sha256).stat().st_size
        if size is not None and size != actual:
            raise HubError(422, f"LFS object {sha256} has size {actual}, not {size}")
        return _lfs_entry(sha256, actual)


def _check_no_file_folder_clash(files: dict[str, FileEntry]) -> None:
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if "/".join(parts[:depth]) in files:
                raise HubError(400, f"{path} conflicts with the file {'/'.join(parts[:depth])}")


def _tree_oid(prefix: str, files: dict[str, FileEntry]) -> str:
    listing = sorted((path, entry.oid) for path, entry in files.items() if path.startswith(prefix))
    return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


def _valid_name(name: Any) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and ".." not in name and "--" not in name


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class HubApp:
    """The Hub logic: one method per route, taking a parsed Request and returning a Response."""

    def __init__(self, storage: HubStorage, valid_tokens: dict[str, str], base_url: Callable[[], str]):
        self.storage = storage
        self.valid_tokens = dict(valid_tokens)
        self.base_url = base_url
        self._uploads: dict[str, tuple[RepoKey, str, int]] = {}  # LFS upload ticket -> (repo, sha256, size)

    # -- access control -------------------------------------------------------------------------------------------
    def readable(self, req: Request) -> RepoKey:
        """The request's repo if it exists and the caller may see it (RepoNotFound otherwise, like the Hub)."""
        repo = req.repo()
        meta = self.storage.repo_meta(repo)
        if meta is None or (meta["private"] and req.user != meta["owner"]):
            status = 401 if req.user is None else 404
            raise HubError(status, f"Repository Not Found: {repo.repo_id}", "RepoNotFound")
        return repo

    def writable(self, req: Request) -> RepoKey:
        repo = self.readable(req)
        self._check_namespace(req.user, repo.namespace)
        return repo

    @staticmethod
    def _check_namespace(user: str | None, namespace: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub")
        if user != namespace:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")

    def revision(self, repo: RepoKey, revision: str) -> str:
        oid = self.storage.resolve(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return oid

    def repo_url(self, repo: RepoKey) -> str:
        return f"{self.base_url()}/{repo.url_path}"

    # -- account and repos ----------------------------------------------------------------------------------------
    def whoami(self, req: Request) -> Response:
        if req.user is None:
            raise HubError(401, INVALID_TOKEN_MESSAGE)
        auth = {"type": "access_token", "accessToken": {"displayName": "local-hub", "role": "write"}}
        user = {"type": "user", "id": req.user, "name": req.user, "fullname": req.user, "orgs": [], "auth": auth}
        return Response.json(user)

    def create_repo(self, req: Request) -> Response:
        body = req.json()
        namespace = body.get("organization") or req.user
        self._check_namespace(req.user, namespace)
        repo = RepoKey(body.get("type") or "model", namespace, body.get("name"))
        if repo.type not in _URL_PREFIXES or not _valid_name(repo.name):
            raise HubError(400, f"Invalid repo name or type: {repo.name!r} ({repo.type!r})")
        private = body.get("visibility", "private" if body.get("private") else "public") == "private"
        if not self.storage.create_repo(repo, str(req.user), private):
            conflict = {"error": f"You already created this {repo.type} repo", "url": self.repo_url(repo)}
            return Response.json(conflict, 409)
        return Response.json({"url": self.repo_url(repo), "name": repo.repo_id, "id": repo.repo_id})

    def delete_repo(self, req: Request) -> Response:
        body = req.json()
        namespace = body.get("organization") or req.user
        self._check_namespace(req.user, namespace)
        repo = RepoKey(body.get("type") or "model", namespace, str(body.get("name")))
        if not self.storage.delete_repo(repo):
            raise HubError(404, f"Repository Not Found: {repo.repo_id}", "RepoNotFound")
        return Response.json({})

    def validate_yaml(self, req: Request) -> Response:
        req.read_body()
        return Response.json({"errors": [], "warnings": []})

    def agent_harnesses(self, req: Request) -> Response:
        return Response.json({"standardEnvVars": [], "harnesses": {}})

    # -- reading --------------------------------------------------------------------------------------------------
    def repo_info(self, req: Request) -> Response:
        repo = self.readable(req)
        commit = self.storage.commit(repo, self.revision(repo, req.params.get("rev") or "main"))
        meta = self.storage.repo_meta(repo) or {}
        siblings = [self._sibling(path, entry) for path, entry in sorted(commit.files.items())]
        info = {
            "_id": hashlib.sha1(repo.url_path.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.namespace,
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": meta.get("createdAt"),
            "private": meta.get("private", False),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        return Response.json(info)

    @staticmethod
    def _sibling(path: str, entry: FileEntry) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path, "size": entry.size, "blobId": entry.oid}
        if entry.lfs:
            sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return sibling

    def tree(self, req: Request) -> Response:
        repo = self.readable(req)
        commit = self.storage.commit(repo, self.revision(repo, req.params["rev"]))
        base = (req.params.get("path") or "").strip("/")
        prefix = f"{base}/" if base else ""
        below = {path: entry for path, entry in commit.files.items() if path.startswith(prefix)}
        if base and not below:
            raise HubError(404, f"Entry not found: {base}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        recursive = _truthy(req.query.get("recursive"))
        entries: dict[str, dict[str, Any]] = {}
        for path, entry in below.items():
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                folder_oid = _tree_oid(folder + "/", commit.files)
                entries.setdefault(folder, {"type": "directory", "oid": folder_oid, "size": 0, "path": folder})
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[path] = self._tree_file(path, entry)
        return Response.json([entries[path] for path in sorted(entries)])

    @staticmethod
    def _tree_file(path: str, entry: FileEntry) -> dict[str, Any]:
        item: dict[str, Any] = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return item

    def refs(self, req: Request) -> Response:
        repo = self.readable(req)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(self.storage.refs(repo).items())
        ]
        return Response.json({"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def commits(self, req: Request) -> Response:
        repo = self.readable(req)
        history = self.storage.history(repo, self.revision(repo, req.params["rev"]))
        items = [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
            for c in history
        ]
        return Response.json(items)

    def resolve(self, req: Request) -> Response:
        repo = self.readable(req)
        oid = self.revision(repo, req.params["rev"])
        path = req.params["path"]
        entry = self.storage.commit(repo, oid).files.get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {
            "X-Repo-Commit": oid,
            "ETag": f'"{entry.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if req.method == "HEAD":
            return Response(200, b"", {**headers, "Content-Length": str(entry.size)})
        return _ranged(self.storage.object_path(entry.sha256).read_bytes(), req.headers.get("range"), headers)

    # -- writing --------------------------------------------------------------------------------------------------
    def preupload(self, req: Request) -> Response:
        repo = self.writable(req)
        files = self.storage.commit(repo, self.revision(repo, req.params["rev"])).files
        answers = []
        for item in req.json().get("files", []):
            path = _validate_path(item.get("path"))
            lfs = _is_lfs(path, int(item.get("size", 0)))
            current = files.get(path)
            remote_oid = None if current is None else (current.sha256 if current.lfs else current.oid)
            mode = "lfs" if lfs else "regular"
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        return Response.json({"files": answers})

    def commit(self, req: Request) -> Response:
        repo = self.writable(req)
        if _truthy(req.query.get("create_pr")):
            raise HubError(400, "Pull requests are not supported by this test server")
        builder = _CommitBuilder(self.storage, repo, req.read_body())  # the whole body is read and validated first
        header = builder.header or {}
        commit = self.storage.publish(
            repo,
            req.params["rev"],
            builder.apply,
            title=str(header["summary"]),
            message=str(header.get("description") or ""),
            author=str(req.user),
            parent_commit=header.get("parentCommit"),
        )
        url = f"{self.repo_url(repo)}/commit/{commit.oid}"
        return Response.json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def create_branch(self, req: Request) -> Response:
        repo = self.writable(req)
        branch = req.params["branch"]
        if branch.startswith("refs/") or not re.match(r"^[A-Za-z0-9._/-]+$", branch) or _COMMIT_RE.match(branch):
            raise HubError(400, f"Invalid branch name: {branch}")
        start = self.revision(repo, req.json().get("startingPoint") or "main")
        with self.storage.lock:
            if branch in self.storage.refs(repo):
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            self.storage.set_branch(repo, branch, start)
        return Response.json({})

    def delete_branch(self, req: Request) -> Response:
        repo = self.writable(req)
        branch = req.params["branch"]
        if branch == "main":
            raise HubError(400, "Cannot delete the main branch")
        if branch not in self.storage.refs(repo):
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        self.storage.set_branch(repo, branch, None)
        return Response.json({})

    def lfs_batch(self, req: Request) -> Response:
        repo = self.writable(req)
        body = req.json()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the LFS 'upload' operation is supported")
        objects = [self._lfs_batch_object(repo, obj) for obj in body.get("objects", [])]
        return Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_batch_object(self, repo: RepoKey, obj: dict[str, Any]) -> dict[str, Any]:
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
            error = {"code": 422, "message": "Invalid oid or size"}
            return {"oid": oid, "size": size if isinstance(size, int) else 0, "error": error}
        if self.storage.has_lfs(repo, oid, size):
            return {"oid": oid, "size": size}  # already stored: no actions, the client skips the upload
        ticket = secrets.token_urlsafe(16)
        self._uploads[ticket] = (repo, oid, size)
        href = f"{self.base_url()}/_lfs/{ticket}"
        actions = {"upload": {"href": href}, "verify": {"href": f"{href}/verify"}}
        return {"oid": oid, "size": size, "authenticated": True, "actions": actions}

    def _ticket(self, req: Request) -> tuple[RepoKey, str, int]:
        ticket = self._uploads.get(req.params["ticket"])
        if ticket is None:
            raise HubError(404, "Unknown or expired LFS upload link")
        return ticket

    def lfs_upload(self, req: Request) -> Response:
        repo, sha256, size = self._ticket(req)
        self.storage.put_stream(repo, req.body, sha256, size)
        return Response(200)

    def lfs_verify(self, req: Request) -> Response:
        repo, sha256, size = self._ticket(req)
        req.read_body()
        if not self.storage.has_lfs(repo, sha256, size):
            raise HubError(404, f"LFS object {sha256} was not uploaded")
        return Response.json({"success": True})


def _ranged(content: bytes, range_header: str | None, headers: dict[str, str]) -> Response:
    """A 200 with the whole content, or a 206/416 for a single ``bytes=`` range."""
    size = len(content)
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (range_header or "").strip())
    if match is None or match.groups() == ("", ""):
        return Response(200, content, headers)
    first, last = match.groups()
    start = int(first) if first else max(size - int(last), 0)
    end = min(int(last), size - 1) if first and last else size - 1
    if start >= size or start > end:
        return Response(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
    return Response(206, content[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{size}"})


_ROUTE_TABLE: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(f"^{pattern}$"), name)
    for method, pattern, name in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", r"/api/agent-harnesses", "agent_harnesses"),
        ("GET", _API_REPO, "repo_info"),
        ("GET", rf"{_API_REPO}/revision/(?P<rev>{_SEGMENT})", "repo_info"),
        ("GET", rf"{_API_REPO}/tree/(?P<rev>{_SEGMENT})(?:/(?P<path>.+))?", "tree"),
        ("GET", rf"{_API_REPO}/refs", "refs"),
        ("GET", rf"{_API_REPO}/commits/(?P<rev>{_SEGMENT})", "commits"),
        ("POST", rf"{_API_REPO}/branch/(?P<branch>{_SEGMENT})", "create_branch"),
        ("DELETE", rf"{_API_REPO}/branch/(?P<branch>{_SEGMENT})", "delete_branch"),
        ("POST", rf"{_API_REPO}/preupload/(?P<rev>{_SEGMENT})", "preupload"),
        ("POST", rf"{_API_REPO}/commit/(?P<rev>{_SEGMENT})", "commit"),
        ("POST", rf"{_GIT_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", rf"/_lfs/(?P<ticket>{_SEGMENT})", "lfs_upload"),
        ("POST", rf"/_lfs/(?P<ticket>{_SEGMENT})/verify", "lfs_verify"),
        ("HEAD", rf"{_GIT_REPO}/resolve/(?P<rev>{_SEGMENT})/(?P<path>.+)", "resolve"),
        ("GET", rf"{_GIT_REPO}/resolve/(?P<rev>{_SEGMENT})/(?P<path>.+)", "resolve"),
    ]
]


ROUTES = frozenset(name for _, _, name in _ROUTE_TABLE)


def _match_route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, name in _ROUTE_TABLE:
        match = pattern.match(path)
        if route_method == method and match is not None:
            return name, {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
    return None


class _Handler(BaseHTTPRequestHandler):
    """HTTP layer: routing, auth, fault injection, body streaming and answering; the logic lives in HubApp."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.track(self.connection, open_=False)
        super().finish()

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the hub keeps its own log
        pass

    def _handle(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        matched = _match_route(self.command, url.path)
        route, params = matched if matched else ("unknown", {})
        body = self._iter_body()
        drop = hub._take_drop(route) if matched else None
        if drop is not None:
            half = int(self.headers.get("Content-Length") or 0) // 2
            self._consume(body, half if drop.after_bytes is None else drop.after_bytes)
            hub._record(self.command, route, self.path, DROPPED)  # before the client can notice the drop
            self._close_without_answer()
            return
        try:
            response = self._dispatch(route, params, url.query, body)
            for _ in body:  # drain what the handler did not read, to keep the connection usable
                pass
        except (ConnectionError, TimeoutError, _ClientGone):
            self.close_connection = True
            hub._record(self.command, route, self.path, CLIENT_GONE)
            return
        hub._record(self.command, route, self.path, response.status)
        self._answer(response)

    def _dispatch(self, route: str, params: dict[str, str], query: str, body: Iterator[bytes]) -> Response:
        hub = self.server.hub
        try:
            user = self._user()
            if route == "unknown":
                raise HubError(404, f"Not found: {self.command} {self.path}")
            request = Request(
                method=self.command,
                route=route,
                params=params,
                query={key: values[-1] for key, values in parse_qs(query).items()},
                headers={key.lower(): value for key, value in self.headers.items()},
                user=user,
                body=body,
            )
            return getattr(hub.app, route)(request)
        except HubError as e:
            error = Response.json({"error": e.message}, e.status, e.headers)
            error.headers["X-Error-Message"] = e.message
            return error
        except (ConnectionError, TimeoutError, _ClientGone):
            raise
        except Exception:  # a bug in the test server: answer 500 and keep the traceback for the tests to see
            hub.server_errors.append(traceback.format_exc())
            return Response.json({"error": "Internal error in the local test hub"}, 500)

    def _user(self) -> str | None:
        """The user of a valid bearer token, None without a token; a token that is not valid is a 401."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        user = self.server.hub.app.valid_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, INVALID_TOKEN_MESSAGE)
        return user

    def _iter_body(self) -> Iterator[bytes]:
        """The request body as chunks, for a Content-Length or a chunked body."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                yield self._read_exact(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self._read_exact(min(remaining, 1 << 16))
            remaining -= len(chunk)
            yield chunk

    def _read_exact(self, size: int) -> bytes:
        data = self.rfile.read(size)
        if len(data) < size:
            raise _ClientGone()
        return data

    @staticmethod
    def _consume(body: Iterator[bytes], size: int) -> None:
        """Read at least ``size`` bytes of the body (or all of it)."""
        received = 0
        try:
            while received < size:
                received += len(next(body))
        except (StopIteration, ConnectionError, _ClientGone):
            pass

    def _close_without_answer(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _answer(self, response: Response) -> None:
        self.send_response(response.status)
        headers = {"Content-Length": str(len(response.body)), **response.headers}
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)


class _ClientGone(Exception):
    """The client closed the connection in the middle of its request body."""


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server that knows its open connections, so that stopping it really cuts every client."""

    daemon_threads = True
    hub: LocalHub

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up are normal in tests; anything else is kept for the tests to see."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            self.hub.server_errors.append(traceback.format_exc())


@dataclass
class _Drop:
    times: int
    after_bytes: int | None


class LocalHub:
    """A Hub-compatible server on 127.0.0.1 with on-disk storage, a request log and fault injection.

    ``valid_tokens`` maps bearer tokens to user names; a user may write only to its own namespace. Use ``start()``
    (or ``with LocalHub(...) as hub:``), point ``HF_ENDPOINT`` at ``hub.url`` before importing huggingface_hub, and
    ``stop()`` at the end.
    """

    def __init__(
        self, root_dir: str | os.PathLike[str], valid_tokens: dict[str, str], host: str = "127.0.0.1", port: int = 0
    ):
        self.host = host
        self.port = port
        self.storage = HubStorage(Path(root_dir))
        self.app = HubApp(self.storage, valid_tokens, lambda: self.url)
        self.server_errors: list[str] = []
        self._log: list[RequestRecord] = []
        self._drops: dict[str, _Drop] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self, listen_socket: socket.socket | None = None) -> LocalHub:
        """Serve in a daemon thread, on ``listen_socket`` (already bound) if given, else on ``host:port``."""
        if self._server is not None:
            raise RuntimeError("LocalHub is already started")
        server = _Server((self.host, self.port), _Handler, bind_and_activate=listen_socket is None)
        if listen_socket is not None:
            server.socket.close()
            server.socket = listen_socket
            server.server_address = listen_socket.getsockname()
            server.server_activate()
        server.hub = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"local-hub-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- request log ----------------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def count(self, route: str, method: str | None = None, status: int | None = None) -> int:
        """How many logged requests hit ``route`` (optionally with this method and answered status)."""
        return sum(
            1
            for record in self.requests
            if record.route == route and method in (None, record.method) and status in (None, record.status)
        )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, method: str, route: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, route, path, status))

    # -- fault injection ------------------------------------------------------------------------------------------
    def drop_connection(self, route: str, times: int = 1, after_bytes: int | None = None) -> None:
        """Make the next ``times`` requests to ``route`` die: the server reads ``after_bytes`` of the body (default:
        half of it) and closes the socket without answering. The request is logged with status ``DROPPED``."""
        if route not in ROUTES:
            raise ValueError(f"Unknown route {route!r}; expected one of {sorted(ROUTES)}")
        with self._lock:
            self._drops[route] = _Drop(times, after_bytes)

    def pending_drops(self, route: str) -> int:
        with self._lock:
            drop = self._drops.get(route)
            return drop.times if drop else 0

    def clear_faults(self) -> None:
        with self._lock:
            self._drops.clear()

    def _take_drop(self, route: str) -> _Drop | None:
        with self._lock:
            drop = self._drops.get(route)
            if drop is None or drop.times <= 0:
                return None
            drop.times -= 1
            return drop

    # -- inspection helpers for tests -----------------------------------------------------------------------------
    def branch_head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str | None:
        """The commit a branch points at, read from storage (no HTTP, no auth)."""
        namespace, name = repo_id.split("/")
        repo = RepoKey(repo_type, namespace, name)
        return self.storage.refs(repo).get(branch) if self.storage.repo_meta(repo) else None

    def stored_objects(self) -> set[str]:
        """The sha256 of every complete object in the store."""
        return {path.name for path in self.storage.objects.iterdir() if _SHA256_RE.match(path.name)}

    def partial_uploads(self) -> list[str]:
        """Temporary upload files left behind (always empty unless an upload is in flight)."""
        return sorted(path.name for path in self.storage.tmp.iterdir())
