"""Issue #17: pause and resume are governed events; what can a signer with the wrong role or
bad timing do with them?

Each test plays one attack against a real ledger server (embedded SQLite, real gRPC) with
events signed by the attacker's own keys (or a careless signer's, kept back and submitted
later), and checks the exact violation, its gRPC status and field, and that the log is
untouched. A pause is cheap (one approver or operator), a resume is an authorization: it names
the pause it ends (refs) and carries the signatures of the policy's `resume_approvals`
distinct approver principals of its kinds, never the proposer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ledger.client import LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.formats import KillScope, RolloutPaused, RolloutResumed, SignedEvent
from ledger.scenario import Cast, Flow, followed_state
from ledger.server import LedgerServerConfig, RunningServer, serve

CODE = grpc.StatusCode


@dataclass
class Ledger:
    running: RunningServer
    client: LedgerClient
    cast: Cast
    flow: Flow

    def ok(self, event: SignedEvent) -> bytes:
        receipt = self.client.append(event)
        assert not receipt.duplicate
        return receipt.leaf_hash

    def refused(
        self, event: SignedEvent, code: grpc.StatusCode, violation: str, field: str
    ) -> LedgerRpcError:
        head = self.client.head()
        with pytest.raises(LedgerRpcError) as info:
            self.client.append(event)
        err = info.value
        assert (err.code, err.violation_code, err.field) == (code, violation, field), err.message
        assert self.client.head() == head, "a refused event changed the ledger"
        return err

    def running_rollout(self, **policy: object) -> bytes:
        """Genesis, grants, a policy, and a proposal approved by alice and bob at step 0."""
        self.ok(self.flow.genesis())
        for result in self.client.append_many(self.flow.grants()):
            assert isinstance(result, Receipt)
        self.ok(self.flow.policy(**policy))  # type: ignore[arg-type]
        p = self.ok(self.flow.propose())
        evals = (
            self.ok(self.flow.eval(p, "safety", 0.99)),
            self.ok(self.flow.eval(p, "quality", 0.91)),
        )
        self.ok(self.flow.approve(p, evals, "alice"))
        self.ok(self.flow.approve(p, evals, "bob"))
        self.ok(self.flow.step(p, 0, 10, "STARTED"))
        return p


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    cast = Cast.create()  # the demo cast: the agent proposes and holds the approver role
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db", checkpoint_key=cast.checkpoint_key, checkpoint_every_ms=0
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        # The flow signs against the server's own log, as the CLI does (binding refs included).
        yield Ledger(running, client, cast, Flow(cast, state=followed_state(client.read)))
    finally:
        client.close()
        running.stop(None)


def test_only_an_approver_or_operator_pauses_and_only_approvers_resume(ledger: Ledger) -> None:
    p = ledger.running_rollout()
    for signer in ("evalbot", "monitor", "controller", "root1"):
        ledger.refused(
            ledger.flow.pause(p, signer=signer),
            CODE.PERMISSION_DENIED,
            "ROLE_REQUIRED",
            "signatures",
        )
    two_authors = ledger.flow.event(RolloutPaused(p, "both of us"), "carol", "oncall")
    ledger.refused(two_authors, CODE.PERMISSION_DENIED, "MULTIPLE_AUTHORS", "signatures")
    ledger.ok(ledger.flow.pause(p, signer="oncall"))
    # An operator may pause but not resume: operators stop things, approvers let them go on.
    err = ledger.refused(
        ledger.flow.resume(p, ("oncall",)),
        CODE.PERMISSION_DENIED,
        "THRESHOLD_NOT_MET",
        "signatures",
    )
    assert "human:oncall@example.org (no approver role)" in err.message
    # Nor may the controller advance past the pause on its own.
    ledger.refused(
        ledger.flow.step(p, 1, 50, "ADVANCED"),
        CODE.FAILED_PRECONDITION,
        "ROLLOUT_PAUSED",
        "payload.phase",
    )
    ledger.ok(ledger.flow.resume(p, ("alice",)))
    ledger.ok(ledger.flow.step(p, 1, 50, "ADVANCED"))


def test_the_proposer_never_counts_towards_a_resume(ledger: Ledger) -> None:
    # The policy takes agents' decisions, so only the proposer rule keeps the agent out.
    p = ledger.running_rollout(kinds=("human", "agent"), resume_approvals=2)
    ledger.ok(ledger.flow.pause(p))
    err = ledger.refused(
        ledger.flow.resume(p, ("agent", "alice")),
        CODE.PERMISSION_DENIED,
        "THRESHOLD_NOT_MET",
        "signatures",
    )
    assert "observed 1 (human:alice@example.org)" in err.message
    assert "agent:researcher-7 (proposer of this change)" in err.message
    ledger.ok(ledger.flow.resume(p, ("alice", "bob")))


def test_two_keys_of_one_principal_count_once(ledger: Ledger) -> None:
    p = ledger.running_rollout(resume_approvals=2)
    laptop = ledger.cast.extra_key("alice-laptop")
    ledger.ok(ledger.flow.grant_key(ledger.cast["alice"].principal, laptop, ("approver",)))
    pause = ledger.ok(ledger.flow.pause(p))
    alice_twice = ledger.flow.signed_by_keys(
        RolloutResumed(p, "go"), ledger.cast["alice"].key, laptop, refs=(pause,)
    )
    assert len(alice_twice.signatures) == 2
    err = ledger.refused(alice_twice, CODE.PERMISSION_DENIED, "THRESHOLD_NOT_MET", "signatures")
    assert "observed 1 (human:alice@example.org)" in err.message
    ledger.ok(ledger.flow.resume(p, ("alice", "bob")))


def test_a_resume_signed_for_an_earlier_pause_ends_no_later_one(ledger: Ledger) -> None:
    p = ledger.running_rollout()
    # Signed before any pause: it names none, and so can end none.
    in_advance = ledger.flow.event(RolloutResumed(p, "whenever"), "alice")
    first = ledger.ok(ledger.flow.pause(p))
    ledger.refused(in_advance, CODE.FAILED_PRECONDITION, "RESUME_NOT_FOR_CURRENT_PAUSE", "refs")
    kept = ledger.flow.resume(p, ("alice",))  # names the first pause; kept back
    assert first in kept.body  # the pause's entry hash is among the signed refs
    ledger.ok(ledger.flow.resume(p, ("bob",)))
    ledger.ok(ledger.flow.pause(p, signer="oncall", reason="again"))
    ledger.refused(kept, CODE.FAILED_PRECONDITION, "RESUME_NOT_FOR_CURRENT_PAUSE", "refs")


def test_nothing_to_resume_and_nothing_to_pause(ledger: Ledger) -> None:
    p = ledger.running_rollout()
    ledger.refused(
        ledger.flow.resume(p, ("alice", "bob")),
        CODE.FAILED_PRECONDITION,
        "ROLLOUT_NOT_PAUSED",
        "payload.proposal",
    )
    ledger.ok(ledger.flow.pause(p))
    ledger.refused(
        ledger.flow.pause(p, signer="oncall"),
        CODE.FAILED_PRECONDITION,
        "ROLLOUT_ALREADY_PAUSED",
        "payload.proposal",
    )
    ledger.ok(ledger.flow.resume(p, ("alice",)))
    ledger.ok(ledger.flow.step(p, 1, 50, "ADVANCED"))
    ledger.ok(ledger.flow.health(p, 1, True))
    ledger.ok(ledger.flow.step(p, 2, 100, "ADVANCED"))
    ledger.ok(ledger.flow.step(p, 2, 100, "PROMOTED"))
    err = ledger.refused(
        ledger.flow.pause(p), CODE.FAILED_PRECONDITION, "ROLLOUT_NOT_RUNNING", "payload.proposal"
    )
    assert "PROMOTED" in err.message


def test_a_kill_switch_wins_over_a_pause_and_ends_it(ledger: Ledger) -> None:
    p = ledger.running_rollout()
    ledger.ok(ledger.flow.pause(p))
    scope = KillScope("PROPOSAL", proposal=p)
    ledger.ok(ledger.flow.kill(scope))
    ledger.ok(ledger.flow.step(p, 0, 0, "ROLLED_BACK"))
    # The rollback ended the pause: a resume has nothing to end, a pause nothing to hold.
    ledger.refused(
        ledger.flow.resume(p, ("alice",)),
        CODE.FAILED_PRECONDITION,
        "ROLLOUT_NOT_PAUSED",
        "payload.proposal",
    )
    ledger.refused(
        ledger.flow.pause(p), CODE.FAILED_PRECONDITION, "ROLLOUT_NOT_RUNNING", "payload.proposal"
    )
