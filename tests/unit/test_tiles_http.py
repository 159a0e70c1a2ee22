"""The tiles HTTP layer (ledger.tiles_http): what each path answers, as an attacker would try
them, and the same over a real socket."""

from __future__ import annotations

import gzip
import http.client
import socket

import pytest

from ledger import tiles
from ledger.tiles_http import IMMUTABLE, TileResponder, accepts_gzip, serve_tiles
from tests.helpers.tiles import MemoryTileLog, tiled_log

ENTRIES = [bytes([i % 256]) * (1 + i % 40) for i in range(70_000)]
NOTE = "example.org/log\n600\nAAAA\n\n\u2014 example.org/log AAAA\n"


@pytest.fixture(scope="module")
def responder() -> TileResponder:
    # The log holds 70,000 entries; the checkpoint covers 600 of them.
    return TileResponder(MemoryTileLog(ENTRIES, NOTE, size=600))


def test_checkpoint_is_the_note_as_published_with_a_short_cache(responder: TileResponder) -> None:
    r = responder.get("/checkpoint")
    assert r.status == 200 and r.body == NOTE.encode()
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Cache-Control"] == "public, max-age=2"


def test_full_tiles_are_immutable_and_partial_ones_short_lived(responder: TileResponder) -> None:
    expected = tiled_log(ENTRIES[:600], NOTE)
    for path in ("tile/0/000", "tile/0/001", "tile/0/002.p/88", "tile/1/000.p/2"):
        r = responder.get("/" + path)
        assert (r.status, r.body) == (200, expected[path]), path
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert r.headers["Cache-Control"] == ("public, max-age=60" if ".p/" in path else IMMUTABLE)
    r = responder.get("/tile/entries/001")
    assert r.body == expected["tile/entries/001"] and r.headers["Cache-Control"] == IMMUTABLE
    packed = responder.get("/tile/entries/001", gzip_ok=True)
    assert packed.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed.body) == r.body


def test_an_older_checkpoints_partial_tile_is_served_too(responder: TileResponder) -> None:
    r = responder.get("/tile/0/002.p/10")
    assert r.status == 200 and len(r.body) == 320
    assert responder.get("/tile/entries/002.p/10").body == tiles.entry_bundle(ENTRIES[512:522])


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tile/0/002", 404),  # full, but the checkpoint covers 600
        ("/tile/0/002.p/89", 404),  # one hash beyond the checkpoint
        ("/tile/entries/003.p/1", 404),
        ("/tile/1/000", 404),
        ("/tile/2/000.p/1", 404),
        ("/tile/0/x001/x000/x000/x000/x000/x000/000", 404),  # huge N: canonical, far beyond
        ("/tile/0/x000/001", 400),  # a second spelling of tile 1
        ("/tile/0/1", 400),
        ("/tile/0/001.p/0", 400),
        ("/tile/0/001.p/256", 400),
        ("/tile/64/000", 400),
        ("/tile/../checkpoint", 400),
        ("/tile/0/../../../etc/passwd", 400),
        ("/../etc/passwd", 404),
        ("/%2e%2e/checkpoint", 404),
        ("/checkpoint/", 404),
        ("/", 404),
        ("//checkpoint", 404),
        ("/tile/0/" + "x999/" * 100 + "000", 400),
        ("checkpoint", 400),
    ],
)
def test_bad_paths_get_a_plain_answer_never_a_traceback(
    responder: TileResponder, path: str, status: int
) -> None:
    r = responder.get(path)
    assert r.status == status, (path, r.body)
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Cache-Control"] == "no-store"
    text = r.body.decode()
    assert text.count("\n") == 1 and "Traceback" not in text and len(text) < 400


def test_before_the_first_checkpoint_nothing_is_served() -> None:
    responder = TileResponder(MemoryTileLog(ENTRIES[:10], None))
    assert responder.get("/checkpoint").status == 404
    assert responder.get("/tile/0/000.p/1").status == 404


def test_query_strings_do_not_make_a_second_resource(responder: TileResponder) -> None:
    assert responder.get("/tile/0/000?x=1").body == responder.get("/tile/0/000").body


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("gzip", True),
        ("gzip, identity", True),
        ("br;q=1.0, gzip;q=0.8", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity", False),
        (None, False),
        ("", False),
    ],
)
def test_accept_encoding(header: str | None, ok: bool) -> None:
    assert accepts_gzip(header) is ok


def test_over_a_socket_get_head_and_refused_methods() -> None:
    server = serve_tiles("127.0.0.1:0", MemoryTileLog(ENTRIES[:300], NOTE, size=300))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        for _ in range(3):  # one kept-alive connection answers one request after another
            conn.request("GET", "/tile/0/000")
            resp = conn.getresponse()
            assert resp.status == 200 and len(resp.read()) == 8192
        conn.request("HEAD", "/tile/entries/001.p/44")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        assert int(resp.getheader("Content-Length") or 0) > 0
        conn.request("POST", "/checkpoint", body=b"x")
        resp = conn.getresponse()
        assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
        resp.read()
        conn.close()  # the server closed it: a refused request's body is never read
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/tile/0/1")
        resp = conn.getresponse()
        assert resp.status == 400 and b"not a tile path" in resp.read()
        conn.close()
        # A request line of garbage: answered by the standard library, and the server lives.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            raw.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            answer = b""
            while chunk := raw.recv(1000):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"\n"), answer
            assert b"<" not in answer and b"Traceback" not in answer
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/checkpoint")
        assert conn.getresponse().read() == NOTE.encode()
        conn.close()
    finally:
        server.stop()


class _Starting(MemoryTileLog):
    def published_checkpoint_text(self) -> str | None:
        from ledger.errors import LedgerStartingError

        raise LedgerStartingError("starting: the ledger is replaying its log")


def test_while_the_ledger_replays_everything_is_503_retry_after() -> None:
    responder = TileResponder(_Starting(ENTRIES[:10], NOTE))
    for path in ("/checkpoint", "/tile/0/000.p/1"):
        r = responder.get(path)
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert r.body == b"starting: the ledger is replaying its log\n"


@pytest.mark.parametrize("listen", ["nonsense", "127.0.0.1:99999", ":80", "127.0.0.1:-1"])
def test_a_listen_address_that_is_no_host_and_port_is_refused_by_name(listen: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        serve_tiles(listen, MemoryTileLog([], None))
