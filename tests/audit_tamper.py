"""A tamper generator for the auditor's tests: clean ledgers and, from them, tampered ones.

Clean ledgers come from the ledger's own core (every event passes its rules). Tampered ones
bypass the rules: entries are built with ``ledger.formats.make_entry``, chained and checkpointed
here (checkpoints re-signed with the ledger's checkpoint key), so that exactly the intended
defect remains. Each tamper names the finding code it must produce.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from audit.merkle import root_of
from audit.note import note_key_id, vkey_of
from ledger.analysis import render_query
from ledger.core import LedgerCore
from ledger.formats import (
    CheckEvidence,
    Entry,
    HealthCheck,
    KillScope,
    KillSwitchReleased,
    LogEntry,
    NoDataRule,
    Sample,
    SignedEvent,
    Target,
    decode_body,
    encode_entry,
    make_entry,
)
from ledger.keys import PrivateKey
from ledger.scenario import Cast, Flow

START = 1_767_225_600_000
CHECKPOINT_EVERY = 8


def sign_note(text: str, name: str, key: PrivateKey) -> str:
    sig = note_key_id(name, key.public.raw) + key.sign(text.encode())
    return f"{text}\n\u2014 {name} {base64.b64encode(sig).decode()}\n"


def checkpoint_note(
    origin: str, size: int, root: bytes, key: PrivateKey, name: str | None = None
) -> str:
    text = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
    return sign_note(text, name or origin, key)


@dataclass
class Log:
    """What an auditor receives: entry bytes in log order and checkpoint notes."""

    records: list[bytes]
    checkpoints: list[str]
    trust: dict[str, object]


@dataclass
class Builder:
    seed: str = "audit-tamper"
    cast: Cast = field(init=False)
    flow: Flow = field(init=False)
    core: LedgerCore = field(init=False)
    now: int = START

    def __post_init__(self) -> None:
        self.cast = Cast.create(seed=self.seed)
        self.core = LedgerCore(keep_entries=True)
        self.flow = Flow(self.cast, clock=lambda: self.now, state=lambda: self.core.state)

    def tick(self, ms: int = 1000) -> int:
        self.now += ms
        return self.now

    @property
    def entries(self) -> list[LogEntry]:
        assert self.core.entries is not None
        return self.core.entries

    def ok(self, event: SignedEvent) -> bytes:
        """Append through the ledger's rules (must pass)."""
        return self.core.append(event, self.tick).leaf_hash

    def forge(self, event: SignedEvent) -> bytes:
        """Append bypassing the rules, as someone writing straight into storage would."""
        st = self.core.state
        e = make_entry(st.size, st.last_hash, event, self.tick())
        try:
            st.apply(e)
        except Exception:  # the rules' fold may not expect a forged entry; the bytes are what count
            pass
        st.size, st.last_hash = e.seq + 1, e.leaf_hash
        self.core.tree.append(e.leaf_hash)
        self.entries.append(e)
        return e.leaf_hash

    # -- the clean story -------------------------------------------------------------------

    def clean(self) -> Builder:
        f = self.flow
        self.ok(f.genesis())
        for g in f.grants():
            self.ok(g)
        self.spare_monitor = self.cast.extra_key("spare-monitor", seed=self.seed)
        self.ok(f.grant_key(self.cast["monitor"].principal, self.spare_monitor, ("monitor",)))
        self.ok(f.revoke(self.spare_monitor.key_id, reason="rotated"))
        self.ok(f.policy())
        p1 = self.p1 = self.ok(f.propose())
        evals = (self.ok(f.eval(p1, "safety", 0.99)), self.ok(f.eval(p1, "quality", 0.91)))
        self.ok(f.approve(p1, evals, "alice"))
        self.ok(f.approve(p1, evals, "bob"))
        self.ok(f.step(p1, 0, 10, "STARTED"))
        self.ok(f.step(p1, 1, 50, "ADVANCED"))
        self.ok(f.health(p1, 1, True))
        self.ok(f.step(p1, 2, 100, "ADVANCED"))
        self.ok(f.step(p1, 2, 100, "PROMOTED"))
        # A second rollout stopped by a kill switch and rolled back within the bound.
        p2 = self.ok(f.propose("registry.example/model-server:v3", deployment="model-b"))
        e2 = (self.ok(f.eval(p2, "safety", 0.97)), self.ok(f.eval(p2, "quality", 0.85)))
        self.ok(f.approve(p2, e2, "alice"))
        self.ok(f.approve(p2, e2, "carol"))
        self.ok(f.step(p2, 0, 10, "STARTED"))
        scope = KillScope("PROPOSAL", proposal=p2)
        self.ok(f.kill(scope))
        self.ok(f.step(p2, 0, 0, "ROLLED_BACK"))
        self.ok(f.release(scope))
        # Two trailing reports nothing depends on: room for byte-level tampering.
        self.ok(f.health(p1, 2, True))
        self.ok(f.health(p1, 2, True))
        return self

    def pending_proposal(
        self, approvers: tuple[str, ...] = ()
    ) -> tuple[bytes, tuple[bytes, bytes]]:
        """A fresh proposal on its own target with passing evals and the given approvals."""
        f = self.flow
        p = self.ok(f.propose("registry.example/model-server:v9", deployment="model-c"))
        evals = (self.ok(f.eval(p, "safety", 0.99)), self.ok(f.eval(p, "quality", 0.90)))
        for a in approvers:
            self.ok(f.approve(p, evals, a))
        return p, evals

    # -- what the auditor gets ---------------------------------------------------------------

    def trust(self) -> dict[str, object]:
        roots = [
            {
                "principal": self.cast[h].principal,
                "public_key_hex": self.cast[h].key.public.raw.hex(),
            }
            for h in ("root1", "root2", "root3")
        ]
        return {
            "roots": roots,
            "vkey": vkey_of(self.flow.origin, self.cast.checkpoint_key.public.raw),
            "origin": self.flow.origin,
        }

    def checkpoints_for(self, leaves: list[bytes]) -> list[str]:
        sizes = sorted({*range(CHECKPOINT_EVERY, len(leaves) + 1, CHECKPOINT_EVERY), len(leaves)})
        return [
            checkpoint_note(self.flow.origin, n, root_of(leaves[:n]), self.cast.checkpoint_key)
            for n in sizes
        ]

    def log(self) -> Log:
        leaves = [e.leaf_hash for e in self.entries]
        return Log(
            [e.entry_bytes for e in self.entries], self.checkpoints_for(leaves), self.trust()
        )

    def rechained(self, entries: list[Entry]) -> Log:
        """Re-encode `entries` with a correct prev chain and fresh checkpoints (an operator
        holding the checkpoint key rewriting storage)."""
        records: list[bytes] = []
        prev = bytes(32)
        for i, e in enumerate(entries):
            raw = encode_entry(dataclasses.replace(e, seq=i, prev=prev))
            records.append(raw)
            prev = hashlib.sha256(b"\x00" + raw).digest()
        leaves = [hashlib.sha256(b"\x00" + r).digest() for r in records]
        return Log(records, self.checkpoints_for(leaves), self.trust())


