"""``kubectl steward``: watch and govern Steward rollouts from kubectl.

kubectl runs any ``kubectl-<name>`` executable on PATH as ``kubectl <name>``; this is the
``kubectl-steward`` console script. Reads come from, in order of preference:

1. ControllerService (``--controller`` / ``$STEWARD_CONTROLLER``): what the controller sees,
   with why a rollout waits;
2. the ledger (``--server`` / ``$STEWARD_SERVER``): the log read and verified here, folded by
   the controller's own code (``ControllerState``), so phase, step, weight and valid approvals
   are exactly what the controller derives;
3. the ``ModelRollout`` objects the controller mirrors into the cluster.

The Deployments/ReplicaSets/Pods tree always comes from the cluster (``--kubeconfig``,
``--context``, ``-n``, as kubectl). Signing commands (approve, reject, kill, release) run the
``steward`` CLI's own code paths (``ledger.cli.cmd_decide`` / ``cmd_kill``) with the user's key
file: the key never leaves the machine and the ledger checks every rule again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from controller.view import DISPLAY_PHASES
from ledger.cli import CliError
from ledger.errors import FormatError, KeyError_, StewardError

PROG = "kubectl steward"
GROUP, VERSION, PLURAL = "steward.dev", "v1alpha1", "modelrollouts"
CANARY_SUFFIX = "-canary"
DONE_OK, DONE_BAD = ("Promoted",), ("RolledBack", "Killed")

EPILOG = """\
where rollouts come from:
  --controller HOST:PORT  ControllerService of steward-controller ($STEWARD_CONTROLLER)
  --server HOST:PORT      the ledger, verified and folded locally ($STEWARD_SERVER)
  (neither)               the ModelRollout objects in the cluster
  ROLLOUT is a ModelRollout name (<deployment>-<proposal hash[:10]>) or 6+ hex digits
  of the proposal hash.

examples:
  kubectl steward list -A
  kubectl steward get model-server-3fa2c1d4e5 -n models
  kubectl steward get 3fa2c1 -n models -w                # redraw as it changes
  kubectl steward status 3fa2c1 --timeout 10m            # 0 promoted, 1 rolled back, 2 timeout
  kubectl steward history 3fa2c1                         # who proposed, evaluated, approved...
  kubectl steward approve 3fa2c1 --key alice.pem --comment "evals look right"
  kubectl steward reject 3fa2c1 --key bob.pem
  kubectl steward kill 3fa2c1 --reason "error spike" --key oncall.pem
  kubectl steward kill --target models/model-server --reason "error spike" --key oncall.pem
  kubectl steward kill --all --reason "incident 4711" --key oncall.pem
  kubectl steward release --target models/model-server --key alice.pem --key bob.pem
  kubectl steward release --all --key alice.pem --out release.evt   # then: steward sign/submit
  kubectl steward verify --trust-root trust.json

environment:
  STEWARD_SERVER, STEWARD_CONTROLLER   default --server and --controller
  STEWARD_KEY_PASSPHRASE               passphrase of encrypted key files (never a flag)
  KUBECONFIG                           as for kubectl
