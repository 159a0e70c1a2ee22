"""EventBody v2: bodies written with v1 still read, in the ledger (fast path and fastavro's
schema resolution alike) and in the auditor, with v2's defaults (docs/FORMAT.md §2)."""

from __future__ import annotations

import json

import pytest

import audit.formats as audit_formats
from ledger import fastcodec, formats
from ledger.errors import FormatError
from ledger.formats import (
    EVENT_BODY_SCHEMA_V1,
    EVENT_BODY_SCHEMA_V2,
    HealthReported,
    PolicySet,
    decode_body,
    encode_body,
)
from tests.vectors import generate

DOC = json.loads(generate.VECTORS.read_text())
V1_BODIES = [
    bytes.fromhex(e["body_hex"])
    for e in DOC["entries"]
    if e["body_hex"][4:20] == EVENT_BODY_SCHEMA_V1.fingerprint.hex()
]
V2_BODIES = [
    bytes.fromhex(e["body_hex"])
    for e in DOC["entries"]
    if e["body_hex"][4:20] == EVENT_BODY_SCHEMA_V2.fingerprint.hex()
]


def test_the_vectors_hold_both_versions() -> None:
    assert len(V1_BODIES) == 25 and len(V2_BODIES) >= 5
    assert EVENT_BODY_SCHEMA_V2.fingerprint != EVENT_BODY_SCHEMA_V1.fingerprint


@pytest.mark.parametrize("index", range(25))
def test_a_v1_body_reads_the_same_on_the_fast_path_and_through_fastavro(index: int) -> None:
    body = V1_BODIES[index]
    fast = fastcodec.read_body(body[10:], body[:10])
    assert fast is not None
    resolved = formats._decode_body_with_fastavro(EVENT_BODY_SCHEMA_V1, body[10:])
    assert fast == resolved == decode_body(body)


def test_v1_bodies_take_v2s_defaults_in_the_ledger_and_the_auditor() -> None:
    policies = [decode_body(b).payload for b in V1_BODIES]
    policy = next(p for p in policies if isinstance(p, PolicySet))
    assert (policy.analysis, policy.container, policy.readiness_grace_seconds) == ((), None, None)
    report = next(p for p in policies if isinstance(p, HealthReported))
    assert report.checks == ()
    audited = [audit_formats.decode_body(b).payload for b in V1_BODIES]
    a_policy = next(p for p in audited if type(p) is audit_formats.PolicySet)
    assert (a_policy.analysis, a_policy.container, a_policy.readiness_grace_seconds) == (
        (),
        None,
        None,
    )
    a_report = next(p for p in audited if type(p) is audit_formats.HealthReported)
    assert a_report.checks == ()


def test_v2_bodies_read_alike_in_the_ledger_and_the_auditor() -> None:
    for body in V2_BODIES:
        ours, theirs = decode_body(body).payload, audit_formats.decode_body(body).payload
        if isinstance(ours, HealthReported) and ours.checks:
            assert type(theirs) is audit_formats.HealthReported
            assert [c.verdict for c in ours.checks] == [c.verdict for c in theirs.checks]
            assert [s.value for s in ours.checks[0].samples] == [
                s.value for s in theirs.checks[0].samples
            ]


def test_a_v1_writer_refuses_what_v1_cannot_hold() -> None:
    v2_policy = next(
        b for b in (decode_body(x) for x in V2_BODIES) if isinstance(b.payload, PolicySet)
    )
    with pytest.raises(FormatError, match="cannot hold"):
        encode_body(v2_policy, EVENT_BODY_SCHEMA_V1)
    v1 = decode_body(V1_BODIES[0])
    assert encode_body(v1, EVENT_BODY_SCHEMA_V1) == V1_BODIES[0]  # the same bytes, re-written
