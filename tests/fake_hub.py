"""A local stand-in for the part of the Hugging Face Hub API that `create_repo` + `upload_folder`
use (huggingface_hub 1.x/2.x), on 127.0.0.1, for the `push` tests:

* ``POST /api/repos/create``                       -> the repo URL
* ``POST /api/validate-yaml``                       -> no errors (the README.md is recorded)
* ``POST /api/models/<repo>/preupload/<rev>``       -> *.safetensors as LFS, the rest regular
* ``POST /<repo>.git/info/lfs/objects/batch``       -> "basic" transfer: PUT to this server
* ``PUT  /lfs-upload/<oid>``                        -> the LFS bytes (sha256 checked)
* ``POST /api/models/<repo>/commit/<rev>``          -> NDJSON: header, files (base64), lfsFiles

``FakeHub.repos[repo_id]`` holds what a commit made of the repo: ``{path: bytes}``;
``requests`` every (method, path). Anything else is a 404, recorded in ``unknown`` (huggingface_hub
asks for ``GET /api/agent-harnesses`` and carries on without it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, token: str = "hf_fake_token"):
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}
        self.created: list[dict] = []
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unknown: list[tuple[str, str]] = []
        self.validated: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, code: int, obj=None) -> None:
                data = json.dumps(obj if obj is not None else {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                return True

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                body = self._body()
                path = self.path.split("?")[0]
                if not self._authorised():
                    return
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo = "/".join(p for p in (req.get("organization"), req["name"]) if p)
                    hub.created.append(req)
                    hub.repos.setdefault(repo, {})
                    return self._send(200, {"url": f"{hub.url}/{repo}", "name": repo})
                if path == "/api/validate-yaml":  # upload_folder checks README.md's metadata
                    req = json.loads(body)
                    hub.validated.append(req["content"])
                    return self._send(200, {"errors": [], "warnings": []})
                if path.startswith("/api/models/") and "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._send(
                        200,
                        {
                            "files": [
                                {
                                    "path": f["path"],
                                    "shouldIgnore": False,
                                    "uploadMode": "lfs"
                                    if f["path"].endswith(".safetensors")
                                    else "regular",
                                }
                                for f in files
                            ]
                        },
                    )
                if path.endswith(".git/info/lfs/objects/batch"):
                    req = json.loads(body)
                    return self._send(
                        200,
                        {
                            "transfer": "basic",
                            "objects": [
                                {
                                    "oid": o["oid"],
                                    "size": o["size"],
                                    "authenticated": True,
                                    "actions": {
                                        "upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}
                                    },
                                }
                                for o in req["objects"]
                            ],
                        },
                    )
                if path.startswith("/api/models/") and "/commit/" in path:
                    repo = path[len("/api/models/") :].split("/commit/")[0]
                    files = {}
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        v = item["value"]
                        if item["key"] == "file":
                            files[v["path"]] = base64.b64decode(v["content"])
                        elif item["key"] == "lfsFile":
                            files[v["path"]] = hub.lfs[v["oid"]]
                    hub.repos.setdefault(repo, {}).update(files)
                    return self._send(
                        200,
                        {
                            "commitUrl": f"{hub.url}/{repo}/commit/abc123",
                            "commitOid": "abc123" + "0" * 34,
                        },
                    )
                hub.unknown.append(("POST", self.path))
                self._send(404, {"error": f"not in the fake hub: {self.path}"})

            def do_PUT(self):
                hub.requests.append(("PUT", self.path))
                body = self._body()
                if self.path.startswith("/lfs-upload/"):
                    oid = self.path.rsplit("/", 1)[1]
                    if hashlib.sha256(body).hexdigest() != oid:
                        return self._send(400, {"error": "sha256 mismatch"})
                    hub.lfs[oid] = body
                    return self._send(200)
                hub.unknown.append(("PUT", self.path))
                self._send(404)

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                hub.unknown.append(("GET", self.path))
                self._send(404, {"error": f"not in the fake hub: {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