# --------------------------------------------------------------------------------------------
# The tampers: name -> (finding code it must produce, builder)


def _flip_body_byte() -> Log:
    b = Builder().clean()
    entries = [e.entry for e in b.entries]
    last = entries[-1]
    body = bytearray(last.body)
    body[-5] ^= 0x01  # inside the trailing metrics/strings: still decodes, no longer verifies
    entries[-1] = dataclasses.replace(last, body=bytes(body))
    return b.rechained(entries)


def _swap_signature() -> Log:
    b = Builder().clean()
    entries = [e.entry for e in b.entries]
    a, c = entries[-2], entries[-1]
    entries[-2], entries[-1] = (
        dataclasses.replace(a, signatures=c.signatures),
        dataclasses.replace(c, signatures=a.signatures),
    )
    return b.rechained(entries)


def _delete() -> Log:
    log = Builder().clean().log()
    del log.records[10]
    return log


def _insert() -> Log:
    b = Builder().clean()
    log = b.log()
    e = b.entries[10]
    forged = make_entry(e.seq, e.entry.prev, b.flow.health(b.p1, 0, True), e.entry.received_at)
    log.records.insert(11, forged.entry_bytes)
    return log


def _reorder() -> Log:
    log = Builder().clean().log()
    log.records[10], log.records[11] = log.records[11], log.records[10]
    return log


def _truncate() -> Log:
    log = Builder().clean().log()
    del log.records[-3:]
    return log


