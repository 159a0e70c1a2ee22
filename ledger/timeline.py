"""A readable timeline of the log: one line per entry, for people.

`describe(state, entry)` is called with the state *before* the entry, so it can name the
signers' principals (including a key granted by this very entry's predecessors).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from ledger.formats import (
    ApprovalRecorded,
    EvalRecorded,
    HealthReported,
    KeyGranted,
    KeyRevoked,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    LedgerGenesis,
    LogEntry,
    PolicySet,
    ProposalSubmitted,
    RolloutPaused,
    RolloutResumed,
    RolloutStep,
)
from ledger.keys import key_id
from ledger.names import printable
from ledger.rules import check
from ledger.state import LedgerState, eval_failures


def short(h: bytes) -> str:
    return h.hex()[:12]


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def scope_text(scope: KillScope) -> str:
    if scope.kind == "GLOBAL":
        return "global"
    if scope.kind == "TARGET":
        return f"target {scope.namespace}/{scope.deployment}"
    return f"proposal {short(scope.proposal or b'')}"


def signers(state: LedgerState, e: LogEntry) -> str:
    names: list[str] = []
    genesis_roots = (
        {key_id(r.public_key): r.principal for r in e.body.payload.roots}
        if isinstance(e.body.payload, LedgerGenesis)
        else {}
    )
    for sig in e.entry.signatures:
        info = state.keys.get(sig.key_id)
        name = info.principal if info else genesis_roots.get(sig.key_id, f"key {short(sig.key_id)}")
        if name not in names:
            names.append(name)
    return ", ".join(names)


def describe(state: LedgerState, e: LogEntry) -> str:
    """What happened, in one sentence."""
    p = e.body.payload
    who = signers(state, e)
    if isinstance(p, LedgerGenesis):
        return f"ledger {e.body.ledger!r} created by {who}: {len(p.roots)} roots, threshold {p.root_threshold}, origin {p.origin}"
    if isinstance(p, KeyGranted):
        expiry = f", expires {when(p.expires_at)}" if p.expires_at else ""
        return f"{who} granted key {short(key_id(p.public_key))} to {p.principal} as {', '.join(p.roles)}{expiry}"
    if isinstance(p, KeyRevoked):
        owner = state.keys[p.key_id].principal if p.key_id in state.keys else "?"
        return f"{who} revoked key {short(p.key_id)} of {owner}: {p.reason}"
    if isinstance(p, PolicySet):
        weights = "→".join(str(s.weight) for s in p.plan)
        suites = ", ".join(sorted({r.suite for r in p.required_evals})) or "none"
        return (
            f"{who} set policy {p.policy_id} for {p.selector.namespace}/{p.selector.deployment}: "
            f"evals {suites}; {p.approvals_required} approvals ({'/'.join(p.approver_kinds)}); plan {weights}%"
        )
    if isinstance(p, ProposalSubmitted):
        return (
            f"{who} proposed {p.candidate.image} for {p.target.namespace}/{p.target.deployment} "
            f"(proposal {short(e.leaf_hash)})"
        )
    if isinstance(p, EvalRecorded):
        metrics = ", ".join(f"{m.name}={m.value:g}" for m in p.metrics)
        verdict = ""
        proposal = state.proposals.get(p.proposal)
        if proposal is not None:
            failures = eval_failures(state.policy_of(proposal), p)
            verdict = " → PASS" if not failures else " → FAIL (" + "; ".join(failures) + ")"
        return f"{who} evaluated proposal {short(p.proposal)} on {p.suite}: {metrics}{verdict}"
    if isinstance(p, ApprovalRecorded):
        verb = "approved" if p.decision == "APPROVE" else "rejected"
        return f"{who} {verb} proposal {short(p.proposal)} (bound to {len(p.evals)} evals)"
    if isinstance(p, HealthReported):
        if p.checks:  # the signed verdicts; the rules refused any its samples do not make
            judged = "; ".join(
                f"{c.name} {c.verdict} ["
                + ", ".join("-" if s.value is None else f"{s.value:g}" for s in c.samples[-5:])
                + "]"
                for c in p.checks
            )
            return f"{who} checked step {p.step} of {short(p.proposal)}: {judged}"
        return f"{who} reported step {p.step} of {short(p.proposal)} {'healthy' if p.healthy else 'UNHEALTHY'}"
    if isinstance(p, RolloutStep):
        return (
            f"{who} {p.phase.lower().replace('_', ' ')} {short(p.proposal)}: step {p.step}, "
            f"canary weight {p.weight}% ({p.reason})"
        )
    if isinstance(p, KillSwitchEngaged):
        via = f" via annotation by {p.annotation.field_manager}" if p.annotation else ""
        return f"KILL SWITCH engaged ({scope_text(p.scope)}) by {who}{via}: {p.reason}"
    if isinstance(p, KillSwitchReleased):
        return f"kill switch released ({scope_text(p.scope)}) by {who}: {p.reason}"
    if isinstance(p, RolloutPaused):
        return f"{who} paused the rollout of {short(p.proposal)}: {p.reason}"
    if isinstance(p, RolloutResumed):
        return f"{who} resumed the rollout of {short(p.proposal)}: {p.reason}"
    return e.body.type


def lines(entries: Iterable[LogEntry], state: LedgerState | None = None) -> Iterator[str]:
    """Timeline lines, folding as it goes; entries that break a rule are shown as refused.

    Each line is one line: what the log holds is shown escaped (:func:`ledger.names.printable`)."""
    state = state if state is not None else LedgerState()
    for e in entries:
        violation = check(state, e)
        stamp = f"{e.seq:>5}  {when(e.entry.received_at)}  {e.body.type:<18}"
        if violation is not None:
            yield printable(f"{stamp}  !! invalid entry, ignored: {violation}")
            continue
        text = describe(state, e)
        state.apply(e)
        yield printable(f"{stamp}  {text}")
