"""docs/INSTALL.md run as written: from an empty steward-system to a promoted first rollout, on
the local control plane, with the Steward pods running from the wheel as the shipped manifests
say (tests/helpers/pod_runner.py plays the kubelet; tests/e2e/test_shipped_manifests.py is the
same install driven from Python).

What the scene supplies, and why:

- `models` is the test's namespace, which exists already (the document assumes the reader's
  models run somewhere); `k8s/` is this checkout's;
- before `kubectl apply -k k8s/`: a hostPath PersistentVolume for the ledger's claim (what a
  cluster's provisioner makes), and the process kubelet started for steward-system;
- `kubectl -n steward-system port-forward svc/steward-ledger 7443:7443`: KWOK's nodes have no
  kubelet to stream a port-forward through, so the reader's background job is the harness's
  relay instead (what `PodRunner.forward` starts), listening on a free loopback port that
  `127.0.0.1:7443` stands for and connecting to the ledger Service's pod;
- before the first `steward submit`: the ledger answering through that forward (the document's
  `kubectl rollout status`, which needs a real kubelet, is marked not run here);
- `policy.yaml` is the YAML block the document shows (its selector on the test's namespace);
  `3fa2c1` is the hash `steward propose` printed.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.kube_cluster import LocalCluster
from infra.processes import free_port, wait_for
from ledger.client import LedgerClient, LedgerRpcError
from tests.docs.documents import REPO, all_documents
from tests.docs.reader import Reader, run_document
from tests.docs.runner import Scene
from tests.docs.test_kubectl_documents import plugin_path
from tests.e2e.test_shipped_manifests import uninstall
from tests.helpers.pod_runner import PodRunner
from tests.helpers.wheel_env import WheelEnvironment, installed_wheel

pytestmark = [pytest.mark.kube, pytest.mark.slow]

INSTALL = "docs/INSTALL.md"
SYSTEM = "steward-system"
PROPOSAL_HASH = r"entry hash ([0-9a-f]{64})"
START = 180.0  # seconds for the pods to start from the wheel on a loaded machine


def documented_policy() -> str:
    text = (REPO / INSTALL).read_text()
    return text.split("## 6.", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]


class Install:
    """The cluster side of the scene: the volume, the process kubelet, the port-forward."""

    def __init__(self, cluster: LocalCluster, wheel: WheelEnvironment, tmp: Path) -> None:
        self.cluster, self.wheel, self.tmp = cluster, wheel, tmp
        self.runner: PodRunner | None = None
        self.forward_port = free_port()

    def volume_and_nodes(self) -> None:
        pv_dir = self.tmp / "pv"
        pv_dir.mkdir()
        os.chown(pv_dir, 10001, 10001)  # the pod's fsGroup, as a provisioner would set it
        manifest = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"steward-ledger-install-{uuid.uuid4().hex[:8]}",
                # uninstall() removes the PersistentVolumes with this label
                "labels": {"steward.dev/test": "shipped-manifests"},
            },
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(pv_dir), "type": "Directory"},
                "claimRef": {"namespace": SYSTEM, "name": "data-steward-ledger-0"},
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        self.runner = PodRunner(self.cluster, self.wheel, self.tmp / "node", (SYSTEM,)).start()

    def port_forward_command(self) -> str:
        """The reader's `kubectl port-forward`, played by the harness's relay (module docstring)."""
        assert self.runner is not None, "the nodes start before the manifests are applied"
        spec = self.tmp / "port-forward.json"
        spec.write_text(
            json.dumps(
                {
                    "listen": [
                        [
                            f"tcp:127.0.0.1:{self.forward_port}",
                            f"route:{SYSTEM}/steward-ledger:7443",
                        ]
                    ],
                    "routes": str(self.runner.routes),
                }
            )
        )
        return f"python -m tests.helpers.pod_relay {spec}"

    def ledger_answers(self, reader: Reader) -> None:
        ledger = LedgerClient(
            f"127.0.0.1:{self.forward_port}",
            ca_file=reader.file("ca.crt"),
            cert_file=reader.file("admin.crt"),
            key_file=reader.file("admin.key"),
            timeout=10,
        )

        def answers() -> bool:
            try:
                ledger.head()
                return True
            except LedgerRpcError:
                return False

        try:
            wait_for("the ledger answering through the port-forward", answers, START)
        except Exception:
            assert self.runner is not None
            print(self.runner.diagnosis())
            raise
        finally:
            ledger.close()

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop()


def install_scene(install: Install, reader: Reader, namespace: str) -> Scene:
    reader.export("KUBECONFIG", str(install.cluster.kubeconfig))
    reader.export("PATH", plugin_path(reader, install.cluster))
    return Scene(
        placeholders={
            "k8s/": f"{REPO / 'k8s'}/",
            "namespaces=models": f"namespaces={namespace}",
            "label namespace models": f"label namespace {namespace}",
            "-n models": f"-n {namespace}",
            "--target models/": f"--target {namespace}/",
            "kubectl -n steward-system port-forward svc/steward-ledger 7443:7443": (
                install.port_forward_command
            ),
            "127.0.0.1:7443": f"127.0.0.1:{install.forward_port}",
        },
        bind={"3fa2c1": ("steward propose", PROPOSAL_HASH)},
        given={
            "kubectl apply -k": install.volume_and_nodes,
            "steward submit": lambda: install.ledger_answers(reader),
            "steward policy set": lambda: reader.file("policy.yaml").write_text(
                documented_policy().replace("namespace: models", f"namespace: {namespace}")
            ),
        },
        follow=("kubectl steward get",),
        timeout=400.0,
    )


@pytest.fixture
def install(kube_cluster: LocalCluster, tmp_path: Path) -> Iterator[Install]:
    wheel = installed_wheel()
    uninstall(kube_cluster)  # whatever an earlier test left in steward-system
    done = Install(kube_cluster, wheel, tmp_path / "cluster")
    done.tmp.mkdir()
    try:
        yield done
    finally:
        done.stop()
        uninstall(kube_cluster)


def test_install_document_runs_from_an_empty_cluster_to_a_promoted_rollout(
    install: Install, kube_namespace: str, tmp_path: Path
) -> None:
    reader = Reader(tmp_path / "reader")
    try:
        runner = run_document(
            all_documents()[INSTALL], reader, install_scene(install, reader, kube_namespace)
        )
    except BaseException:
        if install.runner is not None:
            print(install.runner.diagnosis())
        raise
    finally:
        reader.shell.close()
    status = next(r for r in runner.ran if r.example.command.startswith("kubectl steward status"))
    assert "Promoted" in status.output, status.output
    image = next(r for r in runner.ran if "jsonpath" in r.example.command)
    assert image.output.strip() == "example.com/models/model-server:v2", image.output
    assert install.runner is not None and install.runner.crash_loops() == {}, (
        install.runner.diagnosis()
    )


# The document this module runs, and the test that runs it (for the coverage check).
INSTALL_SCENES = {INSTALL: test_install_document_runs_from_an_empty_cluster_to_a_promoted_rollout}
