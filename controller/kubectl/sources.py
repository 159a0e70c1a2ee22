"""Where ``kubectl steward`` reads rollouts from, and the connections it holds.

In order of preference: the ControllerService of steward-controller (``--controller``), the
ledger read and folded here with the controller's own state code (``--server``), or the
``ModelRollout`` objects the controller mirrors into the cluster. The Deployments, ReplicaSets
and Pods always come from the cluster. Every source is turned into the rows of
:mod:`controller.kubectl.rows`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.kubectl import PROG
from controller.kubectl.rows import (
    CheckRow,
    ClusterView,
    DeploymentRow,
    PodRow,
    ReplicaSetRow,
    RolloutInfo,
    RouteRow,
    display_phase,
    object_name,
)
from controller.planner import CANARY_SUFFIX
from controller.seams import LedgerReader
from controller.view import GROUP, PLURAL, VERSION
from ledger.cli.common import CliError

if TYPE_CHECKING:
    import grpc
    from kubernetes.client import ApiClient

    from ledger.client import LedgerClient
    from ledger.formats import LogEntry
    from ledger.state import ProposalState
    from steward.v1.controller_pb2_grpc import ControllerServiceStub

# --------------------------------------------------------------------------------------------
# Each source's record, as a RolloutInfo


def from_view(v: Any, steps: int | None = None) -> RolloutInfo:
    """From a controller.view.RolloutView (the ledger fold done here)."""
    return RolloutInfo(
        name=v.object_name,
        namespace=v.namespace,
        deployment=v.deployment,
        proposal=v.proposal_hex,
        phase=v.display_phase,
        step=v.step,
        weight=v.weight,
        approvals=tuple(v.approvals),
        approval_count=len(v.approvals),
        approvals_required=v.approvals_required,
        steps=steps,
        candidate_image=v.candidate_image,
        stable_image=v.stable_image,
        message=v.message,
        kill_switch=v.kill_switch,
        last_seq=v.last_seq,
        source="ledger",
    )


def check_rows(p: ProposalState) -> tuple[CheckRow, ...]:
    """Each check's latest evidence for the proposal, on whichever step it was last taken."""
    latest: dict[str, CheckRow] = {}
    for step in sorted(p.checks):
        for name, r in p.checks[step].items():
            if name not in latest or r.seq > latest[name].seq:
                latest[name] = CheckRow(name, r.step, r.verdict, r.values, r.why, r.seq)
    return tuple(latest[n] for n in sorted(latest))


def from_message(m: Any) -> RolloutInfo:
    """From a steward.v1.Rollout (ControllerService)."""
    h = bytes(m.proposal).hex()
    return RolloutInfo(
        name=object_name(m.deployment, h),
        namespace=m.namespace,
        deployment=m.deployment,
        proposal=h,
        phase=display_phase(m.phase, m.kill_switch, m.message),
        step=m.step,
        weight=m.weight,
        approvals=tuple(m.approvals),
        approval_count=len(m.approvals),
        approvals_required=m.approvals_required,
        candidate_image=m.candidate_image,
        stable_image=m.stable_image,
        message=m.message,
        kill_switch="engaged" if m.kill_switch else "",
        last_seq=m.last_seq,
        source="controller",
    )


def from_object(obj: dict[str, Any]) -> RolloutInfo:
    """From a ModelRollout object (the mirror: counts only, no principals)."""
    meta, spec, status = obj.get("metadata", {}), obj.get("spec", {}), obj.get("status") or {}
    created = meta.get("creationTimestamp")
    return RolloutInfo(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        deployment=spec.get("target", ""),
        proposal=spec.get("proposal", ""),
        phase=status.get("phase") or "Pending",
        step=int(status.get("step") or 0),
        weight=int(status.get("weight") or 0),
        approval_count=int(status.get("approvals") or 0),
        candidate_image=spec.get("candidateImage", ""),
        message=status.get("message") or "",
        kill_switch="engaged" if (status.get("message") or "").startswith("kill switch") else "",
        last_seq=status.get("lastSeq"),
        source="cluster",
        created=_parse_ts(created),
    )


