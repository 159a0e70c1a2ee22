"""``kubectl steward``'s output: the rollout header, the Deployment/ReplicaSet/Pod tree, the
list table and the history lines. Pure: rows in, text out (no I/O, no clock: ``now`` is given).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.kubectl.rows import ClusterView, DeploymentRow, PodRow, RolloutInfo
from ledger.names import printable

ICONS = {
    "Healthy": "✔",
    "Running": "✔",
    "Promoted": "✔",
    "Progressing": "◌",
    "Pending": "◌",
    "Paused": "‖",
    "ScaledDown": "•",
    "Terminating": "•",
    "Degraded": "✖",
    "Failed": "✖",
    "RolledBack": "↺",
    "Killed": "✖",
    "Error": "✖",
}


def age(created: dt.datetime | None, now: dt.datetime) -> str:
    if created is None:
        return ""
    s = max(0, int((now - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def status_text(status: str) -> str:
    from controller.planner import FAILING_REASONS

    icon = ICONS.get(status) or (
        "✖" if status in FAILING_REASONS or status.endswith("Error") else "◌"
    )
    return f"{icon} {status}"


def actual_weight(cluster: ClusterView) -> int | None:
    """The canary's share of the ready pods, as the cluster serves traffic now."""
    ready = {d.track: d.ready for d in cluster.deployments}
    total = sum(ready.values())
    return (
        None
        if not cluster.deployments or total == 0
        else round(100 * ready.get("canary", 0) / total)
    )


def render_header(info: RolloutInfo, cluster: ClusterView) -> list[str]:
    rows: list[tuple[str, str]] = [
        ("Name", info.name),
        ("Namespace", info.namespace),
        ("Target", f"Deployment {info.deployment}"),
        ("Proposal", info.proposal or "?"),
        ("Status", status_text(info.phase)),
    ]
    if info.message:
        rows.append(("Message", info.message))
    rows.append(("Step", f"{info.step}/{info.steps}" if info.steps else str(info.step)))
    rows.append(("SetWeight", f"{info.weight}%"))
    # Traffic mode: the weight is what the HTTPRoute gives the canary Service, per route;
    # replica mode: the canary's part of the ready pods.
    routed = [(r, r.canary_percent) for r in cluster.routes]
    actual = next((pct for _, pct in routed if pct is not None), None)
    if actual is None and not routed:
        actual = actual_weight(cluster)
    if actual is not None:
        rows.append(("ActualWeight", f"{actual}%"))
    for i, (route, _) in enumerate(routed):
        services = ", ".join(
            f"Service {name}{f' ({track})' if track else ''} {w}"
            for name, track, w in route.backends
        )
        rows.append(
            ("Traffic" if i == 0 else "", f"HTTPRoute {route.name}: {services or '(none)'}")
        )
    stable = info.stable_image or next(
        (d.image for d in cluster.deployments if d.track == "stable"), ""
    )
    images = [f"{stable} (stable)"] if stable else []
    if info.candidate_image:
        images.append(f"{info.candidate_image} (canary)")
    for i, image in enumerate(images or ["?"]):
        rows.append(("Images" if i == 0 else "", image))
    if cluster.deployments:
        by = {d.track: d for d in cluster.deployments}
        parts = [f"{t} {by[t].ready}/{by[t].replicas}" for t in ("stable", "canary") if t in by]
        desired = sum(d.replicas for d in cluster.deployments)
        ready = sum(d.ready for d in cluster.deployments)
        rows.append(("Replicas", f"{ready}/{desired} ready ({', '.join(parts)})"))
    need = f"/{info.approvals_required}" if info.approvals_required is not None else ""
    who = f" ({', '.join(info.approvals)})" if info.approvals else ""
    rows.append(("Approvals", f"{info.approval_count}{need}{who}"))
    rows.append(("Kill switch", info.kill_switch or "none"))
    for i, c in enumerate(info.checks):
        values = ", ".join("-" if v is None else f"{v:g}" for v in c.values[-6:])
        more = "…, " if len(c.values) > 6 else ""
        rows.append(
            (
                "Checks" if i == 0 else "",
                f"{c.name} {c.verdict} at step {c.step} [{more}{values}] ({c.why}; seq {c.seq})",
            )
        )
    if info.last_seq is not None:
        rows.append(("Last seq", str(info.last_seq)))
    rows.append(("Source", info.source))
    width = max(len(k) for k, _ in rows) + 2
    # Values come from the log and the cluster: escaped, so none can forge a line.
    lines = [f"{(k + ':') if k else '':<{width}}{printable(v)}".rstrip() for k, v in rows]
    if cluster.error:
        lines.append(f"{'Cluster:':<{width}}{printable(cluster.error)}")
    return lines


@dataclass
class Node:
    icon: str
    name: str
    kind: str
    status: str
    age: str
    info: str
    children: list[Node] = field(default_factory=list)


def _deployment_status(d: DeploymentRow) -> str:
    if d.replicas == 0:
        return "ScaledDown"
    if d.ready >= d.replicas and d.updated >= d.replicas:
        return "Healthy"
    return "Progressing"


def _pod_status(p: PodRow) -> str:
    if p.deleting:
        return "Terminating"
    if p.reason:
        return p.reason
    if p.phase == "Running" and not p.ready:
        return "Progressing"
    return p.phase


