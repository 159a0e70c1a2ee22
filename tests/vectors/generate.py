"""Writes tests/vectors/ledger-vectors.json: a small ledger anyone can check with their own code.

Entries 0 to 24 are written with EventBody v1 (as a ledger of before schema v2 holds them),
entries 25 to 30 with v2: a policy with automated analysis, a rollout that advances past its
gated step on a report carrying the checks' evidence, and its promotion. The rest are v3: a
policy in traffic mode with a webhook sink whose resumes need two approvers, a second
proposal's rollout paused at its first step (the controller records PAUSED at the weight it
holds), resumed by two approvers, and promoted. Readers resolve v1 and v2 bodies to v3
(docs/FORMAT.md §2).

Deterministic: keys come from fixed seeds, the clock and the event ids are counters, and
Ed25519 signatures are deterministic, so running this again reproduces the file byte for byte
(a test checks that). Run: python -m tests.vectors.generate [--check]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from ledger.analysis import render_query
from ledger.checkpoint import Checkpoint, Signer, sign_checkpoint
from ledger.core import LedgerCore
from ledger.formats import (
    EVENT_BODY_SCHEMA,
    EVENT_BODY_SCHEMA_V1,
    EVENT_BODY_SCHEMA_V2,
    CheckEvidence,
    HealthCheck,
    KillScope,
    NoDataRule,
    Sample,
    SignedEvent,
    Target,
    TrafficRouting,
)
from ledger.keys import PrivateKey
from ledger.scenario import Cast, Flow
from ledger.signed_note import make_vkey

VECTORS = Path(__file__).with_name("ledger-vectors.json")
SEED = "steward-vectors-v1"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


class _Counter:
    def __init__(self) -> None:
        self.clock = START_MS
        self.ids = 0

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    def event_id(self) -> bytes:
        self.ids += 1
        return self.ids.to_bytes(16, "big")


def build() -> tuple[LedgerCore, Cast, Flow, list[SignedEvent]]:
    counter = _Counter()
    cast = Cast.create(seed=SEED)
    core = LedgerCore(keep_entries=True)
    # With the state, the flow binds approvals, health reports and the release (refs).
    flow = Flow(
        cast,
        ledger="vectors",
        origin="steward.dev/ledger/vectors",
        clock=lambda: counter.clock,
        ids=counter.event_id,
        state=lambda: core.state,
        body_schema=EVENT_BODY_SCHEMA_V1,
    )
    submitted: list[SignedEvent] = []

    def add(event: SignedEvent) -> bytes:
        submitted.append(event)
        return core.append(event, counter.tick).leaf_hash

    add(flow.genesis())
    for grant in flow.grants():
        add(grant)
    spare = cast.extra_key("spare-laptop", seed=SEED)
    add(flow.grant_key(cast["alice"].principal, spare, ("approver",)))
    add(flow.revoke(spare.key_id, reason="laptop lost"))
    add(flow.policy())
    proposal = add(flow.propose())
    evals = (add(flow.eval(proposal, "safety", 0.99)), add(flow.eval(proposal, "quality", 0.91)))
    add(flow.approve(proposal, evals, "alice"))
    add(flow.approve(proposal, evals, "bob"))
    add(flow.step(proposal, 0, 10, "STARTED"))
    add(flow.step(proposal, 1, 50, "ADVANCED"))
    add(flow.health(proposal, 1, True))
    scope = KillScope("TARGET", "models", "model-server")
    add(flow.kill(scope))
    add(flow.step(proposal, 1, 0, "ROLLED_BACK"))
    add(flow.release(scope))
    # Decisions after the rollback name it: the rollout may start again on them.
    add(flow.approve(proposal, evals, "alice"))
    add(flow.approve(proposal, evals, "bob"))
    # From here on, EventBody v2: the policy gains analysis and the gated step is judged by it.
    flow.body_schema = EVENT_BODY_SCHEMA_V2
    add(flow.policy(analysis=(ERROR_RATE,)))
    add(flow.step(proposal, 0, 10, "STARTED"))
    add(flow.step(proposal, 1, 50, "ADVANCED"))
    query = render_query(ERROR_RATE, Target("models", "model-server"))
    samples = (
        Sample(counter.clock + 100, 0.004, ""),
        Sample(counter.clock + 200, None, "no data"),
        Sample(counter.clock + 300, 0.006, ""),
    )
    evidence = CheckEvidence("error-rate", query, counter.clock + 300, samples, "PASS")
    add(flow.health(proposal, 1, True, checks=(evidence,)))
    add(flow.step(proposal, 2, 100, "ADVANCED"))
    add(flow.step(proposal, 2, 100, "PROMOTED"))
    # From here on, EventBody v3: traffic mode, a webhook sink, and a governed pause.
    flow.body_schema = None
    add(flow.policy(resume_approvals=2, traffic=ROUTING, notify=(SINK,)))
    second = add(flow.propose("registry.example/model-server:v3"))
    evals = (add(flow.eval(second, "safety", 0.98)), add(flow.eval(second, "quality", 0.93)))
    add(flow.approve(second, evals, "alice"))
    add(flow.approve(second, evals, "bob"))
    add(flow.step(second, 0, 10, "STARTED"))
    add(flow.pause(second, signer="carol", reason="p99 latency up 40%, looking"))
    add(flow.step(second, 0, 10, "PAUSED", reason="paused by human:carol@example.org"))
    add(flow.resume(second, ("alice", "bob"), reason="a noisy neighbour, not the model"))
    add(flow.step(second, 1, 50, "ADVANCED"))
    add(flow.health(second, 1, True))
    add(flow.step(second, 2, 100, "ADVANCED"))
    add(flow.step(second, 2, 100, "PROMOTED"))
    return core, cast, flow, submitted


# The vectors' traffic routing and webhook sink (EventBody v3).
ROUTING = TrafficRouting("model-server", "model-server-stable", "model-server-canary", 8080)
SINK = "https://hooks.example.org/steward"


# The vectors' health check: the canary's share of 5xx responses, at most 5%, two conclusive
# measurements ten seconds apart, failing on the first bad one.
ERROR_RATE = HealthCheck(
    name="error-rate",
    query=(
        'sum(rate(http_requests_total{{canary_selector},code=~"5.."}[1m]))'
        " / sum(rate(http_requests_total{{canary_selector}}[1m]))"
    ),
    op="LE",
    threshold=0.05,
    interval_seconds=10,
    count=2,
    failure_limit=1,
    steps=None,
    no_data=NoDataRule(deadline_seconds=60, action="ROLLBACK"),
)


def _public_keys(cast: Cast) -> list[dict[str, str]]:
    keys: list[tuple[str, PrivateKey]] = [(a.principal, a.key) for a in cast.actors.values()]
    keys.append((cast["alice"].principal, cast.extra_key("spare-laptop", seed=SEED)))
    return [
        {"key_id": k.key_id.hex(), "principal": principal, "public_pem": k.public.to_pem().decode()}
        for principal, k in keys
    ]


def vectors() -> dict[str, Any]:
    core, cast, flow, _ = build()
    assert core.entries is not None
    n = core.size
    tree = core.tree
    signer = Signer(flow.origin, cast.checkpoint_key.ed25519)
    note = sign_checkpoint(Checkpoint(flow.origin, n, tree.root(n)), signer)
    return {
        "description": (
            "A Steward ledger of every event type. Bodies of entries 0-24 are EventBody v1, "
            "25-30 v2, the rest v3 (the fingerprint after c301 says which). entry_hex is the "
            "Entry's Avro "
            "single-object encoding; leaf_hash_hex = SHA-256(00 || entry bytes); prev_hex links to the previous "
            "leaf hash; signed_bytes_hex is what each signature covers. See docs/FORMAT.md."
        ),
        "origin": flow.origin,
        "ledger": flow.ledger,
        "vkey": make_vkey(flow.origin, cast.checkpoint_key.public.raw),
        "checkpoint_public_key_hex": cast.checkpoint_key.public.raw.hex(),
        "schema_fingerprints": {
            "EventBody": EVENT_BODY_SCHEMA.fingerprint.hex(),
            "EventBody.v2": EVENT_BODY_SCHEMA_V2.fingerprint.hex(),
            "EventBody.v1": EVENT_BODY_SCHEMA_V1.fingerprint.hex(),
            "Entry": core.entries[0].entry_bytes[2:10].hex(),
        },
        "keys": _public_keys(cast),
        "roots_trusted": [cast[r].key.key_id.hex() for r in ("root1", "root2", "root3")],
        "entries": [
            {
                "seq": e.seq,
                "type": e.body.type,
                "event_id_hex": e.body.event_id.hex(),
                "received_at": e.entry.received_at,
                "entry_hex": e.entry_bytes.hex(),
                "leaf_hash_hex": e.leaf_hash.hex(),
                "prev_hex": e.entry.prev.hex(),
                "body_hex": e.entry.body.hex(),
                "signed_bytes_hex": (b"steward/v1/event\n" + e.entry.body[2:]).hex(),
                "signatures": [
                    {"key_id": s.key_id.hex(), "sig_hex": s.sig.hex()} for s in e.entry.signatures
                ],
            }
            for e in core.entries
        ],
        "roots": [tree.root(i).hex() for i in range(n + 1)],
        "inclusion": [
            {"index": i, "size": n, "proof": [p.hex() for p in tree.inclusion_proof(i, n)]}
            for i in range(n)
        ],
        "consistency": [
            {"size1": m, "size2": n, "proof": [p.hex() for p in tree.consistency_proof(m, n)]}
            for m in range(1, n + 1)
        ],
        "checkpoint": note,
        "checkpoint_root_b64": base64.b64encode(tree.root(n)).decode(),
    }


def render() -> str:
    return json.dumps(vectors(), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    parser.add_argument("--walkthrough", action="store_true", help="print docs/FORMAT.md §7")
    args = parser.parse_args(argv)
    if args.walkthrough:
        print(walkthrough())
        return 0
    text = render()
    if args.check:
        if VECTORS.read_text() != text:
            print(
                f"{VECTORS.name} is out of date: run python -m tests.vectors.generate",
                file=sys.stderr,
            )
            return 1
        return 0
    VECTORS.write_text(text)
    print(f"wrote {VECTORS} ({len(vectors()['entries'])} entries)")
    return 0


# --------------------------------------------------------------------------------------------
# The byte-level walkthrough in docs/FORMAT.md §7 (python -m tests.vectors.generate --walkthrough)


class _Reader:
    """Reads Avro binary primitives and remembers each field's bytes, for annotation."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data, self.pos = data, offset
        self.rows: list[tuple[str, str, str]] = []

    def _varint(self) -> int:
        shift = result = 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return (result >> 1) ^ -(result & 1)

    def field(self, name: str, kind: str, size: int | None = None) -> object:
        start = self.pos
        value: object
        if kind == "long":
            value = self._varint()
        elif kind == "string":
            n = self._varint()
            value = repr(self.data[self.pos : self.pos + n].decode())
            self.pos += n
        elif kind == "fixed":
            assert size is not None
            value = self.data[self.pos : self.pos + size].hex()[:16] + "…"
            self.pos += size
        else:
            raise ValueError(kind)
        self.rows.append((name, self.data[start : self.pos].hex(), str(value)))
        return value

    def table(self) -> str:
        out = ["| field | bytes (hex) | value |", "|---|---|---|"]
        for name, hexed, value in self.rows:
            shown = hexed if len(hexed) <= 48 else hexed[:44] + "…"
            out.append(f"| {name} | `{shown}` | {value} |")
        return "\n".join(out)