def _parse_ts(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, str) and value:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


# --------------------------------------------------------------------------------------------
# The cluster tree


def _owner(meta: Any) -> str:
    for ref in meta.owner_references or []:
        if ref.controller:
            return str(ref.name)
    return ""


def read_cluster(api: ApiClient, namespace: str, deployment: str) -> ClusterView:
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
        view.deployments.append(
            DeploymentRow(
                d.metadata.name,
                track,
                d.spec.replicas if d.spec.replicas is not None else 1,
                st.ready_replicas or 0,
                st.updated_replicas or 0,
                st.available_replicas or 0,
                d.spec.template.spec.containers[0].image,
                d.metadata.creation_timestamp,
            )
        )
    owners = {d.name for d in view.deployments}
    for rs in apps.list_namespaced_replica_set(namespace).items:
        owner = _owner(rs.metadata)
        if owner not in owners:
            continue
        view.replicasets.append(
            ReplicaSetRow(
                rs.metadata.name,
                owner,
                (rs.metadata.annotations or {}).get("deployment.kubernetes.io/revision", ""),
                rs.spec.replicas or 0,
                rs.status.ready_replicas or 0,
                rs.spec.template.spec.containers[0].image,
                rs.metadata.creation_timestamp,
            )
        )
    rs_names = {r.name for r in view.replicasets}
    for p in core.list_namespaced_pod(namespace).items:
        owner = _owner(p.metadata)
        if owner not in rs_names:
            continue
        st = p.status
        statuses = st.container_statuses or []
        reason = next(
            (
                c.state.waiting.reason
                for c in statuses
                if c.state and c.state.waiting and c.state.waiting.reason
            ),
            "",
        )
        ready = any(c.type == "Ready" and c.status == "True" for c in st.conditions or [])
        view.pods.append(
            PodRow(
                p.metadata.name,
                owner,
                st.phase or "Unknown",
                ready,
                sum(1 for c in statuses if c.ready),
                len(p.spec.containers or []),
                sum(c.restart_count or 0 for c in statuses),
                reason,
                p.metadata.creation_timestamp,
                p.metadata.deletion_timestamp is not None,
            )
        )
    view.routes = read_routes(api, namespace, deployment)
    return view


def read_routes(api: ApiClient, namespace: str, deployment: str) -> list[RouteRow]:
    """Traffic mode: the HTTPRoutes the controller annotated as the target's, with the weight
    each Service gets (its track read from the Services the controller labels). None when the
    cluster serves no HTTPRoute (replica mode needs none) or the reader may not list them."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from controller.planner import TRACK_LABEL
    from controller.traffic import (
        ROUTE_GROUP,
        ROUTE_PLURAL,
        ROUTE_TARGET_ANNOTATION,
        ROUTE_VERSION,
        route_backends,
    )

    try:
        listed: Any = client.CustomObjectsApi(api).list_namespaced_custom_object(
            ROUTE_GROUP, ROUTE_VERSION, namespace, ROUTE_PLURAL
        )
    except ApiException as exc:
        if exc.status in (403, 404):
            return []
        raise
    mine = [
        r
        for r in listed.get("items", [])
        if (r.get("metadata", {}).get("annotations") or {}).get(ROUTE_TARGET_ANNOTATION)
        == deployment
    ]
    if not mine:
        return []
    core: Any = client.CoreV1Api(api)
    tracks = {
        s.metadata.name: (s.metadata.labels or {}).get(TRACK_LABEL, "")
        for s in core.list_namespaced_service(namespace, label_selector=f"app={deployment}").items
    }
    rows = []
    for r in sorted(mine, key=lambda r: r["metadata"]["name"]):
        rules = route_backends(r)
        first = rules[0] if rules else ()
        rows.append(
            RouteRow(
                r["metadata"]["name"], tuple((name, tracks.get(name, ""), w) for name, w in first)
            )
        )
    return rows


# --------------------------------------------------------------------------------------------
# The ledger, folded here; and the tool's connections


class LedgerFold:
    """The log read from the ledger and folded here with the controller's own state code."""

    def __init__(self, client: LedgerReader) -> None:
        from controller.state import ControllerState

        self.client = client
        self.state = ControllerState()
        self.entries: list[LogEntry] = []

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
            out.append(
                replace(
                    from_view(v, len(ls.policy_of(p).plan)),
                    created=dt.datetime.fromtimestamp(
                        self.entries[p.seq].entry.received_at / 1000, tz=dt.UTC
                    ),
                    checks=check_rows(p),
                )
            )
        return out


