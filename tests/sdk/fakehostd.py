"""A scripted HTTP server on 127.0.0.1 for unit tests of the client's HTTP handling.

It is not hostd: each test registers what a route answers, and the server
records every request (method, path, query, headers, body, how the body was
framed, which client port sent it) so tests can check what the SDK sent.
The real hostd is exercised by test_e2e.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, List[str]]
    raw_target: str
    headers: Dict[str, str]
    body: bytes
    chunk_sizes: List[int]  # sizes of the chunks when the body came chunked
    client_port: int
    handler: "http.server.BaseHTTPRequestHandler" = field(repr=False)

    def json(self):
        return json.loads(self.body)

    # ---- answers ----
    def reply_json(self, status: int, obj, close: bool = False) -> None:
        data = json.dumps(obj).encode()
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def reply_error(self, status: int, code: str, message: str) -> None:
        self.reply_json(status, {"error": {"code": code, "message": message}})

    def reply_raw(self, status: int, data: bytes, content_type: str) -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def start_chunked(self, status: int = 200, content_type: str = "application/x-ndjson") -> None:
        h = self.handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        h.wfile.flush()

    def chunk(self, data: bytes) -> None:
        if not data:
            return
        w = self.handler.wfile
        w.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        w.flush()

    def end_chunked(self) -> None:
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()

    def stream_events(self, events, delay: float = 0.0) -> None:
        """Send NDJSON events (dicts, or raw bytes lines), one chunk each, `delay` apart."""
        self.start_chunked()
        for i, event in enumerate(events):
            if i and delay:
                time.sleep(delay)
            line = event if isinstance(event, bytes) else json.dumps(event).encode() + b"\n"
            self.chunk(line)
        self.end_chunked()

    def abort(self) -> None:
        """Drop the connection without a (complete) answer."""
        self.handler.close_connection = True
        try:
            self.handler.wfile.flush()
        except OSError:
            pass
        import socket

        try:
            self.handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


Handler = Callable[[Request], None]


class FakeHostd:
    def __init__(self) -> None:
        self.routes: Dict[Tuple[str, str], Handler] = {}
        self.requests: List[Request] = []
        self.read_bodies = True  # False: answer without reading the body
        self._lock = threading.Lock()
        fake = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                fake._dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _dispatch(self, h: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(h.path)
        body, chunk_sizes = b"", []
        if self.read_bodies:
            body, chunk_sizes = _read_body(h)
        req = Request(
            method=h.command,
            path=urllib.parse.unquote(parts.path),
            query=urllib.parse.parse_qs(parts.query, keep_blank_values=True),
            raw_target=h.path,
            headers={k.lower(): v for k, v in h.headers.items()},
            body=body,
            chunk_sizes=chunk_sizes,
            client_port=h.client_address[1],
            handler=h,
        )
        with self._lock:
            self.requests.append(req)
        handler = self.routes.get((req.method, req.path))
        if handler is None:
            req.reply_error(404, "not_found", f"no route {req.method} {req.path}")
            return
        handler(req)


def _read_body(h) -> Tuple[bytes, List[int]]:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts, sizes = [], []
        while True:
            size_line = h.rfile.readline()
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts), sizes
            parts.append(h.rfile.read(size))
            sizes.append(size)
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return (h.rfile.read(length) if length else b""), []


SANDBOX = {
    "id": "sb-0123456789ab",
    "state": "ready",
    "template": "default",
    "egress": True,
    "egress_allow": [],
    "persistent": False,
    "vcpus": 2,
    "memory_mib": 512,
    "disk_mib": 2048,
    "idle_timeout_s": 300,
    "max_lifetime_s": 1800,
    "created_at": "2024-01-01T00:00:00Z",
    "accel": "tcg",
    "dead_reason": "",
    "egress_mode": "open",
}


def exit_event(seq: int = 1, **fields) -> dict:
    event = {
        "type": "exit",
        "exit_code": 0,
        "signal": 0,
        "timed_out": False,
        "truncated": False,
        "repl_restarted": False,
        "duration_ms": 5,
        "seq": seq,
        "ts": "2024-01-01T00:00:00Z",
    }
    event.update(fields)
    return event


SPACE = {
    "space_id": "sp-00112233aabb",
    "sandbox_id": SANDBOX["id"],
    "template": "default",
    "persistent": True,
    "vcpus": 2,
    "memory_mib": 512,
    "disk_mib": 2048,
    "egress": True,
    "egress_allow": [],
    "egress_mode": "open",
    "idle_timeout_s": 300,
    "max_lifetime_s": 1800,
    "created_at": "2024-01-01T00:00:00Z",
    "frozen_at": "2024-01-01T00:05:00Z",
    # Doubles in hostd's messages/api.proto.
    "size_bytes": 161480704.0,
    "state_bytes": 157286400.0,
    "disk_bytes": 4194304.0,
    "reason": "freeze",
}


class FakeSpaces:
    """hostd's Space routes over a small in-memory model, for tests that go
    through several calls (freeze, list, resume, delete) as a user would.

    `sandboxes` holds the sandbox objects by id, `spaces` the Space objects
    by id. A freeze of a ready sandbox makes a Space (reason "freeze"); a
    resume makes a new sandbox (source "space") and uses the Space up; a
    Space id in `corrupted` answers 422 and stays.
    """

    def __init__(self, fake: FakeHostd) -> None:
        self.fake = fake
        self.sandboxes: Dict[str, dict] = {}
        self.spaces: Dict[str, dict] = {}
        self.corrupted: Dict[str, str] = {}  # space id -> message
        self._next = 0
        fake.route("GET", "/v1/spaces", lambda r: r.reply_json(200, {"spaces": list(self.spaces.values())}))

    def add_sandbox(self, **fields) -> dict:
        # As hostd prints them: every field, empty when it does not apply.
        info = dict(SANDBOX, source="boot", forked_from="", space_id="", resumed_from="")
        info.update(fields)
        self.sandboxes[info["id"]] = info
        path = f"/v1/sandboxes/{info['id']}"
        self.fake.route("GET", path, lambda r: self._get_sandbox(r, info["id"]))
        self.fake.route("DELETE", path, lambda r: self._delete_sandbox(r, info["id"]))
        self.fake.route("POST", path + "/freeze", lambda r: self._freeze(r, info["id"]))
        return info

    def add_space(self, **fields) -> dict:
        space = dict(SPACE, **fields)
        self.spaces[space["space_id"]] = space
        path = f"/v1/spaces/{space['space_id']}"
        sid = space["space_id"]
        self.fake.route("GET", path, lambda r: self._get_space(r, sid))
        self.fake.route("DELETE", path, lambda r: self._delete_space(r, sid))
        self.fake.route("POST", path + "/resume", lambda r: self._resume(r, sid))
        return space

    def _new_id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}-{self._next:012x}"

    def _get_sandbox(self, r: Request, sandbox_id: str) -> None:
        if sandbox_id not in self.sandboxes:
            return r.reply_error(404, "not_found", f"no sandbox {sandbox_id}")
        r.reply_json(200, self.sandboxes[sandbox_id])

    def _delete_sandbox(self, r: Request, sandbox_id: str) -> None:
        if self.sandboxes.pop(sandbox_id, None) is None:
            return r.reply_error(404, "not_found", f"no sandbox {sandbox_id}")
        r.reply_raw(204, b"", "application/json")

    def _freeze(self, r: Request, sandbox_id: str) -> None:
        info = self.sandboxes.get(sandbox_id)
        if info is None:
            return r.reply_error(404, "not_found", f"no sandbox {sandbox_id}")
        if info["state"] != "ready":
            return r.reply_error(409, "failed_precondition", f"sandbox {sandbox_id} is {info['state']}")
        space = self.add_space(
            space_id=self._new_id("sp"),
            sandbox_id=sandbox_id,
            persistent=info["persistent"],
            memory_mib=info["memory_mib"],
        )
        info.update(state="frozen", space_id=space["space_id"])
        r.reply_json(200, space)

    def _get_space(self, r: Request, space_id: str) -> None:
        if space_id not in self.spaces:
            return r.reply_error(404, "not_found", f"no Space {space_id}")
        r.reply_json(200, self.spaces[space_id])

    def _delete_space(self, r: Request, space_id: str) -> None:
        if self.spaces.pop(space_id, None) is None:
            return r.reply_error(404, "not_found", f"no Space {space_id}")
        r.reply_raw(204, b"", "application/json")

    def _resume(self, r: Request, space_id: str) -> None:
        space = self.spaces.get(space_id)
        if space is None:
            return r.reply_error(404, "not_found", f"no Space {space_id}")
        if space_id in self.corrupted:
            return r.reply_error(422, "space_corrupted", self.corrupted[space_id])
        body = r.json() if r.body else {}
        del self.spaces[space_id]
        info = self.add_sandbox(
            id=self._new_id("sb"),
            source="space",
            resumed_from=space_id,
            persistent=bool(body.get("persistent", False)),
            memory_mib=space["memory_mib"],
        )
        r.reply_json(201, info)
