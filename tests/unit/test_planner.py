"""The planner's decisions, on logs built with the real rules and a simulated cluster.

`Sim` folds the ledger into a ControllerState, asks `plan` for actions and carries them out on
an in-memory picture of the two Deployments, the way the executor would on Kubernetes: records
go through the real LedgerCore (so the rules judge every step the planner proposes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from controller.planner import (
    Action,
    ApplyCanary,
    Containers,
    EmergencyStop,
    ObservedDeployment,
    ObservedPod,
    ObservedTarget,
    PlannerConfig,
    Promote,
    RecordKillSwitch,
    RecordStep,
    RemoveCanary,
    ScaleStable,
    StopCanary,
    Wait,
    annotation_kill_event_id,
    canary_replicas,
    plan,
    step_event_id,
)
from controller.state import ControllerState
from controller.target_index import TargetIndex
from ledger.events import new_body, sign
from ledger.formats import (
    AnnotationSource,
    ApprovalRecorded,
    KillScope,
    KillSwitchEngaged,
    PlanStep,
    RolloutStep,
    SignedEvent,
    Target,
    make_entry,
)
from ledger.rules import RuleViolationError
from tests.unit.harness import Harness

T = Target("models", "model-server")
V1 = "registry.example/model-server:v1"
V2 = "registry.example/model-server:v2"
SERVER = "server"  # the only container of the simulated model server
GLOBAL = KillScope("GLOBAL")
TARGET = KillScope("TARGET", "models", "model-server")


def ready(
    replicas: int, image: str, marker: str = "", proposal: str = "", stopping: str = ""
) -> ObservedDeployment:
    return ObservedDeployment(
        replicas=replicas,
        containers=((SERVER, image),),
        ready_replicas=replicas,
        updated_replicas=replicas,
        marker=marker,
        proposal=proposal,
        stopping=stopping,
    )


@dataclass
class Sim:
    """An in-memory cluster the planner's actions are applied to."""

    h: Harness
    stable: ObservedDeployment | None = field(default_factory=lambda: ready(4, V1))
    canary: ObservedDeployment | None = None
    pods: tuple[ObservedPod, ...] = ()
    stops: tuple[EmergencyStop, ...] = ()
    autoscaler: str = ""  # the HPA that scales the stable, if any
    cs: ControllerState = field(default_factory=ControllerState)
    pods_ready: bool = True  # whether applied canary pods become ready
    log: list[Action] = field(default_factory=list)
    targets: TargetIndex = field(default_factory=TargetIndex)

    def fold(self) -> ControllerState:
        entries = self.h.core.entries
        assert entries is not None
        for e in entries[self.cs.ledger.size :]:
            assert self.cs.fold(e) is None
            self.targets.note(self.cs, e)  # as the runtime's on_fold does
        return self.cs

    def observed(self) -> dict[Target, ObservedTarget]:
        return {T: ObservedTarget(self.stable, self.canary, self.pods, self.stops, self.autoscaler)}

    def plan(self, config: PlannerConfig | None = None) -> list[Action]:
        state, observed = self.fold(), self.observed()
        actions = plan(state, observed, self.h.now, config)
        # The runtime plans with the targets kept by a TargetIndex, brought up to date one
        # proposal at a time here: every planner test checks it plans the same.
        while not self.targets.update(state, limit=1):
            pass
        assert plan(state, observed, self.h.now, config, self.targets) == actions
        return actions

    def tick(
        self, *, only: type | None = None, config: PlannerConfig | None = None
    ) -> list[Action]:
        """Plan once and carry the actions out in order, stopping at a refused record."""
        actions = self.plan(config)
        for a in actions:
            if only is not None and not isinstance(a, only):
                break
            if not self.execute(a):
                break
        return actions

    def run(self, limit: int = 20) -> list[Action]:
        """Tick (one second apart) until the planner only waits; returns everything done."""
        done: list[Action] = []
        for _ in range(limit):
            actions = self.tick()
            work = [a for a in actions if not isinstance(a, Wait)]
            if not work:
                return done
            done.extend(work)
            self.h.tick(1000)
        raise AssertionError(f"the planner did not settle; last actions {done[-5:]}")

    def execute(self, a: Action) -> bool:
        self.log.append(a)
        if isinstance(a, RecordStep):
            return self.append(step_event(self.h, a))
        if isinstance(a, RecordKillSwitch):
            body = new_body(
                self.h.flow.ledger,
                KillSwitchEngaged(
                    KillScope("PROPOSAL", proposal=a.proposal), a.reason, a.annotation
                ),
                event_id=a.event_id,
                issued_at=self.h.now,
            )
            return self.append(sign(body, self.h.cast["controller"].key))
        if isinstance(a, ApplyCanary):
            assert self.stable is not None
            n = a.replicas if self.pods_ready else 0
            self.canary = ObservedDeployment(
                a.replicas,
                with_image(self.stable.containers, a.container, a.image),
                n,
                a.replicas,
                marker=a.marker,
                proposal=a.proposal.hex(),
            )
        elif isinstance(a, ScaleStable):
            assert self.stable is not None
            replicas = self.stable.replicas if a.replicas is None else a.replicas
            containers = self.stable.containers
            if a.container is not None:
                containers = with_image(containers, a.container, a.image)
            self.stable = dataclasses.replace(
                self.stable,
                replicas=replicas,
                containers=containers,
                ready_replicas=replicas,
                updated_replicas=replicas,
                marker=a.marker,
            )
        elif isinstance(a, StopCanary):
            assert self.canary is not None
            self.canary = dataclasses.replace(
                self.canary, replicas=0, ready_replicas=0, stopping=a.reason
            )
        elif isinstance(a, Promote):
            assert self.stable is not None
            replicas = self.stable.replicas if a.replicas is None else a.replicas
            self.stable = dataclasses.replace(
                ready(replicas, a.image, a.marker),
                containers=with_image(self.stable.containers, a.container, a.image),
            )
        elif isinstance(a, RemoveCanary):
            self.canary = None
            self.pods = ()
        return True

    def append(self, event: SignedEvent) -> bool:
        try:
            self.h.core.append(event, self.h.tick)
        except RuleViolationError:
            return False
        return True

    # -- what the log says ---------------------------------------------------------------

    def phases(self, p: bytes) -> list[tuple[int, int, str]]:
        self.fold()
        return [(s.step, s.weight, s.phase) for s in self.cs.ledger.proposals[p].steps]

    def replicas(self) -> tuple[int, int]:
        assert self.stable is not None
        return self.stable.replicas, self.canary.replicas if self.canary else 0


