"""Kubernetes Events (core/v1) for each notice, on the ModelRollout and on the target Deployment.

``kubectl describe modelrollout X`` and ``kubectl describe deployment Y`` list them, ``kubectl
get events`` shows the story in order. One Event per (object, ledger entry), named
``<object>.<entry hash[:16]>``: a second create after a controller restart, or by a new leader,
answers 409 AlreadyExists, which counts as delivered, so a restart never doubles an Event.

Reasons: RolloutStarted, StepAdvanced, RolloutPaused, RolloutPromoted, RolledBack (Warning),
DriftCorrected (Warning), KillSwitchEngaged (Warning), KillSwitchReleased. The message names
the step, weight, phase, ledger seq and the entry's own reason.

The involved object's ``uid`` is what ``kubectl describe`` selects Events by: it is read from the
watch cache, or from the API server when the cache does not have the object yet; an object that
does not exist gets no Event (with ``--no-mirror`` there is no ModelRollout; with the mirror on,
one not written yet is waited for through the outlet's retries).
"""

from __future__ import annotations

import logging
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.executor import ClusterCache
from controller.notices import Notice, RolloutRef
from controller.notify import DeliveryError, rfc3339_ms
from controller.view import GROUP, PLURAL, VERSION

log = logging.getLogger("steward.controller.events")

REPORTING_CONTROLLER = "steward.dev/controller"
KUBE_EVENTS_KEY = "kubernetes-events"


def event_name(object_name: str, notice: Notice) -> str:
    """Deterministic: the same entry on the same object always has the same Event name."""
    return f"{object_name[:236]}.{notice.entry_hash.hex()[:16]}"  # within 253 characters


def event_body(
    notice: Notice, kind: str, api_version: str, namespace: str, name: str, uid: str, instance: str
) -> dict[str, Any]:
    # eventTime (microseconds): two steps a few ms apart keep distinct, ordered times
    # (kubectl get events --sort-by=.eventTime); first/lastTimestamp hold whole seconds only.
    when = rfc3339_ms(notice.time_ms)[:-1] + "000Z"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": event_name(name, notice),
            "namespace": namespace,
            "labels": {"steward.dev/seq": str(notice.seq)},
        },
        "involvedObject": {
            "apiVersion": api_version,
            "kind": kind,
            "name": name,
            "namespace": namespace,
            "uid": uid,
        },
        "reason": notice.reason,
        "message": notice.summary,
        "type": "Warning" if notice.warning else "Normal",
        "eventTime": when,
        # Also whole seconds where kubectl describe sorts and ages Events by them.
        "firstTimestamp": when[:19] + "Z",
        "lastTimestamp": when[:19] + "Z",
        "count": 1,
        "source": {"component": "steward-controller"},
        "reportingComponent": REPORTING_CONTROLLER,
        "reportingInstance": instance[:128],
        "action": notice.type.rsplit(".", 1)[-1].title(),
    }


class KubeEventsOutlet:
    """The Kubernetes Events outlet of controller.notify (one per controller)."""

    key = KUBE_EVENTS_KEY
    label = "Kubernetes Events"

    def __init__(
        self, api: client.ApiClient, cache: ClusterCache, instance: str, *, mirror: bool = True
    ) -> None:
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.cache = cache
        self.instance = instance
        # With the mirror on, a missing ModelRollout is one not written yet (the mirror runs on
        # its own thread): retried. Without it there is none to attach Events to.
        self.mirror = mirror

    def deliver(self, notice: Notice) -> None:
        for ref in notice.rollouts:
            if not self.cache.manages(ref.namespace):
                continue
            for kind, api_version, name, uid in self._objects(ref):
                self._create(
                    event_body(notice, kind, api_version, ref.namespace, name, uid, self.instance)
                )

    def _objects(self, ref: RolloutRef) -> list[tuple[str, str, str, str]]:
        out = []
        if self.mirror:
            uid = self._uid_rollout(ref)
            if not uid:
                raise DeliveryError(
                    f"ModelRollout {ref.namespace}/{ref.object_name} not written yet"
                )
            out.append(("ModelRollout", f"{GROUP}/{VERSION}", ref.object_name, uid))
        uid = self._uid_deployment(ref)
        if uid:
            out.append(("Deployment", "apps/v1", ref.deployment, uid))
        return out

    def _uid_rollout(self, ref: RolloutRef) -> str:
        with self.cache.lock:
            obj: Any = self.cache.rollouts.get((ref.namespace, ref.object_name))
        if obj is None:
            try:
                obj = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, ref.namespace, PLURAL, ref.object_name
                )
            except ApiException as exc:
                if exc.status == 404:
                    return ""
                raise DeliveryError(f"reading ModelRollout: Kubernetes API {exc.status}") from None
        return str((obj.get("metadata") or {}).get("uid") or "")

    def _uid_deployment(self, ref: RolloutRef) -> str:
        d: Any = self.cache.deployment(ref.namespace, ref.deployment)
        if d is None:
            try:
                d = self.apps.read_namespaced_deployment(ref.deployment, ref.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return ""
                raise DeliveryError(f"reading Deployment: Kubernetes API {exc.status}") from None
        return str(d.metadata.uid or "")

    def _create(self, body: dict[str, Any]) -> None:
        try:
            body_any: Any = body  # the client takes the dict as it would a V1Event
            self.core.create_namespaced_event(body["metadata"]["namespace"], body_any)
        except ApiException as exc:
            if exc.status == 409:
                return  # created before a restart, or by the previous leader
            final = exc.status in (400, 403, 422)
            raise DeliveryError(
                f"creating Event {body['metadata']['name']}: Kubernetes API {exc.status} "
                f"{exc.reason}",
                final=final,
            ) from None
