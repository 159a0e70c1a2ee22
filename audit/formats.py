"""Decoding Steward's formats, written again from docs/DESIGN.md §3 and the shipped Avro schemas.

The schemas in ``audit/schemas/`` are data copied from the ledger's; the code that reads them
is the auditor's own: a small Avro binary decoder compiled from the schema JSON, its own
Parsing Canonical Form and CRC-64-AVRO fingerprint (:mod:`audit.avro`). This module holds the
value classes the decoder builds and the single-object framing around them. Nothing is re-encoded: the
signatures are checked over the bytes received, and the decoder refuses trailing bytes, so a
body has exactly one reading.

Byte layouts:

* body bytes   = ``C3 01 ‖ fingerprint(EventBody) ‖ Avro binary``
* signed bytes = ``b"steward/v1/event\\n" ‖ fingerprint ‖ Avro binary`` (body bytes minus magic)
* entry bytes  = ``C3 01 ‖ fingerprint(Entry) ‖ Avro binary``; leaf = SHA-256(0x00 ‖ entry bytes)
  (:func:`audit.merkle.leaf_hash`)
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from audit.avro import Reader, canonical_form, compile_reader, crc64_avro, fullname
from audit.errors import DecodeError

DOMAIN_PREFIX = b"steward/v1/event\n"
MAGIC = b"\xc3\x01"
HASH_SIZE = 32
ZERO_HASH = bytes(HASH_SIZE)


# --------------------------------------------------------------------------------------------
# The value model: slotted records, treated as immutable once decoded. They are not
# `frozen=True`: a frozen dataclass sets every field through object.__setattr__, which made
# building them cost about as much as decoding the bytes (the reader builds ~10 per entry).
# `unsafe_hash` keeps them hashable by value (KillScope is a dict key); nothing mutates them.


@dataclass(slots=True, unsafe_hash=True)
class Signature:
    key_id: bytes
    sig: bytes


@dataclass(slots=True, unsafe_hash=True)
class Entry:
    seq: int
    prev: bytes
    body: bytes
    signatures: tuple[Signature, ...]
    received_at: int


@dataclass(slots=True, unsafe_hash=True)
class RootKey:
    principal: str
    public_key: bytes


@dataclass(slots=True, unsafe_hash=True)
class LedgerGenesis:
    origin: str
    roots: tuple[RootKey, ...]
    root_threshold: int
    checkpoint_key_name: str
    checkpoint_public_key: bytes


@dataclass(slots=True, unsafe_hash=True)
class KeyGranted:
    principal: str
    public_key: bytes
    roles: tuple[str, ...]
    expires_at: int | None


@dataclass(slots=True, unsafe_hash=True)
class KeyRevoked:
    key_id: bytes
    reason: str


@dataclass(slots=True, unsafe_hash=True)
class TargetSelector:
    namespace: str
    deployment: str


@dataclass(slots=True, unsafe_hash=True)
class RequiredEval:
    suite: str
    metric: str
    op: str
    threshold: float


@dataclass(slots=True, unsafe_hash=True)
class PlanStep:
    weight: int
    hold_seconds: int
    health_gate: bool


@dataclass(slots=True, unsafe_hash=True)
class NoDataRule:
    deadline_seconds: int
    action: str  # ROLLBACK or PAUSE


@dataclass(slots=True, unsafe_hash=True)
class HealthCheck:
    name: str
    query: str
    op: str
    threshold: float
    interval_seconds: int
    count: int
    failure_limit: int
    steps: tuple[int, ...] | None
    no_data: NoDataRule


@dataclass(slots=True, unsafe_hash=True)
class TrafficRouting:
    http_route: str
    stable_service: str
    canary_service: str
    port: int


# The fields EventBody v2 and v3 added have defaults (the schemas', checked at load below): a
# body written with an older version reads with them, as Avro resolution of appended fields
# gives.
@dataclass(slots=True, unsafe_hash=True)
class PolicySet:
    policy_id: str
    selector: TargetSelector
    required_evals: tuple[RequiredEval, ...]
    approvals_required: int
    approver_kinds: tuple[str, ...]
    plan: tuple[PlanStep, ...]
    veto_on_reject: bool
    kill_release_approvals: int
    kill_rollback_bound_ms: int
    analysis: tuple[HealthCheck, ...] = ()
    container: str | None = None
    readiness_grace_seconds: int | None = None
    resume_approvals: int = 1
    traffic: TrafficRouting | None = None
    notify: tuple[str, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class Target:
    namespace: str
    deployment: str


@dataclass(slots=True, unsafe_hash=True)
class ModelRef:
    image: str
    model_digest: str


@dataclass(slots=True, unsafe_hash=True)
class ProposalOrigin:
    agent: str
    run: str


@dataclass(slots=True, unsafe_hash=True)
class ProposalSubmitted:
    target: Target
    candidate: ModelRef
    baseline: ModelRef
    rationale: str
    origin: ProposalOrigin


@dataclass(slots=True, unsafe_hash=True)
class Metric:
    name: str
    value: float


@dataclass(slots=True, unsafe_hash=True)
class EvalRecorded:
    proposal: bytes
    suite: str
    metrics: tuple[Metric, ...]
    artifact_digest: str


@dataclass(slots=True, unsafe_hash=True)
class ApprovalRecorded:
    proposal: bytes
    decision: str
    evals: tuple[bytes, ...]
    comment: str


@dataclass(slots=True, unsafe_hash=True)
class Sample:
    taken_at: int
    value: float | None  # None: inconclusive (no data, or an error `detail` names)
    detail: str


@dataclass(slots=True, unsafe_hash=True)
class CheckEvidence:
    name: str
    query: str
    evaluated_at: int
    samples: tuple[Sample, ...]
    verdict: str  # PASS, FAIL or INCONCLUSIVE: recomputed by audit.analysis, never trusted


@dataclass(slots=True, unsafe_hash=True)
class HealthReported:
    proposal: bytes
    step: int
    healthy: bool
    metrics: tuple[Metric, ...]
    checks: tuple[CheckEvidence, ...] = ()


@dataclass(slots=True, unsafe_hash=True)
class ObservedState:
    stable_replicas: int
    canary_replicas: int
    canary_ready: int
    stable_image: str
    canary_image: str


@dataclass(slots=True, unsafe_hash=True)
class RolloutStep:
    proposal: bytes
    step: int
    weight: int
    phase: str
    reason: str
    observed: ObservedState


@dataclass(slots=True, unsafe_hash=True)
class KillScope:
    kind: str
    namespace: str
    deployment: str
    proposal: bytes | None


@dataclass(slots=True, unsafe_hash=True)
class AnnotationSource:
    object: str
    field_manager: str
    time: str


@dataclass(slots=True, unsafe_hash=True)
class KillSwitchEngaged:
    scope: KillScope
    reason: str
    annotation: AnnotationSource | None


@dataclass(slots=True, unsafe_hash=True)
class KillSwitchReleased:
    scope: KillScope
    reason: str


@dataclass(slots=True, unsafe_hash=True)
class RolloutPaused:
    proposal: bytes
    reason: str


@dataclass(slots=True, unsafe_hash=True)
class RolloutResumed:
    proposal: bytes
    reason: str


Payload = (
    LedgerGenesis
    | KeyGranted
    | KeyRevoked
    | PolicySet
    | ProposalSubmitted
    | EvalRecorded
    | ApprovalRecorded
    | HealthReported
    | RolloutStep
    | KillSwitchEngaged
    | KillSwitchReleased
    | RolloutPaused
    | RolloutResumed
)


@dataclass(slots=True, unsafe_hash=True)
class EventBody:
    ledger: str
    event_id: bytes
    type: str
    issued_at: int
    refs: tuple[bytes, ...]
    payload: Payload


@dataclass(slots=True, unsafe_hash=True)
class SignedEvent:
    body: bytes
    signatures: tuple[Signature, ...]


_RECORD_CLASSES: dict[str, type[Any]] = {
    f"steward.v1.{cls.__name__}": cls
    for cls in (
        Signature,
        Entry,
        RootKey,
        LedgerGenesis,
        KeyGranted,
        KeyRevoked,
        TargetSelector,
        RequiredEval,
        PlanStep,
        NoDataRule,
        HealthCheck,
        TrafficRouting,
        PolicySet,
        Target,
        ModelRef,
        ProposalOrigin,
        ProposalSubmitted,
        Metric,
        EvalRecorded,
        ApprovalRecorded,
        Sample,
        CheckEvidence,
        HealthReported,
        ObservedState,
        RolloutStep,
        KillScope,
        AnnotationSource,
        KillSwitchEngaged,
        KillSwitchReleased,
        RolloutPaused,
        RolloutResumed,
        EventBody,
        SignedEvent,
    )
}


# --------------------------------------------------------------------------------------------
# The shipped schemas and the single-object framing


@dataclass(frozen=True)
class Schema:
    name: str
    file: str
    canonical: str
    fingerprint: bytes
    read: Reader


def _load(file: str) -> Schema:
    text = resources.files("audit.schemas").joinpath(file).read_text(encoding="utf-8")
    raw = json.loads(text)
    canonical = canonical_form(raw)
    return Schema(
        name=fullname(raw["name"], raw.get("namespace", "")),
        file=file,
        canonical=canonical,
        fingerprint=crc64_avro(canonical.encode("utf-8")),
        read=compile_reader(raw, _RECORD_CLASSES),
    )


def _records(node: Any, ns: str = "") -> dict[str, Any]:
    """Every record schema defined in `node`, by full name."""
    found: dict[str, Any] = {}
    if isinstance(node, list):
        for branch in node:
            found.update(_records(branch, ns))
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind == "record":
            full = fullname(node["name"], node.get("namespace", ns))
            found[full] = node
            inner = full.rsplit(".", 1)[0]
            for f in node["fields"]:
                found.update(_records(f["type"], inner))
        elif kind == "array":
            found.update(_records(node["items"], ns))
        elif isinstance(kind, dict | list):
            found.update(_records(kind, ns))
    return found


def _check_resolution(old_file: str, new_file: str) -> None:
    """Bodies written with `old_file` read as `new_file` gives them: every record the newer
    schema extends gains only fields at its end, each with a default, and that default is the
    value class's (which the reader builds an older record with)."""
    old = _records(json.loads(resources.files("audit.schemas").joinpath(old_file).read_text()))
    new = _records(json.loads(resources.files("audit.schemas").joinpath(new_file).read_text()))
    for full, old_node in old.items():
        old_names = [f["name"] for f in old_node["fields"]]
        new_fields = new[full]["fields"]
        if [f["name"] for f in new_fields[: len(old_names)]] != old_names:
            raise ValueError(f"{new_file}: {full} does not extend {old_file}'s fields")
        cls = _RECORD_CLASSES[full]
        for f in new_fields[len(old_names) :]:
            declared = cls.__dataclass_fields__[f["name"]].default
            expected = tuple(f["default"]) if isinstance(f.get("default"), list) else f["default"]
            if declared != expected:
                raise ValueError(f"{full}.{f['name']}: default {declared!r}, schema {expected!r}")


