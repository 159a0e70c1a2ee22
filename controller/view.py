"""One read model of each rollout, for the ModelRollout mirror, ControllerService and kubectl.

Pure: derived from the folded log, the cluster observation and the planner's last actions
(whose ``Wait`` messages say why a rollout is where it is). Fields line up with the
``steward.v1.Rollout`` message so a gRPC layer is a field-by-field copy.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from controller.planner import (
    Action,
    ObservedDeployment,
    ObservedTarget,
    RecordStep,
    StopCanary,
    Wait,
    canary_replicas,
    choose_container,
    target_settings,
)
from controller.state import ControllerState
from ledger.formats import PolicySet, Target
from ledger.heap import freeze_survivors
from ledger.state import ProposalState

# The ModelRollout custom resource (k8s/base/crd-modelrollouts.yaml): written by the mirror, read by kubectl.
GROUP, VERSION, PLURAL = "steward.dev", "v1alpha1", "modelrollouts"

# ModelRollout .status.phase values (the CRD documents these).
DISPLAY_PHASES = {
    "PENDING": "Pending",
    "STARTED": "Progressing",
    "ADVANCED": "Progressing",
    "PAUSED": "Paused",
    "PROMOTED": "Promoted",
    "ROLLED_BACK": "RolledBack",
}


@dataclass(frozen=True)
class RolloutView:
    proposal: bytes
    namespace: str
    deployment: str
    phase: str  # the ledger phase: PENDING, STARTED, ADVANCED, PAUSED, PROMOTED, ROLLED_BACK
    display_phase: str  # Pending, Progressing, Paused, Promoted, RolledBack, Killed
    step: int
    weight: int
    approvals: tuple[str, ...]  # principals whose approvals are valid now
    approvals_required: int
    last_seq: int
    candidate_image: str
    stable_image: str
    desired_stable_replicas: int
    desired_canary_replicas: int
    stable_replicas: int  # observed spec.replicas (0 when not observed)
    canary_replicas: int
    canary_ready: int
    kill_switch: str  # "" or which kill switch covers the proposal
    message: str
    # The reason of the rollout's last real RolloutStep (why it is PAUSED, PROMOTED,
    # ROLLED_BACK...), "" before it started: the conditions' messages.
    last_reason: str = ""

    @property
    def proposal_hex(self) -> str:
        return self.proposal.hex()

    @property
    def object_name(self) -> str:
        """The ModelRollout mirroring this rollout: ``<deployment>-<proposal hash[:10]>``."""
        return f"{self.deployment}-{self.proposal.hex()[:10]}"


@dataclass(frozen=True)
class ViewNotes:
    """What a plan says of each proposal (its Wait, the step it is recording) and of each
    target being stopped: the views' messages."""

    notes: Mapping[bytes, str]
    stopping: Mapping[tuple[str, str], str]

    @classmethod
    def of(cls, actions: Iterable[Action]) -> ViewNotes:
        notes: dict[bytes, str] = {}
        stopping: dict[tuple[str, str], str] = {}
        for a in actions:
            if isinstance(a, Wait):
                notes.setdefault(a.proposal, a.message)
            elif isinstance(a, RecordStep):
                notes.setdefault(a.proposal, f"recording {a.phase.lower()}: {a.reason}")
            elif isinstance(a, StopCanary):
                stopping[(a.namespace, a.name)] = a.reason
        return cls(notes, stopping)


def rollout_views(
    state: ControllerState,
    observed: Mapping[Target, ObservedTarget],
    actions: Iterable[Action] = (),
) -> list[RolloutView]:
    """A view per proposal on the ledger, oldest first."""
    ordered = sorted(state.ledger.proposals.values(), key=lambda p: p.seq)
    return views_of(state, ordered, observed, ViewNotes.of(actions))


def views_of(
    state: ControllerState,
    proposals: Iterable[ProposalState],
    observed: Mapping[Target, ObservedTarget],
    notes: ViewNotes,
) -> list[RolloutView]:
    """The views of `proposals`, in their order."""
    views = []
    for p in proposals:
        t = p.proposal.target
        obs = observed.get(t)
        message = (
            notes.notes.get(p.entry_hash) or notes.stopping.get((t.namespace, t.deployment)) or ""
        )
        views.append(_view(state, p, obs, message))
    return views


VIEW_CHUNK = 64  # proposals viewed per hold of the fold lock: 16 µs each at a million entries,
# up to 70 µs the first time after a restart (each decodes its evidence): 18 ms at most