def _fork() -> tuple[Log, str]:
    """A checkpoint saved from one history, then a log rewritten from an earlier point."""
    a = Builder().clean()
    saved = a.log().checkpoints[2]  # size 24, covering the first rollout's steps
    b = Builder()
    b.cast, b.flow = a.cast, Flow(a.cast, clock=lambda: b.now, state=lambda: b.core.state)
    b.core = LedgerCore(keep_entries=True)
    for e in a.entries[:17]:  # up to the approvals of the first proposal
        b.core.commit(e)
    b.now = a.entries[16].entry.received_at
    b.ok(b.flow.step(a.p1, 0, 10, "STARTED", reason="rewritten history"))
    while len(b.entries) < 26:
        b.ok(b.flow.health(a.p1, 0, True))
    return b.log(), saved


def _replay() -> Log:
    b = Builder().clean()
    first_eval = b.entries[17]
    b.forge(SignedEvent(first_eval.entry.body, first_eval.entry.signatures))
    return b.log()


def _revoked_key() -> Log:
    b = Builder().clean()
    b.forge(b.flow.signed_by_keys(_health_payload(b), b.spare_monitor))
    return b.log()


def _unknown_key() -> Log:
    b = Builder().clean()
    b.forge(b.flow.signed_by_keys(_health_payload(b), PrivateKey.from_seed(bytes(range(32)))))
    return b.log()


def _health_payload(b: Builder) -> object:
    return decode_body(b.flow.health(b.p1, 2, True).body).payload


def _self_approval() -> Log:
    b = Builder().clean()
    p, evals = b.pending_proposal()
    agent2 = b.cast.extra_key("agent-approver", seed=b.seed)
    b.ok(b.flow.grant_key(b.cast["agent"].principal, agent2, ("approver",)))
    body = b.flow.approve(p, evals, "alice")
    payload = decode_body(body.body).payload
    b.forge(b.flow.signed_by_keys(payload, agent2))
    return b.log()


def _double_count() -> Log:
    b = Builder().clean()
    alice2 = b.cast.extra_key("alice-laptop", seed=b.seed)
    b.ok(b.flow.grant_key(b.cast["alice"].principal, alice2, ("approver",)))
    p, evals = b.pending_proposal(("alice",))
    b.ok(b.flow.signed_by_keys(decode_body(b.flow.approve(p, evals, "alice").body).payload, alice2))
    b.forge(b.flow.step(p, 0, 10, "STARTED"))
    return b.log()


def _approval_not_bound() -> Log:
    b = Builder().clean()
    p, evals = b.pending_proposal()
    b.ok(b.flow.eval(p, "safety", 0.98))  # newer safety eval
    b.forge(b.flow.approve(p, evals, "alice"))  # still names the old one
    return b.log()


def _step_without_approval() -> Log:
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice",))
    b.forge(b.flow.step(p, 0, 10, "STARTED"))
    return b.log()


def _weight_beyond_plan() -> Log:
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice", "bob"))
    b.forge(b.flow.step(p, 0, 50, "STARTED"))
    return b.log()


def _promote_early() -> Log:
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.forge(b.flow.step(p, 0, 100, "PROMOTED"))
    return b.log()


def _kill_without_rollback() -> Log:
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.ok(b.flow.kill(KillScope("TARGET", "models", "model-c")))
    b.tick(60_000)  # the policy's bound is 5 s
    b.ok(b.flow.health(p, 0, True))
    return b.log()


def _checkpoint_wrong_key() -> Log:
    b = Builder().clean()
    log = b.log()
    other = PrivateKey.from_seed(hashlib.sha256(b"not the ledger").digest())
    leaves = [e.leaf_hash for e in b.entries]
    log.checkpoints[1] = checkpoint_note(b.flow.origin, 16, root_of(leaves[:16]), other)
    return log


def _checkpoint_wrong_root() -> Log:
    b = Builder().clean()
    log = b.log()
    log.checkpoints[1] = checkpoint_note(
        b.flow.origin, 16, hashlib.sha256(b"wrong").digest(), b.cast.checkpoint_key
    )
    return log


def _wrong_fingerprint() -> Log:
    b = Builder().clean()
    entries = [e.entry for e in b.entries]
    last = entries[-1]
    entries[-1] = dataclasses.replace(last, body=last.body[:2] + bytes(8) + last.body[10:])
    return b.rechained(entries)


def _reordered_signatures() -> Log:
    """A second encoding of a root-signed grant: its two signatures listed in the other order."""
    b = Builder().clean()
    grant = b.flow.grant_key(
        b.cast["carol"].principal, b.cast.extra_key("carol-2", seed=b.seed), ("approver",)
    )
    b.forge(SignedEvent(grant.body, tuple(reversed(grant.signatures))))
    return b.log()