@dataclass
class Tool:
    args: argparse.Namespace
    _ledger: LedgerClient | None = None
    _fold: LedgerFold | None = None
    _channel: grpc.Channel | None = None
    _kube: ApiClient | None = None
    _kube_error: str = ""
    _kube_loaded: bool = False

    # -- endpoints ------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return self.args.server or os.environ.get("STEWARD_SERVER", "")

    @property
    def controller(self) -> str:
        return self.args.controller or os.environ.get("STEWARD_CONTROLLER", "")

    def ledger(self) -> LedgerClient:
        if self._ledger is None:
            if not self.server:
                raise CliError(
                    "this command needs the ledger: pass --server HOST:PORT or set STEWARD_SERVER"
                )
            from ledger.client import LedgerClient

            self._ledger = LedgerClient(
                self.server,
                ca_file=self.args.tls_ca,
                cert_file=self.args.tls_cert,
                key_file=self.args.tls_key,
                timeout=self.args.request_timeout,
            )
        return self._ledger

    def fold(self) -> LedgerFold:
        if self._fold is None:
            self._fold = LedgerFold(self.ledger())
        self._fold.refresh()
        return self._fold

    def stub(self) -> ControllerServiceStub:
        import grpc

        from steward.v1 import controller_pb2_grpc

        if self._channel is None:
            if self.args.tls_ca:
                # The same client certificate as for the ledger, when the controller serves
                # mutual TLS (steward-controller --client-ca).
                cert, key = self.args.tls_cert, self.args.tls_key
                creds = grpc.ssl_channel_credentials(
                    Path(self.args.tls_ca).read_bytes(),
                    Path(key).read_bytes() if cert and key else None,
                    Path(cert).read_bytes() if cert and key else None,
                )
                self._channel = grpc.secure_channel(self.controller, creds)
            else:
                self._channel = grpc.insecure_channel(self.controller)
        return controller_pb2_grpc.ControllerServiceStub(self._channel)

    def kube(self) -> ApiClient | None:
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
                    self.args.kubeconfig
                    or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
                    or None
                )
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
            out = [
                r for r in self.fold().rollouts() if namespace is None or r.namespace == namespace
            ]
        else:
            out = self._cluster_rollouts(namespace)
        return out

    def _controller_rollouts(self, namespace: str | None) -> list[RolloutInfo]:
        from steward.v1 import common_pb2, controller_pb2

        out, token = [], ""
        while True:
            resp = self._rpc(
                "ListRollouts",
                controller_pb2.ListRolloutsRequest(
                    namespace=namespace or "",
                    page=common_pb2.PageRequest(page_size=500, page_token=token),
                ),
            )
            out += [from_message(m) for m in resp.rollouts]
            token = resp.page.next_page_token
            if not token:
                return self._with_steps(out)

    def _with_steps(self, rollouts: list[RolloutInfo]) -> list[RolloutInfo]:
        """Add the plan length (and proposal age) from the ledger when it is at hand too."""
        if not self.server:
            return rollouts
        by = {r.proposal: r for r in self.fold().rollouts()}
        return [
            replace(
                r,
                steps=by[r.proposal].steps,
                created=by[r.proposal].created,
                checks=by[r.proposal].checks,
            )
            if r.proposal in by
            else r
            for r in rollouts
        ]

    def _rpc(self, method: str, request: Any) -> Any:
        import grpc

        try:
            return getattr(self.stub(), method)(request, timeout=self.args.request_timeout)
        except grpc.RpcError as err:
            raise CliError(
                f"ControllerService at {self.controller}: {method} failed: "
                f"{err.code().name}: {err.details()}"
            ) from err  # type: ignore[attr-defined]

    def _cluster_rollouts(self, namespace: str | None) -> list[RolloutInfo]:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = self.kube()
        if api is None:
            raise CliError(
                f"nowhere to read rollouts from: give --controller or --server, or a "
                f"cluster ({self._kube_error})"
            )
        custom: Any = client.CustomObjectsApi(api)
        try:
            if namespace is None:
                items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
            else:
                items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)[
                    "items"
                ]
        except ApiException as exc:
            raise CliError(
                f"listing ModelRollouts in {namespace or 'all namespaces'}: "
                f"{exc.status} {exc.reason}"
            ) from exc
        return sorted((from_object(o) for o in items), key=lambda r: (r.namespace, r.name))

    def resolve(self, text: str) -> RolloutInfo:
        """A ModelRollout name or a proposal hash prefix (6+ hex digits) → one rollout."""
        namespace = self.namespace() if self.args.namespace else None
        candidates = self.rollouts(None)
        named = [
            r
            for r in candidates
            if r.name == text and (namespace is None or r.namespace == namespace)
        ]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            spaces = ", ".join(sorted(r.namespace for r in named))
            raise CliError(
                f"rollout {text!r} exists in several namespaces ({spaces}); pass -n NAMESPACE"
            )
        prefix = text.lower()
        if re.fullmatch(r"[0-9a-f]{6,64}", prefix):
            hits = [r for r in candidates if r.proposal.startswith(prefix)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise CliError(
                    f"rollout {text!r}: the prefix matches {len(hits)} proposals; give more digits"
                )
        where = f"namespace {namespace}" if namespace else "any namespace"
        hint = (
            ""
            if len(prefix) >= 6 or not re.fullmatch(r"[0-9a-f]+", prefix)
            else " (a proposal prefix needs at least 6 hex digits)"
        )
        raise CliError(
            f"rollout {text!r}: no ModelRollout of that name in {where} and no proposal "
            f"hash starting with it{hint}; `{PROG} list -A` shows what exists"
        )

    def cluster(self, info: RolloutInfo) -> tuple[RolloutInfo, ClusterView]:
        """The cluster tree, and the ModelRollout's age when the object exists.

        Never raises for what the cluster answers: the header is still worth printing, so a
        failed read or a missing target Deployment becomes the view's error line."""
        api = self.kube()
        if api is None:
            return info, ClusterView(error=self._kube_error)
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        target = f"{info.namespace}/{info.deployment}"
        try:
            view = read_cluster(api, info.namespace, info.deployment)
        except ApiException as exc:
            if exc.status == 404:
                return info, ClusterView(
                    error=f"Deployment {target} not found (listing namespace "
                    f"{info.namespace}: {exc.status} {exc.reason})"
                )
            return info, ClusterView(error=f"reading {info.namespace}: {exc.status} {exc.reason}")
        except Exception as exc:
            return info, ClusterView(error=f"reading {info.namespace}: {type(exc).__name__}: {exc}")
        if not any(d.track == "stable" for d in view.deployments):
            view = replace(view, error=f"Deployment {target} not found")
        if info.created is not None:
            return info, view
        try:
            obj: Any = client.CustomObjectsApi(api).get_namespaced_custom_object(
                GROUP, VERSION, info.namespace, PLURAL, info.name
            )
        except ApiException as exc:
            if exc.status == 404:  # no ModelRollout mirrored (yet): the tree stands, no age
                return info, view
            return info, ClusterView(error=f"reading {info.namespace}: {exc.status} {exc.reason}")
        except Exception as exc:
            return info, ClusterView(error=f"reading {info.namespace}: {type(exc).__name__}: {exc}")
        created = _parse_ts(obj.get("metadata", {}).get("creationTimestamp"))
        return replace(info, created=created), view

    def refresh(self, info: RolloutInfo) -> RolloutInfo:
        """The same rollout, read again from the same source."""
        for r in self.rollouts(info.namespace):
            if r.proposal == info.proposal or (not r.proposal and r.name == info.name):
                return r if r.created else replace(r, created=info.created)
        raise CliError(f"rollout {info.name} disappeared from {info.source}")
