"""The Gateway API CRDs from the pinned Go module are served by the local control plane, with
their own validation: what traffic mode writes is checked by the real schema, not by a copy."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from infra.gateway_api import GATEWAY_API_VERSION, HTTPROUTE_CRD, crd_dir
from infra.kube_cluster import LocalCluster

pytestmark = pytest.mark.kube

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"


def route(name: str, weight: int) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [{"backendRefs": [{"name": "model-server", "port": 8080, "weight": weight}]}],
        },
    }


def test_httproute_crd_is_the_pinned_version_and_is_served(
    kube_cluster: LocalCluster, gateway_api: str
) -> None:
    assert gateway_api == GATEWAY_API_VERSION
    # The cache holds what was applied; the CRD on the server carries the bundle version.
    assert (crd_dir() / "gateway.networking.k8s.io_httproutes.yaml").is_file()
    out = kube_cluster.kubectl(
        "get", "crd", HTTPROUTE_CRD, "-o", "jsonpath={.metadata.annotations}"
    ).stdout
    assert f'"gateway.networking.k8s.io/bundle-version":"{GATEWAY_API_VERSION}"' in out
    served = kube_cluster.kubectl("api-resources", f"--api-group={GROUP}", "-o", "name").stdout
    assert "httproutes.gateway.networking.k8s.io" in served.split()


def test_httproute_valid_is_admitted_invalid_weight_is_rejected_by_the_schema(
    kube_api_client: client.ApiClient, kube_namespace: str, gateway_api: str
) -> None:
    custom = client.CustomObjectsApi(kube_api_client)
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, kube_namespace, PLURAL, route("ok", 90)
    )
    assert created["spec"]["rules"][0]["backendRefs"][0]["weight"] == 90
    with pytest.raises(ApiException) as bad:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, kube_namespace, PLURAL, route("bad", -1)
        )
    assert bad.value.status == 422
    assert "backendRefs[0].weight" in bad.value.body
    assert "should be greater than or equal to 0" in bad.value.body
