"""Mirror every rollout into a ``ModelRollout`` object, for people who live in kubectl.

Name ``<deployment>-<proposal hash[:10]>`` in the target's namespace; ``spec`` names the
proposal, target and candidate image; ``status`` shows phase, step, weight, valid approvals,
the last ledger seq that changed the rollout and why it is where it is, plus the standard
``conditions`` (controller.conditions) and ``observedGeneration``. ``kubectl get
modelrollouts -w`` follows progress. The ledger stays the truth: the mirror is rewritten from
the log, and only by the leader.

Emergency stop: ``kubectl annotate modelrollout <name> steward.dev/emergency-stop="reason"``.
The controller honours it at once (it rolls the canary back before writing anything) and
records it as a PROPOSAL-scope KillSwitchEngaged signed with the *controller's* key, carrying
``AnnotationSource(object, field_manager, time)`` read from the managedFields entry that set the
annotation. That is lower assurance than a kill switch a person signs: it proves only that
some Kubernetes identity allowed to annotate ModelRollouts asked for it, as the API server
reported. Anyone may stop; releasing still needs k approver signatures on the ledger.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.conditions import desired_conditions, rollout_conditions
from controller.executor import APPLY, FIELD_MANAGER, ClusterCache
from controller.view import GROUP, PLURAL, VERSION, RolloutView

log = logging.getLogger("steward.controller.mirror")


def mirror_spec(v: RolloutView) -> dict[str, Any]:
    return {"proposal": v.proposal_hex, "target": v.deployment, "candidateImage": v.candidate_image}


def mirror_status(v: RolloutView) -> dict[str, Any]:
    message = v.message
    if v.kill_switch:
        message = f"kill switch {v.kill_switch}" + (f"; {message}" if message else "")
    return {
        "phase": v.display_phase,
        "step": v.step,
        "weight": v.weight,
        "approvals": len(v.approvals),
        "lastSeq": v.last_seq,
        "message": message[:1000],
    }


def now_rfc3339() -> str:
    """Now as Kubernetes writes times: RFC 3339, UTC, whole seconds."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def with_conditions(
    status: dict[str, Any], v: RolloutView, live: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    """`status` plus ``conditions`` and ``observedGeneration`` for the object as it is live
    (its generation; its conditions' transition times are kept where the status holds)."""
    meta = (live or {}).get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    previous = ((live or {}).get("status") or {}).get("conditions") or []
    return {
        **status,
        "observedGeneration": generation,
        "conditions": rollout_conditions(v, previous, generation, now),
    }


class Mirror:
    def __init__(self, api: client.ApiClient, cache: ClusterCache) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.cache = cache
        self._written: dict[tuple[str, str], tuple[Any, ...]] = {}

    def forget(self) -> None:
        """Write everything again (after becoming leader: another may have written meanwhile)."""
        self._written.clear()

    def sync(self, views: Iterable[RolloutView]) -> int:
        """Create or update the ModelRollout of each view that changed; returns writes made."""
        writes = 0
        for v in views:
            if not self.cache.manages(v.namespace):
                continue
            key = (v.namespace, v.object_name)
            spec, status = mirror_spec(v), mirror_status(v)
            # What the status says, without times: equal means nothing to write.
            wanted = (
                tuple(sorted(spec.items())),
                tuple(sorted(status.items())),
                desired_conditions(v),
            )
            if self._written.get(key) == wanted:
                continue
            try:
                with self.cache.lock:
                    live = self.cache.rollouts.get(key)
                if live is None or live.get("spec") != spec:
                    live = self._apply(v, {"spec": spec})
                    writes += 1
                status = with_conditions(status, v, live, now_rfc3339())
                if live is None or live.get("status") != status:
                    self._apply(v, {"status": status}, subresource=True)
                    writes += 1
            except ApiException as exc:
                log.warning(
                    "mirror write failed object=%s/%s status=%s reason=%s",
                    v.namespace,
                    v.object_name,
                    exc.status,
                    exc.reason,
                )
                continue
            self._written[key] = wanted
        return writes

    def _apply(
        self, v: RolloutView, part: dict[str, Any], *, subresource: bool = False
    ) -> dict[str, Any] | None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelRollout",
            "metadata": {
                "name": v.object_name,
                "namespace": v.namespace,
                "labels": {"app": v.deployment, "steward.dev/proposal": v.proposal_hex[:16]},
            },
            **part,
        }
        fn = (
            self.custom.patch_namespaced_custom_object_status
            if subresource
            else self.custom.patch_namespaced_custom_object
        )
        obj = fn(
            GROUP,
            VERSION,
            v.namespace,
            PLURAL,
            v.object_name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
        )
        if isinstance(obj, dict):
            self.cache.update(self.cache.rollouts, v.namespace, obj, deleted=False)
            return obj
        return None
