"""Step 11 (optional): the live cluster against what the log implies.

For every proposal whose last rollout record is PROMOTED, the Deployment ``<name>`` must run
the candidate image and no ``<name>-canary`` may remain; for an active rollout at weight w,
``<name>-canary`` must run the candidate image. Read-only: the auditor never writes.

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


def drift_findings(report: Report, read: ReadDeployment) -> list[Finding]:
    last: dict[bytes, tuple[int, str, int]] = {}
    for e in report.timeline:
        if e.kind == "step" and e.proposal is not None and e.label != "DRIFT_CORRECTED":
            last[e.proposal] = (e.seq, e.label, e.weight or 0)
    out: list[Finding] = []
    for h, (seq, phase, weight) in last.items():
        label = report.proposals.get(h.hex(), "")
        if " → " not in label:
            continue
        target, image = label.split(" → ", 1)
        ns, name = target.split("/", 1)
        stable, canary = read(ns, name), read(ns, name + CANARY_SUFFIX)
        if phase == "PROMOTED":
            live = stable.image if stable is not None else None
            if live != image:
                out.append(
                    Finding(
                        "DRIFT",
                        seq,
                        f"{target} was promoted but runs another image",
                        str(live),
                        image,
                    )
                )
            if canary is not None:
                out.append(
                    Finding(
                        "DRIFT",
                        seq,
                        f"{target}-canary remains after promotion",
                        "present",
                        "absent",
                    )
                )
        elif phase in ("STARTED", "ADVANCED", "PAUSED") and weight > 0:
            live = canary.image if canary is not None else None
            if live != image:
                out.append(
                    Finding(
                        "DRIFT",
                        seq,
                        f"{target}-canary does not run the candidate",
                        str(live),
                        image,
                    )
                )
    return out
