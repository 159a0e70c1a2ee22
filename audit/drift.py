"""Step 11 (optional): the live cluster against what the log implies.

For every proposal whose last rollout record is PROMOTED, the Deployment ``<name>`` must run
the candidate image and no ``<name>-canary`` may remain; for an active rollout at weight w,
``<name>-canary`` must run the candidate image. Read-only: the auditor never writes.
"""

from __future__ import annotations

from pathlib import Path

from audit.errors import AuditError
from audit.findings import Finding, Report


def check_drift(report: Report, kubeconfig: Path) -> list[Finding]:
    try:
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException

        config.load_kube_config(config_file=str(kubeconfig))
        apps = client.AppsV1Api()
    except Exception as exc:
        raise AuditError(f"cannot load the kubeconfig {kubeconfig}: {exc}") from exc
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

        def get(n: str, ns: str = ns) -> object | None:
            try:
                return apps.read_namespaced_deployment(n, ns)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise AuditError(f"reading deployment {ns}/{n}: {exc.reason}") from exc

        stable, canary = get(name), get(f"{name}-canary")
        if phase == "PROMOTED":
            live = stable.spec.template.spec.containers[0].image if stable is not None else None  # type: ignore[attr-defined]
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
            live = canary.spec.template.spec.containers[0].image if canary is not None else None  # type: ignore[attr-defined]
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
