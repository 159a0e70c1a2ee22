"""Carry the planner's actions out on Kubernetes and on the ledger.

* :class:`ClusterCache` keeps Deployments, canary Pods, ModelRollouts and
  HorizontalPodAutoscalers of the managed namespaces current through watches (list once, then watch from that resourceVersion; re-list
  on 410 Gone), and calls back on every change so a kill switch or a failing pod reaches the
  planner without polling. Objects the controller writes are put into the cache from the API
  server's answer at once (only if newer), so the next plan never acts on a stale copy.
* :class:`Executor` runs actions in order, one target at a time, and stops a target's list at the
  first failure. Deployments are written with server-side apply under the field manager
  ``steward-controller`` (force: the controller's fields are the controller's); the stop is a
  plain patch of ``spec.replicas`` so it is as fast as the API server allows. A stable that an
  HPA scales is written with a plain patch of its image and marker only: its replica count is
  the HPA's, read through the scale subresource before each canary share is applied. Each step is
  recorded as a RolloutStep signed with the controller key, with the planner's deterministic
  event id; an ``ALREADY_EXISTS`` answer means an earlier attempt recorded it, which is success.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from controller.errors import ControllerError
from controller.planner import (
    MARKER_ANNOTATION,
    PROPOSAL_ANNOTATION,
    STOPPING_ANNOTATION,
    TRACK_LABEL,
    Action,
    ApplyCanary,
    Containers,
    EmergencyStop,
    ObservedDeployment,
    ObservedPod,
    ObservedTarget,
    Promote,
    RecordKillSwitch,
    RecordStep,
    RemoveCanary,
    ScaleStable,
    StopCanary,
    Wait,
    canary_name,
)
from controller.replay import Replayer
from controller.route_writer import RouteRefusedError, RouteWriter
from controller.seams import LedgerAccess
from controller.traffic import (
    ROUTE_GROUP,
    ROUTE_PLURAL,
    ROUTE_VERSION,
    EnsureServices,
    ObservedRoute,
    SetRouteWeights,
    observed_route,
)
from controller.view import GROUP, PLURAL, VERSION
from ledger.events import new_body, sign
from ledger.formats import (
    AnnotationSource,
    KillScope,
    KillSwitchEngaged,
    Payload,
    RolloutStep,
    Target,
)
from ledger.keys import PrivateKey

log = logging.getLogger("steward.controller.executor")

FIELD_MANAGER = "steward-controller"
# What the watch caches hold, one watch per kind and namespace.
KINDS = (
    "deployments",
    "pods",
    "modelrollouts",
    "horizontalpodautoscalers",
    "services",
    "httproutes",
)
# Kinds read through CustomObjectsApi (plain dicts, the namespace as a keyword).
CUSTOM_KINDS = ("modelrollouts", "httproutes")
# A kind the cluster may not serve: without the Gateway API CRDs there is no HTTPRoute to
# watch, which is fine for replica mode (the cache counts it as synced and empty).
OPTIONAL_KINDS = ("httproutes",)
EMERGENCY_STOP_ANNOTATION = "steward.dev/emergency-stop"
APPLY = "application/apply-patch+yaml"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


def _rv(obj: Any) -> int:
    meta = obj.get("metadata", {}) if isinstance(obj, dict) else obj.metadata
    value = meta.get("resourceVersion") if isinstance(meta, dict) else meta.resource_version
    try:
        return int(value or 0)
    except ValueError:  # resourceVersions are opaque; etcd's are integers
        return 0


def _ms(ts: dt.datetime | str | None) -> int:
    if ts is None:
        return 0
    if isinstance(ts, str):
        ts = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(ts.timestamp() * 1000)


# --------------------------------------------------------------------------------------------
# Watch caches


class ClusterCache:
    """Deployments, canary Pods, ModelRollouts and HPAs of some namespaces, kept current by
    watches."""

    def __init__(
        self,
        api: client.ApiClient,
        namespaces: Iterable[str],
        on_change: Callable[[], None] = lambda: None,
        watch_timeout: int = 30,
    ) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.namespaces = tuple(sorted(set(namespaces)))
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.lock = threading.Lock()
        self.deployments: dict[tuple[str, str], Any] = {}  # V1Deployment
        self.pods: dict[tuple[str, str], Any] = {}  # V1Pod
        self.rollouts: dict[tuple[str, str], dict[str, Any]] = {}
        self.autoscalers: dict[tuple[str, str], Any] = {}  # V2HorizontalPodAutoscaler
        self.services: dict[tuple[str, str], Any] = {}  # V1Service
        self.routes: dict[tuple[str, str], dict[str, Any]] = {}  # HTTPRoute
        self._synced: set[tuple[str, str]] = set()
        self._threads: list[threading.Thread] = []

    # -- watching -----------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        for ns in self.namespaces:
            for kind in KINDS:
                t = threading.Thread(
                    target=self._watch_loop,
                    args=(stop, ns, kind),
                    name=f"watch-{kind}-{ns}",
                    daemon=True,
                )
                t.start()
                self._threads.append(t)

    @property
    def synced(self) -> bool:
        return len(self._synced) == len(KINDS) * len(self.namespaces)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.synced:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _list_fn(self, kind: str) -> tuple[Callable[..., Any], dict[str, Any]]:
        if kind == "deployments":
            return self.apps.list_namespaced_deployment, {}
        if kind == "pods":
            return self.core.list_namespaced_pod, {"label_selector": f"{TRACK_LABEL}=canary"}
        if kind == "horizontalpodautoscalers":
            return self.autoscaling.list_namespaced_horizontal_pod_autoscaler, {}
        if kind == "services":
            return self.core.list_namespaced_service, {}
        if kind == "httproutes":
            return self.custom.list_namespaced_custom_object, {
                "group": ROUTE_GROUP,
                "version": ROUTE_VERSION,
                "plural": ROUTE_PLURAL,
            }
        return self.custom.list_namespaced_custom_object, {
            "group": GROUP,
            "version": VERSION,
            "plural": PLURAL,
        }

    def _store(self, kind: str) -> dict[tuple[str, str], Any]:
        return {
            "deployments": self.deployments,
            "pods": self.pods,
            "modelrollouts": self.rollouts,
            "horizontalpodautoscalers": self.autoscalers,
            "services": self.services,
            "httproutes": self.routes,
        }[kind]

    def _watch_loop(self, stop: threading.Event, ns: str, kind: str) -> None:
        fn, kw = self._list_fn(kind)
        store = self._store(kind)
        backoff = 0.2
        while not stop.is_set():
            try:
                if kind in CUSTOM_KINDS:
                    listed = fn(namespace=ns, **kw)
                    items, rv = listed.get("items", []), listed["metadata"]["resourceVersion"]
                else:
                    listed = fn(ns, **kw)
                    items, rv = listed.items, listed.metadata.resource_version
                with self.lock:
                    for key in [k for k in store if k[0] == ns]:
                        del store[key]
                    for obj in items:
                        store[(ns, _name(obj))] = obj
                self._synced.add((ns, kind))
                self.on_change()
                w = watch.Watch()
                args = {"namespace": ns, **kw} if kind in CUSTOM_KINDS else kw
                stream = (
                    w.stream(
                        fn,
                        **args,
                        resource_version=rv,
                        timeout_seconds=self.watch_timeout,
                        allow_watch_bookmarks=True,
                    )
                    if kind in CUSTOM_KINDS
                    else w.stream(
                        fn,
                        ns,
                        **kw,
                        resource_version=rv,
                        timeout_seconds=self.watch_timeout,
                        allow_watch_bookmarks=True,
                    )
                )
                for event in stream:
                    if stop.is_set():
                        w.stop()
                        return
                    etype, obj = event["type"], event["object"]
                    if etype == "ERROR":
                        break  # 410 Gone and friends: list again
                    if etype == "BOOKMARK":
                        continue
                    self.update(store, ns, obj, deleted=etype == "DELETED")
                    self.on_change()
                backoff = 0.2
            except ApiException as exc:
                if kind in OPTIONAL_KINDS and exc.status in (403, 404):
                    # Not served (no Gateway API CRDs) or not granted: nothing to observe,
                    # and replica mode needs nothing; look again now and then.
                    if (ns, kind) not in self._synced:
                        log.info("not watching %s in %s: %s", kind, ns, exc.status)
                    self._synced.add((ns, kind))
                    self.on_change()
                    stop.wait(10.0)
                    continue
                if exc.status != 410:
                    log.warning("watch failed kind=%s namespace=%s status=%s", kind, ns, exc.status)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
            except Exception as exc:  # connection resets: keep watching
                if stop.is_set():
                    return
                log.warning("watch interrupted kind=%s namespace=%s error=%s", kind, ns, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def update(
        self, store: dict[tuple[str, str], Any], ns: str, obj: Any, *, deleted: bool
    ) -> None:
        key = (ns, _name(obj))
        with self.lock:
            if deleted:
                store.pop(key, None)
                return
            old = store.get(key)
            if old is None or _rv(obj) >= _rv(old):
                store[key] = obj

    def put_deployment(self, obj: Any) -> None:
        """Our own write, from the API server's answer: visible to the next plan at once."""
        self.update(self.deployments, obj.metadata.namespace, obj, deleted=False)

    def put_route(self, obj: dict[str, Any]) -> None:
        """Our own route write, visible to the next plan at once (no drift seen twice)."""
        self.update(self.routes, obj["metadata"]["namespace"], obj, deleted=False)

    def put_service(self, obj: Any) -> None:
        self.update(self.services, obj.metadata.namespace, obj, deleted=False)

    def drop_deployment(self, ns: str, name: str) -> None:
        with self.lock:
            self.deployments.pop((ns, name), None)

    # -- observation --------------------------------------------------------------------

    def manages(self, namespace: str) -> bool:
        return namespace in self.namespaces

    def deployment(self, ns: str, name: str) -> Any:
        with self.lock:
            return self.deployments.get((ns, name))

    def autoscaler_of(self, ns: str, deployment: str) -> str:
        """The HPA whose scaleTargetRef names Deployment `deployment`, or ""."""
        with self.lock:
            return self._autoscaler_of(ns, deployment)

    def _autoscaler_of(self, ns: str, deployment: str) -> str:
        for (hpa_ns, hpa_name), hpa in sorted(self.autoscalers.items()):
            ref = hpa.spec.scale_target_ref if hpa.spec else None
            if (
                hpa_ns == ns
                and ref is not None
                and ref.kind == "Deployment"
                and (ref.api_version or "apps/v1").split("/")[0] == "apps"
                and ref.name == deployment
            ):
                return str(hpa_name)
        return ""

    def observe(self, targets: Iterable[Target]) -> dict[Target, ObservedTarget]:
        out: dict[Target, ObservedTarget] = {}
        with self.lock:
            for t in targets:
                if t.namespace not in self.namespaces:
                    continue
                stable = self.deployments.get((t.namespace, t.deployment))
                canary = self.deployments.get((t.namespace, canary_name(t.deployment)))
                pods = tuple(
                    _observed_pod(p)
                    for (ns, _), p in sorted(self.pods.items())
                    if ns == t.namespace
                    and p.metadata.deletion_timestamp is None
                    and (p.metadata.labels or {}).get("app") == t.deployment
                )
                stops = tuple(
                    s
                    for (ns, _), obj in sorted(self.rollouts.items())
                    if ns == t.namespace and (s := _emergency_stop(obj, t.deployment)) is not None
                )
                routes: tuple[ObservedRoute, ...] = tuple(
                    observed_route(obj)
                    for (ns, _), obj in sorted(self.routes.items())
                    if ns == t.namespace
                )
                services = frozenset(name for (ns, name) in self.services if ns == t.namespace)
                out[t] = ObservedTarget(
                    _observed_deployment(stable) if stable else None,
                    _observed_deployment(canary) if canary else None,
                    pods,
                    stops,
                    self._autoscaler_of(t.namespace, t.deployment),
                    routes,
                    services,
                )
        return out


