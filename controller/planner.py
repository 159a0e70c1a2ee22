"""The planner: folded log + observed cluster → the actions that make the cluster obey the log.

Pure (no I/O, no clock; ``now_ms`` is an argument) so every decision is a unit test. docs/DESIGN.md §6:
the user owns Deployment ``<name>`` (N replicas) and a Service selecting ``app=<name>``; the
controller runs ``<name>-canary`` with the candidate image. Weight w% gives the canary
``ceil(N·w/100)`` replicas and the stable ``N - canary``.

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
from collections.abc import Mapping
from dataclasses import dataclass

from controller.state import ControllerState
from ledger.formats import AnnotationSource, KillScope, ObservedState, Target
from ledger.state import ACTIVE_PHASES, LedgerState, ProposalState

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
    # A canary pod not Ready this long after it was created counts as failing.
    not_ready_grace_ms: int = 120_000


# --------------------------------------------------------------------------------------------
# Observations (built by the executor from its watch caches)


@dataclass(frozen=True)
class ObservedDeployment:
    replicas: int  # spec.replicas
    image: str  # the first container's image: the model server
    ready_replicas: int = 0
    updated_replicas: int = 0
    generation: int = 1
    observed_generation: int = 1
    marker: str = ""  # MARKER_ANNOTATION
    proposal: str = ""  # PROPOSAL_ANNOTATION (hex), canary only
    stopping: str = ""  # STOPPING_ANNOTATION: a stop was begun for this reason

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
    image: str
    ready: bool
    phase: str = "Running"
    waiting_reason: str = ""  # the first container's state.waiting.reason
    created_ms: int = 0


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
    """Server-side apply ``<name>-canary``: the stable's pod template with the candidate image."""

    namespace: str
    name: str  # the target (stable) Deployment
    replicas: int
    image: str
    proposal: bytes
    marker: str


