"""Attack 8 of issue #14: `steward-audit` on hostile files, and tails no checkpoint covers.

Every hostile file here is made from a real export: a ledger server on SQLite, a governance
flow appended through gRPC, and `ledger.export.write_export` (what `steward export` runs). The
files are then cut, flipped or rebuilt with this module's own small container writer, so each
defect is exactly the one named. What must hold: the auditor never crashes and never balloons;
every malformed input is exit 2 with one line saying what, where and why; a tail no signed
checkpoint covers is a finding in an export, and in live mode is either covered by a
checkpoint the auditor asks for or reported as pending, never as verified.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from audit.cli import main
from ledger.client import LedgerClient
from ledger.export import write_export, write_trust_root
from ledger.formats import SignedEvent
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve
from tests.helpers.stories import canary_started

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_EVERY = 4
ENTRIES = 17  # not a multiple of CHECKPOINT_EVERY: the server's own checkpoints leave a tail


# -- a real ledger and its export ----------------------------------------------------------------


def _populate(address: str, cast: Cast) -> None:
    with LedgerClient(address, timeout=10, retries=0) as client:
        flow = Flow(cast, state=followed_state(client.read))

        def ok(event: SignedEvent) -> bytes:
            return client.append(event).leaf_hash

        p = canary_started(ok, flow)
        ok(flow.health(p, 0, True))
        assert client.head().size == ENTRIES


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    """A running ledger server whose newest checkpoint (16) leaves seq 16 uncovered, and its trust root."""
    cast = Cast.create(seed="audit-input")
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            checkpoint_every_entries=CHECKPOINT_EVERY,
        )
    )
    try:
        _populate(running.address, cast)
        trust = tmp_path / "trust.json"
        with LedgerClient(running.address, timeout=10, retries=0) as client:
            assert client.checkpoints()[-1].size < ENTRIES, (
                "the server's checkpoints must leave a tail"
            )
            write_trust_root(client, trust)
        yield running, trust
    finally:
        running.stop(None)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """(the bytes of a real export, its trust root)."""
    tmp = tmp_path_factory.mktemp("export")
    cast = Cast.create(seed="audit-input")
    running = serve(
        LedgerServerConfig(
            store=tmp / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            checkpoint_every_entries=CHECKPOINT_EVERY,
        )
    )
    try:
        _populate(running.address, cast)
        with LedgerClient(running.address, timeout=10, retries=0) as client:
            write_export(client, tmp / "ledger.avro", progress=False)
            write_trust_root(client, tmp / "trust.json")
    finally:
        running.stop(None)
    return (tmp / "ledger.avro").read_bytes(), tmp / "trust.json"


# -- this test's own view of an Avro object container file ----------------------------------------


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63) if n >= 0 else ((-n) << 1) - 1
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _long(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return (n >> 1) ^ -(n & 1), pos


@dataclass
class Block:
    count: int
    data: bytes  # as stored (deflated)
    offset: int  # of its count field in the file


@dataclass
class Container:
    meta: dict[str, bytes]
    sync: bytes
    blocks: list[Block]
    header_end: int  # offset of the first block

    @classmethod
    def parse(cls, data: bytes) -> Container:
        assert data[:4] == b"Obj\x01"
        pos, meta = 4, {}
        while True:
            count, pos = _long(data, pos)
            if count == 0:
                break
            for _ in range(count):
                n, pos = _long(data, pos)
                key = data[pos : pos + n].decode()
                pos += n
                n, pos = _long(data, pos)
                meta[key] = data[pos : pos + n]
                pos += n
        sync = data[pos : pos + 16]
        pos += 16
        header_end, blocks = pos, []
        while pos < len(data):
            at = pos
            count, pos = _long(data, pos)
            size, pos = _long(data, pos)
            blocks.append(Block(count, data[pos : pos + size], at))
            pos += size
            assert data[pos : pos + 16] == sync
            pos += 16
        return cls(meta, sync, blocks, header_end)

    def build(self) -> bytes:
        out = bytearray(b"Obj\x01")
        out += _zigzag(len(self.meta))
        for k, v in self.meta.items():
            out += _zigzag(len(k.encode())) + k.encode() + _zigzag(len(v)) + v
        out += b"\x00" + self.sync
        for b in self.blocks:
            out += _zigzag(b.count) + _zigzag(len(b.data)) + b.data + self.sync
        return bytes(out)

    def records(self, block: int) -> list[tuple[int, bytes]]:
        raw, pos, out = zlib.decompress(self.blocks[block].data, -15), 0, []
        for _ in range(self.blocks[block].count):
            seq, pos = _long(raw, pos)
            n, pos = _long(raw, pos)
            out.append((seq, raw[pos : pos + n]))
            pos += n
        return out


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(raw) + c.flush()


def _record(seq: int, entry: bytes) -> bytes:
    return _zigzag(seq) + _zigzag(len(entry)) + entry


# -- running the auditor -------------------------------------------------------------------------


def _audit(
    path: Path, trust: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str, str]:
    code = main(
        ["verify", "--export", str(path), "--trust-root", str(trust), "--no-progress", *extra]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cannot_audit(
    data: bytes, tmp_path: Path, trust: Path, capsys: pytest.CaptureFixture[str], *words: str
) -> str:
    """The file is refused: exit 2, one line on stderr naming the file, where and why."""
    path = tmp_path / "hostile.avro"
    path.write_bytes(data)
    code, out, err = _audit(path, trust, capsys)
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}, stdout {out!r}, stderr {err!r}"
    assert len(lines) == 1, f"not one line: {err!r}"
    line = lines[0]
    assert line.startswith("steward-audit: error: ") and str(path) in line, line
    assert "byte" in line or "block" in line, f"says no where: {line}"
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert "Traceback" not in err and out == "", (out, err)
    return line


def test_the_real_export_verifies(
    export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    path = tmp_path / "ledger.avro"
    path.write_bytes(data)
    code, out, err = _audit(path, trust, capsys)
    assert code == 0 and "RESULT: VERIFIED" in out, (out, err)


# -- exporter ------------------------------------------------------------------------------------


def test_the_exporter_ends_covered_by_a_checkpoint(export: tuple[bytes, Path]) -> None:
    """`steward export` on a ledger whose newest checkpoint leaves a tail still writes an export
    that a signed checkpoint covers to its last entry."""
    c = Container.parse(export[0])
    sizes = [cp["size"] for cp in json.loads(c.meta["steward.checkpoints"])]
    records = sum(b.count for b in c.blocks)
    assert records == ENTRIES and sizes[-1] == records, (sizes, records)


# -- malformed containers: exit 2, one line --------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        "in the magic",
        "in the metadata",
        "in the header's sync marker",
        "in a block's header",
        "in a block's data",
        "in the last sync marker",
    ],
)
def test_truncated_export(
    where: str, export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    c = Container.parse(data)
    cut = {  # (a cut exactly at a block boundary leaves a whole, shorter file: not this test)
        "in the magic": 2,
        "in the metadata": c.header_end // 2,
        "in the header's sync marker": c.header_end - 5,
        "in a block's header": c.blocks[-1].offset + 1,
        "in a block's data": c.blocks[-1].offset + len(c.blocks[-1].data) // 2,
        "in the last sync marker": len(data) - 3,
    }[where]
    _cannot_audit(data[:cut], tmp_path, trust, capsys, "truncated")


def test_bad_sync_marker(
    export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    c = Container.parse(data)
    at = (
        c.blocks[0].offset
        + len(_zigzag(c.blocks[0].count))
        + len(_zigzag(len(c.blocks[0].data)))
        + len(c.blocks[0].data)
        + 7
    )
    flipped = bytearray(data)
    flipped[at] ^= 0x40
    _cannot_audit(bytes(flipped), tmp_path, trust, capsys, "sync marker", "block 0")


@pytest.mark.parametrize(
    "damage", ["invalid block type", "stream cut short", "data after the stream"]
)
def test_corrupt_deflate_block(
    damage: str, export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    c = Container.parse(data)
    stored = c.blocks[0].data
    c.blocks[0].data = {
        "invalid block type": b"\x07" + stored[1:],  # BTYPE=11 is reserved (RFC 1951 3.2.3)
        "stream cut short": stored[: len(stored) // 2],
        "data after the stream": stored + b"\x00garbage",
    }[damage]
    _cannot_audit(c.build(), tmp_path, trust, capsys, "block 0", "deflate")


ABSURD = 1 << 62


def _absurd(c: Container, field: str) -> bytes:
    data = c.build()
    b0 = c.blocks[0]
    count_field = _zigzag(b0.count)
    if field == "block size":
        head = _zigzag(b0.count) + _zigzag(ABSURD)
        return (
            data[: b0.offset]
            + head
            + b0.data
            + c.sync
            + data[b0.offset + len(count_field) + len(_zigzag(len(b0.data))) + len(b0.data) + 16 :]
        )
    if field == "negative block size":
        return (
            data[: b0.offset]
            + count_field
            + _zigzag(-5)
            + data[b0.offset + len(count_field) + len(_zigzag(len(b0.data))) :]
        )
    if field == "block object count":
        return data[: b0.offset] + _zigzag(ABSURD) + data[b0.offset + len(count_field) :]
    if field == "negative object count":
        return data[: b0.offset] + _zigzag(-3) + data[b0.offset + len(count_field) :]
    if field == "metadata entry count":
        return b"Obj\x01" + _zigzag(ABSURD) + data[5:]
    if field == "metadata value length":
        key = b"steward.format"
        i = data.index(key) + len(key)
        return data[:i] + _zigzag(ABSURD) + data[i + 1 :]
    if field == "entry length":
        records = c.records(0)
        raw = b"".join(_record(s, e) for s, e in records[:-1])
        raw += _zigzag(records[-1][0]) + _zigzag(ABSURD) + records[-1][1]
        return replace(c, blocks=[Block(b0.count, _deflate(raw), 0), *c.blocks[1:]]).build()
    if field == "record count beyond the block's data":
        raw = b"".join(_record(s, e) for s, e in c.records(0))
        return replace(c, blocks=[Block(b0.count + 1, _deflate(raw), 0), *c.blocks[1:]]).build()
    raise AssertionError(field)


@pytest.mark.parametrize(
    "field",
    [
        "block size",
        "negative block size",
        "block object count",
        "negative object count",
        "metadata entry count",
        "metadata value length",
        "entry length",
        "record count beyond the block's data",
    ],
)
def test_absurd_length_fields(
    field: str, export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    _cannot_audit(_absurd(Container.parse(data), field), tmp_path, trust, capsys)


@pytest.mark.parametrize("codec", [b"snappy", b"zstandard", b"deflate\x00"])
def test_unknown_codec(
    codec: bytes, export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, trust = export
    c = Container.parse(data)
    c.meta["avro.codec"] = codec
    _cannot_audit(c.build(), tmp_path, trust, capsys, "codec")


@pytest.mark.parametrize(
    "key,value",
    [
        ("steward.checkpoints", "[" * 100_000 + "]" * 100_000),
        ("steward.checkpoints", '[{"size": 1, "note": ' * 5_000 + "1" + "}]" * 5_000),
        ("avro.schema", '{"type": ' * 100_000 + '"long"' + "}" * 100_000),
        ("steward.checkpoints", "[1, 2]"),
        ("steward.checkpoints", '[{"size": "x", "note": 3}]'),
        (
            "avro.schema",
            '{"type": "record", "name": "Other", "fields": [{"name": "seq", "type": "string"}]}',
        ),
    ],
)
def test_hostile_json_metadata(
    key: str,
    value: str,
    export: tuple[bytes, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, trust = export
    c = Container.parse(data)
    c.meta[key] = value.encode()
    _cannot_audit(c.build(), tmp_path, trust, capsys, key)


def test_not_an_avro_file(
    tmp_path: Path, export: tuple[bytes, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _cannot_audit(b"PK\x03\x04 a zip file, not an export", tmp_path, export[1], capsys, "magic")


# -- decompression bounded -------------------------------------------------------------------------

BOMB_BYTES = 1600 * 1024 * 1024  # what a 1.5 MB deflate block inflates to
MEMORY_CEILING = 1024 * 1024 * 1024  # the auditor process may not map more than this
PEAK_RSS_LIMIT_KB = 256 * 1024  # and its resident peak must stay under this


def _bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(16 * 1024 * 1024)
    parts = [c.compress(zeros) for _ in range(BOMB_BYTES // len(zeros))]
    return b"".join(parts) + c.flush()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CEILING, MEMORY_CEILING))


def test_deflate_bomb_stays_bounded(export: tuple[bytes, Path], tmp_path: Path) -> None:
    """A block of ~1.5 MB that inflates to 1.6 GB: refused once it passes the block bound, in a
    process that may map at most 1 GiB, with a resident peak under 256 MiB."""
    data, trust = export
    c = Container.parse(data)
    bomb = _bomb()
    assert len(bomb) < 2 * 1024 * 1024
    c.blocks.insert(1, Block(1000, bomb, 0))
    path = tmp_path / "bomb.avro"
    path.write_bytes(c.build())
    # The peak is VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across exec, so
    # inside a full pytest run the child reported pytest's own 258 MiB as the auditor's peak.
    probe = (
        "import sys; from audit.cli import main; code = main(sys.argv[1:]); "
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]; "
        "print('peak_kb', hwm, file=sys.stderr); "
        "sys.exit(code)"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            "verify",
            "--export",
            str(path),
            "--trust-root",
            str(trust),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 2 and lines[0].startswith("steward-audit: error: "), run.stderr[-2000:]
    assert "block 1" in lines[0] and "inflate" in lines[0], lines[0]
    peak_kb = int(lines[1].split()[1])
    assert peak_kb < PEAK_RSS_LIMIT_KB, f"peak RSS {peak_kb} KiB"


# -- tails no signed checkpoint covers ----------------------------------------------------------


def test_uncovered_tail_in_an_export_is_a_finding(
    export: tuple[bytes, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The export's checkpoints stop at 12 of 17 entries: seqs 12..16 are signed by their
    authors, but nothing the ledger signed vouches for them."""
    data, trust = export
    c = Container.parse(data)
    cps = [cp for cp in json.loads(c.meta["steward.checkpoints"]) if cp["size"] <= 12]
    c.meta["steward.checkpoints"] = json.dumps(cps).encode()
    path = tmp_path / "tail.avro"
    path.write_bytes(c.build())
    code, out, _ = _audit(path, trust, capsys, "--json")
    doc = json.loads(out)
    tail = [f for f in doc["findings"] if f["code"] == "UNCOVERED_TAIL"]
    assert code == 1 and doc["verified"] is False, out
    assert len(tail) == 1 and tail[0]["seq"] == 12 and "12..16" in tail[0]["message"], tail
    code, out, _ = _audit(path, trust, capsys)
    assert code == 1 and "RESULT: NOT VERIFIED" in out and "UNCOVERED_TAIL" in out, out


