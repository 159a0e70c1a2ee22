"""The steward-audit command on export files: exit codes, reports, saved checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit.cli import main
from audit.note import parse_checkpoint, parse_note
from audit.sources import write_export
from audit.trust import TrustRoot
from tests.audit_tamper import TAMPERS, Builder, Log


def _files(tmp_path: Path, log: Log, name: str = "ledger.avro") -> tuple[Path, Path]:
    export = tmp_path / name
    sizes = [parse_checkpoint(parse_note(n).text).size for n in log.checkpoints]
    write_export(export, log.records, list(zip(sizes, log.checkpoints, strict=True)))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(log.trust))
    return export, trust


def test_clean_export_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export, trust = _files(tmp_path, Builder().clean().log())
    saved = tmp_path / "seen.note"
    html = tmp_path / "r.html"
    code = main(
        [
            "verify",
            "--export",
            str(export),
            "--trust-root",
            str(trust),
            "--no-progress",
            "--save-checkpoint",
            str(saved),
            "--html",
            str(html),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "RESULT: VERIFIED" in out
    # The report names what checked the signatures: here, the native verifier setup installs.
    assert "  signatures checked by: native strict Ed25519" in out
    assert saved.read_text().startswith("steward.dev/ledger/demo\n")
    assert "<svg" in html.read_text() and "<script" not in html.read_text()
    assert (
        main(
            [
                "verify",
                "--export",
                str(export),
                "--trust-root",
                str(trust),
                "--since-checkpoint",
                str(saved),
            ]
        )
        == 0
    )


def test_tampered_export_exits_1_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code_wanted, make = TAMPERS["self-approval"]
    export, trust = _files(tmp_path, make())
    assert (
        main(
            [
                "verify",
                "--export",
                str(export),
                "--trust-root",
                str(trust),
                "--json",
                "--workers",
                "2",
            ]
        )
        == 1
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is False
    assert code_wanted in {f["code"] for f in doc["findings"]}
    assert doc["verifier"] == "native"


def test_the_report_says_when_libsodium_checked_the_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import steward_ed25519

    monkeypatch.setattr(steward_ed25519, "LIBRARY", None)
    export, trust = _files(tmp_path, Builder().clean().log())
    args = ["verify", "--export", str(export), "--trust-root", str(trust), "--no-progress"]
    assert main([*args, "--workers", "2"]) == 0
    assert "signatures checked by: libsodium strict Ed25519" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verifier"] == "libsodium"


def test_infrastructure_and_usage_errors_exit_2(tmp_path: Path) -> None:
    export, trust = _files(tmp_path, Builder().clean().log())
    assert (
        main(["verify", "--export", str(tmp_path / "missing.avro"), "--trust-root", str(trust)])
        == 2
    )
    assert (
        main(["verify", "--export", str(export), "--trust-root", str(tmp_path / "nope.json")]) == 2
    )
    (tmp_path / "garbage.avro").write_bytes(b"not avro")
    assert (
        main(["verify", "--export", str(tmp_path / "garbage.avro"), "--trust-root", str(trust)])
        == 2
    )
    assert main(["verify", "--trust-root", str(trust)]) == 2


def test_wrong_trust_root_is_a_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = Builder().clean().log()
    other = Builder(seed="someone else")
    log.trust = other.trust()
    export, trust = _files(tmp_path, log)
    assert main(["verify", "--export", str(export), "--trust-root", str(trust), "--json"]) == 1
    codes = {f["code"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert {"TRUST_ROOT_MISMATCH", "VKEY_MISMATCH"} <= codes


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--help"]) == 0
    assert "--since-checkpoint" in capsys.readouterr().out


def test_a_checkpoint_with_a_lone_surrogate_is_a_finding_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON's "\\ud800" escape reads as a lone surrogate, which no UTF-8 encoder takes: the
    export's checkpoint list can hold one (found by test_audit_notes at 30,000 examples)."""
    log = Builder().clean().log()
    sizes = [parse_checkpoint(parse_note(n).text).size for n in log.checkpoints]
    notes = [*log.checkpoints[:-1], "\ud800" + log.checkpoints[-1][1:]]
    export = tmp_path / "ledger.avro"
    write_export(export, log.records, list(zip(sizes, notes, strict=True)))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps(log.trust))
    code = main(["verify", "--export", str(export), "--trust-root", str(trust), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert (
        "[CHECKPOINT_MALFORMED] log: checkpoint is not a C2SP checkpoint: note is not UTF-8" in out
    )
    assert "internal error" not in out


@pytest.mark.parametrize(
    ("size", "why"),
    [
        ("\u00b945", "is not a decimal number"),  # "¹45": a digit to str.isdigit(), not to int()
        ("\u0663", "is not a decimal number"),  # Arabic-Indic three: int() reads it as 3
        (str(2**64), "does not fit in 64 bits"),
    ],
)
def test_a_checkpoint_size_is_ascii_decimal_in_64_bits_for_the_auditor_as_for_the_ledger(
    size: str, why: str
) -> None:
    from audit.note import NoteError
    from ledger.c2sp_text import MalformedError
    from ledger.checkpoint import Checkpoint

    text = f"steward.dev/ledger/t\n{size}\n{'A' * 43}=\n"
    with pytest.raises(NoteError, match=why):
        parse_checkpoint(text)
    with pytest.raises(MalformedError):
        Checkpoint.parse(text)


def test_a_verifier_key_whose_name_holds_a_lone_surrogate_is_refused_not_a_crash() -> None:
    """Found by test_audit_checkpoint_and_vkey at 60,000 examples: the key id hashes the name's
    UTF-8 bytes, which a lone surrogate (JSON's "\\ud800", in a trust root) does not have."""
    from audit.note import NoteError, parse_vkey

    with pytest.raises(NoteError, match="bad name or key id"):
        parse_vkey(
            "\ud800teward.dev/ledger/fuzz+36b9a975+AQOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
        )


def test_the_cli_tunes_the_collector_for_the_run_and_restores_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from audit import cli
    from audit.heap import AUDIT_THRESHOLDS

    export, trust = _files(tmp_path, Builder().clean().log())
    seen: list[tuple[int, int, int]] = []
    real = cli.verify

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.get_threshold())
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "verify", spy)
    before = gc.get_threshold()
    args = ["verify", "--export", str(export), "--trust-root", str(trust), "--no-progress"]
    assert main(args) == 0
    assert seen == [AUDIT_THRESHOLDS]
    assert gc.get_threshold() == before
    # verify() itself, a library call, leaves the caller's collector alone.
    log = Builder().clean().log()
    real(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert gc.get_threshold() == before