def _deployment_name_not_dns() -> Log:
    b = Builder().clean()
    b.forge(b.flow.propose("registry.example/model-server:v9", deployment="Model-Server"))
    return b.log()


def _control_character_in_text() -> Log:
    b = Builder().clean()
    b.forge(b.flow.kill(KillScope("GLOBAL"), reason="ok\n42 KillSwitchReleased GLOBAL"))
    return b.log()


def _stopped(b: Builder) -> tuple[bytes, tuple[bytes, bytes], KillScope, bytes, bytes]:
    """A rollout on model-c stopped by a kill switch: (proposal, evals, scope, engagement, rollback)."""
    p, evals = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    scope = KillScope("TARGET", "models", "model-c")
    engaged = b.ok(b.flow.kill(scope))
    return p, evals, scope, engaged, b.ok(b.flow.step(p, 0, 0, "ROLLED_BACK"))


def _release_signed_in_advance() -> Log:
    b = Builder().clean()
    presigned = b.flow.event(
        KillSwitchReleased(KillScope("TARGET", "models", "model-c"), "early"), "alice", "bob"
    )
    _stopped(b)
    b.forge(presigned)
    return b.log()


def _stopped_proposer_counted() -> Log:
    b = Builder().clean()
    _, _, scope, engaged, _ = _stopped(b)
    b.forge(b.flow.event(KillSwitchReleased(scope, "mine"), "agent", "alice", refs=(engaged,)))
    return b.log()


def _decision_before_rollback() -> Log:
    b = Builder().clean()
    p, evals = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    withheld = b.flow.approve(p, evals, "alice")  # no rollback yet: names none
    scope = KillScope("TARGET", "models", "model-c")
    b.ok(b.flow.kill(scope))
    b.ok(b.flow.step(p, 0, 0, "ROLLED_BACK"))
    b.ok(b.flow.release(scope))
    b.forge(withheld)
    return b.log()


