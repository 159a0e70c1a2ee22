"""Step 11 (optional): the live cluster against what the log implies.

Per target, the cluster must match its latest rollout: while one is active at weight w > 0,
``<name>-canary`` runs its candidate image; otherwise, after the newest promotion, the
Deployment ``<name>`` runs that candidate at the N replicas the newest start on the target
recorded, and no ``<name>-canary`` remains. Earlier rollouts of the target are history, not expectations.
Read-only: the auditor never writes.

The comparison (:func:`drift_findings`) takes the cluster as a function reading one
Deployment, so it is tested without a cluster; :func:`check_drift` gives it the live one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.findings import Finding, Report
from audit.state import ACTIVE

CANARY_SUFFIX = "-canary"


@dataclass(frozen=True)
class LiveDeployment:
    """What the drift check reads of a Deployment."""

    image: str  # the first container's image
    replicas: int  # spec.replicas


# (namespace, name) -> the Deployment, or None when it does not exist
ReadDeployment = Callable[[str, str], LiveDeployment | None]


def check_drift(report: Report, kubeconfig: Path) -> list[Finding]:
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException

        config.load_kube_config(config_file=str(kubeconfig))
        apps = client.AppsV1Api()
    except Exception as exc:
        raise AuditError(f"cannot load the kubeconfig {kubeconfig}: {exc}") from exc

    def read(ns: str, name: str) -> LiveDeployment | None:
        try:
            # The client types every field Optional; a Deployment read from the API has them.
            d: Any = apps.read_namespaced_deployment(name, ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise AuditError(f"reading deployment {ns}/{name}: {exc.reason}") from exc
        return LiveDeployment(d.spec.template.spec.containers[0].image, d.spec.replicas or 0)

    return drift_findings(report, read)


@dataclass
class _Rollout:
    """A proposal's rollout as its step records tell it."""

    target: str  # namespace/name
    image: str  # the candidate
    seq: int = 0  # its last step record (drift corrections aside)
    phase: str = ""
    weight: int = 0


def drift_findings(report: Report, read: ReadDeployment) -> list[Finding]:
    """Findings where the cluster differs from the state the latest rollout of each target
    implies: a rollout in progress (its canary runs the candidate), else the newest promotion
    (the Deployment runs its candidate at the N replicas its newest start recorded, and no
    canary remains). Older rollouts of a target are history: the cluster is not expected to
    match them any more."""
    rollouts: dict[bytes, _Rollout] = {}
    replicas: dict[str, int] = {}  # target -> N recorded by its newest STARTED
    for e in report.timeline:
        if e.kind != "step" or e.proposal is None or e.label == "DRIFT_CORRECTED":
            continue  # a correction keeps the rollout where it was
        r = rollouts.get(e.proposal)
        if r is None:
            label = report.proposals.get(e.proposal.hex(), "")
            if " → " not in label:
                continue
            target, image = label.split(" → ", 1)
            r = rollouts[e.proposal] = _Rollout(target, image)
        r.seq, r.phase, r.weight = e.seq, e.label, e.weight or 0
        if e.total_replicas is not None:
            # Every start records N and every ending (promotion or rollback) gives it back to
            # the Deployment, so the newest start on the target says how many replicas it has.
            replicas[r.target] = e.total_replicas
    latest: dict[str, _Rollout] = {}
    for r in sorted(rollouts.values(), key=lambda r: r.seq):
        if r.phase in ACTIVE:
            latest[r.target] = r  # one active rollout per target; the newest if a log has more
        elif r.phase == "PROMOTED" and latest.get(r.target, r).phase not in ACTIVE:
            latest[r.target] = r
    out: list[Finding] = []
    for target, r in sorted(latest.items()):
        ns, name = target.split("/", 1)
        if r.phase == "PROMOTED":
            stable, canary = read(ns, name), read(ns, name + CANARY_SUFFIX)
            out += _promoted(r, replicas.get(target), stable, canary)
        elif r.weight > 0:
            out += _in_progress(r, read(ns, name + CANARY_SUFFIX))
    return out


def _promoted(
    r: _Rollout,
    replicas: int | None,
    stable: LiveDeployment | None,
    canary: LiveDeployment | None,
) -> list[Finding]:
    out = []
    live = stable.image if stable is not None else None
    if live != r.image:
        out.append(
            Finding(
                "DRIFT",
                r.seq,
                f"{r.target} was promoted but runs another image",
                str(live),
                r.image,
            )
        )
    elif stable is not None and replicas is not None and stable.replicas != replicas:
        out.append(
            Finding(
                "DRIFT",
                r.seq,
                f"{r.target} was promoted but runs another number of replicas",
                str(stable.replicas),
                str(replicas),
            )
        )
    if canary is not None:
        out.append(
            Finding(
                "DRIFT",
                r.seq,
                f"{r.target}-canary remains after promotion",
                "present",
                "absent",
            )
        )
    return out


def _in_progress(r: _Rollout, canary: LiveDeployment | None) -> list[Finding]:
    # Only the image: the canary's replicas change with every step, after the step's record.
    live = canary.image if canary is not None else None
    if live == r.image:
        return []
    return [
        Finding(
            "DRIFT",
            r.seq,
            f"{r.target}-canary does not run the candidate",
            str(live),
            r.image,
        )
    ]