def _name(obj: Any) -> str:
    return str(obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name)


def _containers(pod_spec: Any) -> Containers:
    return tuple((c.name, c.image or "") for c in (pod_spec.containers or []))


def _observed_deployment(d: Any) -> ObservedDeployment:
    ann = d.metadata.annotations or {}
    status = d.status or client.V1DeploymentStatus()
    return ObservedDeployment(
        replicas=d.spec.replicas if d.spec.replicas is not None else 1,
        containers=_containers(d.spec.template.spec),
        ready_replicas=status.ready_replicas or 0,
        updated_replicas=status.updated_replicas or 0,
        generation=d.metadata.generation or 0,
        observed_generation=status.observed_generation or 0,
        marker=ann.get(MARKER_ANNOTATION, ""),
        proposal=ann.get(PROPOSAL_ANNOTATION, ""),
        stopping=ann.get(STOPPING_ANNOTATION, ""),
        track=(d.spec.template.metadata.labels or {}).get(TRACK_LABEL, "")
        if d.spec.template.metadata
        else "",
    )


def _observed_pod(p: Any) -> ObservedPod:
    status = p.status or client.V1PodStatus()
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    waiting = ""
    for cs in status.container_statuses or []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            waiting = cs.state.waiting.reason
            break
    return ObservedPod(
        name=p.metadata.name,
        containers=_containers(p.spec),
        ready=ready,
        phase=status.phase or "",
        waiting_reason=waiting,
        created_ms=_ms(p.metadata.creation_timestamp),
    )