def _health_for_an_earlier_run() -> Log:
    b = Builder().clean()
    p, evals = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    withheld = b.flow.health(p, 0, True)  # names this run of step 0
    scope = KillScope("TARGET", "models", "model-c")
    b.ok(b.flow.kill(scope))
    b.ok(b.flow.step(p, 0, 0, "ROLLED_BACK"))
    b.ok(b.flow.release(scope))
    b.ok(b.flow.approve(p, evals, "alice"))
    b.ok(b.flow.approve(p, evals, "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.forge(withheld)
    return b.log()


ERROR_RATE = HealthCheck(
    name="error-rate",
    query='sum(rate(http_requests_total{{canary_selector},code=~"5.."}[1m]))',
    op="LE",
    threshold=0.05,
    interval_seconds=10,
    count=2,
    failure_limit=1,
    steps=None,
    no_data=NoDataRule(60, "ROLLBACK"),
)


def _at_analysed_step(b: Builder) -> bytes:
    """A rollout at its health-gated step 1, which the check ERROR_RATE gates."""
    b.ok(b.flow.policy(analysis=(ERROR_RATE,)))
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.ok(b.flow.step(p, 1, 50, "ADVANCED"))
    return p


def _evidence(verdict: str, *values: float) -> CheckEvidence:
    query = render_query(ERROR_RATE, Target("models", "model-c"))
    samples = tuple(Sample(START + i, v, "") for i, v in enumerate(values))
    return CheckEvidence(ERROR_RATE.name, query, START + len(values), samples, verdict)


def _verdict_contradicting_its_samples() -> Log:
    b = Builder().clean()
    p = _at_analysed_step(b)
    b.forge(b.flow.health(p, 1, True, checks=(_evidence("PASS", 0.2, 0.3),)))
    return b.log()


def _advance_over_a_failing_check() -> Log:
    b = Builder().clean()
    p = _at_analysed_step(b)
    b.ok(b.flow.health(p, 1, False, checks=(_evidence("FAIL", 0.2),)))
    b.forge(b.flow.step(p, 2, 100, "ADVANCED"))
    return b.log()


def _running_paused(b: Builder) -> tuple[bytes, bytes]:
    """A fresh rollout at its first step, paused: (proposal, the pause)."""
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    return p, b.ok(b.flow.pause(p))


def _pause_of_a_promoted_rollout() -> Log:
    b = Builder().clean()
    b.forge(b.flow.pause(b.p1))
    return b.log()


def _second_pause() -> Log:
    b = Builder().clean()
    p, _ = _running_paused(b)
    b.forge(b.flow.pause(p, signer="oncall"))
    return b.log()


def _resume_when_not_paused() -> Log:
    b = Builder().clean()
    p, _ = b.pending_proposal(("alice", "bob"))
    b.ok(b.flow.step(p, 0, 10, "STARTED"))
    b.forge(b.flow.resume(p, ("alice", "bob")))
    return b.log()


def _resume_signed_for_an_earlier_pause() -> Log:
    b = Builder().clean()
    p, _ = _running_paused(b)
    withheld = b.flow.resume(p)  # names the first pause
    b.ok(b.flow.resume(p, ("bob",)))
    b.ok(b.flow.pause(p, signer="oncall"))
    b.forge(withheld)
    return b.log()


def _advance_while_paused() -> Log:
    b = Builder().clean()
    p, _ = _running_paused(b)
    b.forge(b.flow.step(p, 1, 50, "ADVANCED"))
    return b.log()


TAMPERS: dict[str, tuple[str, Callable[[], Log]]] = {
    "flipped byte in a body": ("BAD_SIGNATURE", _flip_body_byte),
    "swapped signature": ("SIGNATURE_SWAPPED", _swap_signature),
    "deleted entry": ("ENTRY_MISSING", _delete),
    "inserted entry": ("ENTRY_INSERTED", _insert),
    "reordered entries": ("ENTRY_REORDERED", _reorder),
    "truncated log": ("LOG_TRUNCATED", _truncate),
    "replayed event": ("EVENT_REPLAYED", _replay),
    "revoked key after revocation": ("KEY_REVOKED", _revoked_key),
    "unknown key": ("UNKNOWN_KEY", _unknown_key),
    "self-approval": ("SELF_APPROVAL", _self_approval),
    "double counting": ("DOUBLE_COUNTED", _double_count),
    "approval not bound to latest eval": ("APPROVAL_NOT_BOUND", _approval_not_bound),
    "rollout step without approval": ("ROLLOUT_WITHOUT_APPROVAL", _step_without_approval),
    "weight beyond the plan": ("WEIGHT_BEYOND_PLAN", _weight_beyond_plan),
    "promotion before every step": ("PROMOTED_EARLY", _promote_early),
    "kill switch not followed by rollback": ("KILL_NOT_ROLLED_BACK", _kill_without_rollback),
    "checkpoint signed by the wrong key": ("CHECKPOINT_BAD_SIGNATURE", _checkpoint_wrong_key),
    "checkpoint with the wrong root": ("CHECKPOINT_ROOT_MISMATCH", _checkpoint_wrong_root),
    "wrong schema fingerprint": ("UNKNOWN_FINGERPRINT", _wrong_fingerprint),
    "signatures out of key-id order": ("SIGNATURES_NOT_CANONICAL", _reordered_signatures),
    "Deployment name that is no DNS-1123 subdomain": ("NAME_INVALID", _deployment_name_not_dns),
    "newline in a kill switch reason": ("TEXT_INVALID", _control_character_in_text),
    "release signed before the engagement": (
        "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT",
        _release_signed_in_advance,
    ),
    "stopped proposer counted towards release": ("THRESHOLD_NOT_MET", _stopped_proposer_counted),
    "decision signed before the rollback": (
        "DECISION_NOT_AFTER_LATEST_ROLLBACK",
        _decision_before_rollback,
    ),
    "health report for an earlier run": ("HEALTH_NOT_FOR_CURRENT_RUN", _health_for_an_earlier_run),
    "health verdict contradicting its samples": (
        "HEALTH_VERDICT_MISMATCH",
        _verdict_contradicting_its_samples,
    ),
    "advance over a failing check": ("HEALTH_GATE_SKIPPED", _advance_over_a_failing_check),
    "pause of a promoted rollout": ("ROLLOUT_NOT_RUNNING", _pause_of_a_promoted_rollout),
    "second pause": ("ROLLOUT_ALREADY_PAUSED", _second_pause),
    "resume when not paused": ("ROLLOUT_NOT_PAUSED", _resume_when_not_paused),
    "resume signed for an earlier pause": (
        "RESUME_NOT_FOR_CURRENT_PAUSE",
        _resume_signed_for_an_earlier_pause,
    ),
    "advance while paused": ("ROLLOUT_WHILE_PAUSED", _advance_while_paused),
}

FORK = ("CHECKPOINT_FORK", _fork)
