"""A minimal Hugging Face Hub-compatible HTTP server for tests (standard library only, in memory).

It speaks just enough of the Hub protocol for the real ``huggingface_hub`` client (and, through it, transformers and
PEFT) to create model repos (public or private), push files in one commit (regular and git-LFS), create branches,
and list, resolve and download files by branch or commit sha. Files are stored by sha256; a commit is an immutable
listing of the whole repo, and publishing one swaps the branch head under a lock, so readers never see half a
commit. Tokens map to users; a user writes only to its own namespace; a private repo looks missing to others.

Routes, by the name used in the request log and for fault injection (``ROUTES``): create_repo, validate_yaml,
repo_info, tree, create_branch, preupload, commit, lfs_batch, lfs_upload, resolve.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

DROPPED = 0  # status logged for a request whose connection the server dropped on purpose (``drop_connection``)
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".parquet")
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
INVALID_TOKEN_MESSAGE = "Invalid credentials in Authorization header"

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API = rf"/api/models/{_REPO}"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_ROUTE_TABLE = [
    (method, re.compile(f"^{pattern}$"), name)
    for method, pattern, name in [
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"{_API}/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/(?P<ticket>[^/]+)", "lfs_upload"),
        ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
        ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ]
]
ROUTES = frozenset(name for _, _, name in _ROUTE_TABLE)


class HubError(Exception):
    """An error answered like the Hub: status, ``X-Error-Code`` (which huggingface_hub maps to its exceptions),
    ``X-Error-Message`` and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = {"X-Error-Message": message}
        if code:
            self.headers["X-Error-Code"] = code
        if commit:
            self.headers["X-Repo-Commit"] = commit


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit: content sha256, size, whether it is LFS, and its git blob oid (the Hub's ETag)."""

    sha256: str
    size: int
    lfs: bool
    oid: str

    def lfs_info(self, sha_key: str) -> dict[str, Any]:
        """The ``lfs`` block of a listing entry (empty for a regular file)."""
        pointer_size = len(_lfs_pointer(self.sha256, self.size))
        return {"lfs": {sha_key: self.sha256, "size": self.size, "pointerSize": pointer_size}} if self.lfs else {}


@dataclass(frozen=True)
class Commit:
    oid: str
    date: str
    files: dict[str, FileEntry]


@dataclass
class Repo:
    owner: str
    private: bool
    created: str
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (LFS storage is per repo)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    route: str
    status: int


@dataclass
class Request:
    method: str
    params: dict[str, str]
    user: str | None
    body: Iterator[bytes]
    range: str | None = None  # the Range header ("bytes=START-END"), for partial downloads

    def read(self) -> bytes:
        return b"".join(self.body)

    def json(self) -> Any:
        return json.loads(self.read() or b"{}")

    @property
    def repo_id(self) -> str:
        return f"{self.params['ns']}/{self.params['name']}"


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> str:
    """The git-LFS pointer file git stores in place of an LFS file (its blob oid is the file's ``oid``)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class HubApp:
    """The Hub logic, in memory: one method per route, taking a Request and returning a Response."""

    def __init__(self, valid_tokens: dict[str, str], base_url: Callable[[], str]):
        self.valid_tokens = dict(valid_tokens)
        self.base_url = base_url
        self.objects: dict[str, bytes] = {}  # sha256 -> content
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self._uploads: dict[str, tuple[Repo, str, int]] = {}  # LFS upload ticket -> (repo, sha256, size)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _store(self, content: bytes) -> str:
        sha256 = hashlib.sha256(content).hexdigest()
        self.objects[sha256] = content
        return sha256

    def _readable(self, req: Request) -> Repo:
        repo = self.repos.get(req.repo_id)
        if repo is None or (repo.private and req.user != repo.owner):
            raise HubError(401 if req.user is None else 404, f"Repository Not Found: {req.repo_id}", "RepoNotFound")
        return repo

    @staticmethod
    def _check_namespace(user: str | None, namespace: str) -> None:
        if user is None:
            raise HubError(401, "You must be authenticated to write to the Hub")
        if user != namespace:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")

    def _writable(self, req: Request) -> Repo:
        self._check_namespace(req.user, req.params["ns"])
        return self._readable(req)

    @staticmethod
    def _commit_at(repo: Repo, revision: str) -> Commit:
        oid = repo.refs.get(revision) or (revision if revision in repo.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _publish(self, repo: Repo, branch: str, files: dict[str, FileEntry]) -> Commit:
        oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        commit = repo.commits[oid] = Commit(oid, _now(), files)
        repo.refs[branch] = oid
        return commit

    # -- repos ----------------------------------------------------------------------------------------------------
    def create_repo(self, req: Request) -> Response:
        body = req.json()
        namespace = body.get("organization") or req.user
        self._check_namespace(req.user, namespace)
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.base_url()}/{repo_id}"
        with self.lock:
            if repo_id in self.repos:
                return Response.json({"error": "You already created this model repo", "url": url}, 409)
            private = body.get("visibility", "private" if body.get("private") else "public") == "private"
            repo = self.repos[repo_id] = Repo(str(req.user), private, _now())
            gitattributes = FileEntry(self._store(GITATTRIBUTES), len(GITATTRIBUTES), False, _git_oid(GITATTRIBUTES))
            self._publish(repo, "main", {".gitattributes": gitattributes})
        return Response.json({"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self, req: Request) -> Response:
        req.read()
        return Response.json({"errors": [], "warnings": []})

    # -- reading --------------------------------------------------------------------------------------------------
    def repo_info(self, req: Request) -> Response:
        repo = self._readable(req)
        commit = self._commit_at(repo, req.params.get("rev") or "main")
        siblings = [
            {"rfilename": path, "size": e.size, "blobId": e.oid, **e.lfs_info("sha256")}
            for path, e in sorted(commit.files.items())
        ]
        return Response.json(
            {
                "id": req.repo_id,
                "author": req.params["ns"],
                "sha": commit.oid,
                "private": repo.private,
                "lastModified": commit.date,
                "createdAt": repo.created,
                "tags": [],
                "siblings": siblings,
            }
        )

    def tree(self, req: Request) -> Response:
        """Every file under ``path`` (a recursive listing; the repos of our tests have no folders)."""
        commit = self._commit_at(self._readable(req), req.params["rev"])
        prefix = (req.params.get("path") or "").strip("/")
        files = [
            {"type": "file", "path": path, "oid": e.oid, "size": e.size, **e.lfs_info("oid")}
            for path, e in sorted(commit.files.items())
            if not prefix or path.startswith(prefix + "/")
        ]
        return Response.json(files)

    def resolve(self, req: Request) -> Response:
        commit = self._commit_at(self._readable(req), req.params["rev"])
        path = req.params["path"]
        entry = commit.files.get(path)
        if entry is None:  # X-Repo-Commit lets the client cache the absence for this commit
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.oid)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.oid}"', "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if req.method == "HEAD":
            return Response(200, b"", {**headers, "Content-Length": str(entry.size)})
        data = self.objects[entry.sha256]
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", req.range or "")
        if match:  # one byte range, as huggingface_hub and range readers ask for
            start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            return Response(
                206, data[start : end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            )
        return Response(200, data, headers)

    # -- writing --------------------------------------------------------------------------------------------------
    def create_branch(self, req: Request) -> Response:
        repo = self._writable(req)
        with self.lock:
            if req.params["branch"] in repo.refs:
                raise HubError(409, f"Reference already exists: refs/heads/{req.params['branch']}")
            repo.refs[req.params["branch"]] = self._commit_at(repo, req.json().get("startingPoint") or "main").oid
        return Response.json({})

    def preupload(self, req: Request) -> Response:
        files = self._commit_at(self._writable(req), req.params["rev"]).files
        answers = []
        for item in req.json().get("files", []):
            current = files.get(item["path"])
            remote = None if current is None else (current.sha256 if current.lfs else current.oid)
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if _is_lfs(item["path"]) else "regular",
                    "shouldIgnore": False,
                    "oid": remote,
                }
            )
        return Response.json({"files": answers})

    def commit(self, req: Request) -> Response:
        """An NDJSON commit (header, file, lfsFile lines), read and checked whole before anything is published."""
        repo = self._writable(req)
        added = {}
        for line in req.read().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                content = base64.b64decode(value["content"])
                added[value["path"]] = FileEntry(self._store(content), len(content), False, _git_oid(content))
            elif key == "lfsFile":
                if value["oid"] not in repo.lfs:
                    raise HubError(422, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                pointer = _lfs_pointer(value["oid"], value["size"])
                added[value["path"]] = FileEntry(value["oid"], value["size"], True, _git_oid(pointer.encode()))
            elif key != "header":
                raise HubError(400, f"unsupported commit operation {key!r} (this test server only adds files)")
        with self.lock:
            files = {**self._commit_at(repo, req.params["rev"]).files, **added}
            commit = self._publish(repo, req.params["rev"], files)
        url = f"{self.base_url()}/{req.repo_id}/commit/{commit.oid}"
        return Response.json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    def lfs_batch(self, req: Request) -> Response:
        repo = self._writable(req)
        objects = []
        for obj in req.json().get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs:  # already uploaded to this repo: no actions, the client skips it
                ticket = secrets.token_urlsafe(16)
                self._uploads[ticket] = (repo, obj["oid"], obj["size"])
                item.update(authenticated=True, actions={"upload": {"href": f"{self.base_url()}/_lfs/{ticket}"}})
            objects.append(item)
        return Response.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, req: Request) -> Response:
        repo, sha256, size = self._uploads[req.params["ticket"]]
        content = req.read()
        if len(content) != size or hashlib.sha256(content).hexdigest() != sha256:
            raise HubError(400, f"uploaded content does not match oid {sha256} and size {size}")
        self.objects[sha256] = content
        repo.lfs.add(sha256)
        return Response(200)


def _match_route(method: str, path: str) -> tuple[str, dict[str, str]] | None:
    for route_method, pattern, name in _ROUTE_TABLE:
        match = pattern.match(path)
        if route_method == method and match is not None:
            return name, {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
    return None


class _Handler(BaseHTTPRequestHandler):
    """HTTP layer: routing, auth, fault injection, request bodies (Content-Length) and answers."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def do_GET(self) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        route, params = _match_route(self.command, url.path) or ("unknown", {})
        body = self._body()
        if hub._take_drop(route):  # read half the body, then hang up without answering
            half, received = int(self.headers.get("Content-Length") or 0) // 2, 0
            for chunk in body:
                received += len(chunk)
                if received >= half:
                    break
            hub._record(self.command, route, DROPPED)
            self.close_connection = True
            return
        try:
            response = self._dispatch(route, params, body)
            for _ in body:  # drain what the route did not read, to keep the connection usable
                pass
        except ConnectionError:
            self.close_connection = True
            return
        hub._record(self.command, route, response.status)
        self.send_response(response.status)
        for key, value in {"Content-Length": str(len(response.body)), **response.headers}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_HEAD = do_POST = do_PUT = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the hub keeps its own log
        pass

    def _dispatch(self, route: str, params: dict[str, str], body: Iterator[bytes]) -> Response:
        hub = self.server.hub
        try:
            if route == "unknown":
                raise HubError(404, f"Not found: {self.command} {self.path}")
            request = Request(self.command, params, self._user(), body, self.headers.get("Range"))
            return getattr(hub.app, route)(request)
        except HubError as e:
            return Response.json({"error": e.message}, e.status, e.headers)
        except ConnectionError:
            raise
        except Exception:  # a bug in the test server: answer 500 and keep the traceback for the tests to see
            hub.server_errors.append(traceback.format_exc())
            return Response.json({"error": "internal error in the local test hub"}, 500)

    def _user(self) -> str | None:
        """The user of a valid bearer token, None without a token; any other token is a 401."""
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        scheme, _, token = auth.partition(" ")
        user = self.server.hub.app.valid_tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, INVALID_TOKEN_MESSAGE)
        return user

    def _body(self) -> Iterator[bytes]:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                raise ConnectionError("client went away mid-body")
            remaining -= len(chunk)
            yield chunk


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: LocalHub