"""


# --------------------------------------------------------------------------------------------
# What a rollout looks like to this tool, whatever the source


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


def object_name(deployment: str, proposal_hex: str) -> str:
    return f"{deployment}-{proposal_hex[:10]}"


def display_phase(ledger_phase: str, kill_switch: bool, message: str = "") -> str:
    phase = DISPLAY_PHASES.get(ledger_phase, ledger_phase.title())
    if ledger_phase == "ROLLED_BACK" and (kill_switch or "kill switch" in message
                                          or "emergency stop" in message):
        return "Killed"
    return phase


def from_view(v: Any, steps: int | None = None) -> RolloutInfo:
    """From a controller.view.RolloutView (the ledger fold done here)."""
    return RolloutInfo(
        name=v.object_name, namespace=v.namespace, deployment=v.deployment,
        proposal=v.proposal_hex, phase=v.display_phase, step=v.step, weight=v.weight,
        approvals=tuple(v.approvals), approval_count=len(v.approvals),
        approvals_required=v.approvals_required, steps=steps,
        candidate_image=v.candidate_image, stable_image=v.stable_image, message=v.message,
        kill_switch=v.kill_switch, last_seq=v.last_seq, source="ledger",
    )


def from_message(m: Any) -> RolloutInfo:
    """From a steward.v1.Rollout (ControllerService)."""
    h = bytes(m.proposal).hex()
    return RolloutInfo(
        name=object_name(m.deployment, h), namespace=m.namespace, deployment=m.deployment,
        proposal=h, phase=display_phase(m.phase, m.kill_switch, m.message), step=m.step,
        weight=m.weight, approvals=tuple(m.approvals), approval_count=len(m.approvals),
        approvals_required=m.approvals_required, candidate_image=m.candidate_image,
        stable_image=m.stable_image, message=m.message,
        kill_switch="engaged" if m.kill_switch else "", last_seq=m.last_seq, source="controller",
    )


def from_object(obj: dict[str, Any]) -> RolloutInfo:
    """From a ModelRollout object (the mirror: counts only, no principals)."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    created = meta.get("creationTimestamp")
    return RolloutInfo(
        name=meta.get("name", ""), namespace=meta.get("namespace", ""),
        deployment=spec.get("target", ""), proposal=spec.get("proposal", ""),
        phase=status.get("phase") or "Pending", step=int(status.get("step") or 0),
        weight=int(status.get("weight") or 0), approval_count=int(status.get("approvals") or 0),
        candidate_image=spec.get("candidateImage", ""), message=status.get("message") or "",
        kill_switch="engaged" if (status.get("message") or "").startswith("kill switch") else "",
        last_seq=status.get("lastSeq"), source="cluster", created=_parse_ts(created),
    )


def _parse_ts(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str) and value:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


# --------------------------------------------------------------------------------------------
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


@dataclass
class ClusterView:
    deployments: list[DeploymentRow] = field(default_factory=list)
    replicasets: list[ReplicaSetRow] = field(default_factory=list)
    pods: list[PodRow] = field(default_factory=list)
    error: str = ""  # why the cluster could not be read (the header still prints)


def _owner(meta: Any) -> str:
    for ref in meta.owner_references or []:
        if ref.controller:
            return str(ref.name)
    return ""


def read_cluster(api: Any, namespace: str, deployment: str) -> ClusterView:
    from kubernetes import client

    # The client's models type every field Optional; these objects come from the API server.
    apps: Any = client.AppsV1Api(api)
    core: Any = client.CoreV1Api(api)
    names = {deployment: "stable", deployment + CANARY_SUFFIX: "canary"}
    view = ClusterView()
    for d in apps.list_namespaced_deployment(namespace).items:
        track = names.get(d.metadata.name)
        if track is None:
            continue
        st = d.status
        view.deployments.append(DeploymentRow(
            d.metadata.name, track, d.spec.replicas if d.spec.replicas is not None else 1,
            st.ready_replicas or 0, st.updated_replicas or 0, st.available_replicas or 0,
            d.spec.template.spec.containers[0].image, d.metadata.creation_timestamp))
    owners = {d.name for d in view.deployments}
    for rs in apps.list_namespaced_replica_set(namespace).items:
        owner = _owner(rs.metadata)
        if owner not in owners:
            continue
        view.replicasets.append(ReplicaSetRow(
            rs.metadata.name, owner,
            (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision", ""),
            rs.spec.replicas or 0, rs.status.ready_replicas or 0,
            rs.spec.template.spec.containers[0].image, rs.metadata.creation_timestamp))
    rs_names = {r.name for r in view.replicasets}
    for p in core.list_namespaced_pod(namespace).items:
        owner = _owner(p.metadata)
        if owner not in rs_names:
            continue
        st = p.status
        statuses = st.container_statuses or []
        reason = next((c.state.waiting.reason for c in statuses
                       if c.state and c.state.waiting and c.state.waiting.reason), "")
        ready = any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])
        view.pods.append(PodRow(
            p.metadata.name, owner, st.phase or "Unknown", ready,
            sum(1 for c in statuses if c.ready), len(p.spec.containers or []),
            sum(c.restart_count or 0 for c in statuses), reason, p.metadata.creation_timestamp,
            p.metadata.deletion_timestamp is not None))
    return view


# --------------------------------------------------------------------------------------------
# Rendering (pure)