def test_live_audit_asks_for_a_checkpoint_covering_the_tail(
    ledger: tuple[RunningServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    running, trust = ledger
    code = main(["verify", "--grpc", running.address, "--trust-root", str(trust), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["verified"] is True, doc
    assert doc["entries"] == ENTRIES and doc["verified_checkpoint_size"] == ENTRIES, doc
    assert doc.get("pending") is None, doc
    with LedgerClient(running.address, timeout=10, retries=0) as client:
        assert client.checkpoints()[-1].size == ENTRIES


def test_live_audit_without_asking_reports_the_tail_pending(
    ledger: tuple[RunningServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    running, trust = ledger
    code = main(
        ["verify", "--grpc", running.address, "--trust-root", str(trust), "--no-checkpoint-request"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RESULT: VERIFIED (no findings)" not in out, out
    assert "PENDING" in out and "seq 16..16" in out, out
    code = main(
        [
            "verify",
            "--grpc",
            running.address,
            "--trust-root",
            str(trust),
            "--no-checkpoint-request",
            "--json",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["pending"] == {"first_seq": 16, "last_seq": 16, "entries": 1}, doc
    assert doc["verified_checkpoint_size"] == 16, doc
    with LedgerClient(running.address, timeout=10, retries=0) as client:
        assert client.checkpoints()[-1].size == 16, "the auditor asked for no checkpoint"


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "0 verified" in out and "1 findings" in out and "2 cannot audit the input" in out, out


# -- a hostile tiles server ----------------------------------------------------------------------


@pytest.mark.parametrize("length", ["\u00b2", "\u00b9\u00b2"])
def test_a_tiles_server_whose_content_length_is_a_superscript_digit(
    export: tuple[bytes, Path], length: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`Content-Length: ²` is a digit to str.isdigit() and no number to int(): the auditor read
    it as one and ended with an internal error. It must read no more than a tile's limit and
    judge what it got: here no signed checkpoint, so NOT VERIFIED."""
    import http.server
    import threading

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", length)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"not a checkpoint\n")
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _data, trust = export
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        code = main(["verify", "--tiles", url, "--trust-root", str(trust), "--no-progress"])
        captured = capsys.readouterr()
        assert "internal error" not in captured.out + captured.err, captured
        # What it served is read (no more than the limit) and judged: no signed checkpoint.
        assert code == 1, captured
        assert "checkpoint is not a C2SP checkpoint" in captured.out, captured
        assert "RESULT: NOT VERIFIED" in captured.out, captured
    finally:
        server.shutdown()
        server.server_close()