def with_image(containers: Containers, name: str, image: str) -> Containers:
    """What applying `image` to container `name` does to a pod template (the others kept)."""
    assert name in [n for n, _ in containers], f"no container {name} in {containers}"
    return tuple((n, image if n == name else i) for n, i in containers)


def step_event(h: Harness, a: RecordStep) -> SignedEvent:
    payload = RolloutStep(a.proposal, a.step, a.weight, a.phase, a.reason, a.observed)
    body = new_body(h.flow.ledger, payload, event_id=a.event_id, issued_at=h.now)
    return sign(body, h.cast["controller"].key)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def sim(h: Harness) -> Sim:
    return Sim(h)


def kinds(actions: list[Action]) -> list[str]:
    return [
        type(a).__name__ + (f":{a.phase}" if isinstance(a, RecordStep) else "") for a in actions
    ]


def approve_fresh(h: Harness, p: bytes) -> None:
    evals = tuple(
        info.entry_hash for _, info in sorted(h.core.state.proposals[p].latest_evals.items())
    )
    # latest_evals is keyed by suite; the approval names exactly those hashes.
    h.ok(h.flow.approve(p, evals, "alice"))
    h.ok(h.flow.approve(p, evals, "bob"))


# -- pure helpers --------------------------------------------------------------------------------


def test_canary_replicas_round_up_and_cover_the_whole_range() -> None:
    assert [canary_replicas(4, w) for w in (0, 10, 25, 50, 100)] == [0, 1, 1, 2, 4]
    assert [canary_replicas(3, w) for w in (10, 34, 67, 100)] == [1, 2, 3, 3]


def test_step_event_ids_are_deterministic_and_distinct() -> None:
    p = b"\x01" * 32
    assert step_event_id(p, 1, "ADVANCED", 0) == step_event_id(p, 1, "ADVANCED", 0)
    ids = {
        step_event_id(p, s, ph, a) for s in (0, 1) for ph in ("STARTED", "ADVANCED") for a in (0, 1)
    }
    assert len(ids) == 8
    assert all(len(i) == 16 for i in ids)


# -- the happy path ------------------------------------------------------------------------------


def test_full_rollout_to_promotion(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    first = sim.tick()
    # Surge: the canary first; the stable shrinks once the canary pods are ready.
    assert kinds(first) == ["RecordStep:STARTED", "ApplyCanary"]
    assert sim.replicas() == (4, 1)
    assert sim.canary is not None and sim.canary.image(SERVER) == V2
    assert kinds(sim.tick()) == ["ScaleStable", "Wait"]
    assert sim.replicas() == (3, 1)
    sim.run()
    # Step 1 has a health gate: nothing moves until a healthy report for step 1.
    assert sim.phases(p) == [(0, 10, "STARTED"), (1, 50, "ADVANCED")]
    assert sim.replicas() == (2, 2)
    assert "healthy report" in next(a for a in sim.plan() if isinstance(a, Wait)).message
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    assert sim.phases(p) == [
        (0, 10, "STARTED"),
        (1, 50, "ADVANCED"),
        (2, 100, "ADVANCED"),
        (2, 100, "PROMOTED"),
    ]
    assert sim.canary is None
    assert sim.stable == ready(4, V2, sim.stable.marker if sim.stable else "")
    assert sim.plan() == []  # nothing more to do once promoted


def test_promotion_removes_the_canary_only_once_the_stable_is_ready(h: Harness, sim: Sim) -> None:
    p, _ = h.approved(plan=(PlanStep(100, 0, False),))
    sim.run()
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    # Replay the promotion with a stable that is slow to become ready.
    h2 = Harness()
    p2, _ = h2.approved(plan=(PlanStep(100, 0, False),))
    s2 = Sim(h2)
    s2.tick()  # STARTED
    s2.tick()  # the stable shrinks (to 0) once the canary is ready
    h2.tick(1000)
    s2.tick(only=RecordStep)  # PROMOTED recorded, crash before the apply
    assert s2.phases(p2)[-1][2] == "PROMOTED"
    assert kinds(s2.plan()) == ["Promote"]
    s2.tick()
    assert s2.stable is not None
    s2.stable = dataclasses.replace(s2.stable, ready_replicas=1)
    assert kinds(s2.plan()) == ["Wait"]
    s2.stable = dataclasses.replace(s2.stable, ready_replicas=4)
    assert kinds(s2.plan()) == ["RemoveCanary"]


def test_hold_time_keeps_the_step(h: Harness, sim: Sim) -> None:
    h.approved(plan=(PlanStep(25, 5, False), PlanStep(100, 0, False)))
    sim.tick()
    sim.tick()  # the stable shrinks once the canary is ready
    h.tick(1000)
    waits = sim.plan()
    assert kinds(waits) == ["Wait"] and "holding step 0" in waits[0].message  # type: ignore[union-attr]
    h.tick(5000)
    assert kinds(sim.plan())[0] == "RecordStep:ADVANCED"


def test_advance_waits_for_ready_canary_pods(h: Harness, sim: Sim) -> None:
    h.approved(plan=(PlanStep(50, 0, False), PlanStep(100, 0, False)))
    sim.pods_ready = False
    sim.tick()
    h.tick(1000)
    waits = sim.plan()
    assert kinds(waits) == ["Wait"] and "canary pods ready 0/2" in waits[0].message  # type: ignore[union-attr]


# -- approvals -----------------------------------------------------------------------------------


def test_no_canary_replica_without_valid_approvals(h: Harness, sim: Sim) -> None:
    p, evals = h.evaluated()
    h.ok(h.flow.approve(p, evals, "alice"))  # one of two
    actions = sim.plan()
    assert kinds(actions) == ["Wait"]
    assert "1 of 2" in actions[0].message  # type: ignore[union-attr]
    sim.run()
    assert sim.canary is None and sim.replicas() == (4, 0)


def test_a_self_approval_never_counts(h: Harness, sim: Sim) -> None:
    """Refused at ingest; forged straight into storage, refused by the controller's own check."""
    p, evals = h.evaluated()
    h.ok(h.flow.approve(p, evals, "alice"))
    key = h.cast.extra_key("agent-approver", seed="planner")
    h.ok(h.flow.grant_key(h.cast["agent"].principal, key, ("approver",)))
    event = h.flow.signed_by_keys(ApprovalRecorded(p, "APPROVE", evals, "mine"), key)
    h.refused(event, "SELF_APPROVAL")
    sim.fold()
    forged = make_entry(h.core.size, h.core.state.last_hash, event, h.now)
    assert sim.cs.fold(forged).code == "SELF_APPROVAL"  # type: ignore[union-attr]
    assert sim.cs.invalid == 1
    assert kinds(sim.plan()) == ["Wait"]
    assert sim.canary is None


def test_an_approval_before_a_newer_eval_does_not_count(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    h.ok(h.flow.eval(p, "quality", 0.93))  # newer evidence voids both approvals
    actions = sim.plan()
    assert kinds(actions) == ["Wait"] and "0 of 2" in actions[0].message  # type: ignore[union-attr]
    approve_fresh(h, p)
    assert kinds(sim.plan())[0] == "RecordStep:STARTED"


def test_only_one_rollout_per_target(h: Harness, sim: Sim) -> None:
    p1, _ = h.approved()
    p2 = h.ok(h.flow.propose(V2 + "b"))
    e = (h.ok(h.flow.eval(p2, "safety", 0.99)), h.ok(h.flow.eval(p2, "quality", 0.9)))
    h.ok(h.flow.approve(p2, e, "alice"))
    h.ok(h.flow.approve(p2, e, "bob"))
    sim.tick()
    assert sim.phases(p1) == [(0, 10, "STARTED")]
    assert sim.phases(p2) == []
    sim.run()
    assert sim.phases(p2) == []


def test_a_veto_mid_rollout_rolls_back(h: Harness, sim: Sim) -> None:
    p, evals = h.approved()
    sim.tick()
    h.ok(h.flow.approve(p, evals, "carol", decision="REJECT"))
    sim.run()
    assert sim.phases(p)[-1][2] == "ROLLED_BACK"
    assert sim.canary is None and sim.replicas() == (4, 0)


# -- kill switches -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["GLOBAL", "TARGET", "PROPOSAL"])
def test_kill_switch_of_any_scope_rolls_back_at_once(h: Harness, sim: Sim, kind: str) -> None:
    p, _ = h.approved()
    sim.run()
    assert sim.replicas() == (2, 2)  # at step 1, waiting for health
    scope = {"GLOBAL": GLOBAL, "TARGET": TARGET, "PROPOSAL": KillScope("PROPOSAL", proposal=p)}[
        kind
    ]
    h.ok(h.flow.kill(scope))
    actions = sim.plan()
    # Stopping first: the canary goes to zero before anything is written to the ledger.
    assert kinds(actions) == ["StopCanary", "ScaleStable", "RecordStep:ROLLED_BACK", "RemoveCanary"]
    assert f"{kind} kill switch" in actions[0].reason  # type: ignore[union-attr]
    sim.run()
    assert sim.canary is None and sim.replicas() == (4, 0)
    assert sim.stable is not None and sim.stable.image(SERVER) == V1
    assert sim.phases(p)[-1] == (1, 0, "ROLLED_BACK")


def test_after_a_release_nothing_resumes_without_a_fresh_decision(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.tick()
    h.ok(h.flow.kill(GLOBAL))
    sim.run()
    h.ok(h.flow.release(GLOBAL))
    sim.run()
    assert sim.canary is None
    assert "0 of 2" in sim.plan()[0].message  # type: ignore[union-attr]
    approve_fresh(h, p)
    first = sim.tick()
    assert kinds(first)[0] == "RecordStep:STARTED"
    restart = first[0]
    assert isinstance(restart, RecordStep)
    assert restart.event_id == step_event_id(p, 0, "STARTED", 1)  # attempt 1: one rollback before
    sim.tick()  # the stable shrinks once the canary is ready
    assert sim.replicas() == (3, 1)


def test_a_kill_switch_before_start_blocks_the_start(h: Harness, sim: Sim) -> None:
    h.approved()
    h.ok(h.flow.kill(TARGET))
    actions = sim.plan()
    assert kinds(actions) == ["Wait"] and "TARGET kill switch" in actions[0].message  # type: ignore[union-attr]


def test_kill_release_needs_the_threshold(h: Harness) -> None:
    h.approved()
    h.ok(h.flow.kill(GLOBAL))
    h.refused(h.flow.release(GLOBAL, signers=("alice",)), "THRESHOLD_NOT_MET")


def test_emergency_stop_annotation_rolls_back_then_records_a_kill(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.tick()
    sim.tick()  # the stable shrinks once the canary is ready: there is a stable to restore
    src = AnnotationSource(
        "models/model-server-" + p.hex()[:10], "kubectl-annotate", "2026-01-01T00:00:05Z"
    )
    sim.stops = (EmergencyStop(p, "latency spike", src),)
    actions = sim.plan()
    assert kinds(actions) == [
        "StopCanary",
        "ScaleStable",
        "RecordKillSwitch",
        "RecordStep:ROLLED_BACK",
        "RemoveCanary",
    ]
    sim.run()
    assert sim.canary is None
    kill = next(a for a in sim.log if isinstance(a, RecordKillSwitch))
    assert kill.event_id == annotation_kill_event_id(p, src, "latency spike")
    assert KillScope("PROPOSAL", proposal=p) in sim.cs.ledger.kill_switches
    # Released by people, the annotation still on the object is not honoured a second time.
    h.ok(h.flow.release(KillScope("PROPOSAL", proposal=p)))
    assert not [a for a in sim.plan() if isinstance(a, RecordKillSwitch)]


def test_emergency_stop_on_a_pending_proposal_is_recorded(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    src = AnnotationSource("models/x", "kubectl-annotate", "2026-01-01T00:00:05Z")
    sim.stops = (EmergencyStop(p, "not now", src),)
    assert kinds(sim.plan()) == ["RecordKillSwitch"]
    sim.run()
    assert sim.canary is None
    assert "PROPOSAL kill switch" in sim.plan()[0].message  # type: ignore[union-attr]


# -- automatic rollback --------------------------------------------------------------------------


def test_unhealthy_report_for_the_current_step_rolls_back(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.run()
    h.ok(h.flow.health(p, 1, False))
    actions = sim.plan()
    assert kinds(actions)[0] == "StopCanary" and "unhealthy" in actions[0].reason  # type: ignore[union-attr]
    sim.run()
    assert sim.phases(p)[-1] == (1, 0, "ROLLED_BACK") and sim.canary is None


def test_an_unhealthy_report_from_before_a_restart_does_not_roll_back_again(
    h: Harness, sim: Sim
) -> None:
    p, _ = h.approved(plan=(PlanStep(50, 0, True), PlanStep(100, 0, False)))
    sim.tick()
    h.ok(h.flow.health(p, 0, False))
    sim.run()
    approve_fresh(h, p)
    sim.tick()
    assert sim.phases(p)[-1] == (0, 50, "STARTED")
    sim.tick()  # the stable shrinks once the canary is ready
    h.tick(1000)
    assert kinds(sim.plan()) == ["Wait"]  # waits for a fresh report, no rollback


def test_crashlooping_canary_pod_rolls_back(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.pods_ready = False
    sim.tick()
    sim.pods = (
        ObservedPod(
            "model-server-canary-x", ((SERVER, V2),), False, "Running", "CrashLoopBackOff", h.now
        ),
    )
    actions = sim.plan()
    assert kinds(actions)[0] == "StopCanary" and "CrashLoopBackOff" in actions[0].reason  # type: ignore[union-attr]
    sim.run()
    assert sim.phases(p)[-1][2] == "ROLLED_BACK" and sim.replicas() == (4, 0)


def test_a_canary_pod_not_ready_past_the_grace_rolls_back(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.pods_ready = False
    sim.tick()
    sim.pods = (ObservedPod("model-server-canary-y", ((SERVER, V2),), False, "Pending", "", h.now),)
    cfg = PlannerConfig(not_ready_grace_ms=10_000)
    assert kinds(sim.plan(cfg)) == ["Wait"]
    h.tick(11_000)
    assert kinds(sim.plan(cfg))[0] == "StopCanary"


# -- drift and restarts --------------------------------------------------------------------------


def test_hand_scaled_stable_is_recorded_as_drift_and_corrected(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.tick()
    sim.tick()  # the stable shrinks once the canary is ready
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, replicas=7)  # kubectl scale
    actions = sim.plan()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "ScaleStable"]
    assert "replicas 7, expected 3" in actions[0].reason  # type: ignore[union-attr]
    sim.tick()
    assert sim.replicas() == (3, 1)
    assert sim.phases(p) == [(0, 10, "STARTED"), (0, 10, "DRIFT_CORRECTED")]
    # A second hand change gets its own record (its own event id).
    sim.canary = dataclasses.replace(sim.canary, containers=((SERVER, V1),))  # type: ignore[arg-type]
    second = sim.tick()
    assert kinds(second) == ["RecordStep:DRIFT_CORRECTED", "ApplyCanary"]
    assert second[0].event_id != actions[0].event_id  # type: ignore[union-attr]
    assert sim.phases(p)[-1] == (0, 10, "DRIFT_CORRECTED") and sim.canary.image(SERVER) == V2


def test_a_record_without_its_apply_is_reapplied_not_drift(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    first = sim.tick(only=RecordStep)  # crash right after the ledger accepted STARTED
    assert sim.canary is None and sim.phases(p) == [(0, 10, "STARTED")]
    again = sim.plan()
    assert kinds(again) == ["ApplyCanary", "Wait"]  # the stable waits for the canary (surge)
    sim.tick()
    assert sim.replicas() == (4, 1)
    assert kinds(sim.tick()) == ["ScaleStable", "Wait"]
    assert sim.replicas() == (3, 1)
    # Re-planned from the same log, the forward move has the same id: never recorded twice.
    assert first[0].event_id == step_event_id(p, 0, "STARTED", 0)  # type: ignore[union-attr]


def test_a_stop_begun_before_a_crash_is_finished(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.tick()
    sim.tick()  # the stable shrinks once the canary is ready: there is a stable to restore
    h.ok(h.flow.health(p, 0, False))  # no gate on step 0, still a reason to stop
    sim.tick(only=StopCanary)  # crash after zeroing the canary
    assert sim.canary is not None and sim.canary.replicas == 0
    actions = sim.plan()
    assert kinds(actions) == ["ScaleStable", "RecordStep:ROLLED_BACK", "RemoveCanary"]
    sim.run()
    assert sim.phases(p)[-1][2] == "ROLLED_BACK" and sim.canary is None


def test_a_rollback_recorded_before_a_crash_is_cleaned_up(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.tick()
    h.ok(h.flow.kill(GLOBAL))
    sim.tick(only=StopCanary | ScaleStable | RecordStep)  # type: ignore[arg-type]
    assert sim.phases(p)[-1][2] == "ROLLED_BACK" and sim.canary is not None
    assert kinds(sim.plan()) == ["RemoveCanary"]


def test_a_canary_the_log_does_not_explain_is_left_alone(h: Harness, sim: Sim) -> None:
    h.evaluated()
    sim.canary = ready(1, "other:v9", proposal="ff" * 32)
    assert [a for a in sim.plan() if not isinstance(a, Wait)] == []


def test_targets_not_observed_are_not_touched(h: Harness) -> None:
    h.approved()
    cs = ControllerState()
    for e in h.core.entries or []:
        cs.fold(e)
    assert plan(cs, {}, h.now) == []
    other = Target("models", "something-else")
    assert plan(cs, {other: ObservedTarget(ready(4, V1))}, h.now) == []


def test_a_missing_stable_deployment_waits(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.stable = None
    actions = sim.plan()
    assert kinds(actions) == ["Wait"] and "not found" in actions[0].message  # type: ignore[union-attr]


def test_forged_entries_are_counted_and_ignored(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.fold()
    kill = h.flow.kill(GLOBAL)
    tampered = SignedEvent(kill.body, (dataclasses.replace(kill.signatures[0], sig=bytes(64)),))
    entry = make_entry(h.core.size, h.core.state.last_hash, tampered, h.now)
    assert sim.cs.fold(entry).code == "BAD_SIGNATURE"  # type: ignore[union-attr]
    assert sim.cs.invalid == 1 and not sim.cs.ledger.kill_switches
    assert kinds(sim.plan())[0] == "RecordStep:STARTED"


def test_the_planner_never_mutates_the_state(h: Harness, sim: Sim) -> None:
    import pickle

    h.approved()
    cs = sim.fold()
    before = pickle.dumps(cs)
    sim.plan()
    assert pickle.dumps(cs) == before