ICONS = {"Healthy": "✔", "Running": "✔", "Promoted": "✔", "Progressing": "◌", "Pending": "◌",
         "Paused": "‖", "ScaledDown": "•", "Terminating": "•", "Degraded": "✖", "Failed": "✖",
         "RolledBack": "↺", "Killed": "✖", "Error": "✖"}


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

    icon = ICONS.get(status) or ("✖" if status in FAILING_REASONS or status.endswith("Error") else "◌")
    return f"{icon} {status}"


def actual_weight(cluster: ClusterView) -> int | None:
    """The canary's share of the ready pods, as the cluster serves traffic now."""
    ready = {d.track: d.ready for d in cluster.deployments}
    total = sum(ready.values())
    return None if not cluster.deployments or total == 0 else round(100 * ready.get("canary", 0) / total)


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
    actual = actual_weight(cluster)
    if actual is not None:
        rows.append(("ActualWeight", f"{actual}%"))
    stable = info.stable_image or next((d.image for d in cluster.deployments if d.track == "stable"), "")
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
    if info.last_seq is not None:
        rows.append(("Last seq", str(info.last_seq)))
    rows.append(("Source", info.source))
    width = max(len(k) for k, _ in rows) + 2
    lines = [f"{(k + ':') if k else '':<{width}}{v}".rstrip() for k, v in rows]
    if cluster.error:
        lines.append(f"{'Cluster:':<{width}}{cluster.error}")
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


def build_tree(info: RolloutInfo, cluster: ClusterView, now: dt.datetime) -> Node:
    extra = f"step {info.step}{'/' + str(info.steps) if info.steps else ''}, weight {info.weight}%"
    root = Node("⟳", info.name, "ModelRollout", info.phase, age(info.created, now), extra)
    for d in sorted(cluster.deployments, key=lambda d: d.track != "stable"):
        dn = Node("◫", d.name, "Deployment", _deployment_status(d), age(d.created, now),
                  f"{d.track}, {d.ready}/{d.replicas} ready")
        sets = [r for r in cluster.replicasets if r.owner == d.name]
        # Like `kubectl argo rollouts get`: every ReplicaSet with pods, plus the newest one.
        sets.sort(key=lambda r: int(r.revision) if r.revision.isdigit() else 0, reverse=True)
        shown = [r for i, r in enumerate(sets) if i == 0 or r.replicas > 0
                 or any(p.owner == r.name for p in cluster.pods)]
        for r in shown:
            status = "ScaledDown" if r.replicas == 0 else ("Healthy" if r.ready >= r.replicas else "Progressing")
            rn = Node("⧉", r.name, "ReplicaSet", status, age(r.created, now),
                      f"rev:{r.revision or '?'}, {r.image}")
            for p in sorted((p for p in cluster.pods if p.owner == r.name), key=lambda p: p.name):
                restarts = f", restarts:{p.restarts}" if p.restarts else ""
                rn.children.append(Node("□", p.name, "Pod", _pod_status(p), age(p.created, now),
                                        f"ready:{p.containers_ready}/{p.containers}{restarts}"))
            dn.children.append(rn)
        root.children.append(dn)
    return root


def render_tree(root: Node) -> list[str]:
    rows: list[tuple[str, Node]] = []

    def walk(n: Node, prefix: str, last: bool, top: bool) -> None:
        lead = "" if top else prefix + ("└──" if last else "├──")
        rows.append((f"{lead}{n.icon} {n.name}", n))
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
        out.append(f"{label:<{w_name}}{n.kind:<{w_kind}}{status_text(n.status):<{w_status}}"
                   f"{n.age:<{w_age}}{n.info}".rstrip())
    return out


def render_get(info: RolloutInfo, cluster: ClusterView, now: dt.datetime) -> str:
    return "\n".join([*render_header(info, cluster), "", *render_tree(build_tree(info, cluster, now))])


