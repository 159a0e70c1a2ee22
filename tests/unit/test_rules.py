"""Each governance rule: a valid event passes, an event breaking it gets its own code."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.core import DuplicateEventIdError
from ledger.events import new_body, sign
from ledger.formats import (
    ApprovalRecorded,
    EvalRecorded,
    HealthReported,
    KillScope,
    KillSwitchEngaged,
    KillSwitchReleased,
    Metric,
    PlanStep,
    PolicySet,
    RolloutPaused,
    RolloutResumed,
    Signature,
    SignedEvent,
    TargetSelector,
    TrafficRouting,
    decode_body,
    make_entry,
)
from ledger.rules import CODES, check, fold
from ledger.state import LedgerState
from tests.unit.harness import OBSERVED_CODES, Harness

GLOBAL = KillScope("GLOBAL")
TARGET = KillScope("TARGET", "models", "model-server")


@pytest.fixture(params=["in-memory", "spilled"])
def h(request: pytest.FixtureRequest) -> Harness:
    """Every rule test runs twice: on the in-memory state, and on the state a server keeps, its
    indexes and proposals on disk with one addition and one proposal in memory at a time (so
    every lookup of another proposal reads it back, and every change is written out)."""
    return Harness.on(request.param)


# -- genesis and structure -------------------------------------------------------------------


def test_genesis_signed_by_threshold_of_roots_is_accepted(h: Harness) -> None:
    h.ok(h.flow.genesis())
    assert h.core.state.root_threshold == 2
    assert {k.principal for k in h.core.state.keys.values()} == {
        h.cast[r].principal for r in ("root1", "root2", "root3")
    }


def test_genesis_below_threshold_is_refused(h: Harness) -> None:
    h.refused(h.flow.genesis(signers=("root1",)), "THRESHOLD_NOT_MET")


def test_genesis_same_key_twice_counts_once(h: Harness) -> None:
    h.refused(h.flow.genesis(signers=("root1", "root1")), "THRESHOLD_NOT_MET")


def test_genesis_threshold_above_root_count_is_refused(h: Harness) -> None:
    h.refused(h.flow.genesis(threshold=4, signers=("root1", "root2", "root3")), "INVALID_FIELD")


def test_first_entry_must_be_genesis_and_only_the_first(h: Harness) -> None:
    h.refused(h.flow.grant("agent"), "GENESIS_MISPLACED")
    h.ok(h.flow.genesis())
    h.refused(h.flow.genesis(), "GENESIS_MISPLACED")


def test_entry_for_another_ledger_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    other = dataclasses.replace(h.flow, ledger="other")
    h.refused(other.grant("agent"), "LEDGER_MISMATCH")


def test_chain_position_is_checked(h: Harness) -> None:
    h.ok(h.flow.genesis())
    event = h.flow.grant("agent")
    wrong_seq = make_entry(5, h.core.state.last_hash, event, h.now)
    assert check(h.core.state, wrong_seq).code == "SEQ_MISMATCH"  # type: ignore[union-attr]
    wrong_prev = make_entry(1, bytes(32), event, h.now)
    assert check(h.core.state, wrong_prev).code == "PREV_MISMATCH"  # type: ignore[union-attr]
    OBSERVED_CODES.update({"SEQ_MISMATCH", "PREV_MISMATCH"})


def test_duplicate_event_id_is_refused_by_the_rules(h: Harness) -> None:
    h.base()
    first = h.flow.propose()
    h.ok(first)
    body = new_body(h.flow.ledger, _body(first).payload, event_id=_body(first).event_id)
    again = sign(dataclasses.replace(body, issued_at=body.issued_at + 1), h.cast["agent"].key)
    entry = make_entry(h.core.size, h.core.state.last_hash, again, h.now)
    assert check(h.core.state, entry).code == "DUPLICATE_EVENT_ID"  # type: ignore[union-attr]
    OBSERVED_CODES.add("DUPLICATE_EVENT_ID")
    # Through the core, the same id with other content is its own error, and the exact
    # same signed event again returns the original receipt.
    with pytest.raises(DuplicateEventIdError):
        h.core.append(again, h.tick)
    assert h.core.append(first, h.tick).duplicate


def _body(event: SignedEvent):  # type: ignore[no-untyped-def]
    from ledger.formats import decode_body

    return decode_body(event.body)


# -- signatures and keys ----------------------------------------------------------------------


def test_grant_needs_root_threshold(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.refused(h.flow.grant("agent", signers=("root1",)), "THRESHOLD_NOT_MET")
    h.ok(h.flow.grant("agent"))


def test_threshold_same_key_twice_counts_once(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.refused(h.flow.grant("agent", signers=("root1", "root1")), "THRESHOLD_NOT_MET")


def test_threshold_two_keys_of_one_principal_count_once(h: Harness) -> None:
    h.ok(h.flow.genesis())
    second = h.cast.extra_key("root1-laptop", seed="rules")
    h.ok(h.flow.grant_key(h.cast["root1"].principal, second, ("root",)))
    event = h.flow.signed_by_keys(
        _body(h.flow.grant("agent")).payload,
        h.cast["root1"].key,
        second,
    )
    h.refused(event, "THRESHOLD_NOT_MET")


def test_threshold_revoked_key_does_not_count(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.ok(h.flow.revoke(h.cast["root2"].key.key_id, signers=("root1", "root3")))
    h.refused(h.flow.grant("agent", signers=("root1", "root2")), "KEY_REVOKED")
    h.ok(h.flow.grant("agent", signers=("root1", "root3")))


def test_signatures_before_revocation_stay_valid(h: Harness) -> None:
    p = h.proposal()
    h.ok(h.flow.eval(p, "safety", 0.99))
    h.ok(h.flow.revoke(h.cast["evalbot"].key.key_id))
    h.refused(h.flow.eval(p, "quality", 0.9), "KEY_REVOKED")
    # Replaying the whole log from its entries re-checks the earlier eval: still valid.
    state = fold(_entries(h))
    assert state.size == h.core.size


def test_a_key_may_revoke_itself(h: Harness) -> None:
    h.base()
    h.ok(h.flow.revoke(h.cast["agent"].key.key_id, signers=("agent",)))
    h.refused(h.flow.propose(), "KEY_REVOKED")


def test_revoking_an_unknown_key_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.refused(h.flow.revoke(bytes(32)), "KEY_UNKNOWN")


def test_granting_a_key_twice_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.ok(h.flow.grant("agent"))
    h.refused(h.flow.grant("agent"), "KEY_EXISTS")


def test_grant_with_malformed_principal_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    key = h.cast.extra_key("x", seed="rules")
    h.refused(h.flow.grant_key("robot:r2d2", key, ("proposer",)), "INVALID_FIELD")


def test_expired_key_is_refused(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.ok(h.flow.grant("agent", expires_at=h.now + 60_000))
    for grant in h.flow.grants()[1:]:
        h.ok(grant)
    h.ok(h.flow.policy())
    h.ok(h.flow.propose())
    h.tick(120_000)
    h.refused(h.flow.propose("registry.example/model-server:v3"), "KEY_EXPIRED")


def test_unknown_key_bad_signature_and_no_signature(h: Harness) -> None:
    h.base()
    stranger = h.cast.extra_key("stranger", seed="rules")
    h.refused(h.flow.signed_by_keys(_body(h.flow.propose()).payload, stranger), "UNKNOWN_KEY")
    good = h.flow.propose()
    forged = SignedEvent(good.body, (Signature(good.signatures[0].key_id, bytes(64)),))
    h.refused(forged, "BAD_SIGNATURE")
    h.refused(SignedEvent(good.body, ()), "NO_SIGNATURES")


def test_replayed_signature_on_a_new_body_is_refused(h: Harness) -> None:
    h.base()
    old = h.flow.propose()
    h.ok(old)
    fresh = h.flow.propose()  # a new event id, so new body bytes
    h.refused(SignedEvent(fresh.body, old.signatures), "BAD_SIGNATURE")


def test_roles_are_enforced(h: Harness) -> None:
    p = h.proposal()
    h.refused(h.flow.eval(p, "safety", 0.99, signer="alice"), "ROLE_REQUIRED")


def test_an_event_has_one_author(h: Harness) -> None:
    h.base()
    event = h.flow.event(_body(h.flow.propose()).payload, "agent", "alice")
    h.refused(event, "MULTIPLE_AUTHORS")


# -- policies, proposals, evals, approvals ----------------------------------------------------


def test_policy_needs_roots_and_a_sane_plan(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.refused(h.flow.policy(signers=("root1",)), "THRESHOLD_NOT_MET")
    h.refused(h.flow.policy(plan=(PlanStep(50, 0, False), PlanStep(20, 0, False))), "INVALID_FIELD")
    h.ok(h.flow.policy())


def test_proposal_needs_a_policy(h: Harness) -> None:
    h.ok(h.flow.genesis())
    for grant in h.flow.grants():
        h.ok(grant)
    h.refused(h.flow.propose(), "NO_POLICY")


def test_proposer_never_evaluates_its_own_proposal(h: Harness) -> None:
    h.ok(h.flow.genesis())
    h.ok(
        h.flow.grant_key(
            h.cast["agent"].principal, h.cast.extra_key("agent-eval", seed="rules"), ("evaluator",)
        )
    )
    for grant in h.flow.grants():
        h.ok(grant)
    h.ok(h.flow.policy())
    p = h.ok(h.flow.propose())
    event = h.flow.signed_by_keys(
        EvalRecorded(p, "safety", (Metric("refusal_rate", 1.0),), "sha256:x"),
        h.cast.extra_key("agent-eval", seed="rules"),
    )
    h.refused(event, "SELF_EVALUATION")


def test_proposer_never_approves_its_own_proposal(h: Harness) -> None:
    h.ok(h.flow.genesis())
    agent_approver = h.cast.extra_key("agent-approver", seed="rules")
    h.ok(h.flow.grant_key(h.cast["agent"].principal, agent_approver, ("approver",)))
    for grant in h.flow.grants():
        h.ok(grant)
    h.ok(h.flow.policy(kinds=("human", "agent")))
    p = h.ok(h.flow.propose())
    evals = (h.ok(h.flow.eval(p, "safety", 0.99)), h.ok(h.flow.eval(p, "quality", 0.9)))
    event = h.flow.signed_by_keys(_body(h.flow.approve(p, evals, "alice")).payload, agent_approver)
    h.refused(event, "SELF_APPROVAL")


def test_approver_kind_must_be_allowed(h: Harness) -> None:
    p, evals = h.evaluated()
    svc = h.cast.extra_key("svc-approver", seed="rules")
    h.ok(h.flow.grant_key("service:autoapprover", svc, ("approver",)))
    h.refused(
        h.flow.signed_by_keys(_body(h.flow.approve(p, evals, "alice")).payload, svc),
        "APPROVER_KIND_NOT_ALLOWED",
    )


def test_eval_pass_fail_is_recomputed_from_the_policy(h: Harness) -> None:
    p = h.proposal()
    safety = h.ok(h.flow.eval(p, "safety", 0.50))  # below GE 0.95
    quality = h.ok(h.flow.eval(p, "quality", 0.90))
    violation = h.refused(h.flow.approve(p, (safety, quality), "alice"), "EVAL_FAILED")
    assert "refusal_rate" in str(violation)


def test_approval_needs_every_required_eval(h: Harness) -> None:
    p = h.proposal()
    safety = h.ok(h.flow.eval(p, "safety", 0.99))
    h.refused(h.flow.approve(p, (safety,), "alice"), "EVALS_MISSING")


def test_approval_must_bind_the_latest_evals(h: Harness) -> None:
    p, (safety, quality) = h.evaluated()
    newer = h.ok(h.flow.eval(p, "safety", 0.97))
    h.refused(h.flow.approve(p, (safety, quality), "alice"), "APPROVAL_NOT_BOUND_TO_LATEST_EVAL")
    h.ok(h.flow.approve(p, (newer, quality), "alice"))


def test_approval_made_before_a_newer_eval_does_not_count(h: Harness) -> None:
    p, (_safety, quality) = h.approved()
    newer = h.ok(h.flow.eval(p, "safety", 0.98))
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "APPROVALS_INSUFFICIENT")
    h.ok(h.flow.approve(p, (newer, quality), "alice"))
    h.ok(h.flow.approve(p, (newer, quality), "bob"))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))


def test_approval_evals_must_belong_to_the_proposal(h: Harness) -> None:
    p, evals = h.evaluated()
    other = h.ok(h.flow.propose("registry.example/model-server:v9", deployment="other"))
    other_eval = h.ok(h.flow.eval(other, "safety", 0.99))
    h.refused(h.flow.approve(p, (other_eval, evals[1]), "alice"), "EVAL_NOT_FOR_PROPOSAL")


def test_refs_must_exist_and_name_a_proposal(h: Harness) -> None:
    h.base()
    h.refused(h.flow.eval(b"\x07" * 32, "safety", 0.99), "REF_UNKNOWN")
    policy_hash = h.core.state.policies["default"].entry_hash
    h.refused(h.flow.eval(policy_hash, "safety", 0.99), "PROPOSAL_UNKNOWN")


def test_payload_hashes_must_be_listed_in_refs(h: Harness) -> None:
    p = h.proposal()
    body = new_body(h.flow.ledger, EvalRecorded(p, "safety", (Metric("refusal_rate", 1.0),), "d"))
    h.refused(sign(dataclasses.replace(body, refs=()), h.cast["evalbot"].key), "REF_MISSING")


def test_reject_vetoes_the_rollout(h: Harness) -> None:
    p, evals = h.approved()
    h.ok(h.flow.approve(p, evals, "carol", decision="REJECT"))
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "VETOED")


# -- rollout steps ----------------------------------------------------------------------------


def test_full_rollout_to_promotion(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    h.ok(h.flow.health(p, 1, True))
    h.ok(h.flow.step(p, 2, 100, "ADVANCED"))
    h.ok(h.flow.step(p, 2, 100, "PROMOTED"))
    assert h.core.state.proposals[p].phase == "PROMOTED"
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "ROLLOUT_STATE")
    h.refused(h.flow.eval(p, "safety", 0.99), "PROPOSAL_CLOSED")


def test_rollout_step_only_by_the_controller(h: Harness) -> None:
    p, _ = h.approved()
    h.refused(h.flow.step(p, 0, 10, "STARTED", signer="alice"), "ROLE_REQUIRED")


def test_rollout_needs_approvals(h: Harness) -> None:
    p, evals = h.evaluated()
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "APPROVALS_INSUFFICIENT")
    h.ok(h.flow.approve(p, evals, "alice"))
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "APPROVALS_INSUFFICIENT")


def test_rollout_stays_within_the_plan(h: Harness) -> None:
    p, _ = h.approved()
    h.refused(h.flow.step(p, 0, 30, "STARTED"), "WEIGHT_NOT_IN_PLAN")
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "STEP_NOT_IN_PLAN")
    h.refused(h.flow.step(p, 0, 10, "PROMOTED"), "STEP_NOT_IN_PLAN")
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "ROLLOUT_STATE")


def test_health_gate_blocks_advance(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    h.ok(h.flow.health(p, 1, False))
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    h.refused(h.flow.health(p, 7, True), "STEP_NOT_IN_PLAN")


def test_hold_time_is_enforced(h: Harness) -> None:
    p, _ = h.approved(plan=(PlanStep(20, 600, False), PlanStep(100, 0, False)))
    h.ok(h.flow.step(p, 0, 20, "STARTED"))
    h.refused(h.flow.step(p, 1, 100, "ADVANCED"), "HOLD_NOT_ELAPSED")
    h.tick(600_000)
    h.ok(h.flow.step(p, 1, 100, "ADVANCED"))


def test_one_rollout_per_target(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    q = h.ok(h.flow.propose("registry.example/model-server:v3"))
    qe = (h.ok(h.flow.eval(q, "safety", 0.99)), h.ok(h.flow.eval(q, "quality", 0.9)))
    h.ok(h.flow.approve(q, qe, "alice"))
    h.ok(h.flow.approve(q, qe, "bob"))
    h.refused(h.flow.step(q, 0, 10, "STARTED"), "TARGET_BUSY")


# -- kill switches ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope_kind", ["GLOBAL", "TARGET", "PROPOSAL"])
def test_kill_switch_blocks_every_scope_and_rollback_is_always_allowed(
    h: Harness, scope_kind: str
) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    scope = {"GLOBAL": GLOBAL, "TARGET": TARGET, "PROPOSAL": KillScope("PROPOSAL", proposal=p)}[
        scope_kind
    ]
    h.ok(h.flow.kill(scope))
    h.refused(h.flow.step(p, 1, 50, "ADVANCED"), "KILL_SWITCH_ENGAGED")
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))


def test_kill_switch_engaged_by_operator_or_approver_only(h: Harness) -> None:
    h.proposal()
    h.refused(h.flow.kill(GLOBAL, signer="evalbot"), "ROLE_REQUIRED")
    h.ok(h.flow.kill(GLOBAL, signer="alice"))
    h.refused(h.flow.kill(GLOBAL), "KILL_SWITCH_ALREADY_ENGAGED")


def test_controller_engages_only_when_recording_an_annotation(h: Harness) -> None:
    h.proposal()
    h.refused(h.flow.kill(GLOBAL, signer="controller"), "ROLE_REQUIRED")
    from ledger.formats import AnnotationSource

    payload = KillSwitchEngaged(
        GLOBAL,
        "annotation",
        AnnotationSource("models/model-server", "kubectl", "2026-01-01T00:00:00Z"),
    )
    h.ok(h.flow.event(payload, "controller"))


def test_kill_scope_must_be_well_formed(h: Harness) -> None:
    h.proposal()
    h.refused(h.flow.kill(KillScope("GLOBAL", "models", "")), "INVALID_FIELD")
    h.refused(h.flow.kill(KillScope("TARGET", "models", "")), "INVALID_FIELD")


def test_release_needs_k_distinct_approver_principals(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.refused(h.flow.release(TARGET), "KILL_SWITCH_NOT_ENGAGED")
    h.ok(h.flow.kill(TARGET))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    h.refused(h.flow.release(TARGET, signers=("alice",)), "THRESHOLD_NOT_MET")
    h.refused(h.flow.release(TARGET, signers=("alice", "alice")), "THRESHOLD_NOT_MET")
    h.refused(h.flow.release(TARGET, signers=("alice", "oncall")), "THRESHOLD_NOT_MET")
    h.ok(h.flow.release(TARGET, signers=("alice", "bob")))


def test_after_a_release_nothing_resumes_without_a_fresh_decision(h: Harness) -> None:
    p, evals = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(GLOBAL))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    h.ok(h.flow.release(GLOBAL))
    h.refused(h.flow.step(p, 0, 10, "STARTED"), "APPROVALS_INSUFFICIENT")
    h.ok(h.flow.approve(p, evals, "alice"))
    h.ok(h.flow.approve(p, evals, "bob"))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))


# -- authorizations bound to the state they authorize (#14, attacks 2-4) ---------------------


def _release(h: Harness, scope: KillScope, signers: tuple[str, ...], *refs: bytes) -> SignedEvent:
    return h.flow.event(KillSwitchReleased(scope, "safe"), *signers, refs=refs)


def test_a_release_names_exactly_the_engagement_it_releases(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    first = h.ok(h.flow.kill(TARGET))
    rolled_back = h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    h.refused(_release(h, TARGET, ("alice", "bob")), "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT")
    h.refused(
        _release(h, TARGET, ("alice", "bob"), rolled_back), "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT"
    )
    stale = _release(h, TARGET, ("alice", "carol"), first)
    h.ok(_release(h, TARGET, ("alice", "bob"), first))
    second = h.ok(h.flow.kill(TARGET))
    h.refused(stale, "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT")
    # Naming the current engagement and an older one as well is not naming it exactly.
    h.refused(
        _release(h, TARGET, ("alice", "bob"), second, first), "RELEASE_NOT_FOR_CURRENT_ENGAGEMENT"
    )
    assert h.core.state.binding_refs(KillSwitchReleased(TARGET, "")) == (second,)
    h.ok(h.flow.release(TARGET))  # the flow binds it from the state
    assert TARGET not in h.core.state.engagements


def test_release_never_counts_the_proposer_of_a_stopped_rollout(h: Harness) -> None:
    # approver_kinds includes agents here, so only the stopped-proposer rule keeps it out.
    p, _ = h.approved(kinds=("human", "agent"))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(GLOBAL))
    assert h.core.state.engagements[GLOBAL].stopped == frozenset({p})
    err = h.refused(h.flow.release(GLOBAL, signers=("agent", "alice")), "THRESHOLD_NOT_MET")
    assert "proposer of a rollout this switch stopped" in str(err)
    h.ok(h.flow.release(GLOBAL, signers=("alice", "bob")))


def test_release_counts_only_the_policys_approver_kinds(h: Harness) -> None:
    h.base(kinds=("human",), kill_release=1)
    h.ok(h.flow.kill(TARGET))  # nothing running: the proposer rule plays no part
    err = h.refused(h.flow.release(TARGET, signers=("agent",)), "THRESHOLD_NOT_MET")
    assert "kind not in human" in str(err)
    h.ok(h.flow.release(TARGET, signers=("agent", "alice")))


def test_a_global_release_meets_every_policy_on_its_own_terms(h: Harness) -> None:
    h.base(kinds=("human",), kill_release=2)
    lab = dataclasses.replace(
        _policy(h),
        policy_id="lab",
        selector=TargetSelector("lab", "*"),
        approver_kinds=("agent",),
        kill_release_approvals=1,
    )
    h.ok(h.flow.event(lab, "root1", "root2"))
    h.ok(h.flow.kill(GLOBAL))
    requirements, _ = h.core.state.kill_release_requirements(GLOBAL)
    assert [(r.policy_id, r.approvals, r.kinds) for r in requirements] == [
        ("default", 2, ("human",)),
        ("lab", 1, ("agent",)),
    ]
    h.refused(h.flow.release(GLOBAL, signers=("alice", "bob")), "THRESHOLD_NOT_MET")  # lab unmet
    h.refused(
        h.flow.release(GLOBAL, signers=("agent", "alice")), "THRESHOLD_NOT_MET"
    )  # default unmet
    h.ok(h.flow.release(GLOBAL, signers=("agent", "alice", "bob")))


def _policy(h: Harness) -> PolicySet:
    payload = decode_body(h.flow.policy().body).payload
    assert isinstance(payload, PolicySet)
    return payload


def test_a_decision_after_a_rollback_names_the_latest_rollback(h: Harness) -> None:
    p, evals = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    # Before any rollback a decision names none.
    first_run = h.core.state.proposals[p].steps[-1].entry_hash
    h.refused(
        _decision(h, p, evals, "carol", "APPROVE", first_run), "DECISION_NOT_AFTER_LATEST_ROLLBACK"
    )
    withheld = [
        _decision(h, p, evals, "alice", "APPROVE"),
        _decision(h, p, evals, "carol", "REJECT"),
    ]
    h.ok(h.flow.kill(TARGET))
    first = h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    h.ok(h.flow.release(TARGET))
    for decision in withheld:  # signed before the rollback: an approval and a veto alike
        h.refused(decision, "DECISION_NOT_AFTER_LATEST_ROLLBACK")
    h.ok(_decision(h, p, evals, "alice", "APPROVE", first))
    h.ok(h.flow.approve(p, evals, "bob"))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(TARGET))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    h.refused(
        _decision(h, p, evals, "alice", "APPROVE", first), "DECISION_NOT_AFTER_LATEST_ROLLBACK"
    )


def _decision(
    h: Harness, p: bytes, evals: tuple[bytes, bytes], signer: str, decision: str, *refs: bytes
) -> SignedEvent:
    return h.flow.event(ApprovalRecorded(p, decision, evals, "c"), signer, refs=refs)


def test_a_health_report_names_the_current_run_of_its_step(h: Harness) -> None:
    p, evals = h.approved()
    # Nothing runs yet: a report names no run, and can open no gate later.
    h.ok(h.flow.health(p, 1, True))
    started = h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.refused(_report(h, p, 0), "HEALTH_NOT_FOR_CURRENT_RUN")  # its step runs: it must name it
    h.refused(_report(h, p, 1, started), "HEALTH_NOT_FOR_CURRENT_RUN")  # step 1 does not run
    h.ok(_report(h, p, 0, started))
    first_run = h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    h.refused(_report(h, p, 1, started), "HEALTH_NOT_FOR_CURRENT_RUN")  # another step's run
    withheld = _report(h, p, 1, first_run)
    h.ok(h.flow.kill(TARGET))
    rolled_back = h.ok(h.flow.step(p, 1, 0, "ROLLED_BACK"))
    h.refused(_report(h, p, 1, first_run), "HEALTH_NOT_FOR_CURRENT_RUN")  # rolled back: no run
    h.ok(h.flow.release(TARGET))
    h.ok(_decision(h, p, evals, "alice", "APPROVE", rolled_back))
    h.ok(_decision(h, p, evals, "bob", "APPROVE", rolled_back))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    h.refused(withheld, "HEALTH_NOT_FOR_CURRENT_RUN")
    h.refused(h.flow.step(p, 2, 100, "ADVANCED"), "HEALTH_GATE")
    h.ok(h.flow.health(p, 1, True))  # the flow names the run from the state
    h.ok(h.flow.step(p, 2, 100, "ADVANCED"))


def test_a_health_verdict_is_recomputed_not_trusted(h: Harness) -> None:
    # More cases: tests/unit/test_rules_analysis.py.
    from tests.unit.test_rules_analysis import ERRORS, _evidence

    p, _ = h.approved(analysis=(ERRORS,))
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    lie = _evidence("PASS", 0.5, 0.5, 0.5)
    h.refused(h.flow.health(p, 1, True, checks=(lie,)), "HEALTH_VERDICT_MISMATCH")


def _report(h: Harness, p: bytes, step: int, *refs: bytes) -> SignedEvent:
    return h.flow.event(HealthReported(p, step, True, ()), "monitor", refs=refs)


def test_fold_of_the_log_equals_the_live_state(h: Harness) -> None:
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    state = fold(_entries(h))
    assert state.size == h.core.size
    assert state.proposals[p].phase == "STARTED"
    assert state.valid_approvers(state.proposals[p]) == sorted(
        [h.cast["alice"].principal, h.cast["bob"].principal]
    )


def _entries(h: Harness):  # type: ignore[no-untyped-def]
    return list(h.core.entries)


# -- one event, one encoding (issue #14, attack 5) --------------------------------------------


def _released(h: Harness) -> SignedEvent:
    """A release of TARGET signed by alice and bob, once everything it needs is in the log."""
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(TARGET))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    return h.flow.release(TARGET, signers=("alice", "bob"))


def test_signers_sort_signatures_by_key_id_and_list_each_key_once(h: Harness) -> None:
    event = h.flow.release(TARGET, signers=("bob", "alice", "bob"))
    ids = [s.key_id for s in event.signatures]
    assert ids == sorted({h.cast["alice"].key.key_id, h.cast["bob"].key.key_id})


def test_reordered_signatures_are_refused_as_malformed(h: Harness) -> None:
    event = _released(h)
    reordered = SignedEvent(event.body, tuple(reversed(event.signatures)))
    err = h.refused(reordered, "SIGNATURES_NOT_CANONICAL")
    assert err.violation.field == "signatures[1]" and err.violation.category == "malformed"
    h.ok(event)


def test_a_key_listed_twice_is_refused_as_malformed(h: Harness) -> None:
    event = _released(h)
    first, second = event.signatures
    h.refused(SignedEvent(event.body, (first, first, second)), "SIGNATURES_NOT_CANONICAL")
    h.refused(SignedEvent(event.body, (first, second, second)), "SIGNATURES_NOT_CANONICAL")
    h.ok(event)


def test_check_refuses_an_entry_with_unsorted_signatures_whatever_its_source(h: Harness) -> None:
    # What the controller's replay and a server replaying its store run: rules.check itself.
    event = _released(h)
    st = h.core.state
    e = make_entry(
        st.size, st.last_hash, SignedEvent(event.body, tuple(reversed(event.signatures))), h.tick()
    )
    violation = check(st, e)
    assert violation is not None and violation.code == "SIGNATURES_NOT_CANONICAL"


def test_a_retry_with_the_same_body_returns_the_original_receipt(h: Harness) -> None:
    event = _released(h)
    first = h.core.append(event, h.tick)
    again = h.core.append(event, h.tick)
    assert again.duplicate and (again.seq, again.leaf_hash) == (first.seq, first.leaf_hash)


def test_a_retry_with_another_valid_signature_set_returns_the_original_receipt(h: Harness) -> None:
    # A bystander submits a valid subset first; the author's full set is the same event.
    p, _ = h.approved()
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.kill(TARGET))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))
    full = h.flow.release(TARGET, signers=("alice", "bob", "carol"))
    ids = {h.cast[a].key.key_id for a in ("alice", "bob")}
    subset = SignedEvent(full.body, tuple(s for s in full.signatures if s.key_id in ids))
    first = h.core.append(subset, h.tick)
    retry = h.core.append(full, h.tick)
    assert retry.duplicate and (retry.seq, retry.leaf_hash) == (first.seq, first.leaf_hash)
    assert h.core.entries is not None and h.core.entries[-1].entry.signatures == subset.signatures


# -- names and text (issue #14, attack 6) -----------------------------------------------------


@pytest.mark.parametrize(
    "namespace, deployment, field",
    [
        ("models", "model-server ", "payload.target.deployment"),
        ("models", "Model-Server", "payload.target.deployment"),
        ("models", "model-server\n12 KillSwitchReleased", "payload.target.deployment"),
        ("models", "-model", "payload.target.deployment"),
        ("models", "m" * 254, "payload.target.deployment"),
        ("Models", "model-server", "payload.target.namespace"),
        ("models.prod", "model-server", "payload.target.namespace"),
        ("m" * 64, "model-server", "payload.target.namespace"),
    ],
)
def test_proposal_target_must_be_dns_1123(
    h: Harness, namespace: str, deployment: str, field: str
) -> None:
    h.base(namespace="*")
    err = h.refused(h.flow.propose(namespace=namespace, deployment=deployment), "NAME_INVALID")
    assert err.violation.field == field and err.violation.category == "malformed"


def test_dns_1123_names_at_their_limits_are_accepted(h: Harness) -> None:
    h.base(namespace="*")
    h.ok(h.flow.propose(namespace="n" * 63, deployment=".".join(["d" * 63] * 4)[:253].rstrip(".")))


def test_policy_selector_and_kill_scope_names_must_be_dns_1123(h: Harness) -> None:
    h.ok(h.flow.genesis())
    for grant in h.flow.grants():
        h.ok(grant)
    h.refused(h.flow.policy(namespace="Models"), "NAME_INVALID")
    h.refused(h.flow.policy(deployment="model server"), "NAME_INVALID")
    h.ok(h.flow.policy())
    err = h.refused(h.flow.kill(KillScope("TARGET", "models", "model-server\n")), "NAME_INVALID")
    assert err.violation.field == "payload.scope.deployment"


def test_principal_name_must_use_the_documented_characters(h: Harness) -> None:
    h.ok(h.flow.genesis())
    key = h.cast.extra_key("x", seed="rules")
    for bad in (
        "human:alice smith",
        "human:alice\nhuman:mallory",
        "human:-alice",
        "agent:a/b",
        "human:" + "a" * 201,
        "service:caf\u00e9",
    ):
        err = h.refused(h.flow.grant_key(bad, key, ("proposer",)), "NAME_INVALID")
        assert err.violation.field == "payload.principal"
    h.ok(h.flow.grant_key("human:alice.o+x_y-z@example.org", key, ("proposer",)))


@pytest.mark.parametrize(
    "text",
    [
        "line\nforged",
        "tab\there",
        "bell\a",
        "\x1b[2J",
        "rtl\u202eevil",
        "zero\u200bwidth",
        "sep\u2028",
        "x" * 4097,
    ],
)
def test_free_text_without_control_characters_and_within_its_cap(h: Harness, text: str) -> None:
    h.proposal()
    err = h.refused(h.flow.kill(GLOBAL, reason=text), "TEXT_INVALID")
    assert err.violation.field == "payload.reason"


def test_free_text_fields_of_each_type_are_checked(h: Harness) -> None:
    p, evals = h.evaluated()
    bad = "x\ny"
    h.refused(h.flow.event(ApprovalRecorded(p, "APPROVE", evals, bad), "alice"), "TEXT_INVALID")
    h.refused(
        h.flow.event(EvalRecorded(p, bad, (Metric("m", 1.0),), "d"), "evalbot"), "TEXT_INVALID"
    )
    err = h.refused(
        h.flow.event(EvalRecorded(p, "s", (Metric(bad, 1.0),), "d"), "evalbot"), "TEXT_INVALID"
    )
    assert err.violation.field == "payload.metrics[0].name"
    h.refused(h.flow.revoke(h.cast["agent"].key.key_id, reason=bad), "TEXT_INVALID")
    h.ok(h.flow.kill(GLOBAL, reason="unicode is fine: café, 日本語, emoji 🚦"))


# -- pause and resume (EventBody v3) --------------------------------------------------------


def _running(h: Harness, **policy: object) -> bytes:
    p, _evals = h.approved(**policy)
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    return p


def test_a_pause_holds_the_rollout_until_a_resume_by_enough_approvers(h: Harness) -> None:
    p = _running(h, resume_approvals=2)
    err = h.refused(h.flow.pause(p, reason="line one\nline two"), "TEXT_INVALID")
    assert err.violation.field == "payload.reason"
    pause = h.ok(h.flow.pause(p, signer="oncall"))
    assert h.core.state.proposals[p].paused_by == h.core.size - 1
    h.refused(h.flow.step(p, 1, 50, "ADVANCED"), "ROLLOUT_PAUSED")
    h.ok(h.flow.step(p, 0, 10, "PAUSED", reason="paused by human:oncall@example.org"))
    h.refused(h.flow.pause(p, signer="alice"), "ROLLOUT_ALREADY_PAUSED")
    err = h.refused(h.flow.resume(p, ("alice", "agent", "oncall")), "THRESHOLD_NOT_MET")
    msg = err.violation.message
    assert "observed 1 (human:alice@example.org)" in msg and "needs 2" in msg
    assert "agent:researcher-7 (proposer of this change)" in msg
    assert "human:oncall@example.org (no approver role)" in msg
    h.ok(h.flow.resume(p, ("alice", "bob")))
    state = h.core.state.proposals[p]
    assert state.pause is None and state.last_resume is not None
    assert state.last_resume.approvers == ("human:alice@example.org", "human:bob@example.org")
    assert h.core.entries is not None and pause in h.core.entries[-1].body.refs
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))


def test_only_a_started_unfinished_rollout_can_be_paused(h: Harness) -> None:
    p, _evals = h.approved()
    h.refused(h.flow.pause(p), "ROLLOUT_NOT_RUNNING")  # PENDING
    h.refused(h.flow.pause(p, signer="evalbot"), "ROLE_REQUIRED")
    h.refused(h.flow.event(RolloutPaused(bytes(32), "x"), "carol", refs=()), "REF_UNKNOWN")
    h.ok(h.flow.step(p, 0, 10, "STARTED"))
    h.ok(h.flow.step(p, 1, 50, "ADVANCED"))
    h.ok(h.flow.health(p, 1))
    h.ok(h.flow.step(p, 2, 100, "ADVANCED"))
    h.ok(h.flow.step(p, 2, 100, "PROMOTED"))
    err = h.refused(h.flow.pause(p), "ROLLOUT_NOT_RUNNING")
    assert "PROMOTED" in err.violation.message
    h.refused(h.flow.resume(p), "ROLLOUT_NOT_PAUSED")


def test_a_resume_names_the_pause_in_force_and_a_rollback_ends_a_pause(h: Harness) -> None:
    p = _running(h)
    h.ok(h.flow.pause(p))
    early = h.flow.resume(p)  # signed now, withheld
    h.ok(h.flow.resume(p, ("bob",)))
    h.ok(h.flow.pause(p, signer="oncall"))
    h.refused(early, "RESUME_NOT_FOR_CURRENT_PAUSE")  # names the first pause, not this one
    unbound = h.flow.event(RolloutResumed(p, "go"), "alice", "bob")
    h.refused(unbound, "RESUME_NOT_FOR_CURRENT_PAUSE")
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    h.ok(h.flow.step(p, 0, 0, "ROLLED_BACK"))  # a kill switch wins over a pause
    assert h.core.state.proposals[p].pause is None
    h.refused(h.flow.resume(p), "ROLLOUT_NOT_PAUSED")


def test_policy_delivery_settings_are_checked_field_by_field(h: Harness) -> None:
    h.base()
    route = TrafficRouting("model-server", "model-server-stable", "model-server-canary", 8080)
    bad: list[tuple[dict[str, object], str]] = [
        ({"resume_approvals": 0}, "payload.resume_approvals"),
        ({"resume_approvals": 17}, "payload.resume_approvals"),
        ({"traffic": dataclasses.replace(route, http_route="Route")}, "payload.traffic.http_route"),
        (
            {"traffic": dataclasses.replace(route, stable_service="1svc")},
            "payload.traffic.stable_service",
        ),
        (
            {"traffic": dataclasses.replace(route, canary_service="model-server-stable")},
            "payload.traffic.canary_service",
        ),
        ({"traffic": dataclasses.replace(route, port=0)}, "payload.traffic.port"),
        ({"traffic": dataclasses.replace(route, port=65536)}, "payload.traffic.port"),
        ({"notify": ("ftp://hooks.example.org/x",)}, "payload.notify[0]"),
        ({"notify": ("https://ok.example.org", "https://")}, "payload.notify[1]"),
        ({"notify": ("https://user:secret@hooks.example.org/x",)}, "payload.notify[0]"),
        ({"notify": ("https://hooks.example.org/a b",)}, "payload.notify[0]"),
        ({"notify": ("https://hooks.example.org:99999/",)}, "payload.notify[0]"),
        ({"notify": ("https://h.example.org/" + "a" * 2048,)}, "payload.notify[0]"),
        ({"notify": ("https://h.example.org/x", "https://h.example.org/x")}, "payload.notify[1]"),
        ({"notify": tuple(f"https://h{i}.example.org" for i in range(9))}, "payload.notify"),
    ]
    for fields, at in bad:
        err = h.refused(h.flow.policy(**fields), "INVALID_FIELD")  # type: ignore[arg-type]
        assert err.violation.field == at, (fields, str(err))
    h.ok(
        h.flow.policy(
            resume_approvals=16,
            traffic=route,
            notify=tuple(f"https://h{i}.example.org/steward?x={i}" for i in range(8)),
        )
    )


def test_every_violation_code_has_a_test() -> None:
    # Runs last in this module (pytest keeps file order): every code must have been observed.
    missing = sorted(set(CODES) - OBSERVED_CODES)
    assert not missing, f"violation codes without a rejecting test: {missing}"


def test_empty_state_check_refuses_non_genesis() -> None:
    assert LedgerState().size == 0