def views_in_chunks(
    lock: AbstractContextManager[Any],
    current: Callable[[], ControllerState],
    observed: Mapping[Target, ObservedTarget],
    actions: Iterable[Action],
    *,
    chunk: int = VIEW_CHUNK,
    held: list[tuple[float, float]] | None = None,
    cache: ViewCache | None = None,
) -> list[RolloutView] | None:
    """`rollout_views` of the state `current()` returns, taking `lock` (the fold lock) for
    `chunk` proposals at a time, so that a fold (a kill switch) never waits for a view of every
    proposal: 0.9 s at a million entries, in one hold, before. Views of one call may come from
    states a few entries apart (they are for people; the planner never reads them). None if
    the state was replaced meanwhile (a replay from the start): the caller asks again. With
    `held`, each hold's start and end (`time.perf_counter()`) are appended to it (for the
    bench, which tells the collector's pauses inside a hold apart). With `cache` (kept from
    one call to the next), a proposal whose inputs did not change keeps its view (ViewCache)."""
    notes = ViewNotes.of(actions)
    with lock:
        state = current()
        proposals = list(state.ledger.proposals.values())
        if cache is not None:
            cache.begin(state)
    proposals.sort(key=lambda p: p.seq)  # seq is set at once, even on a restored proposal
    views: list[RolloutView] = []
    for start in range(0, len(proposals), chunk):
        with lock:
            began = time.perf_counter()
            if current() is not state:
                return None
            part = proposals[start : start + chunk]
            built = -1 if cache is None else cache.built
            if cache is None:
                views += views_of(state, part, observed, notes)
            else:
                views += cache.views_of(state, part, observed, notes)
            if held is not None:
                held.append((began, time.perf_counter()))
        if cache is None or cache.built != built:
            # New views (and the evidence a restored proposal decoded for them) live on:
            # left young, they set off collections inside the next holds (ledger.heap).
            freeze_survivors()
    return views


class ViewCache:
    """The views of the last pass, kept for the next one: a proposal whose inputs did not
    change keeps its view object, so a pass over every proposal builds (and allocates) only
    the views that changed. Measured (bench.replay, ten million entries): a pass built 558,905
    views in 42.8 s, and what it allocated, all alive until the next pass, was scanned by the
    collector's full pauses of up to 0.97 s, which stop every thread (a kill switch's fold
    too).

    A view is built from (`_view`): the proposal and its rollout record, which change only
    with an entry that names the proposal (ControllerState.last_seq moves); the target's
    observation (a version per target, moved when it is no longer equal); the plan's message;
    and what all proposals share, the kill switches and the policies. A change of those
    shared inputs (rare: an engagement, a release, a new policy) drops every kept view; the
    kill switches are compared at each chunk, so an engagement shows in the pass that sees it
    folded. Held to `views_of` by equivalence tests (tests/unit/test_view_cache.py)."""

    def __init__(self) -> None:
        self._state: weakref.ref[ControllerState] | None = None
        self._kills: tuple[tuple[Any, int], ...] = ()
        self._policies: tuple[tuple[str, int], ...] = ()
        self._observed: dict[Target, tuple[ObservedTarget | None, int]] = {}
        self._next_version = 0
        # proposal -> (last seq, observation version, message), and its view: apart, so that
        # the stamps (ints and a string) are tuples the collector stops tracking.
        self._stamps: dict[bytes, tuple[int, int, str]] = {}
        self._views: dict[bytes, RolloutView] = {}
        self.built = 0  # views built (not kept) since the cache was made
        self.kept = 0

    def begin(self, state: ControllerState) -> None:
        """At the start of a pass (fold lock held): forget everything if the state was
        replaced or the policies changed."""
        ls = state.ledger
        policies = tuple((pid, info.seq) for pid, info in ls.policies.items())
        kept_state = self._state() if self._state is not None else None
        if kept_state is not state or policies != self._policies:
            self._forget()
            self._state = weakref.ref(state)
            self._policies = policies
        self._check_kill_switches(state)

    def _forget(self) -> None:
        self._stamps.clear()
        self._views.clear()
        self._observed.clear()

    def _check_kill_switches(self, state: ControllerState) -> None:
        kills = tuple(state.ledger.kill_switches.items())
        if kills != self._kills:
            self._stamps.clear()
            self._views.clear()
            self._kills = kills

    def _version(self, target: Target, obs: ObservedTarget | None) -> int:
        """The observation's version for `target`: the same while it stays equal."""
        kept = self._observed.get(target)
        if kept is not None and (kept[0] is obs or kept[0] == obs):
            if kept[0] is not obs:
                self._observed[target] = (obs, kept[1])  # the next lookups compare identity
            return kept[1]
        self._next_version += 1
        self._observed[target] = (obs, self._next_version)
        return self._next_version

    def views_of(
        self,
        state: ControllerState,
        proposals: Iterable[ProposalState],
        observed: Mapping[Target, ObservedTarget],
        notes: ViewNotes,
    ) -> list[RolloutView]:
        """What `views_of` returns for `proposals`, from the kept views where nothing changed
        (fold lock held)."""
        self._check_kill_switches(state)
        last_seq = state.last_seq
        views = []
        for p in proposals:
            h = p.entry_hash
            t = p.proposal.target
            obs = observed.get(t)
            message = notes.notes.get(h) or notes.stopping.get((t.namespace, t.deployment)) or ""
            stamp = (last_seq.get(h, p.seq), self._version(t, obs), message)
            if self._stamps.get(h) == stamp:
                views.append(self._views[h])
                self.kept += 1
                continue
            view = _view(state, p, obs, message)
            self._stamps[h] = stamp
            self._views[h] = view
            self.built += 1
            views.append(view)
        return views


