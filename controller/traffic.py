"""Traffic mode: the canary's share set as HTTPRoute weights (Gateway API), not as a replica ratio.

A policy with ``traffic`` set (schema v3, ``TrafficRouting``) names an ``HTTPRoute`` and two
Services in the target's namespace. The controller keeps the Services (the stable one selects
the stable pods, labelled ``steward.dev/track: stable`` by the controller; the canary one the
canary pods) and owns the ``backendRefs`` of every rule of the route: exactly two, the stable
Service at ``100 - w`` and the canary Service at ``w``. The stable keeps its N replicas during
the rollout; the canary runs ``ceil(N·w/100)`` (at least 1 while w > 0), sized for its share.

Pure, like the planner that calls it: the observations, the actions and the decisions. The
writes are :mod:`controller.route_writer`'s. The order is the safety contract:

* forward, the route gives the canary weight only once its pods of the step are Ready (and the
  stable pods carry their label, so the stable Service has endpoints); lowering a weight is
  always safe and is done first;
* stopping (rollback, kill switch, emergency stop), the canary's weight goes to 0 before its
  replicas do; a promotion moves the weight back to the stable only once the stable runs the
  candidate at N, and the canary is deleted after that.

The route carries a marker annotation naming (proposal, attempt, step) like the Deployments: a
route whose marker is the step's but whose weights are not was changed by hand — drift,
recorded as DRIFT_CORRECTED and corrected; a route without the step's marker simply has not
been written yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.formats import TrafficRouting

ROUTE_GROUP, ROUTE_VERSION, ROUTE_PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
ROUTE_MARKER_ANNOTATION = "steward.dev/route-applied"
# Names the target Deployment on the route, so `kubectl steward get` finds a rollout's route.
ROUTE_TARGET_ANNOTATION = "steward.dev/route-target"
STABLE_TRACK = "stable"

# (backend name, weight) of one rule's backendRefs, in order.
Backends = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ObservedRoute:
    """An HTTPRoute as the watch cache last saw it."""

    name: str
    rules: tuple[Backends, ...]  # per rule; a backendRef without a weight counts as 1
    marker: str = ""  # ROUTE_MARKER_ANNOTATION

    def canary_weight(self, routing: TrafficRouting) -> int | None:
        """The canary's weight when every rule is exactly (stable 100-w, canary w); else None
        (a route the controller has not written, or one edited into another shape)."""
        found: set[int] = set()
        for backends in self.rules:
            if len(backends) != 2:
                return None
            (s_name, s_weight), (c_name, c_weight) = backends
            if s_name != routing.stable_service or c_name != routing.canary_service:
                return None
            if s_weight + c_weight != 100:
                return None
            found.add(c_weight)
        return found.pop() if len(found) == 1 else None

    def describe(self) -> str:
        return "; ".join(", ".join(f"{n} {w}" for n, w in rule) or "(none)" for rule in self.rules)


@dataclass(frozen=True)
class EnsureServices:
    """Apply the stable and canary Services of ``routing`` in front of Deployment ``name``."""

    namespace: str
    name: str
    routing: TrafficRouting


@dataclass(frozen=True)
class SetRouteWeights:
    """Write every rule's backendRefs of the route: stable ``100 - canary_weight``, canary
    ``canary_weight``, and the marker annotation."""

    namespace: str
    name: str  # the target Deployment
    routing: TrafficRouting
    canary_weight: int
    marker: str
    cause_seq: int = -1  # a stop's cause (kill switch...), for the ack → weight 0 figure


def backend_refs(routing: TrafficRouting, canary_weight: int) -> list[dict[str, object]]:
    """The backendRefs every rule gets for ``canary_weight``."""
    return [
        {
            "group": "",
            "kind": "Service",
            "name": routing.stable_service,
            "port": routing.port,
            "weight": 100 - canary_weight,
        },
        {
            "group": "",
            "kind": "Service",
            "name": routing.canary_service,
            "port": routing.port,
            "weight": canary_weight,
        },
    ]


def route_backends(route: dict[str, object]) -> tuple[Backends, ...]:
    """The (name, weight) pairs of each rule of a route as the API server returns it."""
    spec = route.get("spec")
    rules = spec.get("rules") if isinstance(spec, dict) else None
    out: list[Backends] = []
    for rule in rules if isinstance(rules, list) else []:
        refs = rule.get("backendRefs") if isinstance(rule, dict) else None
        out.append(
            tuple(
                (str(r.get("name", "")), int(r.get("weight", 1)))
                for r in (refs if isinstance(refs, list) else [])
                if isinstance(r, dict)
            )
        )
    return tuple(out)


def observed_route(obj: dict[str, object]) -> ObservedRoute:
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    annotations = meta.get("annotations") or {}
    return ObservedRoute(
        name=str(meta.get("name", "")),
        rules=route_backends(obj),
        marker=str(annotations.get(ROUTE_MARKER_ANNOTATION, "")),
    )


def weight_drift(route: ObservedRoute, routing: TrafficRouting, want: int) -> str:
    return f"HTTPRoute {route.name}: backends {route.describe()}, expected " + (
        f"{routing.stable_service} {100 - want}, {routing.canary_service} {want}"
    )
