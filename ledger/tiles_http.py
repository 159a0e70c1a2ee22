"""The ledger's log over HTTP as C2SP tlog-tiles: ``checkpoint``, hash tiles and entry bundles.

Read-only and public by design: every byte served is checked by the client against the signed
checkpoint (docs/TILES.md), so there is nothing to authenticate and nothing secret. What is
served comes from a :class:`TileLog` (the writer's, :mod:`ledger.tiles_log`), and only what the
newest checkpoint it publishes covers: a tile or bundle beyond that size is 404, whatever the
log holds already.

Caching follows the spec: full tiles and bundles never change (``immutable``, a year); partial
ones and the checkpoint are kept for seconds. Entry bundles are gzipped for clients that accept
it. A path is answered only in the one spelling the spec writes (ledger.tiles); anything else is
400 (a malformed tile path) or 404, with a one-line plain-text body and never a traceback.

The server is a bounded :class:`http.server.ThreadingHTTPServer`: at most ``max_connections``
connections are served at once (more wait briefly, then are closed) and an idle or slow
connection is dropped after ``timeout`` seconds, so clients cannot exhaust the ledger's threads.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from ledger import tiles
from ledger.errors import FormatError, LedgerStartingError
from ledger.tiles import TilePathError, TileRef

log = logging.getLogger("ledger.tiles")

IMMUTABLE = "public, max-age=31536000, immutable"
PARTIAL_TILE_MAX_AGE = 60
CHECKPOINT_MAX_AGE = 2
MAX_PATH_CHARS = 256
OCTETS = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"


class TileLog(Protocol):
    """What the tiles are served from: one checkpoint, and the hashes and entries it covers."""

    def published_checkpoint_text(self) -> str | None:
        """The signed checkpoint note served as ``checkpoint`` (None before the first one;
        LedgerStartingError while the log is being replayed)."""
        ...

    def checkpoint_size(self, text: str) -> int:
        """The tree size that checkpoint note names."""
        ...

    def tile_hashes(self, ref: TileRef) -> bytes:
        """Hash tile ``ref`` (within the checkpoint's size)."""
        ...

    def entries(self, start: int, count: int) -> list[bytes]:
        """Entry bytes ``start`` .. ``start + count - 1`` (within the checkpoint's size)."""
        ...


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: HTTPStatus, message: str) -> Response:
    return Response(
        status, (message + "\n").encode(), {"Content-Type": TEXT, "Cache-Control": "no-store"}
    )


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header admits gzip (``gzip`` or ``*``, without ``q=0``)."""
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() not in ("gzip", "*"):
            continue
        q = params.replace(" ", "").lower()
        refused = q.startswith("q=") and q[2:] != "" and q[2:].strip("0.") == ""  # q=0, q=0.0
        return not refused
    return False


class _BundleCache:
    """Recently served full entry bundles (raw and gzipped): they never change, and a mirror
    fetching a log from the start asks for each one once while monitors ask for the newest."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._used = 0
        self._items: OrderedDict[int, tuple[bytes, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: int) -> tuple[bytes, bytes] | None:
        with self._lock:
            item = self._items.get(index)
            if item is not None:
                self._items.move_to_end(index)
            return item

    def put(self, index: int, raw: bytes, packed: bytes) -> None:
        with self._lock:
            if index in self._items:
                return
            self._items[index] = (raw, packed)
            self._used += len(raw) + len(packed)
            while self._used > self._max and self._items:
                _, (r, p) = self._items.popitem(last=False)
                self._used -= len(r) + len(p)


class TileResponder:
    """Answers one GET path (no sockets: the HTTP handler below and the tests call it)."""

    def __init__(self, source: TileLog, *, bundle_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.source = source
        self._bundles = _BundleCache(bundle_cache_bytes)

    def get(self, raw_path: str, *, gzip_ok: bool = False) -> Response:
        path = raw_path.split("?", 1)[0].split("#", 1)[0]
        if len(path) > MAX_PATH_CHARS:
            return _error(
                HTTPStatus.BAD_REQUEST, f"path of {len(path)} characters: no tile path is that long"
            )
        if not path.startswith("/"):
            return _error(HTTPStatus.BAD_REQUEST, "the path must start with /")
        path = path[1:]
        try:
            text = self.source.published_checkpoint_text()
        except LedgerStartingError:
            # Bound before the replay: say "soon", which clients retry, rather than "never".
            starting = _error(
                HTTPStatus.SERVICE_UNAVAILABLE, "starting: the ledger is replaying its log"
            )
            starting.headers["Retry-After"] = "1"
            return starting
        if path == "checkpoint":
            if text is None:
                return _error(HTTPStatus.NOT_FOUND, "no checkpoint published yet")
            return Response(
                HTTPStatus.OK,
                text.encode(),
                {"Content-Type": TEXT, "Cache-Control": f"public, max-age={CHECKPOINT_MAX_AGE}"},
            )
        if not path.startswith("tile/"):
            return _error(
                HTTPStatus.NOT_FOUND,
                "not found: this server serves checkpoint, tile/<L>/<N>[.p/<W>] and "
                "tile/entries/<N>[.p/<W>] (c2sp.org/tlog-tiles)",
            )
        try:
            ref = tiles.parse_tile_path(path)
        except TilePathError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        size = self.source.checkpoint_size(text) if text is not None else 0
        if not tiles.exists_in(ref, size):
            return _error(
                HTTPStatus.NOT_FOUND,
                f"{path} is beyond the newest checkpoint (tree size {size})",
            )
        cache = f"public, max-age={PARTIAL_TILE_MAX_AGE}" if ref.is_partial else IMMUTABLE
        headers = {"Content-Type": OCTETS, "Cache-Control": cache}
        if not ref.is_entries:
            return Response(HTTPStatus.OK, self.source.tile_hashes(ref), headers)
        try:
            raw, packed = self._bundle(ref)
        except FormatError as exc:
            log.error("tiles_bundle_unservable path=%s error=%s", path, exc)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{path} cannot be served: {exc}")
        headers["Vary"] = "Accept-Encoding"
        if gzip_ok:
            headers["Content-Encoding"] = "gzip"
            return Response(HTTPStatus.OK, packed, headers)
        return Response(HTTPStatus.OK, raw, headers)

    def _bundle(self, ref: TileRef) -> tuple[bytes, bytes]:
        if not ref.is_partial and (cached := self._bundles.get(ref.index)) is not None:
            return cached
        entries = self.source.entries(ref.index * tiles.TILE_WIDTH, ref.width)
        raw = tiles.entry_bundle(entries)
        # mtime 0: the same bundle always gzips to the same bytes (caches and ETags agree).
        packed = gzip.compress(raw, compresslevel=6, mtime=0)
        if not ref.is_partial:
            self._bundles.put(ref.index, raw, packed)
        return raw, packed


class _Handler(BaseHTTPRequestHandler):
    server: TilesHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: a mirror fetches thousands of tiles
    # Small answers on a kept-alive connection: without this each waits out the client's
    # delayed acknowledgement (tens of milliseconds a tile).
    disable_nagle_algorithm = True
    server_version = "steward-tiles"
    sys_version = ""
    # Requests the standard library refuses itself (a garbage request line, a header too long)
    # get the same one-line plain text as ours, with a status line even to an HTTP/0.9 one.
    default_request_version = "HTTP/1.0"
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = TEXT

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse_method(self) -> None:
        # Whatever body came with it is left unread, so the connection cannot carry on.
        self.close_connection = True
        self._send(
            Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                b"read-only: GET and HEAD\n",
                {
                    "Content-Type": TEXT,
                    "Allow": "GET, HEAD",
                    "Cache-Control": "no-store",
                    "Connection": "close",
                },
            ),
            head=False,
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, *, head: bool) -> None:
        try:
            response = self.server.responder.get(
                self.path, gzip_ok=accepts_gzip(self.headers.get("Accept-Encoding"))
            )
        except Exception:
            log.exception("tiles_request_failed path=%r", self.path[:MAX_PATH_CHARS])
            response = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error (logged)")
        self._send(response, head=head)

    def _send(self, response: Response, *, head: bool) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("tiles_http " + format, *args)


class TilesHTTPServer(ThreadingHTTPServer):
    """The HTTP server: one daemon thread per connection, at most ``max_connections`` at once."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        responder: TileResponder,
        *,
        max_connections: int = 64,
        timeout: float = 30.0,
    ) -> None:
        self.responder = responder
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        handler = type("TileHandler", (_Handler,), {"timeout": timeout})
        super().__init__(address, handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=1.0):
            log.warning("tiles_busy client=%s: every connection slot is taken", client_address)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is not the server's error: a line, no traceback.
        log.debug("tiles_connection_error client=%s", client_address, exc_info=True)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, name="tiles-http", kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serve_tiles(
    listen: str, source: TileLog, *, max_connections: int = 64, timeout: float = 30.0
) -> TilesHTTPServer:
    """Bind ``HOST:PORT`` (port 0 picks one) and serve ``source``'s tiles from a thread."""
    host, _, port_s = listen.rpartition(":")
    host = host.strip("[]")
    if not host or not (port_s.isascii() and port_s.isdigit()) or int(port_s) > 65535:
        raise ValueError(f"{listen!r}: expected HOST:PORT, the port from 0 to 65535")
    server = TilesHTTPServer(
        (host, int(port_s)), TileResponder(source), max_connections=max_connections, timeout=timeout
    )
    server.start()
    return server
