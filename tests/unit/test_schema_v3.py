"""EventBody v3: bodies written with v1 and v2 still read, in the ledger (fast path and
fastavro's schema resolution alike) and in the auditor, with v3's defaults; v3's new types and
fields read alike everywhere (docs/FORMAT.md §2)."""

from __future__ import annotations

import json

import pytest

import audit.formats as audit_formats
from ledger import fastcodec, formats
from ledger.errors import FormatError
from ledger.formats import (
    EVENT_BODY_SCHEMA,
    EVENT_BODY_SCHEMA_V1,
    EVENT_BODY_SCHEMA_V2,
    PolicySet,
    RolloutPaused,
    RolloutResumed,
    TrafficRouting,
    decode_body,
    encode_body,
)
from tests.vectors import generate

DOC = json.loads(generate.VECTORS.read_text())


def _bodies(fingerprint: bytes) -> list[bytes]:
    return [
        bytes.fromhex(e["body_hex"])
        for e in DOC["entries"]
        if e["body_hex"][4:20] == fingerprint.hex()
    ]


V1_BODIES = _bodies(EVENT_BODY_SCHEMA_V1.fingerprint)
V2_BODIES = _bodies(EVENT_BODY_SCHEMA_V2.fingerprint)
V3_BODIES = _bodies(EVENT_BODY_SCHEMA.fingerprint)
OLD_BODIES = V1_BODIES + V2_BODIES


def test_the_vectors_hold_every_version_in_order() -> None:
    assert (len(V1_BODIES), len(V2_BODIES)) == (25, 6)
    assert len(V3_BODIES) == len(DOC["entries"]) - 31
    assert len({EVENT_BODY_SCHEMA.fingerprint, EVENT_BODY_SCHEMA_V2.fingerprint}) == 2
    types = [decode_body(b).type for b in V3_BODIES]
    assert "RolloutPaused" in types and "RolloutResumed" in types


@pytest.mark.parametrize("index", range(31))
def test_an_old_body_reads_the_same_on_the_fast_path_and_through_fastavro(index: int) -> None:
    body = OLD_BODIES[index]
    writer = EVENT_BODY_SCHEMA_V1 if index < 25 else EVENT_BODY_SCHEMA_V2
    fast = fastcodec.read_body(body[10:], body[:10])
    assert fast is not None
    resolved = formats._decode_body_with_fastavro(writer, body[10:])
    assert fast == resolved == decode_body(body)


def test_old_policies_take_v3s_defaults_in_the_ledger_and_the_auditor() -> None:
    policies = [decode_body(b).payload for b in OLD_BODIES]
    audited = [audit_formats.decode_body(b).payload for b in OLD_BODIES]
    ours = [p for p in policies if isinstance(p, PolicySet)]
    theirs = [p for p in audited if type(p) is audit_formats.PolicySet]
    assert len(ours) == len(theirs) == 2  # one written with v1, one with v2
    for p in (*ours, *theirs):
        assert (p.resume_approvals, p.traffic, p.notify) == (1, None, ())


def test_v3_bodies_read_alike_on_every_path() -> None:
    for body in V3_BODIES:
        fast = fastcodec.read_body(body[10:], body[:10])
        assert fast is not None
        assert fast == formats._decode_body_with_fastavro(EVENT_BODY_SCHEMA, body[10:])
        ours, theirs = fast.payload, audit_formats.decode_body(body).payload
        assert type(ours).__name__ == type(theirs).__name__
        if isinstance(ours, PolicySet):
            assert ours.resume_approvals == theirs.resume_approvals == 2
            assert ours.traffic == TrafficRouting(
                "model-server", "model-server-stable", "model-server-canary", 8080
            )
            assert theirs.traffic is not None and theirs.traffic.port == 8080
            assert ours.notify == theirs.notify == ("https://hooks.example.org/steward",)
        if isinstance(ours, RolloutPaused | RolloutResumed):
            assert (ours.proposal, ours.reason) == (theirs.proposal, theirs.reason)
            assert len(ours.proposal) == 32


def test_an_older_writer_refuses_what_it_cannot_hold() -> None:
    v3 = [decode_body(b) for b in V3_BODIES]
    policy = next(b for b in v3 if isinstance(b.payload, PolicySet))
    pause = next(b for b in v3 if isinstance(b.payload, RolloutPaused))
    for schema in (EVENT_BODY_SCHEMA_V2, EVENT_BODY_SCHEMA_V1):
        with pytest.raises(FormatError, match="cannot hold"):
            encode_body(policy, schema)
        with pytest.raises(FormatError):  # no such type, no such union branch in v1 or v2
            encode_body(pause, schema)
    v2 = decode_body(V2_BODIES[0])
    assert encode_body(v2, EVENT_BODY_SCHEMA_V2) == V2_BODIES[0]  # the same bytes, re-written
