"""A real webhook sink for tests: an HTTP server on loopback (a free port) recording each POST.

``with HttpSink() as sink: ... sink.url ... sink.events()``. ``status`` is the answer code
(e.g. 500 for a sink that always fails), ``delay`` seconds of sleep before answering (a slow
sink). Every request is recorded, the failed ones too, with its headers and parsed JSON body.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    status: int
    at: float  # time.monotonic() when it arrived


class HttpSink:
    def __init__(self, status: int = 200, delay: float = 0.0, path: str = "/hook") -> None:
        self.status = status
        self.delay = delay
        self.path = path
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.in_flight = 0
        self.arrivals: list[float] = []  # time.monotonic() of every POST, as it arrives
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                arrived = time.monotonic()
                with sink.lock:
                    sink.in_flight += 1
                    sink.arrivals.append(arrived)
                    status = sink.status
                    delay = sink.delay
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                if delay:
                    time.sleep(delay)
                with sink.lock:
                    sink.received.append(
                        Received(self.path, dict(self.headers), body, status, arrived)
                    )
                    sink.in_flight -= 1
                try:
                    self.send_response(status)
                    if 300 <= status < 400:  # a redirect to this very sink, another path
                        self.send_header("Location", "/redirected")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (a timeout): that is the point of a slow sink

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def __enter__(self) -> HttpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def all(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def events(self) -> list[dict[str, Any]]:
        """The bodies of the POSTs answered with a 2xx, in arrival order."""
        return [r.body for r in self.all() if 200 <= r.status < 300]