# v3 is written now; v1 and v2 bodies still read (resolved to v3, checked here at import).
_check_resolution("event_body.v1.avsc", "event_body.v3.avsc")
_check_resolution("event_body.v2.avsc", "event_body.v3.avsc")
BODY_SCHEMAS: Mapping[bytes, Schema] = {
    s.fingerprint: s
    for s in [_load("event_body.v3.avsc"), _load("event_body.v2.avsc"), _load("event_body.v1.avsc")]
}
ENTRY_SCHEMAS: Mapping[bytes, Schema] = {s.fingerprint: s for s in [_load("entry.v1.avsc")]}
SIGNED_EVENT_SCHEMAS: Mapping[bytes, Schema] = {
    s.fingerprint: s for s in [_load("signed_event.v1.avsc")]
}


def _single_object(data: bytes, schemas: Mapping[bytes, Schema], what: str) -> Any:
    if len(data) < 10 or data[:2] != MAGIC:
        raise DecodeError(
            f"{what}: not Avro single-object encoding (starts {data[:2].hex() or 'empty'}, "
            "expected c301 and an 8-byte fingerprint)",
            code="DECODE_ERROR",
        )
    schema = schemas.get(data[2:10])
    if schema is None:
        raise DecodeError(
            f"{what}: schema fingerprint {data[2:10].hex()} is not one the auditor knows "
            f"({', '.join(fp.hex() for fp in schemas)})",
            code="UNKNOWN_FINGERPRINT",
        )
    try:
        value, end = schema.read(data, 10)
    except DecodeError as exc:
        raise DecodeError(f"{what}: {exc}") from None
    except (IndexError, struct.error) as exc:
        raise DecodeError(f"{what}: truncated {schema.name} ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what}: a string is not UTF-8 ({exc})") from None
    if end != len(data):
        if end > len(data):
            raise DecodeError(
                f"{what}: truncated {schema.name} (a field runs {end - len(data)} bytes past the end)"
            )
        raise DecodeError(
            f"{what}: {len(data) - end} trailing bytes after the {schema.name} record"
        )
    return value