def walkthrough(seq: int = 20) -> str:
    doc = vectors()
    e = doc["entries"][seq]
    entry = bytes.fromhex(e["entry_hex"])
    body = bytes.fromhex(e["body_hex"])
    b = _Reader(body, 0)
    b.rows.append(("single-object marker", body[:2].hex(), "C3 01"))
    b.rows.append(("EventBody fingerprint", body[2:10].hex(), "CRC-64-AVRO, little-endian"))
    b.pos = 10
    b.field("ledger", "string")
    b.field("event_id", "fixed", 16)
    b.field("type (enum index, zigzag)", "long")
    b.field("issued_at (ms, zigzag varint)", "long")
    b.field("refs: block count 0 (empty array)", "long")
    b.field("payload: union branch", "long")
    b.field("scope.kind (enum index)", "long")
    b.field("scope.namespace", "string")
    b.field("scope.deployment", "string")
    b.field("scope.proposal: union branch (0 = null)", "long")
    b.field("reason", "string")
    b.field("annotation: union branch (0 = null)", "long")
    assert b.pos == len(body), "walkthrough out of step with the schema"

    en = _Reader(entry, 0)
    en.rows.append(("single-object marker", entry[:2].hex(), "C3 01"))
    en.rows.append(("Entry fingerprint", entry[2:10].hex(), "CRC-64-AVRO, little-endian"))
    en.pos = 10
    en.field("seq", "long")
    en.field("prev", "fixed", 32)
    body_len_start = en.pos
    n = en._varint()
    en.rows.append(("body: length", entry[body_len_start : en.pos].hex(), str(n)))
    en.rows.append(
        ("body: the author's body bytes, unchanged", entry[en.pos : en.pos + n].hex(), f"{n} bytes")
    )
    en.pos += n
    en.field("signatures: block count", "long")
    en.field("signatures[0].key_id", "fixed", 32)
    en.field("signatures[0].sig", "fixed", 64)
    en.field("signatures: end of array", "long")
    en.field("received_at (ms)", "long")
    assert en.pos == len(entry), "walkthrough out of step with the schema"

    inclusion = doc["inclusion"][seq]
    return "\n".join(
        [
            f"Entry {seq} of the vectors: a `{e['type']}` signed by the on-call operator.",
            "",
            f"**Body bytes** ({len(body)} bytes):",
            "",
            b.table(),
            "",
            "**Signed bytes** = `steward/v1/event\\n` (hex `737465776172642f76312f6576656e740a`) followed by",
            f"the body bytes from offset 2: `{e['signed_bytes_hex'][:80]}…` ({len(e['signed_bytes_hex']) // 2} bytes).",
            f"The operator's key `{e['signatures'][0]['key_id'][:16]}…` signs them with Ed25519:",
            f"`{e['signatures'][0]['sig_hex'][:64]}…`.",
            "",
            f"**Entry bytes** ({len(entry)} bytes), as the ledger writes them:",
            "",
            en.table(),
            "",
            f"**Leaf hash** = SHA-256(`00` ‖ entry bytes) = `{e['leaf_hash_hex']}`; entry {seq + 1}'s `prev` is this hash.",
            "",
            f"**Inclusion** of leaf {seq} in the tree of size {inclusion['size']}: the proof is "
            f"{len(inclusion['proof'])} hashes, `{', '.join(p[:12] + '…' for p in inclusion['proof'])}`; "
            f"hashing up from the leaf gives the root `{doc['roots'][-1]}`.",
            "",
            "**Checkpoint**: the signed note the ledger publishes for that size:",
            "",
            "```",
            doc["checkpoint"].rstrip("\n"),
            "```",
            "",
            f"Verify it with the ledger's vkey `{doc['vkey']}`.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
