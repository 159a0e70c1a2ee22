"""steward-audit --tiles reads the same log as an export and finds the same things in it.

Every tampered ledger of tests/audit_tamper.py, at each of its checkpoints, is written out as
static tiles (what any plain web server or bucket can serve), read back over HTTP through
audit.sources.TilesSource, and verified; the export of the same entries and checkpoint must give
the same findings, the same number of entries and the same verified size.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from audit.cli import main
from audit.note import parse_checkpoint, parse_note
from audit.sources import ExportSource, Source, TilesSource, write_export
from audit.trust import TrustRoot
from audit.verify import Report, verify
from tests.audit_tamper import FORK, TAMPERS, Builder, Log
from tests.helpers.tiles import write_tiled_log


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A plain static file server (the standard library's) over a directory of tiled logs."""
    root = tmp_path_factory.mktemp("tiles")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _size(note: str) -> int:
    return parse_checkpoint(parse_note(note).text).size


def _audit(source: Source, trust: dict[str, object]) -> Report:
    try:
        checkpoints = source.checkpoints()
        return verify(
            source.records(),
            TrustRoot.from_json(trust),
            checkpoints,
            tail="pending" if source.live else "finding",
        )
    finally:
        source.close()


def _both(log: Log, note: str, where: Path, url: str) -> tuple[Report, Report]:
    """(export, tiles): the entries up to the checkpoint's size and that one checkpoint."""
    records = log.records[: _size(note)]
    where.mkdir(parents=True)
    write_export(where / "export.avro", records, [(_size(note), note)])
    write_tiled_log(where / "tiles", records, note, _size(note))
    return (
        _audit(ExportSource(where / "export.avro"), log.trust),
        _audit(TilesSource(f"{url}/{where.name}/tiles/"), log.trust),
    )


def _same(export: Report, tiles: Report) -> None:
    assert [str(f) for f in tiles.findings] == [str(f) for f in export.findings]
    assert (tiles.entries, tiles.verified_size) == (export.entries, export.verified_size)


def test_a_clean_ledger_reads_the_same_from_tiles(static_root: tuple[Path, str]) -> None:
    root, url = static_root
    log = Builder().clean().log()
    for i, note in enumerate(log.checkpoints):
        export, tiles = _both(log, note, root / f"clean-{i}", url)
        assert tiles.findings == [] and tiles.verified_size == _size(note)
        _same(export, tiles)


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_each_tamper_gives_the_same_findings_from_tiles_as_from_an_export(
    static_root: tuple[Path, str], name: str
) -> None:
    root, url = static_root
    code, make = TAMPERS[name]
    log = make()
    seen: set[str] = set()
    for i, note in enumerate(log.checkpoints):
        export, tiles = _both(log, note, root / f"{name.replace(' ', '-')}-{i}", url)
        _same(export, tiles)
        seen.update(f.code for f in tiles.findings)
    assert code in seen, f"{name}: expected {code} at some checkpoint, observed {sorted(seen)}"


def test_a_fork_against_a_saved_checkpoint_is_caught_from_tiles(
    static_root: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, url = static_root
    code, make = FORK
    log, saved = make()
    write_tiled_log(root / "fork" / "tiles", log.records, log.checkpoints[-1])
    (tmp_path / "trust.json").write_text(json.dumps(log.trust))
    (tmp_path / "saved.note").write_text(saved)
    args = ["verify", "--tiles", f"{url}/fork/tiles", "--trust-root", str(tmp_path / "trust.json")]
    assert main(args) == 0  # consistent with itself ...
    capsys.readouterr()
    assert main([*args, "--json", "--since-checkpoint", str(tmp_path / "saved.note")]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert code in [f["code"] for f in findings]  # ... not with what the auditor saw before


def test_the_cli_reads_tiles_and_says_what_a_bad_tile_is(
    static_root: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, url = static_root
    log = Builder().clean().log()
    tiles = write_tiled_log(root / "cli" / "tiles", log.records, log.checkpoints[-1])
    (tmp_path / "trust.json").write_text(json.dumps(log.trust))
    args = ["verify", "--tiles", f"{url}/cli/tiles/", "--trust-root", str(tmp_path / "trust.json")]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["entries"] == len(log.records) and report["findings"] == []
    watch = ["watch", *args[1:], "--state-dir", str(tmp_path / "state"), "--rounds", "1"]
    assert main(watch) == 0
    assert (tmp_path / "state" / "last-verified.note").read_text() == log.checkpoints[-1]
    capsys.readouterr()

    (tile,) = (tiles / "tile" / "0" / "000.p").iterdir()  # the one partial level-0 tile
    data = bytearray(tile.read_bytes())
    data[40] ^= 0x80
    tile.write_bytes(bytes(data))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tile/0/000" in err and "contradict" in err and "\n" not in err.rstrip("\n")

    assert (
        main(["verify", "--tiles", f"{url}/nowhere/", "--trust-root", str(tmp_path / "trust.json")])
        == 2
    )
    assert "no checkpoint" in capsys.readouterr().err
    assert (
        main(["verify", "--tiles", "ftp://x/", "--trust-root", str(tmp_path / "trust.json")]) == 2
    )
