"""A throwaway Prometheus on loopback, from Debian's package, and a metrics source to scrape.

:class:`PrometheusServer` writes its own config (one scrape job, the targets given, a short
scrape interval), keeps its data in a temporary directory and listens on a free port on
127.0.0.1. ``scripts/install-prometheus`` installs the binary (``apt-get install -y
prometheus``) when it is missing; the package's own service is never used.

:class:`MetricsSource` is the application side: an HTTP ``/metrics`` endpoint in this process
serving ``http_requests_total{namespace, app, track, code}`` counters for a target's stable and
canary tracks, with rates and error ratios the caller sets at any time (or no canary series at
all). Prometheus scrapes it with ``honor_labels``, so the series carry exactly the labels the
analysis selectors name (docs/ANALYSIS.md "Selectors"). The tests use it to make the canary's
error rate good, bad or absent; the demo uses it as its model server's metrics.

Python API::

    source = MetricsSource("models", "model-server").start()
    with PrometheusServer([source.address]) as prom:
        source.set("canary", rps=20, error_ratio=0.3)
        prom.url                      # http://127.0.0.1:PORT
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from infra import InfraError
from infra.processes import Child, free_port, start, wait_for

_INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-prometheus"


class PrometheusInfraError(InfraError):
    """Installing or starting the local Prometheus failed; the message says why."""


def install() -> str:
    """The prometheus binary, installed with scripts/install-prometheus when missing."""
    found = shutil.which("prometheus")
    if found:
        return found
    result = subprocess.run([str(_INSTALL_SCRIPT)], capture_output=True, text=True)
    found = shutil.which("prometheus")
    if result.returncode != 0 or not found:
        raise PrometheusInfraError(
            f"scripts/install-prometheus exited {result.returncode}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return found


@dataclass
class PrometheusServer:
    """Prometheus scraping `targets` (HOST:PORT) every `scrape_interval` seconds."""

    targets: list[str]
    scrape_interval: float = 1.0
    lookback_seconds: int = 5  # how long a series without fresh samples still answers
    port: int = 0
    workdir: Path | None = None
    child: Child | None = field(default=None, repr=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        targets = ", ".join(f'"{t}"' for t in self.targets)
        return (
            "global:\n"
            f"  scrape_interval: {self.scrape_interval:g}s\n"
            f"  evaluation_interval: {self.scrape_interval:g}s\n"
            "scrape_configs:\n"
            "  - job_name: steward-targets\n"
            "    honor_labels: true\n"
            f"    static_configs:\n      - targets: [{targets}]\n"
        )

    def start(self) -> PrometheusServer:
        binary = install()
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="steward-prometheus-")
            self.workdir = Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "prometheus.yml").write_text(self.config())
        self.port = self.port or free_port()
        self._launch(binary, append=False)
        return self

    def _launch(self, binary: str, *, append: bool) -> None:
        assert self.workdir is not None
        self.child = start(
            [
                binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--query.lookback-delta={self.lookback_seconds}s",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
            name="prometheus",
            append=append,
        )
        wait_for("Prometheus to be ready", self._ready, 60, every=0.1, child=self.child)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (its data stays until close): what "Prometheus is down" means."""
        if self.child is not None:
            self.child.stop()

    def restart(self) -> None:
        """Start it again on the same port and data after :meth:`stop`."""
        self._launch(install(), append=True)

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> PrometheusServer:
        return self.start() if self.child is None else self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass
class _Track:
    rps: float = 0.0
    error_ratio: float = 0.0
    present: bool = False
    ok: float = 0.0  # counters, advanced at each scrape by the rates in force since the last
    errors: float = 0.0
    at: float = 0.0


class MetricsSource:
    """An application's /metrics, per track, with rates the caller controls (thread-safe)."""

    def __init__(self, namespace: str, deployment: str) -> None:
        self.namespace, self.deployment = namespace, deployment
        self.tracks: dict[str, _Track] = {"stable": _Track(), "canary": _Track()}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.server_address[1]}"

    def set(self, track: str, *, rps: float = 10.0, error_ratio: float = 0.0) -> None:
        """Serve `track` at `rps` requests a second, `error_ratio` of them 5xx, from now on."""
        with self._lock:
            t = self.tracks[track]
            self._advance(t, time.monotonic())
            t.rps, t.error_ratio, t.present = rps, error_ratio, True

    def absent(self, track: str) -> None:
        """Serve no series for `track` (its pods gone, or not instrumented): no data."""
        with self._lock:
            self.tracks[track] = _Track()

    @staticmethod
    def _advance(t: _Track, now: float) -> None:
        if t.present and t.at:
            dt = now - t.at
            t.ok += dt * t.rps * (1 - t.error_ratio)
            t.errors += dt * t.rps * t.error_ratio
        t.at = now

    def exposition(self) -> str:
        lines = [
            "# HELP http_requests_total Requests served, by track and status code.",
            "# TYPE http_requests_total counter",
        ]
        with self._lock:
            now = time.monotonic()
            for name, t in sorted(self.tracks.items()):
                if not t.present:
                    continue
                self._advance(t, now)
                labels = f'namespace="{self.namespace}",app="{self.deployment}",track="{name}"'
                lines.append(f'http_requests_total{{{labels},code="200"}} {t.ok:.3f}')
                lines.append(f'http_requests_total{{{labels},code="500"}} {t.errors:.3f}')
        return "\n".join(lines) + "\n"

    def start(self) -> MetricsSource:
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = source.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass  # one line per scrape is noise

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self._server.serve_forever, name="metrics-source", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
