"""The tiles as software nobody here wrote reads them: torchwood's tlog-tiles client
(tools/tiles-mirror, built from the Go module proxy) mirrors Steward's log over HTTP and
verifies it against the checkpoint, and refuses a tile altered on the way.

The 100,000-entry log is served by the ledger's own HTTP layer (ledger.tiles_http) over that
log in memory, so that the test does not spend its time replaying 100,000 signatures; a real
`python -m ledger.server --tiles-listen` serves the smaller one, through the writer, to the
same client and to `steward-audit verify --tiles`.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from audit.cli import main as audit_main
from bench import ledgergen
from infra.go_tools import build_local
from ledger import tiles
from ledger.merkle import MerkleTree, leaf_hash
from ledger.scenario import Cast
from ledger.store.sqlite import SQLiteLogStore
from ledger.tiles_http import serve_tiles
from tests.helpers.ledger_server import LedgerServerProcess
from tests.helpers.tiles import MemoryTileLog

REPO = Path(__file__).resolve().parents[2]
BIG = 100_000


@pytest.fixture(scope="module")
def mirror_tool() -> Path:
    return build_local(REPO / "tools" / "tiles-mirror", "tiles-mirror")


@pytest.fixture(scope="module")
def big_log() -> Iterator[tuple[ledgergen.GeneratedLedger, list[bytes], str]]:
    """The generated 100,000-entry ledger served as tiles; (ledger, entries, tiles URL)."""
    generated = ledgergen.ledger(BIG, progress=False)
    entries = generated.load()
    assert len(entries) == BIG
    note = generated.checkpoint_notes[-1]
    assert f"\n{BIG}\n" in note  # the generator's last checkpoint covers the whole log
    server = serve_tiles("127.0.0.1:0", MemoryTileLog(entries, note))
    try:
        yield generated, entries, f"http://127.0.0.1:{server.port}/"
    finally:
        server.stop()


def _mirror(tool: Path, url: str, vkey: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool), "-url", url, "-vkey", vkey, "-out", str(out), "-timeout", "3m"],
        capture_output=True,
        text=True,
        timeout=240,
    )


def _entries_digest(entries: list[bytes]) -> str:
    h = hashlib.sha256()
    for e in entries:
        h.update(len(e).to_bytes(4, "big") + e)
    return h.hexdigest()


def test_the_go_client_mirrors_100000_entries_and_verifies_them(
    mirror_tool: Path,
    big_log: tuple[ledgergen.GeneratedLedger, list[bytes], str],
    tmp_path: Path,
) -> None:
    generated, entries, url = big_log
    started = time.monotonic()
    done = _mirror(mirror_tool, url, generated.trust_root["vkey"], tmp_path / "mirror")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    root = MerkleTree.from_leaves(leaf_hash(e) for e in entries).root()
    assert summary == {
        "origin": ledgergen.ORIGIN,
        "size": BIG,
        "root": base64.b64encode(root).decode(),
        "entries": BIG,
        "entries_sha256": _entries_digest(entries),
    }, took
    # What it kept is what was served: the verified full tiles and every entry.
    mirrored = tmp_path / "mirror"
    assert (mirrored / "entries.bin").stat().st_size == sum(4 + len(e) for e in entries)
    full_level0 = list((mirrored / "tiles" / "tile" / "0").rglob("*"))
    assert sum(1 for p in full_level0 if p.is_file()) == BIG // 256
    saved = (mirrored / "tiles" / "tile" / "entries" / "123").read_bytes()
    assert saved == tiles.entry_bundle(entries[123 * 256 : 124 * 256])


class _Tamperer(BaseHTTPRequestHandler):
    """Forwards GETs to the tiles server, flipping one byte of the one path it was told."""

    upstream: tuple[str, int]
    target: str
    flipped: list[str]
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        # No Accept-Encoding: the byte flipped must be a byte of the tile, not of its gzip.
        conn.request("GET", self.path)
        resp = conn.getresponse()
        body = bytearray(resp.read())
        conn.close()
        if self.path == self.target and resp.status == 200:
            body[len(body) // 2] ^= 0x01
            self.flipped.append(self.path)
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type") or "")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("/tile/0/010", "inconsistent|mismatch"),  # a level-0 hash tile
        ("/tile/1/000", "inconsistent|mismatch"),  # the one full level-1 tile
        ("/tile/1/001.p/134", "inconsistent|mismatch"),  # the checkpoint's partial tiles
        ("/tile/0/390.p/160", "inconsistent|mismatch"),
        ("/tile/entries/020", "mismatch"),  # an entry bundle
        ("/checkpoint", "verif"),  # the checkpoint's signed text
    ],
)
def test_a_tile_altered_on_the_way_fails_the_go_clients_check(
    mirror_tool: Path,
    big_log: tuple[ledgergen.GeneratedLedger, list[bytes], str],
    tmp_path: Path,
    target: str,
    says: str,
) -> None:
    generated, _entries, url = big_log
    port = int(url.rsplit(":", 1)[1].strip("/"))
    flipped: list[str] = []
    handler = type(
        "Tamperer",
        (_Tamperer,),
        {"upstream": ("127.0.0.1", port), "target": target, "flipped": flipped},
    )
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        proxied = f"http://127.0.0.1:{proxy.server_address[1]}/"
        done = _mirror(mirror_tool, proxied, generated.trust_root["vkey"], tmp_path / "m")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert flipped == [target]
    assert done.returncode == 1, done.stdout
    assert done.stdout == ""
    assert re.search(says, done.stderr), done.stderr


def test_steward_serve_tiles_to_the_go_client_and_to_the_auditor(
    mirror_tool: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = ledgergen.ledger(3000, progress=False)
    db = tmp_path / "ledger.db"
    shutil.copy(generated.sqlite_path(), db)
    with sqlite3.connect(db) as conn:  # a store from before tiles, whatever the cache holds
        conn.execute("DROP TABLE IF EXISTS log_tiles")
    key = tmp_path / "checkpoint.pem"
    Cast.create(seed="steward-bench").checkpoint_key.save(key)
    server = LedgerServerProcess(
        [
            "-m",
            "ledger.server",
            "--db",
            str(db),
            "--checkpoint-key",
            str(key),
            "--listen",
            "127.0.0.1:0",
            "--tiles-listen",
            "127.0.0.1:0",
            "--projections",
            "off",
        ],
        tmp_path,
        start_timeout=120,
    )
    server.start()
    try:
        found = re.search(r"tiles on (http://\S+)", server.log())
        assert found, server.log()
        url = found[1]
        vkey = generated.trust_root["vkey"]
        done = _mirror(mirror_tool, url, vkey, tmp_path / "mirror")
        assert done.returncode == 0, done.stderr
        summary = json.loads(done.stdout)
        assert (summary["size"], summary["entries"]) == (3000, 3000)
        assert summary["entries_sha256"] == _entries_digest(generated.load())

        # Nothing past the checkpoint: 3000 = 11 full tiles and a partial one of 184.
        conn = http.client.HTTPConnection(url.split("//")[1].rstrip("/"), timeout=10)
        for path, status in [
            ("/tile/0/011.p/184", 200),
            ("/tile/entries/011.p/184", 200),
            ("/tile/0/011.p/185", 404),
            ("/tile/0/011", 404),
            ("/tile/1/000.p/12", 404),
            ("/tile/1/000.p/11", 200),
        ]:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == status, path
        conn.close()

        trust = tmp_path / "trust.json"
        trust.write_text(json.dumps(generated.trust_root))
        reports = []
        for source in (["--tiles", url], ["--export", str(generated.export_path())]):
            assert audit_main(["verify", *source, "--trust-root", str(trust), "--json"]) == 0
            reports.append(json.loads(capsys.readouterr().out))
        tiles_report, export_report = reports
        for field in ("findings", "entries", "verified_checkpoint_size", "pending"):
            assert tiles_report[field] == export_report[field], field
        assert tiles_report["entries"] == 3000
        # The server keeps its tree as these tiles (ledger.tile_store): the generated ledger
        # had none, so its first replay wrote the 11 full ones.
        assert "tiles_rewritten count=11 first=0/0" in server.log()
    finally:
        server.stop()
    # What the store holds is what the Go client verified, byte for byte.
    store = SQLiteLogStore(db, read_only=True)
    try:
        verified = sorted((tmp_path / "mirror" / "tiles" / "tile" / "0").rglob("*"))
        verified = [p for p in verified if p.is_file()]
        assert len(verified) == 11
        for path in verified:
            ref = tiles.parse_tile_path(path.relative_to(tmp_path / "mirror" / "tiles").as_posix())
            assert store.read_tile(0, ref.index) == path.read_bytes(), path
        # And the partial tiles of the size replayed, as the tree computed here has them.
        tree = MerkleTree.from_leaves(leaf_hash(e) for e in generated.load())
        for partial in (tiles.TileRef(0, 11, 184), tiles.TileRef(1, 0, 11)):
            assert store.read_tile(partial.level or 0, partial.index) == tiles.tile_hashes(
                tree, partial
            ), partial
    finally:
        store.close()
