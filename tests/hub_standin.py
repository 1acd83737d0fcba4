"""A local stand-in for the Hugging Face Hub HTTP API, for tests that cannot reach huggingface.co.

It implements just what `huggingface_hub` (2.x) needs for `snapshot_download`, `hf_hub_download`,
`HfApi.model_info`/`repo_info` and `HfApi.list_repo_files`/`list_repo_tree`:

- ``GET /api/models/<repo>`` and ``GET /api/models/<repo>/revision/<rev>``: repo info (``id``, ``sha``,
  ``siblings`` with ``rfilename``, ``gated``, ...).
- ``GET /api/models/<repo>/tree/<rev>[/<path>]?recursive=...``: the tree listing (``type``, ``path``, ``oid``,
  ``size`` and ``lfs`` for large files), in a single page (no ``Link: rel=next`` header).
- ``HEAD``/``GET /<repo>/resolve/<rev>/<file>``: small files answer 200 with ``ETag`` (the git blob sha1),
  ``X-Repo-Commit`` and ``Content-Length``; "LFS" files (weights) answer 302 with ``X-Linked-Etag`` (sha256),
  ``X-Linked-Size``, ``X-Repo-Commit`` and a ``Location`` on a second port (the "CDN"), like the real hub.
  The CDN is another origin, so huggingface_hub does not follow the redirect on HEAD and drops the
  ``Authorization`` header before downloading from it.
- Datasets (:meth:`HubStandin.add_dataset`): ``GET /api/datasets/<repo>[...]`` and ``/datasets/<repo>/resolve/...``
  answer like the model routes above (``hf_hub_download(..., repo_type="dataset")``).
- ``GET /api/agent-harnesses``: the (empty) registry huggingface_hub's agent detection fetches once a day.
- Errors carry ``X-Error-Code`` (``RepoNotFound``, ``GatedRepo``, ``RevisionNotFound``, ``EntryNotFound``),
  ``X-Error-Message`` and a ``{"error": ...}`` JSON body, which is what ``hf_raise_for_status`` dispatches on.

Like the real hub, the metadata of a gated repo (info, tree) is public; its files need
``Authorization: Bearer <token>`` with the token given to :meth:`HubStandin.gate`.

Usage::

    with HubStandin() as hub:
        hub.add_repo("org/model", {"config.json": b"{}", "model.safetensors": b"..."})
        env["HF_ENDPOINT"] = hub.endpoint
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".onnx", ".model", ".msgpack", ".h5")
_CREATED = "2024-01-01T00:00:00.000Z"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class Request:
    """One request the stand-in received (for assertions in tests)."""

    server: str  # "hub" or "cdn"
    method: str
    path: str
    authorization: Optional[str]


class HubStandin:
    """A threaded HTTP server on 127.0.0.1 answering like huggingface.co for the repos in :attr:`repos`."""

    def __init__(self, missing_status: int = 404) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.gated: dict[str, str] = {}  # repo id -> the token that may read it
        self.missing_status = missing_status  # the real hub answers 401 to anonymous requests for unknown repos
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._hub: Optional[ThreadingHTTPServer] = None
        self._cdn: Optional[ThreadingHTTPServer] = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: dict[str, bytes]) -> None:
        self.repos[repo_id] = dict(files)

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> None:
        """A hub dataset repo; stored under ``datasets/<repo_id>``, the prefix its URLs carry."""
        self.repos[f"datasets/{repo_id}"] = dict(files)

    def gate(self, repo_id: str, token: str) -> None:
        self.gated[repo_id] = token

    def commit_sha(self, repo_id: str) -> str:
        """The repo's (only) commit: a hash of its contents, so it changes when the files do."""
        h = hashlib.sha1(repo_id.encode())
        for name, data in sorted(self.repos[repo_id].items()):
            h.update(name.encode() + b"\0" + git_blob_sha1(data).encode())
        return h.hexdigest()

    def requested_files(self, repo_id: str) -> set[str]:
        """Files of ``repo_id`` that were fetched (GET on resolve or on the CDN)."""
        by_sha = {hashlib.sha256(d).hexdigest(): n for n, d in self.repos.get(repo_id, {}).items()}
        out = set()
        for r in self.requests:
            if r.method != "GET":
                continue
            if r.server == "hub" and f"/{repo_id}/resolve/" in r.path:
                out.add(r.path.split("/resolve/", 1)[1].split("/", 1)[1])
            elif r.server == "cdn":
                sha = r.path.rsplit("/", 1)[-1]
                if sha in by_sha and r.path.startswith(f"/lfs/{repo_id}/"):
                    out.add(by_sha[sha])
        return out

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        assert self._hub is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_endpoint(self) -> str:
        assert self._cdn is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def start(self) -> "HubStandin":
        self._hub = self._serve("hub")
        self._cdn = self._serve("cdn")
        return self

    def stop(self) -> None:
        for server in (self._hub, self._cdn):
            if server is not None:
                server.shutdown()
                server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> "HubStandin":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, role: str) -> ThreadingHTTPServer:
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        Handler.role = role
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name=f"hub-standin-{role}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every response sets Content-Length
    standin: HubStandin
    role: str

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        self._head = head
        split = urlsplit(self.path)
        path = unquote(split.path)
        with self.standin._lock:
            self.standin.requests.append(Request(self.role, self.command, path, self.headers.get("Authorization")))
        try:
            if self.role == "cdn":
                return self._cdn(path)
            if path == "/api/agent-harnesses":  # fetched once a day by huggingface_hub's agent detection
                return self._json({"standardEnvVars": [], "harnesses": {}})
            if path.startswith("/api/models/"):
                return self._api(path[len("/api/models/") :], parse_qs(split.query))
            if path.startswith("/api/datasets/"):
                return self._api("datasets/" + path[len("/api/datasets/") :], parse_qs(split.query))
            if "/resolve/" in path:
                return self._resolve(path)
            self._error(404, None, "Not Found")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None, length: Optional[int] = None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if not self._head and body:
            self.wfile.write(body)

    def _json(self, obj, headers: Optional[dict] = None) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: Optional[str], message: str, headers: Optional[dict] = None) -> None:
        h = {"Content-Type": "application/json", "X-Error-Message": message, **(headers or {})}
        if code:
            h["X-Error-Code"] = code
        self._send(status, json.dumps({"error": message}).encode(), h)

    # ------------------------------------------------------------------ access control
    def _repo_or_error(self, repo_id: str) -> Optional[dict]:
        repos = self.standin.repos
        if repo_id not in repos:
            status = self.standin.missing_status
            if status == 401 and self.headers.get("Authorization"):
                status = 404  # the real hub only hides existence from anonymous callers
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        return repos[repo_id]

    def _may_read_files(self, repo_id: str) -> bool:
        token = self.standin.gated.get(repo_id)
        if token is None:
            return True
        auth = self.headers.get("Authorization")
        if auth == f"Bearer {token}":
            return True
        if auth is None:
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
        else:
            self._error(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo_id} to ask for access.",
            )
        return False

    def _check_revision(self, repo_id: str, revision: str) -> bool:
        if revision in ("main", self.standin.commit_sha(repo_id)):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    # ------------------------------------------------------------------ /api/models
    def _api(self, rest: str, query: dict) -> None:
        if "/tree/" in rest:
            repo_id, tail = rest.split("/tree/", 1)
            revision, _, sub = tail.partition("/")
            if self._repo_or_error(repo_id) is None or not self._check_revision(repo_id, revision):
                return
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(self._tree(repo_id, sub.strip("/"), recursive))
        if "/revision/" in rest:
            repo_id, revision = rest.split("/revision/", 1)
        else:
            repo_id, revision = rest.rstrip("/"), "main"
        files = self._repo_or_error(repo_id)
        if files is None or not self._check_revision(repo_id, revision):
            return
        sha = self.standin.commit_sha(repo_id)
        public_id = repo_id.removeprefix("datasets/")  # a dataset's own id has no prefix
        self._json(
            {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
                "id": public_id,
                "modelId": public_id,
                "author": public_id.split("/")[0] if "/" in public_id else None,
                "sha": sha,
                "lastModified": _CREATED,
                "createdAt": _CREATED,
                "private": False,
                "gated": "manual" if repo_id in self.standin.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
        )

    def _tree(self, repo_id: str, sub: str, recursive: bool) -> list:
        files = self.standin.repos[repo_id]
        prefix = f"{sub}/" if sub else ""
        entries: dict[str, dict] = {}
        for name, data in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            rel = name[len(prefix) :]
            parts = rel.split("/")
            # folders on the way (all of them when recursive, only the first level otherwise)
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    folder, {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder}
                )
            if len(parts) > 1 and not recursive:
                continue
            entry = {"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name}
            if name.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries[name] = entry
        return list(entries.values())

    # ------------------------------------------------------------------ /<repo>/resolve/<rev>/<file>
    def _resolve(self, path: str) -> None:
        repo_id, tail = path.lstrip("/").split("/resolve/", 1)
        revision, _, filename = tail.partition("/")
        files = self._repo_or_error(repo_id)
        if files is None or not self._may_read_files(repo_id) or not self._check_revision(repo_id, revision):
            return
        sha = self.standin.commit_sha(repo_id)
        if filename not in files:
            return self._error(404, "EntryNotFound", f"{filename} does not exist on \"{revision}\"", {"X-Repo-Commit": sha})
        data = files[filename]
        if filename.endswith(LFS_SUFFIXES):
            sha256 = hashlib.sha256(data).hexdigest()
            headers = {
                "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": len(data),
                "ETag": f'"{git_blob_sha1(data)}"',
                "Location": f"{self.standin.cdn_endpoint}/lfs/{repo_id}/{sha256}",
            }
            return self._send(302, b"", headers)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(data)}"', "Accept-Ranges": "bytes"}
        self._send_bytes(data, headers)

    def _send_bytes(self, data: bytes, headers: dict) -> None:
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not self._head:
            start_s, _, end_s = rng[len("bytes=") :].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            part = data[start : end + 1]
            return self._send(206, part, {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})
        self._send(200, data, headers, length=len(data))

    # ------------------------------------------------------------------ the "CDN"
    def _cdn(self, path: str) -> None:
        # /lfs/<repo>/<sha256>
        if not path.startswith("/lfs/"):
            return self._error(404, None, "Not Found")
        repo_id, _, sha256 = path[len("/lfs/") :].rpartition("/")
        for data in self.standin.repos.get(repo_id, {}).values():
            if hashlib.sha256(data).hexdigest() == sha256:
                return self._send_bytes(
                    data,
                    {
                        "ETag": f'"{sha256}"',
                        "Accept-Ranges": "bytes",
                        "Content-Type": "application/octet-stream",
                        "Last-Modified": _dt.datetime(2024, 1, 1).strftime("%a, %d %b %Y %H:%M:%S GMT"),
                    },
                )
        self._error(404, None, "Not Found")
