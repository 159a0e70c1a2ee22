"""The user's workload that tests and benchmarks put on the local cluster, and reading it back.

``target_manifests`` is the Deployment (``app: NAME`` labels, one container) and its Service
that a rollout acts on; ``deployment_manifest`` is the Deployment alone. ``read_deployment``
returns a Deployment or None when there is none, the question every rollout check asks of a
canary. Kept apart from :mod:`infra.kube`, which starts the control plane and needs no client
library; this module imports the ``kubernetes`` client only when a read is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import AppsV1Api, V1Deployment


def deployment_manifest(
    name: str, image: str, replicas: int, container: str = "server"
) -> dict[str, Any]:
    """A Deployment of ``replicas`` pods running ``image``, selected by the label ``app: name``."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": container, "image": image}]},
            },
        },
    }


def target_manifests(name: str, image: str, replicas: int) -> list[dict[str, Any]]:
    """The Deployment ``name`` and a Service of the same name in front of it (port 80 → 8080)."""
    return [
        deployment_manifest(name, image, replicas),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]


def read_deployment(apps: AppsV1Api, namespace: str, name: str) -> V1Deployment | None:
    """The Deployment, or None when the API server has none of that name (404)."""
    from kubernetes.client.rest import ApiException

    try:
        return apps.read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
