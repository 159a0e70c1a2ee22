"""The views kept from one pass to the next (controller.view.ViewCache) are what a fresh build
gives, at every point of a governed story: the fast path held to the plain one."""

from __future__ import annotations

import threading

from controller.planner import ObservedTarget
from controller.state import ControllerState
from controller.view import RolloutView, ViewCache, rollout_views, views_in_chunks
from ledger.formats import KillScope, PlanStep, Target
from tests.unit.harness import Harness
from tests.unit.test_planner import V1, Sim, ready

PLAN = (PlanStep(25, 10, False), PlanStep(50, 10, False), PlanStep(100, 0, False))


def cached_views(sim: Sim, cache: ViewCache, chunk: int = 2) -> list[RolloutView]:
    """A pass of the views thread over the simulated controller's state, `chunk` proposals
    per hold, checked against a fresh build of every view."""
    state, observed, actions = sim.fold(), sim.observed(), sim.plan()
    lock = threading.Lock()
    views = views_in_chunks(lock, lambda: state, observed, actions, chunk=chunk, cache=cache)
    assert views is not None
    assert views == rollout_views(state, observed, actions)
    return views


def test_kept_views_equal_fresh_ones_through_a_whole_story() -> None:
    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    p1, _ = h.approved(plan=PLAN)
    second = h.ok(h.flow.propose("registry.example/model-server:v3"))
    other = h.ok(h.flow.propose("registry.example/other:v2", deployment="other"))
    cached_views(sim, cache)
    for _ in range(3):  # the rollout starts; the planner's messages change
        sim.tick()
        cached_views(sim, cache)
        h.tick(1000)
    h.ok(h.flow.pause(p1, signer="oncall", reason="p99 up"))
    cached_views(sim, cache)
    sim.tick()  # PAUSED recorded
    cached_views(sim, cache)
    h.ok(h.flow.resume(p1))
    cached_views(sim, cache)
    sim.stable = ready(5, V1)  # the cluster moved: the observation's version moves
    cached_views(sim, cache)
    scope = KillScope("TARGET", "models", "model-server")
    h.ok(h.flow.kill(scope))
    cached_views(sim, cache)
    sim.tick()  # the rollback recorded
    cached_views(sim, cache)
    h.ok(h.flow.release(scope))
    cached_views(sim, cache)
    h.ok(h.flow.policy(approvals=1, plan=PLAN))  # a new policy: every kept view dropped
    cached_views(sim, cache)
    h.ok(h.flow.kill(KillScope("PROPOSAL", proposal=other)))
    cached_views(sim, cache)
    h.ok(h.flow.kill(KillScope("GLOBAL")))
    views = cached_views(sim, cache)
    assert {v.proposal for v in views} == {p1, second, other}
    assert all(v.kill_switch for v in views)  # each names the first switch that covers it
    assert cache.kept > 0 and cache.built > 0


def test_a_pass_with_nothing_changed_builds_nothing_and_keeps_the_same_objects() -> None:
    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    p1, evals = h.evaluated(plan=PLAN)
    h.ok(h.flow.propose("registry.example/model-server:v3"))
    first = cached_views(sim, cache)
    built = cache.built
    assert built == 2
    again = cached_views(sim, cache)
    assert cache.built == built
    assert all(a is b for a, b in zip(first, again, strict=True))
    # An approval names p1: its view alone is built again.
    h.ok(h.flow.approve(p1, evals, "alice"))
    third = cached_views(sim, cache)
    assert cache.built == built + 1
    assert third[0] is not again[0] and third[1] is again[1]
    assert third[0].approvals == ("human:alice@example.org",)


def test_an_equal_observation_keeps_views_and_a_changed_one_rebuilds_its_target() -> None:
    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    h.proposal()
    h.ok(h.flow.propose("registry.example/model-server:v3"))
    cached_views(sim, cache)
    built = cache.built
    sim.stable = ready(4, V1)  # a new object, equal to the one before
    cached_views(sim, cache)
    assert cache.built == built
    sim.stable = ready(6, V1)
    views = cached_views(sim, cache)
    assert cache.built == built + 2
    assert {v.stable_replicas for v in views} == {6}


