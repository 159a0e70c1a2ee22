"""Issue #14, attacks 2-4: every authorization is bound to the state it authorizes.

Each test plays one attack against a real ledger server (embedded SQLite, real gRPC) as the
issue describes it, with events signed by the attacker's (or a careless signer's) own keys,
and checks that the ledger refuses the authorization and leaves the log untouched. The events
are built with explicit refs, so the test reads the same before and after the fix: what is
signed is exactly what the attack signs.

- Attack 2: a kill-switch release signed before the switch existed (names no engagement).
- Attack 3: the proposer of the stopped rollout (an agent holding the approver role) counts
  towards the release threshold under a policy that accepts only humans.
- Attack 4: approvals signed before a rollback, and a health report signed for an earlier run
  of a step, withheld and submitted later.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ledger.client import LedgerClient, LedgerRpcError
from ledger.core import Receipt
from ledger.formats import (
    ApprovalRecorded,
    HealthReported,
    KillScope,
    KillSwitchReleased,
    Metric,
    SignedEvent,
)
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve

CODE = grpc.StatusCode
TARGET = KillScope("TARGET", "models", "model-server")
GLOBAL = KillScope("GLOBAL")


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

    # -- the story up to a running canary ------------------------------------------------

    def base(self, **policy: object) -> None:
        self.ok(self.flow.genesis())
        for result in self.client.append_many(self.flow.grants()):
            assert isinstance(result, Receipt)
        self.ok(self.flow.policy(**policy))  # type: ignore[arg-type]

    def evaluated(
        self, image: str = "registry.example/model-server:v2", deployment: str = "model-server"
    ) -> tuple[bytes, tuple[bytes, bytes]]:
        p = self.ok(self.flow.propose(image, deployment=deployment))
        return p, (
            self.ok(self.flow.eval(p, "safety", 0.99)),
            self.ok(self.flow.eval(p, "quality", 0.91)),
        )

    def approve(
        self, p: bytes, evals: tuple[bytes, bytes], signer: str, *refs: bytes
    ) -> SignedEvent:
        return self.flow.event(
            ApprovalRecorded(p, "APPROVE", evals, "looks good"), signer, refs=refs
        )

    def release(self, scope: KillScope, signers: tuple[str, ...], *refs: bytes) -> SignedEvent:
        return self.flow.event(KillSwitchReleased(scope, "investigated, safe"), *signers, refs=refs)

    def report(self, p: bytes, step: int, *refs: bytes) -> SignedEvent:
        return self.flow.event(
            HealthReported(p, step, True, (Metric("error_rate", 0.001),)), "monitor", refs=refs
        )


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    cast = Cast.create()  # the demo cast: the agent holds proposer and approver
    assert "approver" in cast["agent"].roles
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db", checkpoint_key=cast.checkpoint_key, checkpoint_every_ms=0
        )
    )
    client = LedgerClient(running.address, timeout=10, retries=0)
    try:
        yield Ledger(running, client, cast, Flow(cast))
    finally:
        client.close()
        running.stop(None)


def test_attack2_a_release_signed_in_advance_releases_no_later_engagement(ledger: Ledger) -> None:
    ledger.base()
    # Before any switch exists, alice and bob sign a release of the target and keep it.
    presigned = ledger.release(TARGET, ("alice", "bob"))
    p, evals = ledger.evaluated()
    ledger.ok(ledger.approve(p, evals, "alice"))
    ledger.ok(ledger.approve(p, evals, "bob"))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))
    engaged = ledger.ok(ledger.flow.kill(TARGET))
    rolled_back = ledger.ok(ledger.flow.step(p, 0, 0, "ROLLED_BACK"))
    # The held-back release names no engagement: refused, the switch stays engaged.
    ledger.refused(
        presigned, CODE.FAILED_PRECONDITION, "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT", "refs"
    )
    # Naming some other entry instead of the engagement is refused the same way.
    ledger.refused(
        ledger.release(TARGET, ("alice", "bob"), rolled_back),
        CODE.FAILED_PRECONDITION,
        "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT",
        "refs",
    )
    # A release of this engagement, kept back until the switch is engaged again, releases
    # nothing later either.
    kept = ledger.release(TARGET, ("alice", "carol"), engaged)
    ledger.ok(ledger.release(TARGET, ("alice", "bob"), engaged))
    engaged_again = ledger.ok(ledger.flow.kill(TARGET))
    ledger.refused(kept, CODE.FAILED_PRECONDITION, "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT", "refs")
    ledger.ok(ledger.release(TARGET, ("alice", "bob"), engaged_again))


def test_attack3_the_stopped_proposer_and_disallowed_kinds_do_not_count_towards_release(
    ledger: Ledger,
) -> None:
    ledger.base(kinds=("human",), kill_release=2)
    p, evals = ledger.evaluated()
    ledger.ok(ledger.approve(p, evals, "alice"))
    ledger.ok(ledger.approve(p, evals, "bob"))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))
    engaged = ledger.ok(ledger.flow.kill(TARGET))
    ledger.ok(ledger.flow.step(p, 0, 0, "ROLLED_BACK"))
    # The agent whose rollout the switch stopped, plus one human: one allowed approver, not two.
    err = ledger.refused(
        ledger.release(TARGET, ("agent", "alice"), engaged),
        CODE.PERMISSION_DENIED,
        "THRESHOLD_NOT_MET",
        "signatures",
    )
    assert "agent:researcher-7" in err.message
    ledger.ok(ledger.release(TARGET, ("alice", "bob"), engaged))


def test_attack3_a_global_switch_satisfies_every_policy_on_its_own_terms(ledger: Ledger) -> None:
    # Two policies: "default" (models/*, humans only, k=2) and "lab" (lab/*, humans or
    # agents, k=1). A global switch holds both: each must be satisfied by its own kinds.
    ledger.base(kinds=("human",), kill_release=2)
    from ledger.formats import PolicySet, TargetSelector, decode_body

    default = decode_body(ledger.flow.policy().body).payload
    assert isinstance(default, PolicySet)
    from dataclasses import replace

    lab = replace(
        default,
        policy_id="lab",
        selector=TargetSelector("lab", "*"),
        approver_kinds=("human", "agent"),
        kill_release_approvals=1,
    )
    ledger.ok(ledger.flow.event(lab, "root1", "root2"))
    engaged = ledger.ok(ledger.flow.kill(GLOBAL))
    # An agent and a human meet "lab" (k=1) but not "default" (k=2, humans only).
    ledger.refused(
        ledger.release(GLOBAL, ("agent", "alice"), engaged),
        CODE.PERMISSION_DENIED,
        "THRESHOLD_NOT_MET",
        "signatures",
    )
    ledger.ok(ledger.release(GLOBAL, ("alice", "bob"), engaged))


def test_attack4_approvals_signed_before_a_rollback_do_not_restart_the_rollout(
    ledger: Ledger,
) -> None:
    ledger.base()
    p, evals = ledger.evaluated()
    ledger.ok(ledger.approve(p, evals, "alice"))
    ledger.ok(ledger.approve(p, evals, "bob"))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))
    # While the canary runs, alice and bob sign fresh approvals; someone keeps them back.
    withheld = [ledger.approve(p, evals, "alice"), ledger.approve(p, evals, "bob")]
    engaged = ledger.ok(ledger.flow.kill(TARGET))
    rolled_back = ledger.ok(ledger.flow.step(p, 0, 0, "ROLLED_BACK"))
    ledger.ok(ledger.release(TARGET, ("alice", "bob"), engaged))
    for approval in withheld:
        ledger.refused(
            approval, CODE.FAILED_PRECONDITION, "DECISION_NOT_AFTER_LATEST_ROLLBACK", "refs"
        )
    ledger.refused(
        ledger.flow.step(p, 0, 10, "STARTED"),
        CODE.FAILED_PRECONDITION,
        "APPROVALS_INSUFFICIENT",
        "payload.phase",
    )
    # Decisions made after the rollback name it, and count.
    ledger.ok(ledger.approve(p, evals, "alice", rolled_back))
    ledger.ok(ledger.approve(p, evals, "bob", rolled_back))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))


def test_attack4_a_health_report_for_an_earlier_run_does_not_pass_a_later_gate(
    ledger: Ledger,
) -> None:
    ledger.base()
    p, evals = ledger.evaluated()
    ledger.ok(ledger.approve(p, evals, "alice"))
    ledger.ok(ledger.approve(p, evals, "bob"))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))
    first_run = ledger.ok(ledger.flow.step(p, 1, 50, "ADVANCED"))  # step 1 is health-gated
    withheld = ledger.report(p, 1, first_run)  # signed for this run of step 1, kept back
    engaged = ledger.ok(ledger.flow.kill(TARGET))
    rolled_back = ledger.ok(ledger.flow.step(p, 1, 0, "ROLLED_BACK"))
    ledger.ok(ledger.release(TARGET, ("alice", "bob"), engaged))
    ledger.ok(ledger.approve(p, evals, "alice", rolled_back))
    ledger.ok(ledger.approve(p, evals, "bob", rolled_back))
    ledger.ok(ledger.flow.step(p, 0, 10, "STARTED"))
    second_run = ledger.ok(ledger.flow.step(p, 1, 50, "ADVANCED"))
    ledger.refused(withheld, CODE.FAILED_PRECONDITION, "HEALTH_NOT_FOR_CURRENT_RUN", "refs")
    ledger.refused(
        ledger.flow.step(p, 2, 100, "ADVANCED"),
        CODE.FAILED_PRECONDITION,
        "HEALTH_GATE",
        "payload.phase",
    )
    # A report for this run, naming it, opens the gate.
    ledger.ok(ledger.report(p, 1, second_run))
    ledger.ok(ledger.flow.step(p, 2, 100, "ADVANCED"))