class LocalHub:
    """A Hub-compatible server on 127.0.0.1 with a request log and fault injection.

    ``valid_tokens`` maps bearer tokens to user names. ``start()`` (on an already bound socket if given) and
    ``stop()``; point ``HF_ENDPOINT`` at ``url`` before huggingface_hub is imported.
    """

    def __init__(self, valid_tokens: dict[str, str], host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.app = HubApp(valid_tokens, lambda: self.url)
        self.server_errors: list[str] = []
        self._log: list[RequestRecord] = []
        self._drops: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, listen_socket: Any = None) -> LocalHub:
        server = _Server((self.host, self.port), _Handler, bind_and_activate=listen_socket is None)
        if listen_socket is not None:
            server.socket.close()
            server.socket = listen_socket
            server.server_address = listen_socket.getsockname()
            server.server_activate()
        server.hub = self
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, name=f"local-hub-{self.port}", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def count(self, route: str, method: str | None = None, status: int | None = None) -> int:
        """How many logged requests hit ``route`` (optionally with this method and answered status)."""
        return sum(
            1 for r in self.requests if r.route == route and method in (None, r.method) and status in (None, r.status)
        )

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, method: str, route: str, status: int) -> None:
        with self._lock:
            self._log.append(RequestRecord(method, route, status))

    def drop_connection(self, route: str, times: int = 1) -> None:
        """Make the next ``times`` requests to ``route`` die after half their body (logged with status DROPPED)."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; expected one of {sorted(ROUTES)}")
        with self._lock:
            self._drops[route] = times

    def _take_drop(self, route: str) -> bool:
        with self._lock:
            if self._drops.get(route, 0) <= 0:
                return False
            self._drops[route] -= 1
            return True

    def branches(self, repo_id: str) -> dict[str, str]:
        """The repo's branches and the commits they point at (read directly, no HTTP, no auth)."""
        return dict(self.app.repos[repo_id].refs)