def test_a_kill_switch_folded_between_chunks_shows_in_the_same_pass() -> None:
    """The views thread takes the fold lock a chunk at a time; a kill switch folded between
    two chunks must not leave the later chunks on views kept from before it."""
    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    h.proposal()
    for i in range(3, 7):
        h.ok(h.flow.propose(f"registry.example/model-server:v{i}"))
    cached_views(sim, cache)
    state, observed, actions = sim.fold(), sim.observed(), sim.plan()
    engaged = False

    class FoldsBetweenChunks:
        """The fold lock, with a kill switch folded as the second chunk's hold begins."""

        holds = 0

        def __enter__(self) -> None:
            nonlocal engaged
            self.holds += 1
            if self.holds == 3 and not engaged:  # 1: the pass's start, 2: the first chunk
                h.ok(h.flow.kill(KillScope("GLOBAL")))
                sim.fold()
                engaged = True

        def __exit__(self, *exc: object) -> None:
            pass

    views = views_in_chunks(
        FoldsBetweenChunks(), lambda: state, observed, actions, chunk=2, cache=cache
    )
    assert views is not None and engaged
    assert [bool(v.kill_switch) for v in views] == [False, False, True, True, True]
    # The next pass builds the first chunk's views again.
    assert cached_views(sim, cache) == rollout_views(sim.fold(), sim.observed(), sim.plan())
    assert all(v.kill_switch for v in cached_views(sim, cache))


def test_a_replaced_state_gets_none_of_the_views_kept_for_the_old_one() -> None:
    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    p1, _ = h.approved(plan=PLAN)
    sim.tick()  # STARTED
    cached_views(sim, cache)
    # A replay from the start: a new state, folded only up to the proposal's evaluation.
    fresh = ControllerState()
    entries = h.core.entries
    assert entries is not None
    for e in entries:
        fresh.fold(e)
        if fresh.ledger.proposals.get(p1) and len(fresh.ledger.proposals[p1].latest_evals) == 2:
            break
    observed: dict[Target, ObservedTarget] = {}
    lock = threading.Lock()
    views = views_in_chunks(lock, lambda: fresh, observed, [], cache=cache)
    assert views == rollout_views(fresh, observed)
    assert views is not None and views[0].phase == "PENDING" and views[0].approvals == ()


def test_the_cache_does_not_keep_a_replaced_state_alive() -> None:
    import gc
    import weakref

    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    h.proposal()
    cached_views(sim, cache)
    old = weakref.ref(sim.cs)
    sim.cs = ControllerState()
    sim.targets = type(sim.targets)()
    gc.collect()
    assert old() is None
    cached_views(sim, cache)


def test_views_built_are_frozen_after_their_hold_and_a_pass_that_builds_none_freezes_nothing() -> (
    None
):
    import gc

    from ledger.heap import _freeze_after_full_collection, tune_collector

    h = Harness()
    sim = Sim(h)
    cache = ViewCache()
    h.evaluated(plan=PLAN)
    h.ok(h.flow.propose("registry.example/model-server:v3"))
    threshold = gc.get_threshold()
    gc.unfreeze()
    tune_collector()  # as steward-controller does: only then does the pass freeze anything
    try:
        first = cached_views(sim, cache, chunk=1)
        assert cache.built == 2 and gc.get_freeze_count() > 0
        # Tracked, yet in none of the collector's generations: frozen.
        young = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert all(gc.is_tracked(v) and id(v) not in young for v in first)
        gc.unfreeze()
        cached_views(sim, cache, chunk=1)  # nothing changed: every view kept
        assert cache.built == 2 and gc.get_freeze_count() == 0
    finally:
        gc.callbacks.remove(_freeze_after_full_collection)
        gc.unfreeze()
        gc.set_threshold(*threshold)