def _resumed_since_paused(p: ProposalState) -> bool:
    """Whether the latest resume came after the latest PAUSED record."""
    resumed = p.last_resume
    last_paused = next((s for s in reversed(p.steps) if s.phase == "PAUSED"), None)
    return resumed is not None and last_paused is not None and resumed.seq > last_paused.seq


def _view(
    state: ControllerState, p: ProposalState, obs: ObservedTarget | None, message: str
) -> RolloutView:
    ls = state.ledger
    policy = ls.policy_of(p)
    record = state.rollouts.get(p.entry_hash)
    cur = p.current
    phase = p.phase
    scope = ls.kill_switch_for(p)
    display = DISPLAY_PHASES.get(phase, phase.title())
    # A governed pause shows at once (before the controller records PAUSED), and a resumed
    # rollout is progressing again (though its last record is still the PAUSED one).
    # (The phase first: a restored proposal decodes `pause` on first use, and most have ended.)
    last_reason = record.last_reason if record else ""
    if phase in ("STARTED", "ADVANCED") and p.pause is not None:
        display = DISPLAY_PHASES["PAUSED"]
        # Until the PAUSED record lands, the last record says why the rollout started: the
        # Paused condition must already say who paused it and why (what PAUSED will say).
        last_reason = p.pause.why()
    elif phase == "PAUSED" and p.pause is None and _resumed_since_paused(p):
        display = DISPLAY_PHASES["STARTED"]
    if phase == "ROLLED_BACK" and record is not None and "kill switch" in record.last_reason:
        display = "Killed"
    if phase == "ROLLED_BACK" and record is not None and "emergency stop" in record.last_reason:
        display = "Killed"
    stable = obs.stable if obs else None
    # With an HPA, N is its current count and the stable keeps it (the canary runs on top).
    hpa = bool(obs and obs.autoscaler) and stable is not None
    total = record.total_replicas if record else (stable.replicas if stable else 0)
    if hpa and stable is not None:
        total = stable.replicas
    weight = cur.weight if cur and phase != "ROLLED_BACK" else 0
    if phase == "PROMOTED":
        weight = 100
    want_c = canary_replicas(total, weight) if phase in ("STARTED", "ADVANCED", "PAUSED") else 0
    # Traffic mode: the stable keeps N during the rollout (the route, not the pods, splits).
    want_s = total if hpa or target_settings(policy).traffic is not None else total - want_c
    canary = (
        obs.canary if obs and obs.canary and obs.canary.proposal == p.entry_hash.hex() else None
    )
    if not message and record is not None and phase in ("PROMOTED", "ROLLED_BACK"):
        message = record.last_reason
    return RolloutView(
        proposal=p.entry_hash,
        namespace=p.proposal.target.namespace,
        deployment=p.proposal.target.deployment,
        phase=phase,
        display_phase=display,
        step=cur.step if cur else 0,
        weight=weight,
        approvals=tuple(ls.valid_approvers(p)),
        approvals_required=policy.approvals_required,
        last_seq=state.last_seq.get(p.entry_hash, p.seq),
        candidate_image=p.proposal.candidate.image,
        stable_image=record.stable_image if record else _live_image(policy, stable),
        desired_stable_replicas=want_s,
        desired_canary_replicas=want_c,
        stable_replicas=stable.replicas if stable else 0,
        canary_replicas=canary.replicas if canary else 0,
        canary_ready=canary.ready_replicas if canary else 0,
        kill_switch=f"{scope.kind} since seq {ls.kill_switches[scope]}" if scope else "",
        message=message,
        last_reason=last_reason,
    )


def _live_image(policy: PolicySet, stable: ObservedDeployment | None) -> str:
    """The stable's image in the container the policy names ("" when it cannot be named)."""
    if stable is None:
        return ""
    container, _ = choose_container(target_settings(policy).container, stable.container_names, "")
    return stable.image(container) if container else ""
