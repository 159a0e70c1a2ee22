"""What a rollout and its cluster objects look like to ``kubectl steward``, whatever the source.

Plain frozen rows: the sources (:mod:`controller.kubectl.sources`) fill them from the
ControllerService, the ledger or the cluster, and the renderer (:mod:`controller.kubectl.render`)
draws them without any I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from controller.view import DISPLAY_PHASES

DONE_OK, DONE_BAD = ("Promoted",), ("RolledBack", "Killed")  # display phases that end a rollout


@dataclass(frozen=True)
class CheckRow:
    """A check's latest evidence on the ledger: its verdict (recomputed when folded), the
    sampled values (None where inconclusive) and why."""

    name: str
    step: int
    verdict: str
    values: tuple[float | None, ...]
    why: str
    seq: int


@dataclass(frozen=True)
class RolloutInfo:
    name: str  # the ModelRollout name: <deployment>-<proposal hex[:10]>
    namespace: str
    deployment: str
    proposal: str  # full hex when known (a ModelRollout's spec.proposal is full)
    phase: str  # display phase: Pending, Progressing, Paused, Promoted, RolledBack, Killed
    step: int
    weight: int
    approvals: tuple[str, ...] = ()  # principals (empty when only a count is known)
    approval_count: int = 0
    approvals_required: int | None = None
    steps: int | None = None  # length of the policy's plan, when the ledger is at hand
    candidate_image: str = ""
    stable_image: str = ""
    message: str = ""
    kill_switch: str = ""
    last_seq: int | None = None
    source: str = ""  # controller, ledger or cluster
    created: dt.datetime | None = None
    checks: tuple[CheckRow, ...] = ()  # from the ledger, when it is at hand


def object_name(deployment: str, proposal_hex: str) -> str:
    return f"{deployment}-{proposal_hex[:10]}"


def display_phase(ledger_phase: str, kill_switch: bool, message: str = "") -> str:
    phase = DISPLAY_PHASES.get(ledger_phase, ledger_phase.title())
    if ledger_phase == "ROLLED_BACK" and (
        kill_switch or "kill switch" in message or "emergency stop" in message
    ):
        return "Killed"
    return phase


# The cluster side, as plain rows (so rendering is pure)


@dataclass(frozen=True)
class PodRow:
    name: str
    owner: str  # ReplicaSet name
    phase: str
    ready: bool
    containers_ready: int
    containers: int
    restarts: int = 0
    reason: str = ""  # a waiting reason such as CrashLoopBackOff
    created: dt.datetime | None = None
    deleting: bool = False


@dataclass(frozen=True)
class ReplicaSetRow:
    name: str
    owner: str  # Deployment name
    revision: str
    replicas: int
    ready: int
    image: str
    created: dt.datetime | None = None


@dataclass(frozen=True)
class DeploymentRow:
    name: str
    track: str  # stable or canary
    replicas: int
    ready: int
    updated: int
    available: int
    image: str
    created: dt.datetime | None = None


@dataclass(frozen=True)
class RouteRow:
    """Traffic mode: an HTTPRoute the controller writes for the target, and the weight it gives
    each Service in its first rule (the controller writes every rule alike)."""

    name: str
    backends: tuple[tuple[str, str, int], ...]  # (Service, track: stable/canary/"", weight)

    @property
    def canary_percent(self) -> int | None:
        """The canary's share of the route's weight now, in percent (None: no weight at all)."""
        total = sum(w for _, _, w in self.backends)
        canary = sum(w for _, track, w in self.backends if track == "canary")
        return None if total == 0 else round(100 * canary / total)


@dataclass
class ClusterView:
    deployments: list[DeploymentRow] = field(default_factory=list)
    routes: list[RouteRow] = field(default_factory=list)
    replicasets: list[ReplicaSetRow] = field(default_factory=list)
    pods: list[PodRow] = field(default_factory=list)
    error: str = ""  # why the cluster could not be read (the header still prints)