def render_list(rollouts: Sequence[RolloutInfo], *, all_namespaces: bool) -> str:
    head = ["NAMESPACE"] if all_namespaces else []
    head += ["NAME", "PROPOSAL", "TARGET", "STATUS", "STEP", "WEIGHT", "APPROVALS", "CANDIDATE"]
    rows = [head]
    for r in rollouts:
        need = f"/{r.approvals_required}" if r.approvals_required is not None else ""
        step = f"{r.step}/{r.steps}" if r.steps else str(r.step)
        row = [r.namespace] if all_namespaces else []
        row += [r.name, r.proposal[:12], r.deployment, r.phase, step, f"{r.weight}%",
                f"{r.approval_count}{need}", r.candidate_image]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def relevant(entry: Any, proposal: bytes, namespace: str, deployment: str) -> bool:
    """Does this log entry belong to the proposal's story (for `history`)?"""
    from ledger.formats import KillSwitchEngaged, KillSwitchReleased, payload_hashes

    p = entry.body.payload
    if entry.leaf_hash == proposal or proposal in payload_hashes(p):
        return True
    if isinstance(p, KillSwitchEngaged | KillSwitchReleased):
        s = p.scope
        return s.kind == "GLOBAL" or (s.kind == "TARGET" and (s.namespace, s.deployment) == (namespace, deployment))
    return False


def history_lines(entries: Sequence[Any], proposal: bytes, namespace: str, deployment: str) -> list[str]:
    """ledger.timeline's lines for the whole log (each needs the state before it), filtered."""
    from ledger.timeline import lines

    return [line for e, line in zip(entries, lines(entries), strict=True)
            if relevant(e, proposal, namespace, deployment)]


# --------------------------------------------------------------------------------------------
# Sources


class LedgerFold:
    """The log read from the ledger and folded here with the controller's own state code."""

    def __init__(self, client: Any) -> None:
        from controller.state import ControllerState

        self.client = client
        self.state = ControllerState()
        self.entries: list[Any] = []

    def refresh(self) -> bool:
        """Fold entries appended since the last call; True when there were any."""
        grew = False
        for e in self.client.read(self.state.ledger.size):
            violation = self.state.fold(e)
            if violation is not None:  # same stance as `steward status`: a bad log is an error
                raise CliError(f"the log does not verify at seq {e.seq}: {violation}")
            self.entries.append(e)
            grew = True
        return grew

    def rollouts(self) -> list[RolloutInfo]:
        from controller.view import rollout_views

        ls = self.state.ledger
        out = []
        for v in rollout_views(self.state, {}):
            p = ls.proposals[v.proposal]
            out.append(replace(from_view(v, len(ls.policy_of(p).plan)),
                               created=dt.datetime.fromtimestamp(
                                   self.entries[p.seq].entry.received_at / 1000, tz=dt.UTC)))
        return out


