"""Traffic mode's writes (controller/traffic.py decides them): the stable and canary Services and
the weights of the HTTPRoute. The executor hands these actions here.

* Services are written with server-side apply under the controller's field manager: the
  selector (the stable Deployment's selector plus ``steward.dev/track: stable`` or ``canary``)
  and one port, ``port`` to ``port``.
* The route is read, each rule's ``backendRefs`` replaced by the stable and canary Services at
  their weights, and written back as a JSON merge patch that carries the resourceVersion it was
  read at: a concurrent edit (a person, another controller) makes the API server answer 409 and
  the planner decides again on the newer route instead of overwriting it blindly. Matches,
  filters and parentRefs of the rules are the route owner's and are left as they are.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.errors import ControllerError
from controller.planner import TRACK_LABEL
from controller.traffic import (
    ROUTE_GROUP,
    ROUTE_MARKER_ANNOTATION,
    ROUTE_PLURAL,
    ROUTE_TARGET_ANNOTATION,
    ROUTE_VERSION,
    STABLE_TRACK,
    EnsureServices,
    SetRouteWeights,
    backend_refs,
)

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


class RouteRefusedError(ControllerError):
    """A traffic write that cannot be made now (the planner tries again on the next plan)."""


class RouteWriter:
    def __init__(self, api: client.ApiClient, field_manager: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.field_manager = field_manager

    def ensure_services(self, a: EnsureServices, stable_deployment: Any) -> list[Any]:
        """Apply both Services; returns them as the API server answered (for the cache)."""
        if stable_deployment is None:
            raise RouteRefusedError(f"Deployment {a.namespace}/{a.name} not found")
        selector = dict(
            (stable_deployment.spec.selector.match_labels or {})
            if stable_deployment.spec.selector
            else {}
        )
        # The canary pods carry the stable's selector (and app) plus track=canary; the stable
        # pods the label the controller puts on the stable's pod template in traffic mode.
        canary_selector = {**selector, "app": selector.get("app", a.name), TRACK_LABEL: "canary"}
        stable_selector = {**selector, TRACK_LABEL: STABLE_TRACK}
        written: list[Any] = []
        for name, sel, track in (
            (a.routing.stable_service, stable_selector, STABLE_TRACK),
            (a.routing.canary_service, canary_selector, "canary"),
        ):
            body = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": name,
                    "namespace": a.namespace,
                    "labels": {"app": a.name, TRACK_LABEL: track},
                },
                "spec": {
                    "selector": sel,
                    "ports": [
                        {
                            "name": "http",
                            "port": a.routing.port,
                            "targetPort": a.routing.port,
                            "protocol": "TCP",
                        }
                    ],
                },
            }
            obj = self.core.patch_namespaced_service(
                name,
                a.namespace,
                body,
                field_manager=self.field_manager,
                force=True,
                _content_type=APPLY,
            )
            written.append(obj)
        return written

    def set_weights(self, a: SetRouteWeights) -> tuple[dict[str, Any] | None, str]:
        """Write the weights; (the route as the API server answered or None if it is gone,
        what was done)."""
        name = a.routing.http_route
        try:
            route = cast(
                "dict[str, Any]",
                self.custom.get_namespaced_custom_object(
                    ROUTE_GROUP, ROUTE_VERSION, a.namespace, ROUTE_PLURAL, name
                ),
            )
        except ApiException as exc:
            if exc.status == 404 and a.canary_weight == 0:
                # Nothing routes to the canary through a route that is not there: a stop
                # goes on to the replicas.
                return None, f"HTTPRoute {name} gone; nothing to take the canary's weight from"
            raise
        rules = copy.deepcopy(route.get("spec", {}).get("rules") or [])
        if not rules:
            rules = [{}]  # a route without rules matches every request once it has one
        refs = backend_refs(a.routing, a.canary_weight)
        for rule in rules:
            rule["backendRefs"] = copy.deepcopy(refs)
        patch = {
            "metadata": {
                "resourceVersion": route["metadata"]["resourceVersion"],
                "annotations": {
                    ROUTE_MARKER_ANNOTATION: a.marker,
                    ROUTE_TARGET_ANNOTATION: a.name,
                },
            },
            "spec": {"rules": rules},
        }
        try:
            obj = self.custom.patch_namespaced_custom_object(
                ROUTE_GROUP,
                ROUTE_VERSION,
                a.namespace,
                ROUTE_PLURAL,
                name,
                patch,
                field_manager=self.field_manager,
                _content_type=MERGE,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise RouteRefusedError(
                    f"HTTPRoute {a.namespace}/{name} changed while being written; re-planning"
                ) from exc
            raise
        stable_w = 100 - a.canary_weight
        return cast("dict[str, Any]", obj), (
            f"HTTPRoute {name}: {a.routing.stable_service} {stable_w}, "
            f"{a.routing.canary_service} {a.canary_weight} in {len(rules)} rule(s)"
        )
