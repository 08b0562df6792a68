"""A stand-in for the Hugging Face hub on 127.0.0.1: the URLs and headers `huggingface_hub` (and `datasets`, through
it) requests, served from files in memory. Point `HF_ENDPOINT` at `StandInHub.url` in a subprocess (huggingface_hub
reads it once, at import).

Served: `GET /api/{models|datasets}/{repo}[/revision/{rev}]` (repo info with `sha` and `siblings`),
`GET /api/{type}s/{repo}/tree/{rev}[/{path}]` (the file listing), `POST /api/{type}s/{repo}/paths-info/{rev}`,
`HEAD|GET /[datasets/]{repo}/resolve/{rev}/{file}` (with `X-Repo-Commit`, `ETag`, `Content-Length` and byte
ranges). An unknown repository is a 404 with `X-Error-Code: RepoNotFound`, a gated one a 401 with `GatedRepo`,
as the hub answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = ""

    def __post_init__(self):
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + b"\0" + self.files[name])
        self.sha = digest.hexdigest()

    def entry(self, path: str) -> dict:
        data = self.files[path]
        oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return {"type": "file", "path": path, "size": len(data), "oid": oid}

    def folders(self) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in self.files for i in range(1, p.count("/") + 1)}


@dataclass
class StandInHub:
    models: dict[str, Repo] = field(default_factory=dict)
    datasets: dict[str, Repo] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)  # repository ids answered as gated for a caller without access
    requests: list[str] = field(default_factory=list)
    url: str = ""

    def add_model(self, repo_id: str, folder: Path) -> Repo:
        self.models[repo_id] = Repo({p.relative_to(folder).as_posix(): p.read_bytes()
                                     for p in sorted(folder.rglob("*")) if p.is_file()})
        return self.models[repo_id]

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> Repo:
        self.datasets[repo_id] = Repo(files)
        return self.datasets[repo_id]

    def start(self) -> "StandInHub":
        hub = self

        class Handler(_Handler):
            store = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


API = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)(?:/(.*))?)?$")
RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    store: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the test reads `store.requests`
        pass

    def do_GET(self):
        self._route(body=True)

    def do_HEAD(self):
        self._route(body=False)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode()) if length else {}
        self._route(body=True, form=form)

    def _route(self, body: bool, form: dict | None = None):
        url = urlparse(self.path)
        path = unquote(url.path)
        self.store.requests.append(f"{self.command} {path}")
        if m := API.match(path):
            kind, repo_id, action, revision, sub = m.groups()
            repo = self._repo(kind, repo_id, revision)
            if repo is None:
                return
            if action in (None, "revision"):
                siblings = [{"rfilename": p} for p in sorted(repo.files)]
                return self._json({"id": repo_id, "sha": repo.sha, "siblings": siblings, "private": False,
                                   "gated": False, "disabled": False, "cardData": {}, "tags": []}, body)
            if action == "tree":
                return self._json(self._tree(repo, sub or "", parse_qs(url.query)), body)
            paths = (form or {}).get("paths", [])
            entries = [repo.entry(p) for p in paths if p in repo.files]
            entries += [{"type": "directory", "path": p, "oid": "0" * 40} for p in paths if p in repo.folders()]
            return self._json(entries, body)
        if m := RESOLVE.match(path):
            dataset, repo_id, revision, filename = m.groups()
            repo = self._repo("datasets" if dataset else "models", repo_id, revision)
            if repo is None:
                return
            if filename not in repo.files:
                return self._error(404, "EntryNotFound")
            return self._file(repo, filename, body)
        self._error(404, "RepoNotFound")

    def _repo(self, kind: str, repo_id: str, revision: str | None) -> Repo | None:
        if repo_id in self.store.gated:
            self._error(401, "GatedRepo")
            return None
        repo = getattr(self.store, kind).get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound")
            return None
        if revision not in (None, "main", repo.sha):
            self._error(404, "RevisionNotFound")
            return None
        return repo

    def _tree(self, repo: Repo, sub: str, query: dict) -> list[dict]:
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        inside = [p for p in sorted(repo.files) if p.startswith(prefix)]
        if recursive:
            folders = sorted(f for f in repo.folders() if f.startswith(prefix))
            return [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders] + \
                [repo.entry(p) for p in inside]
        direct = [p for p in inside if "/" not in p[len(prefix):]]
        folders = sorted({prefix + p[len(prefix):].split("/")[0] for p in inside if "/" in p[len(prefix):]})
        return [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders] + [repo.entry(p) for p in direct]

    def _file(self, repo: Repo, filename: str, body: bool):
        data = repo.files[filename]
        status, start, end = 200, 0, len(data)
        ranged = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            end = min(len(data), int(ranged.group(2)) + 1 if ranged.group(2) else len(data))
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{repo.entry(filename)["oid"]}"')
        self.send_header("X-Repo-Commit", repo.sha)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start:end])

    def _json(self, value, body: bool):
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str):
        data = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
