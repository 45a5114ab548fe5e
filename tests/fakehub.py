"""A small stand-in for the Hugging Face Hub's HTTP API on 127.0.0.1, for tests: nothing here reaches a real hub.

It serves model repositories made from local folders through the endpoints ``huggingface_hub`` calls
(``HF_ENDPOINT`` pointed at ``FakeHub.url``):
- ``GET /api/models/{repo}[/revision/{rev}]``: model info, ``{"id", "sha", "siblings": [{"rfilename", "size"}], "gated"}``;
- ``GET /api/models/{repo}/tree/{rev}``: the file listing, ``[{"type": "file", "path", "size", "oid", "lfs"}]``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (the git blob sha1, or
  the sha256 for files kept in LFS: ``*.safetensors`` here) and ``Content-Length``.
Errors are answered as the hub answers them: an unknown repository 401 (anonymous) or 404 with
``X-Error-Code: RepoNotFound``; an unknown revision 404 ``RevisionNotFound``; a file of a gated repository without
access 401 (anonymous) or 403 (a token without access) ``GatedRepo`` (its info and listing stay public, as on the hub);
a revoked token 401 "Invalid credentials in Authorization header" on any request.
``requests`` logs every (method, path) served, so tests can tell what went over the wire.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch -> sha
    gated: bool = False


class FakeHub:
    def __init__(self, granted_tokens: tuple[str, ...] = (), revoked_tokens: tuple[str, ...] = ()):
        self.repos: dict[str, Repo] = {}
        self.granted = set(granted_tokens)  # tokens with access to gated repositories
        self.revoked = set(revoked_tokens)  # tokens refused on every request
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    # -- content ----------------------------------------------------------------------------------
    def push(self, repo_id: str, folder: Path, gated: bool = False) -> str:
        """Commit every file under ``folder`` to ``repo_id``'s main branch; returns the new commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        repo.gated = repo.gated or gated
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}
        h = hashlib.sha1(repo_id.encode() + str(len(repo.commits)).encode())
        for name, data in files.items():
            h.update(name.encode() + hashlib.sha256(data).digest())
        sha = h.hexdigest()
        repo.commits[sha] = files
        repo.refs["main"] = sha
        return sha

    # -- server -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- request handling -------------------------------------------------------------------------
    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        token = (h.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        parts = path.strip("/").split("/")
        try:
            if token in self.revoked:
                raise _HubError(401, "", "Invalid credentials in Authorization header")
            if parts[:2] == ["api", "models"]:
                self._api(h, parts[2:], token, body)
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve(h, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), token, body)
            else:
                self._send(h, 404, b"not found", body, {"X-Error-Code": "EntryNotFound"})
        except _HubError as e:
            headers = {"X-Error-Message": e.message} | ({"X-Error-Code": e.code} if e.code else {})
            self._send(h, e.status, e.message.encode(), body, headers)

    def _repo(self, repo_id: str, token: str | None) -> Repo:
        if repo_id not in self.repos:
            raise _HubError(401 if token is None else 404, "RepoNotFound", "Repository not found")
        return self.repos[repo_id]

    def _commit(self, repo: Repo, rev: str) -> str:
        sha = repo.refs.get(rev, rev)
        if sha not in repo.commits:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha

    def _api(self, h, parts: list[str], token: str | None, body: bool) -> None:
        # {owner}/{name}[/revision/{rev}] or {owner}/{name}/tree/{rev}[/path]
        repo_id = "/".join(parts[:2])
        repo = self._repo(repo_id, token)
        rest = parts[2:]
        rev = rest[1] if len(rest) >= 2 and rest[0] in ("revision", "tree") else "main"
        sha = self._commit(repo, rev)
        files = repo.commits[sha]
        if rest and rest[0] == "tree":
            listing = [_tree_entry(p, d) for p, d in sorted(files.items())]
            payload = json.dumps(listing).encode()
        else:
            payload = json.dumps({
                "_id": sha[:24], "id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "library_name": "transformers",
                "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())],
            }).encode()
        self._send(h, 200, payload, body, {"Content-Type": "application/json"})

    def _resolve(self, h, repo_id: str, rev: str, filename: str, token: str | None, body: bool) -> None:
        repo = self._repo(repo_id, token)
        if repo.gated and token not in self.granted:
            raise _HubError(401 if token is None else 403, "GatedRepo",
                            f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
        sha = self._commit(repo, rev)
        if filename not in repo.commits[sha]:
            raise _HubError(404, "EntryNotFound", f"{filename} does not exist on {rev}")
        data = repo.commits[sha][filename]
        entry = _tree_entry(filename, data)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        self._send(h, 200, data, body, {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha,
                                        "ETag": f'"{etag}"', "Accept-Ranges": "none"})

    @staticmethod
    def _send(h, status: int, payload: bytes, body: bool, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if body:
            h.wfile.write(payload)


class _HubError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _tree_entry(path: str, data: bytes) -> dict:
    git_oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_oid}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry
