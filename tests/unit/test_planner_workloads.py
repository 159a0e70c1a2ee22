"""The planner on real workloads: a named container, an HPA, surge, per-policy grace, drift
after promotion. Same simulated cluster as tests/unit/test_planner.py.

Schema v2 gives PolicySet ``container`` and ``readiness_grace_seconds``; these tests hand the
folded state a policy carrying them, which is what ``target_settings`` reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from controller.planner import (
    Action,
    ApplyCanary,
    ObservedDeployment,
    ObservedPod,
    PlannerConfig,
    Promote,
    RecordStep,
    ScaleStable,
    StopCanary,
    TargetSettings,
    Wait,
    choose_container,
    step_event_id,
    target_settings,
)
from controller.view import rollout_views
from ledger.formats import KillScope, PlanStep
from tests.unit.harness import Harness
from tests.unit.test_planner import SERVER, V1, V2, Sim, kinds, ready

SIDECAR = ("proxy", "registry.example/proxy:1.4")
N = 4


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def sim(h: Harness) -> Sim:
    return Sim(h)


def give_policy(sim: Sim, **settings: object) -> None:
    """Fold the log so far and give its policy the schema v2 settings."""
    cs = sim.fold()
    for pid, info in cs.ledger.policies.items():
        policy = dataclasses.replace(info.policy, **settings)  # type: ignore[arg-type]
        cs.ledger.policies[pid] = dataclasses.replace(info, policy=policy)


def two_containers(replicas: int, image: str) -> ObservedDeployment:
    return dataclasses.replace(ready(replicas, image), containers=((SERVER, image), SIDECAR))


def capacity(sim: Sim) -> int:
    stable, canary = sim.stable, sim.canary
    assert stable is not None
    return stable.ready_replicas + (canary.ready_replicas if canary else 0)


# -- settings ------------------------------------------------------------------------------------


def test_a_policy_without_the_v2_fields_keeps_todays_behaviour(h: Harness) -> None:
    h.base()
    policy = h.core.state.policies["default"].policy
    assert target_settings(policy) == TargetSettings(container=None, readiness_grace_ms=None)
    v2 = dataclasses.replace(policy, container="server", readiness_grace_seconds=900)
    assert target_settings(v2) == TargetSettings("server", 900_000)
    # An empty name means "not set" (the rules refuse one on the log).
    assert target_settings(dataclasses.replace(policy, container="")) == TargetSettings()


def test_choose_container_names_what_exists() -> None:
    assert choose_container(None, ["server"], "models/m") == ("server", "")
    assert choose_container("proxy", ["server", "proxy"], "models/m") == ("proxy", "")
    name, error = choose_container(None, ["server", "proxy"], "models/m")
    assert name == "" and "2 containers (server, proxy)" in error and "policy must name" in error
    name, error = choose_container("model", ["server", "proxy"], "models/m")
    assert name == ""
    assert error == "container 'model' not found in Deployment models/m (containers: server, proxy)"


# -- container by name ---------------------------------------------------------------------------


def test_the_named_container_gets_the_candidate_and_the_others_are_untouched(
    h: Harness, sim: Sim
) -> None:
    p, _ = h.approved()
    sim.stable = two_containers(N, V1)
    give_policy(sim, container=SERVER)
    sim.run()
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    applies = [a for a in sim.log if isinstance(a, ApplyCanary | ScaleStable | Promote)]
    assert applies and all(a.container in (SERVER, None) for a in applies)
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    assert sim.stable is not None and sim.stable.containers == ((SERVER, V2), SIDECAR)
    # What the ledger recorded as the images is the named container's.
    started = next(a for a in sim.log if isinstance(a, RecordStep) and a.phase == "STARTED")
    assert started.observed.stable_image == V1


def test_two_containers_and_no_name_wait_with_the_names(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.stable = two_containers(N, V1)
    actions = sim.plan()
    assert kinds(actions) == ["Wait"]
    assert "2 containers (server, proxy)" in actions[0].message  # type: ignore[union-attr]
    sim.run()
    assert sim.canary is None


def test_a_name_that_does_not_exist_waits_with_the_names(h: Harness, sim: Sim) -> None:
    h.approved()
    give_policy(sim, container="model")
    actions = sim.plan()
    assert kinds(actions) == ["Wait"]
    assert actions[0].message == (  # type: ignore[union-attr]
        "container 'model' not found in Deployment models/model-server (containers: server)"
    )


def test_a_container_gone_mid_rollout_holds_and_a_kill_switch_still_stops(
    h: Harness, sim: Sim
) -> None:
    p, _ = h.approved()
    sim.stable = two_containers(N, V1)
    give_policy(sim, container=SERVER)
    sim.tick()
    sim.tick()
    assert sim.replicas() == (3, 1)
    sim.stable = dataclasses.replace(sim.stable, containers=(SIDECAR,))  # someone renamed it
    held = sim.plan()
    assert kinds(held) == ["Wait"] and "'server' not found" in held[0].message  # type: ignore[union-attr]
    h.ok(h.flow.kill(KillScope("TARGET", "models", "model-server")))
    actions = sim.plan()
    assert kinds(actions) == ["StopCanary", "ScaleStable", "RecordStep:ROLLED_BACK", "RemoveCanary"]
    restore = actions[1]
    assert isinstance(restore, ScaleStable)
    assert (restore.replicas, restore.container) == (N, None)  # the count only: no image to name
    sim.run()
    assert sim.phases(p)[-1][2] == "ROLLED_BACK" and sim.canary is None


# -- HPA -----------------------------------------------------------------------------------------


def test_with_an_hpa_the_count_is_read_every_step_and_never_written(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.autoscaler = "model-server"
    first = sim.tick()
    assert kinds(first) == ["RecordStep:STARTED", "ApplyCanary"]
    apply = first[1]
    assert isinstance(apply, ApplyCanary) and (apply.replicas, apply.scale_basis) == (1, N)
    sim.run()
    assert sim.phases(p)[-1] == (1, 50, "ADVANCED")
    assert sim.replicas() == (N, 2)  # the stable keeps the HPA's count; the canary runs on top
    # The HPA scales the stable to 8: the canary follows with its share, no drift recorded.
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, replicas=8, ready_replicas=8, updated_replicas=8)
    follow = sim.tick()
    assert kinds(follow) == ["ApplyCanary", "Wait"]
    assert isinstance(follow[0], ApplyCanary) and follow[0].scale_basis == 8
    assert sim.replicas() == (8, 4)
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    assert sim.stable.replicas == 8 and sim.stable.image(SERVER) == V2
    assert "DRIFT_CORRECTED" not in [phase for _, _, phase in sim.phases(p)]
    writes = [a for a in sim.log if isinstance(a, ScaleStable | Promote)]
    assert writes and all(a.replicas is None for a in writes)


def test_with_an_hpa_a_hand_set_canary_image_is_still_drift(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.autoscaler = "model-server"
    sim.run()
    assert sim.canary is not None
    sim.canary = dataclasses.replace(sim.canary, containers=((SERVER, V1),))
    actions = sim.tick()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "ApplyCanary"]
    assert "replicas" not in actions[0].reason  # type: ignore[union-attr]
    assert sim.phases(p)[-1] == (1, 50, "DRIFT_CORRECTED")


def test_with_an_hpa_a_rollback_restores_the_image_not_the_count(h: Harness, sim: Sim) -> None:
    p, _ = h.approved()
    sim.autoscaler = "model-server"
    sim.run()
    assert sim.stable is not None
    sim.stable = dataclasses.replace(
        sim.stable, replicas=6, containers=((SERVER, "hand:set"),), ready_replicas=6
    )
    h.ok(h.flow.kill(KillScope("GLOBAL")))
    actions = sim.plan()
    restore = next(a for a in actions if isinstance(a, ScaleStable))
    assert (restore.replicas, restore.image, restore.container) == (None, V1, SERVER)
    sim.run()
    assert sim.stable.replicas == 6 and sim.stable.image(SERVER) == V1
    assert sim.phases(p)[-1][2] == "ROLLED_BACK"


# -- surge ---------------------------------------------------------------------------------------


@dataclass
class SlowPods(Sim):
    """Canary and promoted pods take a kubelet pass to become ready; deleted ones go at once."""

    def execute(self, a: Action) -> bool:
        before_canary = self.canary.ready_replicas if self.canary else 0
        before_stable = self.stable.ready_replicas if self.stable else 0
        ok = super().execute(a)
        if isinstance(a, ApplyCanary) and self.canary is not None:
            ready_now = min(before_canary, a.replicas)
            self.canary = dataclasses.replace(self.canary, ready_replicas=ready_now)
        if isinstance(a, Promote) and self.stable is not None:
            ready_now = min(before_stable, self.stable.replicas)
            self.stable = dataclasses.replace(self.stable, ready_replicas=ready_now)
        return ok

    def kubelet(self) -> None:
        if self.canary is not None:
            self.canary = dataclasses.replace(self.canary, ready_replicas=self.canary.replicas)
        if self.stable is not None:
            self.stable = dataclasses.replace(self.stable, ready_replicas=self.stable.replicas)


def test_ready_replicas_never_drop_below_n_during_a_whole_rollout(h: Harness) -> None:
    p, _ = h.approved()
    sim = SlowPods(h)
    lowest = capacity(sim)
    for i in range(60):
        if (
            sim.phases(p)
            and sim.phases(p)[-1] == (1, 50, "ADVANCED")
            and not h.core.state.proposals[p].health
        ):
            h.ok(h.flow.health(p, 1, True))
        for a in sim.plan():
            if not sim.execute(a):
                break
            lowest = min(lowest, capacity(sim))
        if i % 3 == 2:  # pods take a few plans to become ready
            sim.kubelet()
        h.tick(1000)
        if sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None:
            break
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    assert lowest >= N


def test_the_stable_waits_for_the_canary_pods_before_it_shrinks(h: Harness) -> None:
    h.approved()
    sim = SlowPods(h)
    sim.tick()
    for _ in range(3):
        actions = sim.tick()
        assert not [a for a in actions if isinstance(a, ScaleStable)]
        assert "canary pods ready 0/1 before the stable shrinks" in actions[-1].message  # type: ignore[union-attr]
    sim.kubelet()
    assert kinds(sim.tick()) == ["ScaleStable", "Wait"]
    assert sim.replicas() == (3, 1)


# -- readiness grace per policy ------------------------------------------------------------------


def test_the_policy_sets_the_readiness_grace(h: Harness, sim: Sim) -> None:
    h.approved()
    give_policy(sim, readiness_grace_seconds=600)
    sim.pods_ready = False
    sim.tick()
    sim.pods = (ObservedPod("model-server-canary-z", ((SERVER, V2),), False, "Running", "", h.now),)
    h.tick(300_000)  # past the controller's default of 120 s, well inside the policy's 600 s
    assert kinds(sim.plan()) == ["Wait"]
    h.tick(301_000)
    stop = sim.plan()[0]
    assert isinstance(stop, StopCanary) and "not ready after 600s" in stop.reason


def test_without_a_policy_grace_the_controller_default_holds(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.pods_ready = False
    sim.tick()
    sim.pods = (ObservedPod("model-server-canary-z", ((SERVER, V2),), False, "Running", "", h.now),)
    h.tick(121_000)
    stop = sim.plan(PlannerConfig())[0]
    assert isinstance(stop, StopCanary) and "not ready after 120s" in stop.reason


# -- drift after promotion -----------------------------------------------------------------------


def promoted(h: Harness, sim: Sim) -> bytes:
    p, _ = h.approved(plan=(PlanStep(50, 0, False), PlanStep(100, 0, False)))
    sim.run()
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    return p


def test_a_hand_set_image_after_promotion_is_recorded_and_corrected(h: Harness, sim: Sim) -> None:
    p = promoted(h, sim)
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, containers=((SERVER, V1),))  # kubectl set image
    actions = sim.plan()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "Promote"]
    record, promote = actions
    assert isinstance(record, RecordStep) and isinstance(promote, Promote)
    assert record.reason == f"model-server: image {V1}, expected {V2} (promoted)"
    assert (record.step, record.weight) == (1, 100)
    assert record.event_id == step_event_id(p, 1, "DRIFT_CORRECTED", 0)
    assert (promote.replicas, promote.image, promote.container) == (N, V2, SERVER)
    sim.run()
    assert sim.stable.image(SERVER) == V2 and sim.phases(p)[-1] == (1, 100, "DRIFT_CORRECTED")
    assert h.core.state.proposals[p].phase == "PROMOTED"  # a correction is no new phase
    # A second hand change is a second record, with its own event id.
    sim.stable = dataclasses.replace(sim.stable, containers=((SERVER, "other:v9"),))
    again = sim.tick()
    assert again[0].event_id == step_event_id(p, 1, "DRIFT_CORRECTED", 1)  # type: ignore[union-attr]
    assert sim.stable.image(SERVER) == V2


def test_under_a_kill_switch_a_hand_set_image_after_promotion_is_left_alone(
    h: Harness, sim: Sim
) -> None:
    p = promoted(h, sim)
    assert sim.stable is not None
    scope = KillScope("TARGET", "models", "model-server")
    h.ok(h.flow.kill(scope))
    sim.stable = dataclasses.replace(sim.stable, containers=((SERVER, V1),))  # on-call's rollback
    actions = sim.plan()
    assert kinds(actions) == ["Wait"]
    message = actions[0].message  # type: ignore[union-attr]
    assert f"image {V1}, expected {V2} (promoted): not corrected while the TARGET kill" in message
    h.ok(h.flow.release(scope))
    assert kinds(sim.plan()) == ["RecordStep:DRIFT_CORRECTED", "Promote"]
    assert sim.phases(p)[-1][2] == "PROMOTED"


def test_a_hand_scale_after_promotion_is_drift_too(h: Harness, sim: Sim) -> None:
    p = promoted(h, sim)
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, replicas=9, ready_replicas=9)  # kubectl scale
    actions = sim.tick()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "Promote"]
    assert actions[0].reason == "model-server: replicas 9, expected 4 (promoted)"  # type: ignore[union-attr]
    assert sim.replicas() == (N, 0) and sim.phases(p)[-1] == (1, 100, "DRIFT_CORRECTED")


def test_after_promotion_an_hpa_owns_the_count(h: Harness, sim: Sim) -> None:
    sim.autoscaler = "model-server"
    promoted(h, sim)
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, replicas=9, ready_replicas=9)  # the HPA
    assert sim.plan() == []
    sim.stable = dataclasses.replace(sim.stable, containers=((SERVER, V1),))
    actions = sim.plan()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "Promote"]
    assert actions[1].replicas is None  # type: ignore[union-attr]


def test_a_later_rollout_starts_from_the_corrected_image(h: Harness, sim: Sim) -> None:
    promoted(h, sim)
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, containers=((SERVER, V1),))
    p2 = h.ok(h.flow.propose(V2 + "-next"))
    evals = (h.ok(h.flow.eval(p2, "safety", 0.99)), h.ok(h.flow.eval(p2, "quality", 0.9)))
    h.ok(h.flow.approve(p2, evals, "alice"))
    h.ok(h.flow.approve(p2, evals, "bob"))
    assert kinds(sim.tick()) == ["RecordStep:DRIFT_CORRECTED", "Promote"]
    start = sim.tick()
    assert kinds(start)[0] == "RecordStep:STARTED"
    assert start[0].observed.stable_image == V2  # type: ignore[union-attr]


def test_a_promoted_target_whose_container_cannot_be_named_says_so(h: Harness, sim: Sim) -> None:
    """A promoted target whose container cannot be named says so, and does not block others."""
    promoted(h, sim)
    assert sim.stable is not None
    sim.stable = two_containers(N, V2)
    actions = sim.plan()
    assert all(isinstance(a, Wait) for a in actions)
    assert "promoted; Deployment models/model-server has 2 containers" in actions[0].message  # type: ignore[union-attr]


def test_the_view_shows_the_hpas_count_and_the_named_containers_image(h: Harness, sim: Sim) -> None:
    h.approved()
    sim.autoscaler = "model-server"
    sim.stable = two_containers(N, V1)
    give_policy(sim, container=SERVER)
    sim.run()
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, replicas=8, ready_replicas=8, updated_replicas=8)
    (view,) = rollout_views(sim.fold(), sim.observed())
    assert (view.weight, view.desired_stable_replicas, view.desired_canary_replicas) == (50, 8, 4)
    assert view.stable_image == V1