def decode_entry(data: bytes) -> Entry:
    entry: Entry = _single_object(data, ENTRY_SCHEMAS, "entry")
    return entry


def decode_body(data: bytes) -> EventBody:
    body: EventBody = _single_object(data, BODY_SCHEMAS, "body")
    record_name = type(body.payload).__name__
    if body.type != record_name:
        raise DecodeError(f"body: type is {body.type} but the payload is a {record_name}")
    return body


# The readers by the 10 bytes an encoding starts with (magic ‖ fingerprint), for the fast path.
_ENTRY_READERS: dict[bytes, Reader] = {MAGIC + fp: s.read for fp, s in ENTRY_SCHEMAS.items()}
_BODY_READERS: dict[bytes, Reader] = {MAGIC + fp: s.read for fp, s in BODY_SCHEMAS.items()}
_READ_ERRORS = (DecodeError, IndexError, struct.error, UnicodeDecodeError)


def decode_entry_and_body(data: bytes) -> tuple[Entry, EventBody]:
    """decode_entry(data) and decode_body of its body, exactly as strict, in one call.

    The fast path applies the same checks (known fingerprint, the reader's own checks, no
    trailing bytes or overrun, the type naming the payload); whenever one fails, the slow path
    decodes again to raise the precise DecodeError.
    """
    read = _ENTRY_READERS.get(data[:10])
    if read is not None:
        try:
            entry, end = read(data, 10)
            if end == len(data):
                raw = entry.body
                read = _BODY_READERS.get(raw[:10])
                if read is not None:
                    body, end = read(raw, 10)
                    if end == len(raw) and body.type == type(body.payload).__name__:
                        return entry, body
        except _READ_ERRORS:
            pass
    entry = decode_entry(data)
    return entry, decode_body(entry.body)


def decode_signed_event(data: bytes) -> SignedEvent:
    event: SignedEvent = _single_object(data, SIGNED_EVENT_SCHEMAS, "signed event")
    return event


def signed_bytes(body: bytes) -> bytes:
    """What authors sign: the domain prefix, then the body bytes after their magic."""
    return DOMAIN_PREFIX + body[2:]


def key_id(public_key: bytes) -> bytes:
    return hashlib.sha256(public_key).digest()


def payload_hashes(payload: Payload) -> tuple[bytes, ...]:
    """The entry hashes a payload names (each must also appear in the body's refs)."""
    # The payload classes are final: exact types, cheaper than isinstance.
    if (
        type(payload) is HealthReported
        or type(payload) is EvalRecorded
        or type(payload) is RolloutStep
        or type(payload) is RolloutPaused
        or type(payload) is RolloutResumed
    ):
        return (payload.proposal,)
    if type(payload) is ApprovalRecorded:
        return (payload.proposal, *payload.evals)
    if (
        type(payload) is KillSwitchEngaged or type(payload) is KillSwitchReleased
    ) and payload.scope.proposal:
        return (payload.scope.proposal,)
    return ()