def _emergency_stop(obj: dict[str, Any], target: str) -> EmergencyStop | None:
    meta = obj.get("metadata", {})
    reason = (meta.get("annotations") or {}).get(EMERGENCY_STOP_ANNOTATION)
    spec = obj.get("spec", {})
    if reason is None or spec.get("target") != target:
        return None
    try:
        proposal = bytes.fromhex(spec.get("proposal", ""))
    except ValueError:
        return None
    manager, when = annotation_setter(meta, EMERGENCY_STOP_ANNOTATION)
    source = AnnotationSource(f"{meta.get('namespace')}/{meta.get('name')}", manager, when)
    return EmergencyStop(proposal, reason or "emergency stop", source)


def annotation_setter(meta: dict[str, Any], annotation: str) -> tuple[str, str]:
    """(field manager, time) of the managedFields entry that owns `annotation`."""
    key = f"f:{annotation}"
    found: tuple[str, str] = ("unknown", "")
    for entry in meta.get("managedFields") or []:
        fields = (entry.get("fieldsV1") or {}).get("f:metadata", {}).get("f:annotations", {})
        if key in fields:
            found = (entry.get("manager", "unknown"), entry.get("time", ""))
    return found


# --------------------------------------------------------------------------------------------
# Executing


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    detail: str = ""
    seconds: float = 0.0