def _revision(text: str) -> int:
    """A ReplicaSet's revision annotation as a number for sorting; 0 when it is none (anyone who
    may edit a ReplicaSet writes it, and "²" is a digit to str.isdigit() but not to int())."""
    return int(text) if text.isascii() and text.isdigit() else 0


def build_tree(info: RolloutInfo, cluster: ClusterView, now: dt.datetime) -> Node:
    extra = f"step {info.step}{'/' + str(info.steps) if info.steps else ''}, weight {info.weight}%"
    root = Node("⟳", info.name, "ModelRollout", info.phase, age(info.created, now), extra)
    for d in sorted(cluster.deployments, key=lambda d: d.track != "stable"):
        dn = Node(
            "◫",
            d.name,
            "Deployment",
            _deployment_status(d),
            age(d.created, now),
            f"{d.track}, {d.ready}/{d.replicas} ready",
        )
        sets = [r for r in cluster.replicasets if r.owner == d.name]
        # Like `kubectl argo rollouts get`: every ReplicaSet with pods, plus the newest one.
        sets.sort(key=lambda r: _revision(r.revision), reverse=True)
        shown = [
            r
            for i, r in enumerate(sets)
            if i == 0 or r.replicas > 0 or any(p.owner == r.name for p in cluster.pods)
        ]
        for r in shown:
            status = (
                "ScaledDown"
                if r.replicas == 0
                else ("Healthy" if r.ready >= r.replicas else "Progressing")
            )
            rn = Node(
                "⧉",
                r.name,
                "ReplicaSet",
                status,
                age(r.created, now),
                f"rev:{r.revision or '?'}, {r.image}",
            )
            for p in sorted((p for p in cluster.pods if p.owner == r.name), key=lambda p: p.name):
                restarts = f", restarts:{p.restarts}" if p.restarts else ""
                rn.children.append(
                    Node(
                        "□",
                        p.name,
                        "Pod",
                        _pod_status(p),
                        age(p.created, now),
                        f"ready:{p.containers_ready}/{p.containers}{restarts}",
                    )
                )
            dn.children.append(rn)
        root.children.append(dn)
    return root


def render_tree(root: Node) -> list[str]:
    rows: list[tuple[str, Node]] = []

    def walk(n: Node, prefix: str, last: bool, top: bool) -> None:
        lead = "" if top else prefix + ("└──" if last else "├──")
        rows.append((printable(f"{lead}{n.icon} {n.name}"), n))
        child_prefix = "" if top else prefix + ("   " if last else "│  ")
        for i, c in enumerate(n.children):
            walk(c, child_prefix, i == len(n.children) - 1, False)

    walk(root, "", True, True)
    w_name = max(len("NAME"), *(len(label) for label, _ in rows)) + 2
    w_kind = max(len("KIND"), *(len(n.kind) for _, n in rows)) + 2
    w_status = max(len("STATUS"), *(len(status_text(n.status)) for _, n in rows)) + 2
    w_age = max(len("AGE"), *(len(n.age) for _, n in rows)) + 2
    out = [f"{'NAME':<{w_name}}{'KIND':<{w_kind}}{'STATUS':<{w_status}}{'AGE':<{w_age}}INFO"]
    for label, n in rows:
        out.append(
            printable(
                f"{label:<{w_name}}{n.kind:<{w_kind}}{status_text(n.status):<{w_status}}"
                f"{n.age:<{w_age}}{n.info}"
            ).rstrip()
        )
    return out


def render_get(info: RolloutInfo, cluster: ClusterView, now: dt.datetime) -> str:
    return "\n".join(
        [*render_header(info, cluster), "", *render_tree(build_tree(info, cluster, now))]
    )


def render_list(rollouts: Sequence[RolloutInfo], *, all_namespaces: bool) -> str:
    head = ["NAMESPACE"] if all_namespaces else []
    head += ["NAME", "PROPOSAL", "TARGET", "STATUS", "STEP", "WEIGHT", "APPROVALS", "CANDIDATE"]
    rows = [head]
    for r in rollouts:
        need = f"/{r.approvals_required}" if r.approvals_required is not None else ""
        step = f"{r.step}/{r.steps}" if r.steps else str(r.step)
        row = [r.namespace] if all_namespaces else []
        row += [
            r.name,
            r.proposal[:12],
            r.deployment,
            r.phase,
            step,
            f"{r.weight}%",
            f"{r.approval_count}{need}",
            r.candidate_image,
        ]
        rows.append([printable(c) for c in row])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def relevant(entry: Any, proposal: bytes, namespace: str, deployment: str) -> bool:
    """Does this log entry belong to the proposal's story (for `history`)?"""
    from ledger.formats import KillSwitchEngaged, KillSwitchReleased, payload_hashes

    p = entry.body.payload
    if entry.leaf_hash == proposal or proposal in payload_hashes(p):
        return True
    if isinstance(p, KillSwitchEngaged | KillSwitchReleased):
        s = p.scope
        return s.kind == "GLOBAL" or (
            s.kind == "TARGET" and (s.namespace, s.deployment) == (namespace, deployment)
        )
    return False


def history_lines(
    entries: Sequence[Any], proposal: bytes, namespace: str, deployment: str
) -> list[str]:
    """ledger.timeline's lines for the whole log (each needs the state before it), filtered."""
    from ledger.timeline import lines

    return [
        line
        for e, line in zip(entries, lines(entries), strict=True)
        if relevant(e, proposal, namespace, deployment)
    ]
