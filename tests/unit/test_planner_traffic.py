"""Traffic mode's decisions (controller/traffic.py in the planner): HTTPRoute weights per step,
the safe order both ways, and a hand-edited route as drift. Logs built with the real rules; the
cluster is test_planner's in-memory Sim, extended with a route and Services."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from controller.planner import (
    Action,
    ObservedTarget,
    Promote,
    RecordStep,
    ScaleStable,
    StopCanary,
    Wait,
)
from controller.traffic import (
    STABLE_TRACK,
    EnsureServices,
    ObservedRoute,
    SetRouteWeights,
    backend_refs,
    observed_route,
)
from ledger.formats import KillScope, PlanStep, Target, TrafficRouting
from tests.unit.harness import Harness
from tests.unit.test_planner import SERVER, V1, V2, Sim, kinds

T = Target("models", "model-server")
ROUTING = TrafficRouting("model-server", "model-server-stable", "model-server-canary", 8080)
USER_ROUTE = ObservedRoute("model-server", ((("model-server", 1),),))


@dataclass
class TrafficSim(Sim):
    route: ObservedRoute | None = field(default_factory=lambda: USER_ROUTE)
    services: frozenset[str] = frozenset({"model-server"})
    weights: list[int] = field(default_factory=list)  # every canary weight written, in order

    def observed(self) -> dict[Target, ObservedTarget]:
        base = super().observed()[T]
        routes = (self.route,) if self.route is not None else ()
        return {T: dataclasses.replace(base, routes=routes, services=self.services)}

    def execute(self, a: Action) -> bool:
        if isinstance(a, SetRouteWeights):
            self.log.append(a)
            refs = backend_refs(a.routing, a.canary_weight)
            rule = tuple((str(r["name"]), int(str(r["weight"]))) for r in refs)
            assert self.route is not None
            self.route = ObservedRoute(self.route.name, (rule,) * len(self.route.rules), a.marker)
            self.weights.append(a.canary_weight)
            return True
        if isinstance(a, EnsureServices):
            self.log.append(a)
            self.services = self.services | {a.routing.stable_service, a.routing.canary_service}
            return True
        ok = super().execute(a)
        if isinstance(a, ScaleStable | Promote) and a.track and self.stable is not None:
            # The executor adds the label in traffic mode; without one it leaves labels alone.
            self.stable = dataclasses.replace(self.stable, track=a.track)
        return ok

    def canary_weight(self) -> int | None:
        assert self.route is not None
        return self.route.canary_weight(ROUTING)


@pytest.fixture
def sim(h: Harness) -> TrafficSim:
    return TrafficSim(h)


@pytest.fixture
def h() -> Harness:
    return Harness()


def index(actions: list[Action], kind: type) -> int:
    return next(i for i, a in enumerate(actions) if isinstance(a, kind))


# -- the route's shape -----------------------------------------------------------------------------


def test_canary_weight_reads_only_the_shape_the_controller_writes() -> None:
    ours = (("model-server-stable", 90), ("model-server-canary", 10))
    assert ObservedRoute("r", (ours, ours)).canary_weight(ROUTING) == 10
    assert USER_ROUTE.canary_weight(ROUTING) is None
    other = (("model-server-stable", 80), ("model-server-canary", 10))
    assert ObservedRoute("r", (other,)).canary_weight(ROUTING) is None  # not out of 100
    mixed = (("model-server-stable", 50), ("model-server-canary", 50))
    assert ObservedRoute("r", (ours, mixed)).canary_weight(ROUTING) is None
    swapped = (("model-server-canary", 10), ("model-server-stable", 90))
    assert ObservedRoute("r", (swapped,)).canary_weight(ROUTING) is None


def test_observed_route_reads_the_api_objects_backend_refs_default_weight_1() -> None:
    obj = {
        "metadata": {"name": "r", "annotations": {"steward.dev/route-applied": "m"}},
        "spec": {"rules": [{"backendRefs": [{"name": "a"}, {"name": "b", "weight": 3}]}, {}]},
    }
    assert observed_route(obj) == ObservedRoute("r", ((("a", 1), ("b", 3)), ()), "m")


# -- forward ---------------------------------------------------------------------------------------


def test_route_weights_follow_the_plan_and_the_stable_keeps_its_replicas(
    h: Harness, sim: TrafficSim
) -> None:
    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    # Step 1 is health-gated: held at 50 with the stable at N and the canary sized for 50%.
    assert sim.weights == [10, 50]
    assert sim.replicas() == (4, 2)
    assert sim.stable is not None and sim.stable.track == STABLE_TRACK
    assert sim.services >= {"model-server-stable", "model-server-canary"}
    h.ok(h.flow.health(p, 1, True))
    sim.run()
    assert sim.phases(p)[-1] == (2, 100, "PROMOTED")
    # 100 to the canary at the last step; back to the stable (on the candidate) at the end.
    assert sim.weights == [10, 50, 100, 0]
    assert sim.canary is None and sim.replicas() == (4, 0)
    assert sim.stable is not None and sim.stable.image(SERVER) == V2
    assert sim.plan() == []


def test_the_canary_gets_weight_only_once_its_pods_are_ready(h: Harness, sim: TrafficSim) -> None:
    h.approved(traffic=ROUTING)
    sim.pods_ready = False
    for _ in range(3):
        sim.tick()
        h.tick(1000)
    assert sim.weights == []  # never while no canary pod is Ready
    waits = [a for a in sim.plan() if isinstance(a, Wait)]
    assert "canary pods ready 0/1 before HTTPRoute model-server" in waits[0].message
    assert sim.canary is not None
    sim.canary = dataclasses.replace(sim.canary, ready_replicas=1)
    actions = sim.tick()
    assert isinstance(actions[0], SetRouteWeights) and actions[0].canary_weight == 10


def test_promotion_moves_the_weight_back_only_once_the_stable_runs_the_candidate(
    h: Harness, sim: TrafficSim
) -> None:
    p, _ = h.approved(traffic=ROUTING, plan=(PlanStep(100, 0, False),))
    sim.tick()  # STARTED, canary 4
    sim.tick()  # Services, stable labelled
    sim.tick()  # weight 100 to the canary
    assert sim.weights == [100]
    h.tick(1000)
    sim.tick(only=RecordStep)  # PROMOTED recorded; the stable not yet changed
    assert sim.phases(p)[-1][2] == "PROMOTED"
    assert kinds(sim.plan()) == ["Promote"]
    sim.tick()
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, ready_replicas=1)
    assert kinds(sim.plan()) == ["Wait"] and sim.weights == [100]
    sim.stable = dataclasses.replace(sim.stable, ready_replicas=4)
    assert kinds(sim.plan()) == ["SetRouteWeights", "RemoveCanary"]


def test_a_missing_route_holds_the_step_and_says_so(h: Harness, sim: TrafficSim) -> None:
    h.approved(traffic=ROUTING)
    sim.route = None
    sim.tick()
    sim.tick()
    waits = [a for a in sim.plan() if isinstance(a, Wait)]
    assert waits and waits[0].message == "HTTPRoute models/model-server not found"


# -- stopping --------------------------------------------------------------------------------------


def test_kill_switch_takes_the_weight_to_0_before_the_replicas(h: Harness, sim: TrafficSim) -> None:
    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    assert sim.canary_weight() == 50
    kill_seq = h.core.size
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    actions = sim.plan()
    assert kinds(actions)[:2] == ["SetRouteWeights", "StopCanary"]
    first = actions[0]
    assert isinstance(first, SetRouteWeights) and first.canary_weight == 0
    assert first.cause_seq == kill_seq  # the ack → weight 0 figure is timed from this entry
    sim.run()
    assert sim.canary_weight() == 0 and sim.canary is None
    assert sim.replicas() == (4, 0)
    assert sim.stable is not None and sim.stable.image(SERVER) == V1
    assert sim.phases(p)[-1] == (1, 0, "ROLLED_BACK")


def test_a_stop_without_a_route_still_scales_the_canary_down(h: Harness, sim: TrafficSim) -> None:
    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    sim.route = None  # deleted by someone: nothing to take weight from, the stop goes on
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    assert kinds(sim.plan())[0] == "StopCanary"


def test_a_rollback_finished_after_a_restart_takes_the_weight_first(
    h: Harness, sim: TrafficSim
) -> None:
    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    # The ROLLED_BACK record landed but the route and canary were not touched (a crash).
    actions = sim.plan()
    record = next(a for a in actions if isinstance(a, RecordStep))
    assert sim.execute(record)
    assert sim.canary_weight() == 50
    after = sim.plan()
    assert index(after, SetRouteWeights) < index(after, StopCanary)


# -- drift -----------------------------------------------------------------------------------------


def test_a_hand_edited_route_is_drift_recorded_and_corrected(h: Harness, sim: TrafficSim) -> None:
    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    assert sim.route is not None and sim.canary_weight() == 50
    edited = (("model-server-stable", 20), ("model-server-canary", 80))
    sim.route = ObservedRoute(sim.route.name, (edited,), sim.route.marker)
    actions = sim.plan()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "SetRouteWeights"]
    record = actions[0]
    assert isinstance(record, RecordStep)
    assert "model-server-canary 80, expected model-server-stable 50" in record.reason
    sim.run()
    assert sim.canary_weight() == 50
    assert [s[2] for s in sim.phases(p)].count("DRIFT_CORRECTED") == 1
    # Reshaped (a backend renamed): the same, the weight is raised back after the record.
    sim.route = ObservedRoute(sim.route.name, ((("model-server", 1),),), sim.route.marker)
    assert kinds(sim.plan()) == ["RecordStep:DRIFT_CORRECTED", "SetRouteWeights"]


def test_replica_mode_never_touches_a_route(h: Harness, sim: TrafficSim) -> None:
    p, _ = h.approved()
    sim.run()
    assert sim.replicas() == (2, 2)  # the share is the canary's part of the pods
    assert sim.weights == [] and sim.route == USER_ROUTE
    assert not any(isinstance(a, EnsureServices | SetRouteWeights) for a in sim.log)
    assert sim.stable is not None and sim.stable.track == ""
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=p)))
    assert kinds(sim.plan())[0] == "StopCanary"


def test_replica_mode_leaves_a_stable_labelled_by_its_owner_alone(h: Harness) -> None:
    """k8s/sample's stable carries steward.dev/track=stable itself: in replica mode that is the
    user's label, not drift (an earlier draft recorded DRIFT_CORRECTED for it in a loop)."""
    sim = TrafficSim(h)
    assert sim.stable is not None
    sim.stable = dataclasses.replace(sim.stable, track=STABLE_TRACK)
    p, _ = h.approved()
    sim.run()
    assert sim.replicas() == (2, 2)
    assert "DRIFT_CORRECTED" not in [phase for _, _, phase in sim.phases(p)]
    assert sim.stable is not None and sim.stable.track == STABLE_TRACK