@dataclass
class Tool:
    args: argparse.Namespace
    _ledger: Any = None
    _fold: LedgerFold | None = None
    _channel: Any = None
    _kube: Any = None
    _kube_error: str = ""
    _kube_loaded: bool = False

    # -- endpoints ------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return self.args.server or os.environ.get("STEWARD_SERVER", "")

    @property
    def controller(self) -> str:
        return self.args.controller or os.environ.get("STEWARD_CONTROLLER", "")

    def ledger(self) -> Any:
        if self._ledger is None:
            if not self.server:
                raise CliError("this command needs the ledger: pass --server HOST:PORT or set STEWARD_SERVER")
            from ledger.client import LedgerClient

            self._ledger = LedgerClient(self.server, ca_file=self.args.tls_ca, cert_file=self.args.tls_cert,
                                        key_file=self.args.tls_key, timeout=self.args.request_timeout)
        return self._ledger

    def fold(self) -> LedgerFold:
        if self._fold is None:
            self._fold = LedgerFold(self.ledger())
        self._fold.refresh()
        return self._fold

    def stub(self) -> Any:
        import grpc

        from steward.v1 import controller_pb2_grpc

        if self._channel is None:
            if self.args.tls_ca:
                creds = grpc.ssl_channel_credentials(Path(self.args.tls_ca).read_bytes())
                self._channel = grpc.secure_channel(self.controller, creds)
            else:
                self._channel = grpc.insecure_channel(self.controller)
        return controller_pb2_grpc.ControllerServiceStub(self._channel)

    def kube(self) -> Any:
        """An ApiClient, or None (with the reason kept) when there is no usable kubeconfig."""
        if self._kube_loaded:
            return self._kube
        self._kube_loaded = True
        from kubernetes import config

        path = self.args.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
        default = Path.home() / ".kube" / "config"
        if path is None and not default.exists():
            self._kube_error = "no kubeconfig (pass --kubeconfig or set KUBECONFIG)"
            return None
        try:
            self._kube = config.new_client_from_config(config_file=path, context=self.args.context)
        except (config.ConfigException, OSError, ValueError) as exc:
            self._kube_error = f"kubeconfig {path or default}: {exc}"
        return self._kube

    def namespace(self) -> str | None:
        """-n, else the kubeconfig context's namespace, else 'default'; None for -A."""
        if getattr(self.args, "all_namespaces", False):
            return None
        if self.args.namespace:
            return str(self.args.namespace)
        if self.kube() is not None:
            from kubernetes import config

            try:
                contexts, active = config.list_kube_config_contexts(
                    self.args.kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None)
                chosen = next((c for c in contexts if c["name"] == self.args.context), active)
                return str((chosen or {}).get("context", {}).get("namespace") or "default")
            except (config.ConfigException, OSError):
                pass
        return "default"

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
        if self._channel is not None:
            self._channel.close()
        if self._kube is not None:
            self._kube.close()

    # -- rollouts -------------------------------------------------------------------------

    def rollouts(self, namespace: str | None) -> list[RolloutInfo]:
        if self.controller:
            out = self._controller_rollouts(namespace)
        elif self.server:
            out = [r for r in self.fold().rollouts() if namespace is None or r.namespace == namespace]
        else:
            out = self._cluster_rollouts(namespace)
        return out

    def _controller_rollouts(self, namespace: str | None) -> list[RolloutInfo]:
        from steward.v1 import common_pb2, controller_pb2

        out, token = [], ""
        while True:
            resp = self._rpc("ListRollouts", controller_pb2.ListRolloutsRequest(
                namespace=namespace or "", page=common_pb2.PageRequest(page_size=500, page_token=token)))
            out += [from_message(m) for m in resp.rollouts]
            token = resp.page.next_page_token
            if not token:
                return self._with_steps(out)

    def _with_steps(self, rollouts: list[RolloutInfo]) -> list[RolloutInfo]:
        """Add the plan length (and proposal age) from the ledger when it is at hand too."""
        if not self.server:
            return rollouts
        by = {r.proposal: r for r in self.fold().rollouts()}
        return [replace(r, steps=by[r.proposal].steps, created=by[r.proposal].created)
                if r.proposal in by else r for r in rollouts]

    def _rpc(self, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(self.stub(), method)(request, timeout=self.args.request_timeout)
        except grpc.RpcError as err:
            raise CliError(f"ControllerService at {self.controller}: {method} failed: "
                           f"{err.code().name}: {err.details()}") from err  # type: ignore[attr-defined]

    def _cluster_rollouts(self, namespace: str | None) -> list[RolloutInfo]:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = self.kube()
        if api is None:
            raise CliError(f"nowhere to read rollouts from: give --controller or --server, or a "
                           f"cluster ({self._kube_error})")
        custom: Any = client.CustomObjectsApi(api)
        try:
            if namespace is None:
                items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            else:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        except ApiException as exc:
            raise CliError(f"listing ModelRollouts in {namespace or 'all namespaces'}: "
                           f"{exc.status} {exc.reason}") from exc
        return sorted((from_object(o) for o in items), key=lambda r: (r.namespace, r.name))

    def resolve(self, text: str) -> RolloutInfo:
        """A ModelRollout name or a proposal hash prefix (6+ hex digits) → one rollout."""
        namespace = self.namespace() if self.args.namespace else None
        candidates = self.rollouts(None)
        named = [r for r in candidates if r.name == text and (namespace is None or r.namespace == namespace)]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            spaces = ", ".join(sorted(r.namespace for r in named))
            raise CliError(f"rollout {text!r} exists in several namespaces ({spaces}); pass -n NAMESPACE")
        prefix = text.lower()
        if re.fullmatch(r"[0-9a-f]{6,64}", prefix):
            hits = [r for r in candidates if r.proposal.startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise CliError(f"rollout {text!r}: the prefix matches {len(hits)} proposals; give more digits")
        where = f"namespace {namespace}" if namespace else "any namespace"
        hint = "" if len(prefix) >= 6 or not re.fullmatch(r"[0-9a-f]+", prefix) else \
            " (a proposal prefix needs at least 6 hex digits)"
        raise CliError(f"rollout {text!r}: no ModelRollout of that name in {where} and no proposal "
                       f"hash starting with it{hint}; `{PROG} list -A` shows what exists")

    def cluster(self, info: RolloutInfo) -> tuple[RolloutInfo, ClusterView]:
        """The cluster tree, and the ModelRollout's age when the object exists."""
        api = self.kube()
        if api is None:
            return info, ClusterView(error=self._kube_error)
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            view = read_cluster(api, info.namespace, info.deployment)
            if info.created is None:
                obj: Any = client.CustomObjectsApi(api).get_namespaced_custom_object(
                    GROUP, VERSION, info.namespace, PLURAL, info.name)
                info = replace(info, created=_parse_ts(obj.get("metadata", {}).get("creationTimestamp")))
            return info, view
        except ApiException as exc:
            if exc.status == 404:
                return info, view
            return info, ClusterView(error=f"reading {info.namespace}: {exc.status} {exc.reason}")
        except Exception as exc:  # the header is still worth printing
            return info, ClusterView(error=f"reading {info.namespace}: {type(exc).__name__}: {exc}")

    def refresh(self, info: RolloutInfo) -> RolloutInfo:
        """The same rollout, read again from the same source."""
        for r in self.rollouts(info.namespace):
            if r.proposal == info.proposal or (not r.proposal and r.name == info.name):
                return r if r.created else replace(r, created=info.created)
        raise CliError(f"rollout {info.name} disappeared from {info.source}")


# --------------------------------------------------------------------------------------------
# Commands


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def cmd_get(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    deadline = time.monotonic() + tool.args.timeout if tool.args.timeout else None
    tty = sys.stdout.isatty()
    last = ""
    while True:
        info, cluster = tool.cluster(info)
        frame = render_get(info, cluster, _now())
        if not tool.args.watch:
            print(frame)
            return 0
        if frame != last:
            # Redraw in place on a terminal; a pipe gets one frame after another.
            print(("\x1b[H\x1b[2J" if tty else "\n") + frame, flush=True)
            last = frame
        if deadline is not None and time.monotonic() >= deadline:
            return 0
        time.sleep(tool.args.interval)
        info = tool.refresh(info)


def cmd_list(tool: Tool) -> int:
    all_ns = tool.args.all_namespaces or (not tool.args.namespace and tool.kube() is None)
    rollouts = tool.rollouts(None if all_ns else tool.namespace())
    if not rollouts:
        where = "any namespace" if all_ns else f"namespace {tool.namespace()}"
        print(f"No rollouts found in {where}.", file=sys.stderr)
        return 0
    print(render_list(rollouts, all_namespaces=all_ns))
    return 0


def _watch_controller(tool: Tool, info: RolloutInfo, timeout: float) -> Iterator[RolloutInfo]:
    import grpc

    from steward.v1 import controller_pb2

    request = controller_pb2.WatchRolloutsRequest(proposal=bytes.fromhex(info.proposal))
    try:
        for m in tool.stub().WatchRollouts(request, timeout=timeout):
            yield from_message(m)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise CliError(f"ControllerService at {tool.controller}: WatchRollouts failed: "
                           f"{err.code().name}: {err.details()}") from err  # type: ignore[attr-defined]


def _poll(tool: Tool, info: RolloutInfo, deadline: float) -> Iterator[RolloutInfo]:
    yield info
    while time.monotonic() < deadline:
        time.sleep(min(tool.args.interval, max(0.0, deadline - time.monotonic())))
        yield tool.refresh(info)


def cmd_status(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    deadline = time.monotonic() + tool.args.timeout
    updates = (_watch_controller(tool, info, tool.args.timeout) if tool.controller
               else _poll(tool, info, deadline))
    shown = None
    for r in updates:
        line = f"{r.name}: {r.phase}, step {r.step}, weight {r.weight}%" + (f" — {r.message}" if r.message else "")
        if line != shown:
            print(line, flush=True)
            shown = line
        if r.phase in DONE_OK:
            return 0
        if r.phase in DONE_BAD:
            return 1
        if time.monotonic() >= deadline:
            break
    print(f"{info.name}: still {shown and shown.split(': ', 1)[1]} after {tool.args.timeout:g}s",
          file=sys.stderr)
    return 2


def cmd_history(tool: Tool) -> int:
    info = tool.resolve(tool.args.rollout)
    fold = tool.fold()
    for line in history_lines(fold.entries, bytes.fromhex(info.proposal), info.namespace, info.deployment):
        print(line)
    return 0


def _cli_args(tool: Tool, **extra: Any) -> argparse.Namespace:
    """The namespace ledger.cli's commands read, built from this tool's flags."""
    a = tool.args
    if not tool.server:
        raise CliError("signing commands submit to the ledger: pass --server HOST:PORT or set STEWARD_SERVER")
    return argparse.Namespace(server=tool.server, tls_ca=a.tls_ca, tls_cert=a.tls_cert, tls_key=a.tls_key,
                              timeout=a.request_timeout, passphrase_env=a.passphrase_env, key=a.key,
                              out=getattr(a, "out", None), ledger_name=None, **extra)


def cmd_decide(tool: Tool, decision: str) -> int:
    from ledger import cli

    info = tool.resolve(tool.args.rollout)
    print(f"{decision.lower()} {info.name} (proposal {info.proposal[:12]}, {info.candidate_image})")
    return cli.cmd_decide(_cli_args(tool, proposal=info.proposal, comment=tool.args.comment), decision)


def cmd_kill(tool: Tool, action: str) -> int:
    from ledger import cli

    a = tool.args
    proposal = tool.resolve(a.rollout).proposal if a.rollout else None
    reason = a.reason or ("released" if action == "release" else "")
    return cli.cmd_kill(_cli_args(tool, action=action, all=a.all, target=a.target, proposal=proposal,
                                  reason=reason))


def audit_command(tool: Tool) -> list[str]:
    exe = Path(sys.executable).parent / "steward-audit"
    found = str(exe) if exe.exists() else (shutil.which("steward-audit") or "steward-audit")
    argv = [found, "verify", "--grpc", tool.server or "HOST:PORT",
            "--trust-root", tool.args.trust_root or "TRUST_ROOT.json"]
    kubeconfig = tool.args.kubeconfig or os.environ.get("KUBECONFIG", "")
    if tool.args.check_cluster and kubeconfig:
        argv += ["--kubeconfig", kubeconfig]
    if tool.args.json:
        argv.append("--json")
    return argv


def cmd_verify(tool: Tool) -> int:
    argv = audit_command(tool)
    if not tool.server or not tool.args.trust_root:
        print("verify runs the independent auditor, which trusts only the root keys you pin:",
              file=sys.stderr)
        print("  " + shlex.join(["steward-audit", *argv[1:]]), file=sys.stderr)
        raise CliError("give --server (or STEWARD_SERVER) and --trust-root FILE to run it from here")
    print("running: " + shlex.join(["steward-audit", *argv[1:]]), file=sys.stderr, flush=True)
    try:
        return subprocess.run(argv, check=False).returncode
    except FileNotFoundError as exc:
        raise CliError(f"steward-audit not found ({argv[0]}): install Steward or put it on PATH") from exc


# --------------------------------------------------------------------------------------------
# Parser


def _common_flags(p: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Flags every command takes; on subcommands they default to SUPPRESS so that a value given
    before the command (`kubectl steward -n x get ...`) is not overwritten by the default."""

    def d(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    p.add_argument("--server", default=d(None), metavar="HOST:PORT", help="ledger address (default $STEWARD_SERVER)")
    p.add_argument("--controller", default=d(None), metavar="HOST:PORT",
                   help="ControllerService address (default $STEWARD_CONTROLLER)")
    p.add_argument("--kubeconfig", default=d(None), help="kubeconfig file (default $KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", default=d(None), help="kubeconfig context")
    p.add_argument("-n", "--namespace", default=d(None), help="namespace (default: the context's)")
    p.add_argument("--request-timeout", type=float, default=d(10.0), metavar="SECONDS",
                   help="per-call timeout (default 10)")
    p.add_argument("--tls-ca", default=d(None), help="CA bundle for the ledger and controller (enables TLS)")
    p.add_argument("--tls-cert", default=d(None), help="client certificate for mutual TLS (ledger)")
    p.add_argument("--tls-key", default=d(None), help="client key for mutual TLS (ledger)")
    p.add_argument("--passphrase-env", default=d("STEWARD_KEY_PASSPHRASE"), metavar="VAR",
                   help="environment variable holding key passphrases")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Watch and govern Steward model rollouts: the ledger decides, the controller "
                    "obeys, people approve and stop.")
    _common_flags(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, func: Callable[[Tool], int], example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common_flags(p, suppress=True)
        p.set_defaults(func=func)
        return p

    def rollout_arg(p: argparse.ArgumentParser, optional: bool = False) -> None:
        p.add_argument("rollout", metavar="ROLLOUT", nargs="?" if optional else None,
                       help="ModelRollout name or proposal hash prefix (6+ hex digits)")

    def signing(p: argparse.ArgumentParser, *, many: bool = False) -> None:
        p.add_argument("--key", action="append", default=[], metavar="FILE", required=not many,
                       help="your private key file" + (" (repeat: one per approver)" if many else ""))

    p = add("get", "a rollout's status and its Deployments, ReplicaSets and Pods", cmd_get,
            "kubectl steward get model-server-3fa2c1d4e5 -n models -w")
    rollout_arg(p)
    p.add_argument("-w", "--watch", action="store_true", help="redraw whenever it changes (Ctrl-C stops)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between reads with -w (default 1)")
    p.add_argument("--timeout", type=float, default=0.0, help="stop watching after this many seconds (0: never)")

    p = add("list", "rollouts in a table", cmd_list, "kubectl steward list -A")
    p.add_argument("-A", "--all-namespaces", action="store_true")

    p = add("status", "wait until a rollout is promoted or rolled back; exit 0 promoted, 1 rolled "
            "back or killed, 2 timeout", cmd_status, "kubectl steward status 3fa2c1 --timeout 600")
    rollout_arg(p)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between ledger reads (default 1)")

    p = add("history", "the rollout's story from the log: proposal, evals, approvals, steps, kills",
            cmd_history, "kubectl steward history 3fa2c1")
    rollout_arg(p)

    for name, decision in (("approve", "APPROVE"), ("reject", "REJECT")):
        p = add(name, f"{name} the proposal, bound to the latest eval of every required suite",
                functools.partial(cmd_decide, decision=decision), f"kubectl steward {name} 3fa2c1 --key alice.pem")
        rollout_arg(p)
        signing(p)
        p.add_argument("--comment", default="")

    for name, help_text, example in (
        ("kill", "engage a kill switch: one operator or approver signature stops at once",
         'kubectl steward kill --target models/model-server --reason "error spike" --key oncall.pem'),
        ("release", "release a kill switch: k distinct approvers on one event (--key per approver, "
         "or --out FILE and `steward sign`)",
         "kubectl steward release --target models/model-server --key alice.pem --key bob.pem"),
    ):
        action = "engage" if name == "kill" else "release"
        p = add(name, help_text, functools.partial(cmd_kill, action=action), example)
        rollout_arg(p, optional=True)
        p.add_argument("--all", action="store_true", help="global scope: every rollout")
        p.add_argument("--target", metavar="NS/DEPLOYMENT", help="every rollout of one Deployment")
        p.add_argument("--reason", required=name == "kill", default=None)
        signing(p, many=name == "release")
        if name == "release":
            p.add_argument("--out", metavar="FILE", help="write the event for others to sign instead of submitting")

    p = add("verify", "audit the whole ledger with the independent steward-audit", cmd_verify,
            "kubectl steward verify --trust-root trust.json --check-cluster")
    p.add_argument("--trust-root", help="pinned root keys (JSON, docs/AUDIT.md)")
    p.add_argument("--check-cluster", action="store_true", help="also compare the live cluster with the log")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tool = Tool(args)
    try:
        if args.command in ("kill", "release"):
            scopes = [x for x in (args.rollout, args.all, args.target) if x]
            if len(scopes) != 1:
                raise CliError(f"{args.command}: choose exactly one of ROLLOUT, --all or --target NS/DEPLOYMENT")
            if args.command == "release" and not args.key:
                raise CliError("release: give --key FILE (repeat for each approver, or use --out)")
        return int(args.func(tool))
    except StewardError as exc:
        # 1 is kept for "the ledger refused"; a ledger that cannot be reached is like bad input.
        unreachable = bool(getattr(exc, "retryable", False))
        print(f"{PROG}: {f'ledger at {tool.server}: ' if unreachable else ''}{exc}", file=sys.stderr)
        return 2 if unreachable or isinstance(exc, CliError | FormatError | KeyError_) else 1
    except KeyboardInterrupt:
        return 130
    finally:
        tool.close()


if __name__ == "__main__":
    sys.exit(main())