class Executor:
    def __init__(
        self,
        api: client.ApiClient,
        cache: ClusterCache,
        replayer: Replayer,
        ledger: LedgerAccess,
        key: PrivateKey,
        *,
        fold_timeout: float = 10.0,
    ) -> None:
        self.apps = client.AppsV1Api(api)
        self.api = api
        self.cache = cache
        self.replayer = replayer
        self.ledger = ledger
        self.key = key
        self.fold_timeout = fold_timeout
        # Fold of a stop's cause → canary patched to 0, in ms (for metrics layered on top).
        self.reactions: list[float] = []
        # Traffic mode: fold of a stop's cause → the route's canary weight written as 0, in ms.
        self.route_reactions: list[float] = []
        self.routes = RouteWriter(api, FIELD_MANAGER)
        self._own = 0  # entries this execute() appended (not a reason to re-plan)

    def execute(self, actions: Iterable[Action]) -> list[Outcome]:
        """Run actions in order; after a failure, skip the rest of that target's actions."""
        outcomes: list[Outcome] = []
        failed: set[tuple[str, str]] = set()
        start, self._own = self.replayer.state.applied, 0
        for a in actions:
            if isinstance(a, Wait):
                continue
            # Stopping preempts going: an entry folded since this plan was made (a kill switch,
            # a report) may change it, so hand back to the planner between two API calls.
            if self.replayer.state.applied - start > self._own:
                log.info("preempted by new ledger entries; re-planning")
                break
            target = self._target_of(a)
            if target in failed:
                continue
            started = time.monotonic()
            try:
                detail = self._run(a)
                ok = True
            except (RefusedError, RouteRefusedError) as exc:
                ok, detail = False, str(exc)
            except ApiException as exc:
                ok, detail = False, f"Kubernetes API {exc.status}: {exc.reason}"
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            took = time.monotonic() - started
            outcome = Outcome(a, ok, detail, took)
            outcomes.append(outcome)
            log.log(
                logging.INFO if ok else logging.WARNING,
                "action=%s ok=%s ms=%.1f detail=%s",
                _describe(a),
                ok,
                took * 1000,
                detail,
            )
            if not ok:
                failed.add(target)
        return outcomes

    def _target_of(self, a: Action) -> tuple[str, str]:
        if isinstance(a, RecordStep | RecordKillSwitch | Wait):
            with self.replayer.lock:
                p = self.replayer.state.ledger.proposals.get(a.proposal)
            return (p.proposal.target.namespace, p.proposal.target.deployment) if p else ("", "")
        return (a.namespace, a.name)

    def _run(self, a: Action) -> str:
        if isinstance(a, RecordStep):
            payload: Payload = RolloutStep(
                a.proposal, a.step, a.weight, a.phase, a.reason, a.observed
            )
            return self._record(payload, a.event_id)
        if isinstance(a, RecordKillSwitch):
            scope = KillScope("PROPOSAL", proposal=a.proposal)
            return self._record(KillSwitchEngaged(scope, a.reason, a.annotation), a.event_id)
        if isinstance(a, StopCanary):
            return self._stop_canary(a)
        if isinstance(a, ApplyCanary):
            return self._apply_canary(a)
        if isinstance(a, ScaleStable | Promote):
            return self._apply_stable(
                a.namespace, a.name, a.replicas, a.image, a.container, a.marker, a.track
            )
        if isinstance(a, SetRouteWeights):
            return self._set_route(a)
        if isinstance(a, EnsureServices):
            for svc in self.routes.ensure_services(a, self.cache.deployment(a.namespace, a.name)):
                self.cache.put_service(svc)
            return f"Services {a.routing.stable_service}, {a.routing.canary_service} applied"
        if isinstance(a, RemoveCanary):
            return self._remove_canary(a)
        raise AssertionError(f"unknown action {a!r}")

    # -- the ledger ---------------------------------------------------------------------

    def _record(self, payload: Payload, event_id: bytes) -> str:
        from ledger.client import LedgerRpcError

        with self.replayer.lock:
            ledger_name = self.replayer.state.ledger.ledger
        body = new_body(ledger_name, payload, event_id=event_id)
        try:
            receipt = self.ledger.append(sign(body, self.key))
        except LedgerRpcError as exc:
            if exc.violation_code == "DUPLICATE_EVENT_ID":
                # Recorded by an earlier attempt (before a crash or by the former leader).
                self._wait_for_event(event_id)
                return f"already recorded ({exc.violation_code})"
            raise RefusedError(f"ledger refused: {exc}") from exc
        if not receipt.duplicate:
            self._own += 1
        # The next plan must see this entry, or it would plan the same move again.
        if not self.replayer.wait_for_size(receipt.seq + 1, self.fold_timeout):
            raise RefusedError(
                f"entry {receipt.seq} accepted but not folded within {self.fold_timeout}s"
            )
        return f"seq {receipt.seq}" + (" (duplicate)" if receipt.duplicate else "")

    def _wait_for_event(self, event_id: bytes) -> None:
        deadline = time.monotonic() + self.fold_timeout
        while time.monotonic() < deadline:
            with self.replayer.lock:
                if event_id in self.replayer.state.ledger.event_ids:
                    return
            time.sleep(0.02)
        raise RefusedError(
            f"event {event_id.hex()} exists on the ledger but was not folded in time"
        )

    # -- Kubernetes ---------------------------------------------------------------------

    def _stop_canary(self, a: StopCanary) -> str:
        name = canary_name(a.name)
        body = {
            "spec": {"replicas": 0},
            "metadata": {"annotations": {STOPPING_ANNOTATION: a.reason[:1000]}},
        }
        try:
            # The answer is not deserialized: on the kill path every millisecond counts, and
            # the watch brings the new object anyway (a re-planned stop is idempotent).
            raw: Any = self.apps.patch_namespaced_deployment(
                name, a.namespace, body, field_manager=FIELD_MANAGER, _preload_content=False
            )
            raw.read()
        except ApiException as exc:
            if exc.status == 404:
                return "canary already gone"
            raise
        folded = self.replayer.folded_at.get(a.cause_seq)
        if folded is None:
            return "canary scaled to 0"
        reaction = (time.monotonic() - folded) * 1000
        self.reactions.append(reaction)
        return f"canary scaled to 0 reaction_ms={reaction:.1f} after seq {a.cause_seq} was folded"

    def _set_route(self, a: SetRouteWeights) -> str:
        obj, detail = self.routes.set_weights(a)
        if obj is not None:
            self.cache.put_route(obj)
        folded = self.replayer.folded_at.get(a.cause_seq) if a.canary_weight == 0 else None
        if folded is None:
            return detail
        reaction = (time.monotonic() - folded) * 1000
        self.route_reactions.append(reaction)
        return f"{detail} reaction_ms={reaction:.1f} after seq {a.cause_seq} was folded"

    def _apply_canary(self, a: ApplyCanary) -> str:
        stable: Any = self.cache.deployment(a.namespace, a.name)
        if stable is None:
            raise RefusedError(f"Deployment {a.namespace}/{a.name} not found")
        if a.scale_basis is not None:
            self._check_scale(a.namespace, a.name, a.scale_basis)
        template = self.api.sanitize_for_serialization(stable.spec.template)
        template = copy.deepcopy(template)
        selector = dict((stable.spec.selector.match_labels or {}) if stable.spec.selector else {})
        selector.setdefault("app", a.name)
        selector[TRACK_LABEL] = "canary"
        meta = template.setdefault("metadata", {})
        meta["labels"] = {**(meta.get("labels") or {}), **selector}
        # Only the named container changes; the others run as the stable runs them.
        named = _named(template["spec"]["containers"], a.container, f"{a.namespace}/{a.name}")
        named["image"] = a.image
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": canary_name(a.name),
                "namespace": a.namespace,
                "labels": {"app": a.name, TRACK_LABEL: "canary"},
                "annotations": {MARKER_ANNOTATION: a.marker, PROPOSAL_ANNOTATION: a.proposal.hex()},
            },
            "spec": {
                "replicas": a.replicas,
                "selector": {"matchLabels": selector},
                "template": template,
            },
        }
        obj = self.apps.patch_namespaced_deployment(
            canary_name(a.name),
            a.namespace,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )
        self.cache.put_deployment(obj)
        return f"canary {a.replicas} x {a.image}"

    def _check_scale(self, ns: str, name: str, basis: int) -> None:
        """Refuse a canary share computed from a scale the HPA has moved since (re-plan)."""
        scale = self.apps.read_namespaced_deployment_scale(name, ns)
        current = scale.spec.replicas if scale.spec and scale.spec.replicas is not None else 0
        if current != basis:
            raise RefusedError(
                f"the scale of {ns}/{name} is {current}, the canary share was planned for "
                f"{basis}: re-planning on the HPA's count"
            )

    def _apply_stable(
        self,
        ns: str,
        name: str,
        replicas: int | None,
        image: str,
        container: str | None,
        marker: str,
        track: str = "",
    ) -> str:
        stable: Any = self.cache.deployment(ns, name)
        if stable is None:
            raise RefusedError(f"Deployment {ns}/{name} not found")
        spec: dict[str, Any] = {}
        if container is not None:
            names = [c.name for c in stable.spec.template.spec.containers or []]
            if container not in names:
                raise RefusedError(_no_container(container, names, f"{ns}/{name}"))
            spec["template"] = {"spec": {"containers": [{"name": container, "image": image}]}}
        if track:
            # Traffic mode: the stable Service selects the stable pods by this label (the
            # canary pods match the stable's own selector too).
            template = spec.setdefault("template", {})
            template["metadata"] = {"labels": {TRACK_LABEL: track}}
        metadata = {"name": name, "namespace": ns, "annotations": {MARKER_ANNOTATION: marker}}
        if replicas is not None:
            hpa = self.cache.autoscaler_of(ns, name)
            if hpa:
                raise RefusedError(
                    f"HorizontalPodAutoscaler {hpa} owns the replicas of {ns}/{name}"
                )
            spec["replicas"] = replicas
        if replicas is None or container is None:
            # Not an apply: an apply that leaves out a field this manager owned removes it
            # (spec.replicas back to its default of 1 under the HPA's feet, or the image of
            # the container). A strategic merge patch changes only what it names.
            obj = self.apps.patch_namespaced_deployment(
                name,
                ns,
                {"metadata": metadata, "spec": spec},
                field_manager=FIELD_MANAGER,
                _content_type=STRATEGIC_MERGE,
            )
            self.cache.put_deployment(obj)
            count = "replicas left to the HPA" if replicas is None else f"{replicas} replicas"
            return f"stable patched: {count}, " + (f"image {image}" if container else "image kept")
        body = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}
        obj = self.apps.patch_namespaced_deployment(
            name, ns, body, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY
        )
        self.cache.put_deployment(obj)
        return f"stable {replicas} x {image}"

    def _remove_canary(self, a: RemoveCanary) -> str:
        name = canary_name(a.name)
        try:
            self.apps.delete_namespaced_deployment(
                name, a.namespace, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.cache.drop_deployment(a.namespace, name)
        return "canary deleted"


class RefusedError(ControllerError):
    """An action that could not be carried out now (the planner will try again)."""


def _no_container(container: str, names: list[str], deployment: str) -> str:
    listed = ", ".join(names) or "none"
    return f"container {container!r} not found in Deployment {deployment} (containers: {listed})"


def _named(containers: list[dict[str, Any]], container: str, deployment: str) -> dict[str, Any]:
    """The container called `container` in a serialized pod template (RefusedError if none)."""
    for c in containers:
        if c.get("name") == container:
            return c
    raise RefusedError(
        _no_container(container, [str(c.get("name")) for c in containers], deployment)
    )


def _describe(a: Action) -> str:
    if isinstance(a, RecordStep):
        return f"record {a.phase} step={a.step} weight={a.weight} proposal={a.proposal.hex()[:12]}"
    if isinstance(a, RecordKillSwitch):
        return f"record kill switch proposal={a.proposal.hex()[:12]}"
    return type(a).__name__ + f" {getattr(a, 'namespace', '')}/{getattr(a, 'name', '')}"
