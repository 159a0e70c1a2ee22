"""The auditor's own names and text rules (audit.names) and the findings they give."""

from __future__ import annotations

from typing import Any

import pytest

from audit import names
from audit.trust import TrustRoot
from audit.verify import verify
from tests.audit_tamper import TAMPERS


@pytest.mark.parametrize(
    "value, ok",
    [
        ("models", True),
        ("a", True),
        ("n" * 63, True),
        ("n" * 64, False),
        ("Models", False),
        ("-a", False),
        ("a-", False),
        ("a.b", False),
        ("", False),
        ("a b", False),
        ("a\n", False),
    ],
)
def test_namespace_is_a_dns_1123_label(value: str, ok: bool) -> None:
    assert names.is_namespace(value) is ok


@pytest.mark.parametrize(
    "value, ok",
    [
        ("model-server", True),
        ("model.server-2", True),
        (".".join(["d" * 63] * 4)[:253], True),
        ("d" * 254, False),
        ("model-server ", False),
        ("Model-Server", False),
        ("a..b", False),
        (".a", False),
        ("a.", False),
        ("a_b", False),
        ("model-server\nx", False),
    ],
)
def test_deployment_is_a_dns_1123_subdomain(value: str, ok: bool) -> None:
    assert names.is_deployment(value) is ok


@pytest.mark.parametrize(
    "value, ok",
    [
        ("human:alice@example.org", True),
        ("service:steward-controller", True),
        ("agent:a.b+c_d", True),
        ("human:alice smith", False),
        ("human:-a", False),
        ("human:", False),
        ("agent:a/b", False),
        ("human:" + "a" * 200, True),
        ("human:" + "a" * 201, False),
        ("human:caf\u00e9", False),
    ],
)
def test_principal_name_characters(value: str, ok: bool) -> None:
    assert names.is_principal_name(value) is ok


@pytest.mark.parametrize(
    "value, fault",
    [
        ("plain text, with spaces and unicode: café 日本語 🚦", False),
        ("a\nb", True),
        ("\x1b[2J", True),
        ("\u202e", True),
        ("\u200b", True),
        ("\u2029", True),
        ("\x7f", True),
        ("\x85", True),
        ("x" * 512, False),
        ("x" * 513, True),
        # Not printable, yet allowed (Zs, Co): they take the per-character path and pass.
        ("no\u00a0break", False),
        ("private \ue000 use", False),
        ("thin\u2009space then \u2028", True),
    ],
)
def test_text_has_no_control_character_and_a_cap(value: str, fault: bool) -> None:
    assert (names.text_fault(value, names.TEXT_MAX) is not None) is fault


def test_every_printable_character_is_outside_the_banned_categories() -> None:
    """text_fault's shortcut (a printable value has nothing to look for) rests on this, for
    every code point of this Python's Unicode database."""
    import unicodedata

    wrong = [
        hex(cp)
        for cp in range(0x110000)
        if chr(cp).isprintable() and unicodedata.category(chr(cp)) in names._BANNED
    ]
    assert wrong == []


@pytest.mark.parametrize(
    "name",
    [
        "signatures out of key-id order",
        "Deployment name that is no DNS-1123 subdomain",
        "newline in a kill switch reason",
    ],
)
def test_each_new_finding_is_the_only_one(name: str) -> None:
    code, make = TAMPERS[name]
    log = make()
    report = verify(log.records, TrustRoot.from_json(log.trust), log.checkpoints)
    assert [f.code for f in report.findings] == [code], [str(f) for f in report.findings]
    assert all("\n" not in str(f) for f in report.findings)


def _health_report(metric: str, name: str, query: str, detail: str) -> Any:
    from audit.formats import CheckEvidence, HealthReported, Metric, Sample

    return HealthReported(
        proposal=bytes(32),
        step=1,
        healthy=True,
        metrics=(Metric("latency_p99", 0.1), Metric(metric, 0.2)),
        checks=(
            CheckEvidence("error-rate", "sum(rate(x[1m]))", 1, (Sample(1, 0.0, ""),), "PASS"),
            CheckEvidence(name, query, 2, (Sample(2, None, "ok"), Sample(3, 1.0, detail)), "PASS"),
        ),
    )


@pytest.mark.parametrize("bad", ["a\nb", "\u202e", "x" * 513, "q" * 4097])
@pytest.mark.parametrize("where", ["metric", "name", "query", "detail"])
def test_a_health_reports_shortcut_gives_the_general_answer(where: str, bad: str) -> None:
    """problems() answers a clean health report without the general path; whatever a field
    holds, the answer is the general path's (field named), as if there were no shortcut."""
    values = {"metric": "m", "name": "n", "query": "up", "detail": "fine"}
    assert names.problems(_health_report(**values)) == []
    values[where] = bad
    report = _health_report(**values)
    general = names._general_problems(report)
    assert names.problems(report) == general
    limit_hit = len(bad) > (names.PROSE_MAX if where == "query" else names.TEXT_MAX)
    if "\n" in bad or "\u202e" in bad or limit_hit:
        assert general and general[0][0] == "TEXT_INVALID", general
    else:
        assert general == []  # 513 characters are within a query's prose cap
