"""One read model of each rollout, for the ModelRollout mirror, ControllerService and kubectl.

Pure: derived from the folded log, the cluster observation and the planner's last actions
(whose ``Wait`` messages say why a rollout is where it is). Fields line up with the
``steward.v1.Rollout`` message so a gRPC layer is a field-by-field copy.
"""

from __future__ import annotations

import time
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
) -> list[RolloutView] | None:
    """`rollout_views` of the state `current()` returns, taking `lock` (the fold lock) for
    `chunk` proposals at a time, so that a fold (a kill switch) never waits for a view of every
    proposal: 0.9 s at a million entries, in one hold, before. Views of one call may come from
    states a few entries apart (they are for people; the planner never reads them). None if
    the state was replaced meanwhile (a replay from the start): the caller asks again. With
    `held`, each hold's start and end (`time.perf_counter()`) are appended to it (for the
    bench, which tells the collector's pauses inside a hold apart)."""
    notes = ViewNotes.of(actions)
    with lock:
        state = current()
        proposals = list(state.ledger.proposals.values())
    proposals.sort(key=lambda p: p.seq)  # seq is set at once, even on a restored proposal
    views: list[RolloutView] = []
    for start in range(0, len(proposals), chunk):
        with lock:
            began = time.perf_counter()
            if current() is not state:
                return None
            views += views_of(state, proposals[start : start + chunk], observed, notes)
            if held is not None:
                held.append((began, time.perf_counter()))
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