def test_the_read_model_says_the_stable_keeps_n_in_traffic_mode(
    h: Harness, sim: TrafficSim
) -> None:
    from controller.view import rollout_views

    p, _ = h.approved(traffic=ROUTING)
    sim.run()
    (view,) = rollout_views(sim.fold(), sim.observed(), sim.plan())
    assert view.proposal == p
    assert (view.weight, view.desired_stable_replicas, view.desired_canary_replicas) == (50, 4, 2)


def test_after_promotion_a_route_sending_weight_to_the_removed_canary_is_drift(
    h: Harness, sim: TrafficSim
) -> None:
    p, _ = h.approved(traffic=ROUTING, plan=(PlanStep(100, 0, False),))
    sim.run()
    assert sim.phases(p)[-1][2] == "PROMOTED" and sim.canary is None
    assert sim.route is not None and sim.canary_weight() == 0
    promoted = sim.route
    edited = (("model-server-stable", 70), ("model-server-canary", 30))
    sim.route = ObservedRoute(promoted.name, (edited,), promoted.marker)
    actions = sim.plan()
    assert kinds(actions) == ["RecordStep:DRIFT_CORRECTED", "SetRouteWeights"]
    record, fix = actions
    assert isinstance(record, RecordStep) and "(promoted)" in record.reason
    assert isinstance(fix, SetRouteWeights) and fix.canary_weight == 0
    sim.run()
    assert sim.canary_weight() == 0 and sim.plan() == []
    # Under a kill switch in scope it is reported, not corrected (on-call may be at work).
    sim.route = ObservedRoute(promoted.name, (edited,), promoted.marker)
    h.ok(h.flow.kill(KillScope("TARGET", "models", "model-server")))
    waits = sim.plan()
    assert kinds(waits) == ["Wait"] and "not corrected while the TARGET kill switch" in (
        waits[0].message  # type: ignore[union-attr]
    )


def test_after_promotion_a_route_someone_took_over_is_theirs(h: Harness, sim: TrafficSim) -> None:
    h.approved(traffic=ROUTING, plan=(PlanStep(100, 0, False),))
    sim.run()
    assert sim.route is not None
    # Rewritten by someone else, our marker gone with it: not the controller's to undo.
    sim.route = ObservedRoute(sim.route.name, ((("model-server-v3", 1),),), "")
    assert sim.plan() == []
