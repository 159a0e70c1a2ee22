"""The planner: folded log + observed cluster → the actions that make the cluster obey the log.

Pure (no I/O, no clock; ``now_ms`` is an argument) so every decision is a unit test. docs/DESIGN.md §6:
the user owns Deployment ``<name>`` (N replicas) and a Service selecting ``app=<name>``; the
controller runs ``<name>-canary`` with the candidate image. Weight w% gives the canary
``ceil(N·w/100)`` replicas and the stable ``N - canary``; the stable shrinks only once the
canary pods of the step are ready (surge), so serving capacity never dips below N. When a
HorizontalPodAutoscaler scales the stable, N is the HPA's current count at every plan and the
stable's replica count is never written: the canary runs its share on top. The container the
candidate image goes into is named by the policy (:func:`target_settings`).

Ordering inside the returned list is the contract with the executor, which runs actions in
order and stops a target's list at the first failure:

* forward moves (STARTED, ADVANCED, PROMOTED) put :class:`RecordStep` first: the ledger checks
  approvals, hold time and health gates again at ingest, and nothing is applied unless it accepts;
* stops (kill switch, emergency stop, automatic rollback) put :class:`StopCanary` first —
  stopping is cheap — then restore the stable, record ROLLED_BACK, and only then delete the
  canary. The canary Deployment's existence marks an unfinished stop or promotion, so a
  controller that crashes anywhere in between finishes the job after replaying the log.

Deployments the controller applied carry a marker annotation naming (proposal, attempt, step).
When the marker matches the step the log implies but replicas or image do not, a person
changed the object by hand: that is drift, recorded as DRIFT_CORRECTED and corrected. When the
marker does not match, the controller's own apply has not landed yet (a crash, or a watch
that has not caught up) and is simply re-applied.

Its length is one idea read top to bottom: one pure function from the folded log and the
observed cluster to actions, with a helper per decision it makes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from controller.state import ControllerState
from controller.target_index import TargetIndex, latest_of
from controller.traffic import (
    STABLE_TRACK,
    EnsureServices,
    ObservedRoute,
    SetRouteWeights,
    weight_drift,
)
from ledger.analysis import checks_for_step
from ledger.formats import (
    AnnotationSource,
    HealthCheck,
    KillScope,
    ObservedState,
    PolicySet,
    Target,
    TrafficRouting,
)
from ledger.state import ACTIVE_PHASES, CheckResult, LedgerState, ProposalState, StepInfo

CANARY_SUFFIX = "-canary"
TRACK_LABEL = "steward.dev/track"
MARKER_ANNOTATION = "steward.dev/applied"
PROPOSAL_ANNOTATION = "steward.dev/proposal"
STOPPING_ANNOTATION = "steward.dev/stopping"

# Container states that mean a canary pod will not become healthy by waiting.
FAILING_REASONS = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerError",
        "CreateContainerConfigError",
        "RunContainerError",
    }
)


@dataclass(frozen=True)
class PlannerConfig:
    # A canary pod not Ready this long after it was created counts as failing, unless the
    # target's policy sets its own grace (TargetSettings.readiness_grace_ms).
    not_ready_grace_ms: int = 120_000


@dataclass(frozen=True)
class TargetSettings:
    """How the controller treats a target, as the policy that governs it says."""

    # The container that gets the candidate image; None: the pod's only container (a pod
    # with several containers then needs a name, and the rollout waits saying so).
    container: str | None = None
    # How long a canary pod may stay not Ready before it counts as failing; None: the
    # controller's --not-ready-grace-seconds. Large models that load for minutes need more.
    readiness_grace_ms: int | None = None
    # Traffic mode (controller/traffic.py): the canary's share is set as HTTPRoute weights;
    # None: replica mode, the share is the canary's part of the pods.
    traffic: TrafficRouting | None = None


def target_settings(policy: PolicySet) -> TargetSettings:
    """The per-target settings of a policy (schema v2 fields of PolicySet; a v1 policy has
    neither): the container to update (None: the pod's only container) and the readiness
    grace (None: the controller's ``--not-ready-grace-seconds``)."""
    grace = policy.readiness_grace_seconds
    return TargetSettings(
        container=policy.container or None,
        readiness_grace_ms=grace * 1000 if grace is not None and grace >= 0 else None,
        traffic=policy.traffic,
    )


def choose_container(wanted: str | None, names: Sequence[str], deployment: str) -> tuple[str, str]:
    """(the container to update, "") or ("", why none can be): the error names what exists."""
    listed = ", ".join(names) or "none"
    if wanted is None:
        if len(names) == 1:
            return names[0], ""
        return "", (
            f"Deployment {deployment} has {len(names)} containers ({listed}): the policy must "
            "name the one that gets the candidate image"
        )
    if wanted in names:
        return wanted, ""
    return "", f"container {wanted!r} not found in Deployment {deployment} (containers: {listed})"


# --------------------------------------------------------------------------------------------
# Observations (built by the executor from its watch caches)


# (name, image) of each container of a pod or pod template, in order.
Containers = tuple[tuple[str, str], ...]


def image_in(containers: Containers, name: str) -> str:
    """The image of container `name`, or "" when there is no such container."""
    return next((image for n, image in containers if n == name), "")


@dataclass(frozen=True)
class ObservedDeployment:
    replicas: int  # spec.replicas (the scale subresource's spec.replicas)
    containers: Containers  # the pod template's containers
    ready_replicas: int = 0
    updated_replicas: int = 0
    generation: int = 1
    observed_generation: int = 1
    marker: str = ""  # MARKER_ANNOTATION
    proposal: str = ""  # PROPOSAL_ANNOTATION (hex), canary only
    stopping: str = ""  # STOPPING_ANNOTATION: a stop was begun for this reason
    track: str = ""  # the pod template's TRACK_LABEL (traffic mode labels the stable's pods)

    @property
    def container_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.containers)

    def image(self, container: str) -> str:
        return image_in(self.containers, container)

    def settled(self, replicas: int) -> bool:
        """The Deployment controller has caught up and `replicas` pods are updated and ready."""
        return (
            self.observed_generation >= self.generation
            and self.replicas == replicas
            and self.updated_replicas >= replicas
            and self.ready_replicas >= replicas
        )


@dataclass(frozen=True)
class ObservedPod:
    name: str
    containers: Containers
    ready: bool
    phase: str = "Running"
    waiting_reason: str = ""  # the first waiting reason among its containers' states
    created_ms: int = 0

    def image(self, container: str) -> str:
        return image_in(self.containers, container)


@dataclass(frozen=True)
class EmergencyStop:
    """A ModelRollout annotated ``steward.dev/emergency-stop``: who set it, when and why."""

    proposal: bytes
    reason: str
    source: AnnotationSource


@dataclass(frozen=True)
class ObservedTarget:
    stable: ObservedDeployment | None
    canary: ObservedDeployment | None = None
    canary_pods: tuple[ObservedPod, ...] = ()
    emergency_stops: tuple[EmergencyStop, ...] = ()
    # The HorizontalPodAutoscaler whose scaleTargetRef names the stable Deployment, if any:
    # it owns the stable's replica count, which the controller then only reads.
    autoscaler: str = ""
    # Traffic mode: the namespace's HTTPRoutes and the names of its Services.
    routes: tuple[ObservedRoute, ...] = ()
    services: frozenset[str] = frozenset()

    def route(self, name: str) -> ObservedRoute | None:
        return next((r for r in self.routes if r.name == name), None)


# --------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class RecordStep:
    """Sign and append a RolloutStep with this deterministic event id."""

    proposal: bytes
    step: int
    weight: int
    phase: str
    reason: str
    observed: ObservedState
    event_id: bytes


@dataclass(frozen=True)
class RecordKillSwitch:
    """Record an emergency stop requested by annotation as a PROPOSAL-scope kill switch."""

    proposal: bytes
    reason: str
    annotation: AnnotationSource
    event_id: bytes


@dataclass(frozen=True)
class ApplyCanary:
    """Server-side apply ``<name>-canary``: the stable's pod template, the candidate image in
    ``container`` (the other containers as the stable has them)."""

    namespace: str
    name: str  # the target (stable) Deployment
    replicas: int
    image: str
    proposal: bytes
    marker: str
    container: str
    # An HPA owns the stable: the stable's scale this share was computed from. The executor
    # reads the scale subresource before applying and refuses when it moved (re-plan).
    scale_basis: int | None = None


@dataclass(frozen=True)
class ScaleStable:
    namespace: str
    name: str
    replicas: int | None  # None: an HPA owns the count; it is not written
    image: str  # the image the log implies for the stable (restores a hand-set image)
    marker: str
    container: str | None  # the container `image` is for; None: no image is written
    track: str = ""  # traffic mode: the pod template label the stable Service selects


@dataclass(frozen=True)
class StopCanary:
    """Scale the canary to zero at once and mark why (the durable intent of a stop)."""

    namespace: str
    name: str
    reason: str
    cause_seq: int = -1  # the ledger entry that caused the stop (kill switch, report), if any


@dataclass(frozen=True)
class Promote:
    """The stable takes the candidate image at N replicas (the canary is removed afterwards)."""

    namespace: str
    name: str
    replicas: int | None  # None: an HPA owns the count; it is not written
    image: str
    marker: str
    container: str
    track: str = ""  # traffic mode: the pod template label the stable Service selects


@dataclass(frozen=True)
class RemoveCanary:
    namespace: str
    name: str


@dataclass(frozen=True)
class Wait:
    """Nothing to do yet, and why: shown in the ModelRollout status."""

    proposal: bytes
    message: str


Action = (
    RecordStep
    | RecordKillSwitch
    | ApplyCanary
    | ScaleStable
    | StopCanary
    | Promote
    | RemoveCanary
    | EnsureServices
    | SetRouteWeights
    | Wait
)


def canary_name(target: str) -> str:
    return target + CANARY_SUFFIX


def canary_replicas(total: int, weight: int) -> int:
    """ceil(N·w/100) in integers, so 10% of 3 is 1 and 100% of N is N."""
    return math.ceil(total * weight / 100) if weight > 0 else 0


def step_event_id(proposal: bytes, step: int, phase: str, attempt: int) -> bytes:
    """SHA-256(b"steward/v1/step" ‖ proposal ‖ step ‖ phase ‖ attempt)[:16].

    `attempt` counts the proposal's earlier ROLLED_BACK records (its earlier DRIFT_CORRECTED
    records for a drift correction), so it is the same for every replay of the same log and a
    retried step lands on the same id: the ledger records it once.
    """
    data = (
        b"steward/v1/step"
        + proposal
        + step.to_bytes(4, "big")
        + phase.encode("ascii")
        + attempt.to_bytes(4, "big")
    )
    return hashlib.sha256(data).digest()[:16]


def pause_step_event_id(proposal: bytes, pause: bytes) -> bytes:
    """The PAUSED record of one governed pause (named by its entry hash): one per pause, however
    often planned, and distinct from another pause at the same step and attempt."""
    return hashlib.sha256(b"steward/v1/pause-step" + proposal + pause).digest()[:16]


def annotation_kill_event_id(proposal: bytes, source: AnnotationSource, reason: str) -> bytes:
    """One kill record per annotation (object, manager, time, reason), however often seen."""
    data = "\n".join((source.object, source.field_manager, source.time, reason)).encode()
    return hashlib.sha256(b"steward/v1/annotation-kill" + proposal + data).digest()[:16]


def rollbacks(proposal: ProposalState) -> int:
    return sum(1 for s in proposal.steps if s.phase == "ROLLED_BACK")


def marker(proposal: bytes, attempt: int, step: int | str) -> str:
    return f"{proposal.hex()[:16]}/{attempt}/{step}"


# --------------------------------------------------------------------------------------------
# The plan


def plan(
    state: ControllerState,
    observed: Mapping[Target, ObservedTarget],
    now_ms: int,
    config: PlannerConfig | None = None,
    index: TargetIndex | None = None,
) -> list[Action]:
    """Every action needed now, target by target (targets without an observation are skipped).

    `index`, when it holds every proposal of `state`, says which proposals name each target
    (the runtime keeps one up to date), instead of a pass over every proposal of the ledger."""
    cfg = config or PlannerConfig()
    ls = state.ledger
    indexed = index is not None and index.current(state)
    by_target: dict[Target, list[ProposalState]] = {}
    if not indexed:
        for p in ls.proposals.values():
            by_target.setdefault(p.proposal.target, []).append(p)
    actions: list[Action] = []
    for target in sorted(observed, key=lambda t: (t.namespace, t.deployment)):
        everyone: Iterable[ProposalState]
        if index is not None and indexed:
            hashes = index.hashes(target)
            if not hashes:
                continue
            everyone = _InOrder(ls.proposals, hashes)
            # The ledger state's own index of active rollouts (the rules keep it), and the
            # index's note of the target's latest step.
            active = ls.active_rollout_on(target.namespace, target.deployment)
            latest = index.latest_step(state, target)
        else:
            proposals = sorted(by_target.get(target, []), key=lambda p: p.seq)
            if not proposals:
                continue
            stepped = [p for p in proposals if p.steps]
            everyone = proposals
            active = next((p for p in stepped if p.phase in ACTIVE_PHASES), None)
            latest = latest_of(stepped, state.last_seq)
        actions.extend(
            _Target(state, target, observed[target], now_ms, cfg).plan(everyone, active, latest)
        )
    return actions


class _InOrder:
    """A target's proposals in seq order, read one at a time from the state as they are
    iterated (the start of a rollout stops at the first that may go)."""

    def __init__(self, proposals: Mapping[bytes, ProposalState], hashes: Sequence[bytes]) -> None:
        self.proposals, self.hashes = proposals, hashes

    def __iter__(self) -> Iterator[ProposalState]:
        proposals = self.proposals
        return (proposals[h] for h in self.hashes)


def _hash_of(hex_hash: str) -> bytes | None:
    """The entry hash a canary's annotation names (lowercase hex, as written), or None."""
    try:
        h = bytes.fromhex(hex_hash)
    except ValueError:
        return None
    return h if h.hex() == hex_hash else None


class _Target:
    def __init__(
        self,
        state: ControllerState,
        target: Target,
        obs: ObservedTarget,
        now_ms: int,
        cfg: PlannerConfig,
    ) -> None:
        self.state = state
        self.ls: LedgerState = state.ledger
        self.target = target
        self.obs = obs
        self.now = now_ms
        self.cfg = cfg
        self.ns = target.namespace
        self.name = target.deployment
        # An HPA owns the stable's replica count: N is its current count, never written.
        self.hpa = bool(obs.autoscaler)

    # -- entry point -------------------------------------------------------------------

    def plan(
        self,
        proposals: Iterable[ProposalState],
        active: ProposalState | None,
        latest: ProposalState | None,
    ) -> list[Action]:
        """`proposals`: the target's, in seq order; `active`: the one rolling out; `latest`:
        the one whose last step is the target's latest (None: no proposal has steps)."""
        stops = self._unrecorded_stops(proposals)
        if self.obs.stable is None:
            return [
                Wait(p.entry_hash, f"Deployment {self.ns}/{self.name} not found")
                for p in proposals
                if p.phase in (*ACTIVE_PHASES, "PENDING")
            ]
        if active is not None:
            return self._active(active, stops.get(active.entry_hash))
        # Emergency stops on proposals that are not rolling out: record them, nothing to undo.
        out: list[Action] = [
            RecordKillSwitch(h, s.reason, s.source, annotation_kill_event_id(h, s.source, s.reason))
            for h, s in stops.items()
        ]
        if out:
            return out
        if self.obs.canary is not None:
            return self._finish()
        drift = self._drift_after_promotion(latest)
        if any(not isinstance(a, Wait) for a in drift):
            return drift  # the promoted image first; a next rollout starts from it
        return [*drift, *self._maybe_start(proposals)]

    def _unrecorded_stops(self, proposals: Iterable[ProposalState]) -> dict[bytes, EmergencyStop]:
        if not self.obs.emergency_stops:
            return {}
        mine = {p.entry_hash for p in proposals if p.phase != "PROMOTED"}
        found: dict[bytes, EmergencyStop] = {}
        for stop in self.obs.emergency_stops:
            if stop.proposal not in mine:
                continue
            if KillScope("PROPOSAL", proposal=stop.proposal) in self.ls.kill_switches:
                continue  # already stopped by a kill switch on this proposal
            if (
                annotation_kill_event_id(stop.proposal, stop.source, stop.reason)
                in self.ls.event_ids
            ):
                continue  # recorded before (and maybe released since): honoured once
            found[stop.proposal] = stop
        return found

    # -- the target's settings and the live count -------------------------------------

    def _settings(self, p: ProposalState) -> TargetSettings:
        return target_settings(self.ls.policy_of(p))

    def _traffic(self, p: ProposalState) -> TrafficRouting | None:
        return self._settings(p).traffic

    def _track(self, p: ProposalState) -> str:
        """The label traffic mode keeps on the stable's pods ("" in replica mode). Every apply
        of the stable names it: an apply that left it out would remove it."""
        return STABLE_TRACK if self._traffic(p) is not None else ""

    def _container(self, p: ProposalState) -> tuple[str, str]:
        """(the container `p` updates, "") or ("", the error that says why there is none)."""
        stable = self.obs.stable
        assert stable is not None
        wanted = self._settings(p).container
        return choose_container(wanted, stable.container_names, f"{self.ns}/{self.name}")

    def _total(self, recorded: int) -> int:
        """N: the HPA's current count (read at every plan) or the count recorded at STARTED."""
        stable = self.obs.stable
        return stable.replicas if self.hpa and stable is not None else recorded

    def _owned(self, replicas: int) -> int | None:
        """The stable replica count to write, or None when an HPA owns it."""
        return None if self.hpa else replicas

    def _basis(self, total: int) -> int | None:
        """The scale a canary share was computed from, for the executor to check (HPA only)."""
        return total if self.hpa else None

    # -- observed state as recorded on the ledger --------------------------------------

    def _observed_state(self, p: ProposalState) -> ObservedState:
        stable, canary = self.obs.stable, self.obs.canary
        container = self._container(p)[0] if stable else ""
        return ObservedState(
            stable_replicas=stable.replicas if stable else 0,
            canary_replicas=canary.replicas if canary else 0,
            canary_ready=canary.ready_replicas if canary else 0,
            stable_image=stable.image(container) if stable else "",
            canary_image=canary.image(container) if canary else "",
        )

    def _record(
        self,
        p: ProposalState,
        step: int,
        weight: int,
        phase: str,
        reason: str,
        event_id: bytes | None = None,
    ) -> RecordStep:
        attempt = rollbacks(p)
        if phase == "DRIFT_CORRECTED":
            record = self.state.rollouts.get(p.entry_hash)
            attempt = record.drift_count if record else 0
        return RecordStep(
            p.entry_hash,
            step,
            weight,
            phase,
            reason,
            self._observed_state(p),
            event_id or step_event_id(p.entry_hash, step, phase, attempt),
        )

    # -- starting -----------------------------------------------------------------------

    def _blockers(self, p: ProposalState) -> str | None:
        """Why `p` may not go forward now (approvals, veto, kill switch), or None."""
        policy = self.ls.policy_of(p)
        approvers = self.ls.valid_approvers(p)
        if len(approvers) < policy.approvals_required:
            return (
                f"waiting for approvals: {len(approvers)} of {policy.approvals_required} valid"
                + (f" ({', '.join(approvers)})" if approvers else "")
            )
        vetoes = self.ls.vetoes(p)
        if vetoes:
            return f"vetoed by {', '.join(vetoes)}"
        scope = self.ls.kill_switch_for(p)
        if scope is not None:
            return f"{scope.kind} kill switch engaged at seq {self.ls.kill_switches[scope]}"
        return None

    def _maybe_start(self, proposals: Iterable[ProposalState]) -> list[Action]:
        waits: list[Action] = []
        for p in proposals:
            if p.phase not in ("PENDING", "ROLLED_BACK"):
                continue
            blocked = self._blockers(p)
            if blocked is not None:
                waits.append(Wait(p.entry_hash, blocked))
                continue
            return self._start(p)
        return waits

    def _start(self, p: ProposalState) -> list[Action]:
        stable = self.obs.stable
        assert stable is not None
        container, error = self._container(p)
        if error:
            return [Wait(p.entry_hash, error)]
        if stable.replicas < 1:
            return [Wait(p.entry_hash, f"Deployment {self.name} has no replicas to shift")]
        policy = self.ls.policy_of(p)
        weight = policy.plan[0].weight
        total = stable.replicas
        c = canary_replicas(total, weight)
        m = marker(p.entry_hash, rollbacks(p), 0)
        approvers = ", ".join(self.ls.valid_approvers(p))
        # The stable shrinks on a later plan, once these canary pods are ready (surge).
        candidate = p.proposal.candidate.image
        return [
            self._record(p, 0, weight, "STARTED", f"approved by {approvers}"),
            ApplyCanary(
                self.ns, self.name, c, candidate, p.entry_hash, m, container, self._basis(total)
            ),
        ]

    # -- an active rollout --------------------------------------------------------------

    def _active(self, p: ProposalState, stop: EmergencyStop | None) -> list[Action]:
        cur = p.current
        record = self.state.rollouts.get(p.entry_hash)
        assert cur is not None
        if record is None:  # cannot happen for a log that passed the rules
            return [Wait(p.entry_hash, "no STARTED record folded for this rollout")]
        cause = self._stop_reason(p, stop)
        if cause is not None:
            reason, cause_seq = cause
            kill = None
            if stop is not None:
                kill = RecordKillSwitch(
                    p.entry_hash,
                    stop.reason,
                    stop.source,
                    annotation_kill_event_id(p.entry_hash, stop.source, stop.reason),
                )
            return self._rollback(
                p, self._total(record.total_replicas), record.stable_image, reason, cause_seq, kill
            )
        container, error = self._container(p)
        if error:  # nothing can be applied to a container that is not there: hold the step
            return [Wait(p.entry_hash, error)]

        total, stable_image = self._total(record.total_replicas), record.stable_image
        traffic = self._traffic(p)
        want_c = canary_replicas(total, cur.weight)
        # Traffic mode: the stable keeps its N; it takes every request again the moment a stop
        # sets the canary's weight to 0.
        want_s = self._owned(total if traffic is not None else total - want_c)
        m = marker(p.entry_hash, rollbacks(p), cur.step)
        candidate = p.proposal.candidate.image
        stable, canary = self.obs.stable, self.obs.canary
        assert stable is not None
        apply_canary = ApplyCanary(
            self.ns, self.name, want_c, candidate, p.entry_hash, m, container, self._basis(total)
        )
        scale_stable = ScaleStable(
            self.ns, self.name, want_s, stable_image, m, container, self._track(p)
        )

        applies: list[Action] = []
        drift: list[str] = []
        surge = ""
        if canary is None or canary.marker != m:
            applies.append(apply_canary)
        elif canary.image(container) != candidate or (not self.hpa and canary.replicas != want_c):
            drift.append(_describe(canary_name(self.name), canary, container, want_c, candidate))
            applies.append(apply_canary)
        elif canary.replicas != want_c:
            applies.append(apply_canary)  # the HPA moved: the canary follows its share
        if stable.marker != m:
            canary_ready = canary is not None and canary.marker == m and canary.settled(want_c)
            if want_s is not None and want_s < stable.replicas and not canary_ready:
                ready = canary.ready_replicas if canary is not None and canary.marker == m else 0
                surge = f"canary pods ready {ready}/{want_c} before the stable shrinks"
            else:
                applies.append(scale_stable)
        elif stable.image(container) != stable_image or (
            want_s is not None and stable.replicas != want_s
        ):
            drift.append(_describe(self.name, stable, container, want_s, stable_image))
            applies.append(scale_stable)
        elif traffic is not None and stable.track != STABLE_TRACK:
            # Only in traffic mode: in replica mode the label is the user's to set or not (a
            # stable may well carry steward.dev/track=stable of its own).
            drift.append(f"{self.name}: pod label {TRACK_LABEL}={stable.track or '(none)'}")
            applies.append(scale_stable)
        route_first: list[Action] = []  # lowering the canary's weight: before anything else
        route_after: list[Action] = []  # raising it: after the canary is Ready
        if traffic is not None:
            if not {traffic.stable_service, traffic.canary_service} <= self.obs.services:
                applies.insert(0, EnsureServices(self.ns, self.name, traffic))
            route = self.obs.route(traffic.http_route)
            live = route.canary_weight(traffic) if route is not None else None
            set_weights = SetRouteWeights(self.ns, self.name, traffic, cur.weight, m)
            if route is None:
                surge = surge or f"HTTPRoute {self.ns}/{traffic.http_route} not found"
            elif live == cur.weight and route.marker == m:
                pass
            elif live is not None and live > cur.weight:
                if route.marker == m:
                    drift.append(weight_drift(route, traffic, cur.weight))
                route_first.append(set_weights)
            elif route.marker == m:  # weights the controller wrote for this step, changed
                drift.append(weight_drift(route, traffic, cur.weight))
                route_after.append(set_weights)
            elif self._ready_for_weight(canary, stable, m, want_c):
                route_after.append(set_weights)
            else:
                ready = canary.ready_replicas if canary is not None and canary.marker == m else 0
                surge = surge or (
                    f"canary pods ready {ready}/{want_c} before HTTPRoute "
                    f"{traffic.http_route} gives the canary {cur.weight}%"
                )
        if drift:
            note = "; ".join(drift)
            drift_step = self._record(p, cur.step, cur.weight, "DRIFT_CORRECTED", note)
            return [drift_step, *route_first, *applies, *route_after]
        # A governed pause holds this step's weight: its route writes still go out, in order.
        holding = self._held(p, [*route_first, *applies, *route_after])
        if holding is not None:
            return holding
        if applies or surge or route_first or route_after:
            message = surge or f"applying step {cur.step} ({cur.weight}%)"
            return [*route_first, *applies, *route_after, Wait(p.entry_hash, message)]

        paused = self._paused(p)
        if paused is not None:
            return paused
        assert canary is not None
        if not canary.settled(want_c):
            return [Wait(p.entry_hash, f"canary pods ready {canary.ready_replicas}/{want_c}")]
        blocked = self._blockers(p)
        if blocked is not None:
            return [Wait(p.entry_hash, blocked)]
        plan = self.ls.policy_of(p).plan
        started = p.step_started
        assert started is not None
        plan_step = plan[started.step]
        held = self.now - _run_start(p, started)
        if held < plan_step.hold_seconds * 1000:
            left = plan_step.hold_seconds * 1000 - held
            return [Wait(p.entry_hash, f"holding step {cur.step} for {left / 1000:.1f}s more")]
        analysis = self._analysis(p, started)
        passed = "healthy"
        if analysis:
            # Every check gating the step must pass (verdicts recomputed when folded); one
            # past its deadline without a verdict was acted on above (_stop_reason, _paused).
            pending = [(c, r) for c, r in analysis if r is None or r.verdict != "PASS"]
            if pending:
                return [self._waiting_for_checks(p, cur.step, started, pending)]
            passed = "checks passed: " + "; ".join(r.why for _c, r in analysis if r)
        elif plan_step.health_gate:
            report = p.health.get(started.step)
            if report is None or report.seq < started.seq or not report.healthy:
                return [Wait(p.entry_hash, f"step {cur.step} waits for a healthy report")]
        if cur.step + 1 < len(plan):
            nxt, weight = cur.step + 1, plan[cur.step + 1].weight
            c = canary_replicas(total, weight)
            m2 = marker(p.entry_hash, rollbacks(p), nxt)
            return [
                self._record(p, nxt, weight, "ADVANCED", f"step {cur.step} held; {passed}"),
                ApplyCanary(
                    self.ns,
                    self.name,
                    c,
                    candidate,
                    p.entry_hash,
                    m2,
                    container,
                    self._basis(total),
                ),
            ]
        return [
            self._record(p, cur.step, 100, "PROMOTED", "every step of the plan passed"),
            Promote(
                self.ns,
                self.name,
                self._owned(total),
                candidate,
                marker(p.entry_hash, rollbacks(p), "promoted"),
                container,
                self._track(p),
            ),
        ]

    def _ready_for_weight(
        self,
        canary: ObservedDeployment | None,
        stable: ObservedDeployment,
        m: str,
        want_c: int,
    ) -> bool:
        """Traffic mode, forward: the step's canary pods are Ready and the stable's pods carry
        the label its Service selects, so both Services have endpoints for their weights."""
        return (
            canary is not None
            and canary.marker == m
            and canary.settled(want_c)
            and stable.marker == m
            and stable.track == STABLE_TRACK
            and stable.settled(stable.replicas)
        )

    def _route_to_stable(
        self, p: ProposalState, tag: str, cause_seq: int = -1
    ) -> list[SetRouteWeights]:
        """Traffic mode: the canary's weight to 0 (all to the stable) unless it is there."""
        traffic = self._traffic(p)
        if traffic is None:
            return []
        route = self.obs.route(traffic.http_route)
        if route is None or route.canary_weight(traffic) == 0:
            return []
        m = marker(p.entry_hash, rollbacks(p), tag)
        return [SetRouteWeights(self.ns, self.name, traffic, 0, m, cause_seq)]

    def _stop_reason(self, p: ProposalState, stop: EmergencyStop | None) -> tuple[str, int] | None:
        """Why this active rollout must roll back now and the entry that says so (-1 if none)."""
        scope = self.ls.kill_switch_for(p)
        if scope is not None:
            seq = self.ls.kill_switches[scope]
            return f"{scope.kind} kill switch engaged at seq {seq}", seq
        if stop is not None:
            src = stop.source
            return (
                f"emergency stop annotated by {src.field_manager} at {src.time}: {stop.reason}",
                -1,
            )
        vetoes = self.ls.vetoes(p)
        if vetoes:
            return f"vetoed by {', '.join(vetoes)}", -1
        cur, started = p.current, p.step_started
        assert cur is not None and started is not None
        report = p.health.get(cur.step)
        if report is not None and report.seq > started.seq and not report.healthy:
            return f"unhealthy report for step {cur.step} at seq {report.seq}", report.seq
        for check, result in self._analysis(p, started):
            if result is not None and result.verdict == "FAIL":
                return (
                    f"step {cur.step} check failed: {result.why} (report at seq {result.seq})",
                    result.seq,
                )
            late = self._past_deadline(check, result, cur.step, _run_start(p, started))
            # A governed pause waits for people, not for data: its no-data clock restarts
            # at the resume (_run_start); a failing verdict still rolls back.
            if late is not None and check.no_data.action == "ROLLBACK" and p.pause is None:
                return late, result.seq if result is not None else -1
        failing = self._failing_pod(p)
        if failing is not None:
            return failing, -1
        canary = self.obs.canary
        if canary is not None and canary.stopping and canary.proposal == p.entry_hash.hex():
            return canary.stopping, -1  # a stop begun before a restart: finish it
        return None

    # -- automated analysis -------------------------------------------------------------

    def _analysis(
        self, p: ProposalState, started: StepInfo
    ) -> list[tuple[HealthCheck, CheckResult | None]]:
        """The checks gating the running step, each with its latest result in this run."""
        results = p.checks.get(started.step, {})
        out: list[tuple[HealthCheck, CheckResult | None]] = []
        for check in checks_for_step(self.ls.policy_of(p), started.step):
            r = results.get(check.name)
            out.append((check, r if r is not None and r.seq > started.seq else None))
        return out

    def _past_deadline(
        self, check: HealthCheck, result: CheckResult | None, step: int, since: int
    ) -> str | None:
        """Why `check` is past its no-data deadline without a verdict, or None."""
        if result is not None and result.verdict != "INCONCLUSIVE":
            return None
        deadline_ms = check.no_data.deadline_seconds * 1000
        if self.now - since < deadline_ms:
            return None
        seen = result.why if result is not None else f"{check.name}: no report"
        return (
            f"step {step} check {check.name} has no verdict {check.no_data.deadline_seconds}s "
            f"after the step began ({seen}); no-data action {check.no_data.action}"
        )

    def _paused(self, p: ProposalState) -> list[Action] | None:
        """A check past its deadline whose policy says PAUSE: record PAUSED once, then hold.
        Nothing advances a paused rollout but its checks passing; a kill switch rolls it back."""
        cur, started = p.current, p.step_started
        assert cur is not None and started is not None
        for check, result in self._analysis(p, started):
            late = self._past_deadline(check, result, cur.step, _run_start(p, started))
            if late is None or check.no_data.action != "PAUSE":
                continue
            if p.phase != "PAUSED":
                return [self._record(p, cur.step, cur.weight, "PAUSED", late)]
        return None

    def _held(self, p: ProposalState, applies: list[Action]) -> list[Action] | None:
        """A governed pause (RolloutPaused on the log): record PAUSED once, at the current step
        and weight, then hold there until a RolloutResumed. The current step's objects are
        still applied (the weight it holds is the step's), and a stop still wins: this runs
        after _stop_reason."""
        pause = p.pause
        if pause is None:
            return None
        cur = p.current
        assert cur is not None
        why = pause.why()
        if not any(s.phase == "PAUSED" and s.seq > pause.seq for s in p.steps):
            event_id = pause_step_event_id(p.entry_hash, pause.entry_hash)
            return [self._record(p, cur.step, cur.weight, "PAUSED", why, event_id), *applies]
        k = self.ls.policy_of(p).resume_approvals
        hold = f"{why}; holding step {cur.step} at {cur.weight}% until resumed by {k} approver(s)"
        return [*applies, Wait(p.entry_hash, hold)]

    def _waiting_for_checks(
        self,
        p: ProposalState,
        step: int,
        started: StepInfo,
        pending: list[tuple[HealthCheck, CheckResult | None]],
    ) -> Wait:
        parts = []
        for check, r in pending:
            left = check.no_data.deadline_seconds * 1000 - (self.now - _run_start(p, started))
            seen = r.why if r is not None else f"{check.name}: no report yet"
            parts.append(
                f"{seen}; {check.no_data.action} in {left / 1000:.0f}s without a verdict"
                if left > 0
                else seen
            )
        prefix = "paused" if p.phase == "PAUSED" else f"step {step} holds for its checks"
        return Wait(p.entry_hash, f"{prefix}: " + " | ".join(parts))

    def _failing_pod(self, p: ProposalState) -> str | None:
        candidate = p.proposal.candidate.image
        container = self._container(p)[0] if self.obs.stable is not None else ""
        grace_ms = self._settings(p).readiness_grace_ms
        if grace_ms is None:
            grace_ms = self.cfg.not_ready_grace_ms
        for pod in sorted(self.obs.canary_pods, key=lambda x: x.name):
            if pod.ready or not _runs(pod, container, candidate):
                continue
            if pod.waiting_reason in FAILING_REASONS:
                return f"canary pod {pod.name} is {pod.waiting_reason}"
            if pod.phase == "Failed":
                return f"canary pod {pod.name} failed"
            if self.now - pod.created_ms > grace_ms:
                return f"canary pod {pod.name} not ready after {grace_ms / 1000:.0f}s"
        return None

    def _rollback(
        self,
        p: ProposalState,
        total: int,
        stable_image: str,
        reason: str,
        cause_seq: int,
        kill: RecordKillSwitch | None,
    ) -> list[Action]:
        cur = p.current
        assert cur is not None
        stable, canary = self.obs.stable, self.obs.canary
        assert stable is not None
        # Traffic mode: no request reaches the canary before its replicas go.
        out: list[Action] = [*self._route_to_stable(p, "rolled-back", cause_seq)]
        if canary is not None and (canary.replicas != 0 or not canary.stopping):
            out.append(StopCanary(self.ns, self.name, reason, cause_seq))
        restore = self._restore_stable(p, total, stable_image)
        if restore is not None:
            out.append(restore)
        if kill is not None:
            out.append(kill)
        out.append(self._record(p, cur.step, 0, "ROLLED_BACK", reason))
        if canary is not None:
            out.append(RemoveCanary(self.ns, self.name))
        return out

    # -- finishing a promotion or a rollback after the record ---------------------------

    def _finish(self) -> list[Action]:
        canary, stable = self.obs.canary, self.obs.stable
        assert canary is not None and stable is not None
        h = _hash_of(canary.proposal)
        owner = self.ls.proposals.get(h) if h is not None else None
        if owner is None or owner.proposal.target != self.target:
            return []  # a canary the log does not explain: not ours to touch
        record = self.state.rollouts.get(owner.entry_hash)
        total = self._total(record.total_replicas if record else stable.replicas + canary.replicas)
        if owner.phase == "PROMOTED":
            container, error = self._container(owner)
            if error:
                return [Wait(owner.entry_hash, error)]
            candidate = owner.proposal.candidate.image
            track = self._track(owner)
            if (
                stable.image(container) != candidate
                or (not self.hpa and stable.replicas != total)
                or (track and stable.track != track)
            ):
                m = marker(owner.entry_hash, rollbacks(owner), "promoted")
                return [
                    Promote(self.ns, self.name, self._owned(total), candidate, m, container, track)
                ]
            if not stable.settled(total):
                return [
                    Wait(
                        owner.entry_hash,
                        f"promoted; stable pods ready {stable.ready_replicas}/{total}",
                    )
                ]
            # Traffic mode: the stable runs the candidate at N; it gets the weight back, then
            # the canary goes.
            return [*self._route_to_stable(owner, "promoted"), RemoveCanary(self.ns, self.name)]
        out: list[Action] = [*self._route_to_stable(owner, "rolled-back")]
        if canary.replicas != 0:
            out.append(StopCanary(self.ns, self.name, canary.stopping or "rollout ended"))
        stable_image = record.stable_image if record else ""
        restore = self._restore_stable(owner, total, stable_image)
        if restore is not None:
            out.append(restore)
        out.append(RemoveCanary(self.ns, self.name))
        return out

    def _restore_stable(
        self, p: ProposalState, total: int, stable_image: str
    ) -> ScaleStable | None:
        """Put the stable back at N on its image, if it is not there (rollbacks).

        Without a container to name (the policy's is gone) only the count is restored; with
        an HPA only the image."""
        stable = self.obs.stable
        assert stable is not None
        # No image is written without both a container to name and an image to restore.
        container = (self._container(p)[0] or None) if stable_image else None
        replicas = self._owned(total)
        image_off = container is not None and stable.image(container) != stable_image
        replicas_off = replicas is not None and stable.replicas != replicas
        if not image_off and not replicas_off:
            return None
        m = marker(p.entry_hash, rollbacks(p), "rolled-back")
        return ScaleStable(self.ns, self.name, replicas, stable_image, m, container, self._track(p))

    # -- after promotion -----------------------------------------------------------------

    def _drift_after_promotion(self, last: ProposalState | None) -> list[Action]:
        """After promotion the stable runs the candidate at N until the next rollout starts.

        The same definition as the auditor's drift check (audit/drift.py): a hand-set image
        on the named container, or a hand-set count (unless an HPA owns the count), is drift,
        recorded and corrected as during a rollout. Not under a kill switch in scope: people
        may be rolling back by hand, and the controller does not push the candidate back.
        """
        stable = self.obs.stable
        assert stable is not None
        if last is None:
            return []
        cur, record = last.current, self.state.rollouts.get(last.entry_hash)
        if last.phase != "PROMOTED" or cur is None or record is None:
            return []
        container, error = self._container(last)
        if error:
            return [Wait(last.entry_hash, f"promoted; {error}")]
        candidate, replicas = last.proposal.candidate.image, self._owned(record.total_replicas)
        m = marker(last.entry_hash, rollbacks(last), "promoted")
        notes: list[str] = []
        fixes: list[Action] = []
        # Traffic mode: the canary is gone, so every request belongs to the stable. Only a
        # route the controller wrote for this promotion (its marker) is held to that: a route
        # someone has since taken over, marker and all, is theirs.
        traffic = self._traffic(last)
        route = self.obs.route(traffic.http_route) if traffic is not None else None
        if (
            traffic is not None
            and route is not None
            and route.marker == m
            and route.canary_weight(traffic) != 0
        ):
            notes.append(weight_drift(route, traffic, 0) + " (promoted)")
            fixes.append(SetRouteWeights(self.ns, self.name, traffic, 0, m))
        if stable.image(container) != candidate or replicas not in (None, stable.replicas):
            notes.append(
                _describe(self.name, stable, container, replicas, candidate) + " (promoted)"
            )
            fixes.append(
                Promote(self.ns, self.name, replicas, candidate, m, container, self._track(last))
            )
        if not notes:
            return []
        note = "; ".join(notes)
        scope = self.ls.kill_switch_for(last)
        if scope is not None:
            seq = self.ls.kill_switches[scope]
            return [
                Wait(
                    last.entry_hash,
                    f"promoted; {note}: not corrected while the {scope.kind} kill switch "
                    f"engaged at seq {seq} is on",
                )
            ]
        return [self._record(last, cur.step, cur.weight, "DRIFT_CORRECTED", note), *fixes]


def _runs(pod: ObservedPod, container: str, image: str) -> bool:
    """The pod runs `image` in `container` (in any container when none could be named)."""
    if container:
        return pod.image(container) == image
    return any(i == image for _, i in pod.containers)


def _run_start(p: ProposalState, started: StepInfo) -> int:
    """When the current step's run began for its hold and no-data clocks: when the step was
    entered, or the latest resume after that (a resumed step dwells again in full)."""
    resumed = p.last_resume
    if resumed is not None and resumed.seq > started.seq:
        return max(started.at, resumed.at)
    return started.at


def _describe(
    name: str, live: ObservedDeployment, container: str, replicas: int | None, image: str
) -> str:
    parts = []
    if replicas is not None and live.replicas != replicas:
        parts.append(f"replicas {live.replicas}, expected {replicas}")
    live_image = live.image(container)
    if live_image != image:
        parts.append(f"image {live_image or '(none)'}, expected {image}")
    return f"{name}: " + ", ".join(parts)