@dataclass(frozen=True)
class ScaleStable:
    namespace: str
    name: str
    replicas: int
    image: str  # the image the log implies for the stable (restores a hand-set image)
    marker: str


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
    replicas: int
    image: str
    marker: str


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
) -> list[Action]:
    """Every action needed now, target by target (targets without an observation are skipped)."""
    cfg = config or PlannerConfig()
    by_target: dict[Target, list[ProposalState]] = {}
    for p in state.ledger.proposals.values():
        by_target.setdefault(p.proposal.target, []).append(p)
    actions: list[Action] = []
    for target in sorted(observed, key=lambda t: (t.namespace, t.deployment)):
        proposals = sorted(by_target.get(target, []), key=lambda p: p.seq)
        if proposals:
            actions.extend(_Target(state, target, observed[target], now_ms, cfg).plan(proposals))
    return actions


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

    # -- entry point -------------------------------------------------------------------

    def plan(self, proposals: list[ProposalState]) -> list[Action]:
        stops = self._unrecorded_stops(proposals)
        active = next((p for p in proposals if p.phase in ACTIVE_PHASES), None)
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
            return self._finish(proposals)
        return self._maybe_start(proposals)

    def _unrecorded_stops(self, proposals: list[ProposalState]) -> dict[bytes, EmergencyStop]:
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

    # -- observed state as recorded on the ledger --------------------------------------

    def _observed_state(self) -> ObservedState:
        stable, canary = self.obs.stable, self.obs.canary
        return ObservedState(
            stable_replicas=stable.replicas if stable else 0,
            canary_replicas=canary.replicas if canary else 0,
            canary_ready=canary.ready_replicas if canary else 0,
            stable_image=stable.image if stable else "",
            canary_image=canary.image if canary else "",
        )

    def _record(
        self, p: ProposalState, step: int, weight: int, phase: str, reason: str
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
            self._observed_state(),
            step_event_id(p.entry_hash, step, phase, attempt),
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

    def _maybe_start(self, proposals: list[ProposalState]) -> list[Action]:
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
        if stable.replicas < 1:
            return [Wait(p.entry_hash, f"Deployment {self.name} has no replicas to shift")]
        policy = self.ls.policy_of(p)
        weight = policy.plan[0].weight
        total = stable.replicas
        c = canary_replicas(total, weight)
        m = marker(p.entry_hash, rollbacks(p), 0)
        approvers = ", ".join(self.ls.valid_approvers(p))
        return [
            self._record(p, 0, weight, "STARTED", f"approved by {approvers}"),
            ApplyCanary(self.ns, self.name, c, p.proposal.candidate.image, p.entry_hash, m),
            ScaleStable(self.ns, self.name, total - c, stable.image, m),
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
                p, record.total_replicas, record.stable_image, reason, cause_seq, kill
            )

        total, stable_image = record.total_replicas, record.stable_image
        want_c = canary_replicas(total, cur.weight)
        want_s = total - want_c
        m = marker(p.entry_hash, rollbacks(p), cur.step)
        candidate = p.proposal.candidate.image
        stable, canary = self.obs.stable, self.obs.canary
        assert stable is not None

        applies: list[Action] = []
        drift: list[str] = []
        if canary is None or canary.marker != m:
            applies.append(ApplyCanary(self.ns, self.name, want_c, candidate, p.entry_hash, m))
        elif canary.replicas != want_c or canary.image != candidate:
            drift.append(_describe(canary_name(self.name), canary, want_c, candidate))
            applies.append(ApplyCanary(self.ns, self.name, want_c, candidate, p.entry_hash, m))
        if stable.marker != m:
            applies.append(ScaleStable(self.ns, self.name, want_s, stable_image, m))
        elif stable.replicas != want_s or stable.image != stable_image:
            drift.append(_describe(self.name, stable, want_s, stable_image))
            applies.append(ScaleStable(self.ns, self.name, want_s, stable_image, m))
        if drift:
            note = "; ".join(drift)
            return [self._record(p, cur.step, cur.weight, "DRIFT_CORRECTED", note), *applies]
        if applies:
            return [*applies, Wait(p.entry_hash, f"applying step {cur.step} ({cur.weight}%)")]

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
        held = self.now - started.at
        if held < plan_step.hold_seconds * 1000:
            left = plan_step.hold_seconds * 1000 - held
            return [Wait(p.entry_hash, f"holding step {cur.step} for {left / 1000:.1f}s more")]
        if plan_step.health_gate:
            report = p.health.get(started.step)
            if report is None or report.seq < started.seq or not report.healthy:
                return [Wait(p.entry_hash, f"step {cur.step} waits for a healthy report")]
        if cur.step + 1 < len(plan):
            nxt, weight = cur.step + 1, plan[cur.step + 1].weight
            c = canary_replicas(total, weight)
            m2 = marker(p.entry_hash, rollbacks(p), nxt)
            return [
                self._record(p, nxt, weight, "ADVANCED", f"step {cur.step} held and healthy"),
                ApplyCanary(self.ns, self.name, c, candidate, p.entry_hash, m2),
                ScaleStable(self.ns, self.name, total - c, stable_image, m2),
            ]
        return [
            self._record(p, cur.step, 100, "PROMOTED", "every step of the plan passed"),
            Promote(
                self.ns, self.name, total, candidate, marker(p.entry_hash, rollbacks(p), "promoted")
            ),
        ]

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
        failing = self._failing_pod(p)
        if failing is not None:
            return failing, -1
        canary = self.obs.canary
        if canary is not None and canary.stopping and canary.proposal == p.entry_hash.hex():
            return canary.stopping, -1  # a stop begun before a restart: finish it
        return None

    def _failing_pod(self, p: ProposalState) -> str | None:
        candidate = p.proposal.candidate.image
        for pod in sorted(self.obs.canary_pods, key=lambda x: x.name):
            if pod.image != candidate or pod.ready:
                continue
            if pod.waiting_reason in FAILING_REASONS:
                return f"canary pod {pod.name} is {pod.waiting_reason}"
            if pod.phase == "Failed":
                return f"canary pod {pod.name} failed"
            if self.now - pod.created_ms > self.cfg.not_ready_grace_ms:
                grace = self.cfg.not_ready_grace_ms / 1000
                return f"canary pod {pod.name} not ready after {grace:.0f}s"
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
        out: list[Action] = []
        if canary is not None and (canary.replicas != 0 or not canary.stopping):
            out.append(StopCanary(self.ns, self.name, reason, cause_seq))
        if stable.replicas != total or stable.image != stable_image:
            out.append(
                ScaleStable(
                    self.ns,
                    self.name,
                    total,
                    stable_image,
                    marker(p.entry_hash, rollbacks(p), "rolled-back"),
                )
            )
        if kill is not None:
            out.append(kill)
        out.append(self._record(p, cur.step, 0, "ROLLED_BACK", reason))
        if canary is not None:
            out.append(RemoveCanary(self.ns, self.name))
        return out

    # -- finishing a promotion or a rollback after the record ---------------------------

    def _finish(self, proposals: list[ProposalState]) -> list[Action]:
        canary, stable = self.obs.canary, self.obs.stable
        assert canary is not None and stable is not None
        owner = next((p for p in proposals if p.entry_hash.hex() == canary.proposal), None)
        if owner is None:
            return []  # a canary the log does not explain: not ours to touch
        record = self.state.rollouts.get(owner.entry_hash)
        total = record.total_replicas if record else stable.replicas + canary.replicas
        if owner.phase == "PROMOTED":
            candidate = owner.proposal.candidate.image
            if stable.image != candidate or stable.replicas != total:
                m = marker(owner.entry_hash, rollbacks(owner), "promoted")
                return [Promote(self.ns, self.name, total, candidate, m)]
            if not stable.settled(total):
                return [
                    Wait(
                        owner.entry_hash,
                        f"promoted; stable pods ready {stable.ready_replicas}/{total}",
                    )
                ]
            return [RemoveCanary(self.ns, self.name)]
        out: list[Action] = []
        stable_image = record.stable_image if record else stable.image
        if canary.replicas != 0:
            out.append(StopCanary(self.ns, self.name, canary.stopping or "rollout ended"))
        if stable.replicas != total or stable.image != stable_image:
            out.append(
                ScaleStable(
                    self.ns,
                    self.name,
                    total,
                    stable_image,
                    marker(owner.entry_hash, rollbacks(owner), "rolled-back"),
                )
            )
        out.append(RemoveCanary(self.ns, self.name))
        return out


def _describe(name: str, live: ObservedDeployment, replicas: int, image: str) -> str:
    parts = []
    if live.replicas != replicas:
        parts.append(f"replicas {live.replicas}, expected {replicas}")
    if live.image != image:
        parts.append(f"image {live.image}, expected {image}")
    return f"{name}: " + ", ".join(parts)
