"""A small fault-injecting HTTP proxy for tests: put it between a client and a real server.

It forwards every request to ``upstream`` and records it (method, path, body). A :class:`Fault` armed on it
picks one request — method, a regular expression on the path (query string excluded), and the n-th
request since arming that matches both — and does to it one of:

* ``down``: answer 503 *without forwarding*, and every later request too (the server, or the gateway in
  front of it, went down just before the request);
* ``504``: forward it, then answer 504 instead of the server's reply; later requests pass (a gateway timing
  out on a request the server carried out);
* ``crash``: forward it, then drop the connection without a reply, and answer 503 to every later request
  (the server died right after doing it);
* ``dup``: forward it twice and answer the second reply (a gateway retrying on its own).

:meth:`FaultProxy.heal` ends a ``down`` / ``crash`` (the server is back: a retry, or Clear + rerun).
Loopback only; stopped by :meth:`FaultProxy.close`.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MODES = ("down", "504", "crash", "dup")
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "content-length", "host"}


@dataclass
class Fault:
    method: str
    path: str  # a regular expression matched (re.fullmatch) against the request's path
    nth: int = 1  # the n-th matching request since the fault was armed
    mode: str = "down"
    seen: int = 0
    fired: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"fault mode {self.mode!r}: one of {MODES}")

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = field(repr=False)
    status: int | None  # what the client got (None: the connection was dropped)
    forwarded: int  # how many times it reached the server

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class FaultProxy:
    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self.log: list[Request] = []
        self.fault: Fault | None = None
        self.down = False
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms to each
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                path = urlsplit(self.path).path
                action = proxy._decide(self.command, path)
                if action == "down":
                    proxy._record(self.command, path, body, 503, 0)
                    return self._reply(503, {}, b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "down"}')
                times = 2 if action == "dup" else 1
                try:
                    for _ in range(times):
                        status, headers, data = proxy._forward(self.command, self.path, self.headers, body)
                except OSError as exc:  # the server itself is not there
                    proxy._record(self.command, path, body, 502, 0)
                    return self._reply(502, {}, f"upstream: {exc}".encode())
                if action == "crash":
                    proxy._record(self.command, path, body, None, 1)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return None
                if action == "504":
                    proxy._record(self.command, path, body, 504, 1)
                    return self._reply(504, {}, b"gateway timeout")
                proxy._record(self.command, path, body, status, times)
                return self._reply(status, headers, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control
    def arm(self, fault: Fault | None) -> None:
        with self._lock:
            self.fault, self.down = fault, False

    def heal(self) -> None:
        """The server is back: no fault, nothing down."""
        self.arm(None)

    def clear_log(self) -> None:
        with self._lock:
            self.log = []

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ internals
    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            if self.down:
                return "down"
            fault = self.fault
            if fault is None or fault.fired or not fault.matches(method, path):
                return "pass"
            fault.seen += 1
            if fault.seen != fault.nth:
                return "pass"
            fault.fired = True
            if fault.mode in ("down", "crash"):
                self.down = True
            return fault.mode

    def _record(self, method: str, path: str, body: bytes, status: int | None, forwarded: int) -> None:
        with self._lock:
            self.log.append(Request(method, path, body, status, forwarded))

    def _forward(self, method: str, target: str, headers: Any, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=60)
        try:
            out = {k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS}
            out["Host"] = f"{self.upstream_host}:{self.upstream_port}"
            conn.request(method, target, body=body if body or method in ("POST", "PUT", "PATCH") else None,
                         headers=out)
            resp = conn.getresponse()
            data = resp.read()
            kept = {k: v for k, v in resp.getheaders() if k.lower() not in HOP_HEADERS}
            return resp.status, kept, data
        finally:
            conn.close()
