"""docs/KUBECTL.md and `kubectl steward --help` run as written: kubectl finds `kubectl-steward` on
PATH and runs it against the local control plane, a ledger server and a steward-controller that
serves ControllerService, the world the e2e fixtures start (tests/e2e/conftest.py).

Both documents run in one test against one world (one cluster, one ledger, one controller: CI
has two cores), the reference first, then the --help text. A reference is not a story: `status`
waits for a rollout to end but comes before `approve`, and `approve` comes before `kill` of the
same `3fa2c1`. So `3fa2c1` names, at each point, the proposal the command is for:

- from `list` to `history`: a rollout alice and bob approved, held at its health-gated 50% step
  when `list` runs. Before `status` the monitor reports on that step: healthy for KUBECTL.md
  (`status` exits 0, promoted), unhealthy for the --help text (1, rolled back), so both endings
  the documents promise are seen;
- from `approve` on: a newer proposal of the same Deployment, evaluated, awaiting decisions;
- the --help text's subcommand examples (from `get model-server-3fa2c1d4e5 -n models -w` on):
  the rollout again, which has ended, so that `status` sees it end (a proposal that never
  started waits out its whole `--timeout`);
- from `pause` on (the last subcommands of the --help text): a new rollout, held at its gated
  step, once the global switch the text's `release --all --out` began is released; it is
  paused, resumed, aborted, its switch released and retried.

Between the documents the reader does what KUBECTL.md's last `release` says comes next: bob
signs release.evt (`steward sign`) and it is submitted (`steward submit`), releasing the global
kill switch, so the --help text's rollout can start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from kubernetes import client

from infra.kube_cluster import LocalCluster
from infra.processes import free_port, wait_for
from ledger.export import write_trust_root
from tests.docs.documents import all_documents
from tests.docs.reader import Reader, run_document
from tests.docs.runner import Ran, Scene
from tests.e2e.conftest import (  # noqa: F401  (fixtures: the e2e world, reused)
    Controllers,
    Ledger,
    controllers,
    crd_installed,
    ledger,
    target,
)
from tests.helpers.keys import write_principal_key

pytestmark = pytest.mark.kube

DOCUMENTS = all_documents()
REFERENCE, HELP = "docs/KUBECTL.md", "kubectl steward --help"
DEPLOYMENT = "model-server"  # the e2e fixtures' target Deployment
CANARY = f"{DEPLOYMENT}-canary"
GATED_STEP = 1  # the e2e policy's 50% step, which waits for a healthy report


@dataclass
class World:
    """The e2e world, and which proposal `3fa2c1` names now."""

    ledger: Ledger
    namespace: str
    controller: str  # ControllerService's address
    cluster: LocalCluster
    apps: client.AppsV1Api
    proposal: bytes = b""
    rollout: bytes = b""  # the latest proposal approved to roll out
    images: int = 1  # v1 runs; each proposal brings the next version

    def next_image(self) -> str:
        self.images += 1
        return f"registry.example/{DEPLOYMENT}:v{self.images}"

    def rollout_held_at_the_gate(self) -> None:
        """An approved proposal rolling out, held at the gated step with its canary ready and
        the controller saying why it waits (what `get` shows as `Message:`)."""
        self.proposal = self.rollout = self.ledger.approved(self.namespace, self.next_image())[0]
        wait_for(
            "the rollout at its gated step",
            lambda: (GATED_STEP, 50, "ADVANCED") in self.ledger.steps(self.proposal),
            90,
        )
        wait_for("a ready canary", self.canary_ready, 90)
        wait_for(
            "the controller's reason for waiting",
            lambda: (lambda view: view is not None and view.step == GATED_STEP and view.message)(
                self.controller_view(self.proposal)
            ),
            30,
        )

    def monitor_reports(self, healthy: bool) -> None:
        self.ledger.ok(self.ledger.flow.health(self.proposal, GATED_STEP, healthy))

    def awaiting_decisions(self) -> None:
        """A newer proposal with passing evals, known to the controller (which `approve`
        resolves `3fa2c1` through)."""
        self.proposal = self.ledger.propose(self.namespace, self.next_image())
        self.ledger.evaluate(self.proposal)
        wait_for(
            "the controller to know the new proposal",
            lambda: self.controller_view(self.proposal),
            30,
        )

    def back_to_the_rollout(self) -> None:
        self.proposal = self.rollout

    def running_again(self, reader: Reader) -> None:
        """The --help text's pause, resume, abort and retry act on a running rollout: the reader
        has the global switch its `release --all ... --out release.evt` began released (bob
        signs, it is submitted, as between the documents), and a new approved rollout is held
        at the gated step."""
        for step in ("steward sign release.evt --key bob.pem", "steward submit release.evt"):
            code, output = reader.shell.run(step, 60)
            assert code == 0, f"{step}: exited {code}\n{output}"
        self.rollout_held_at_the_gate()

    def rolled_back(self) -> None:
        """`retry` follows `abort`: the controller has rolled the rollout back by then."""
        wait_for(
            "the abort's rollback", lambda: self.ledger.phase(self.proposal) == "ROLLED_BACK", 60
        )

    def verifiable(self, reader: Reader) -> None:
        """The auditor's pinned roots; and the cluster settled after the rollout ended, since
        `--check-cluster` compares it with the log."""
        write_trust_root(self.ledger.client, reader.file("trust.json"))
        wait_for("the canary removed after the rollout ended", lambda: not self.canary_exists(), 90)

    # -- reading the world ----------------------------------------------------------------

    def controller_view(self, proposal: bytes) -> object | None:
        from steward.v1 import controller_pb2, controller_pb2_grpc

        with grpc.insecure_channel(self.controller) as channel:
            try:
                return controller_pb2_grpc.ControllerServiceStub(channel).GetRollout(
                    controller_pb2.GetRolloutRequest(proposal=proposal), timeout=5
                )
            except grpc.RpcError:
                return None

    def _canary(self) -> client.V1Deployment | None:
        try:
            return self.apps.read_namespaced_deployment(CANARY, self.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def canary_ready(self) -> bool:
        canary = self._canary()
        return canary is not None and (canary.status.ready_replicas or 0) >= (
            canary.spec.replicas or 1
        )

    def canary_exists(self) -> bool:
        return self._canary() is not None


def plugin_path(reader: Reader, cluster: LocalCluster) -> str:
    """This checkout's scripts, the cluster's kubectl, then the rest of PATH without directories
    that hold another `kubectl-steward` (kubectl would warn that one shadows the other, and
    `kubectl plugin list` exits 1 on warnings)."""
    rest = [
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "kubectl-steward").exists()
    ]
    return os.pathsep.join([str(reader.bin), str(cluster.bin_dir), *rest])


def kubectl_scene(world: World, reader: Reader, *, healthy: bool) -> Scene:
    """What both documents assume: the reader holds alice's, bob's and on-call's keys and has
    exported where the ledger, the controller and the cluster are; `models` is the test's
    namespace; `3fa2c1` is the proposal of the moment (module docstring)."""
    for who in ("alice", "bob", "oncall"):
        write_principal_key(world.ledger.cast, who, reader.workdir)
    reader.export("STEWARD_SERVER", world.ledger.address)
    reader.export("STEWARD_CONTROLLER", world.controller)
    reader.export("KUBECONFIG", str(world.cluster.kubeconfig))
    reader.export("PATH", plugin_path(reader, world.cluster))
    return Scene(
        placeholders={
            f"{DEPLOYMENT}-3fa2c1d4e5": lambda: f"{DEPLOYMENT}-{world.proposal.hex()[:10]}",
            "3fa2c1": lambda: world.proposal.hex()[:6],
            "-n models": f"-n {world.namespace}",
            f"models/{DEPLOYMENT}": f"{world.namespace}/{DEPLOYMENT}",
        },
        given={
            "kubectl steward list": world.rollout_held_at_the_gate,
            "kubectl steward status": lambda: world.monitor_reports(healthy),
            "kubectl steward approve": world.awaiting_decisions,
            "kubectl steward verify": lambda: world.verifiable(reader),
            f"kubectl steward get {DEPLOYMENT}-3fa2c1d4e5 -n models -w": world.back_to_the_rollout,
            "kubectl steward pause": lambda: world.running_again(reader),
            "kubectl steward retry": world.rolled_back,
            # "Plain kubectl" shows the promoted rollout's conditions and Events (the proposal
            # of the moment by then is the one `reject` vetoed, which never completes).
            "kubectl get modelrollouts": world.back_to_the_rollout,
        },
        follow=(
            "kubectl steward get 3fa2c1 -n models -w",
            f"kubectl steward get {DEPLOYMENT}-3fa2c1d4e5 -n models -w",
        ),
        exit_codes={"kubectl steward status": 0 if healthy else 1},
    )


def _output_of(ran: list[Ran], prefix: str) -> str:
    return next(r.output for r in ran if r.example.command.startswith(prefix))


def test_kubectl_documents_run_as_written(
    tmp_path: Path,
    ledger: Ledger,  # noqa: F811  (the fixture imported above)
    controllers: Controllers,  # noqa: F811
    kube_cluster: LocalCluster,
    kube_namespace: str,
    apps: client.AppsV1Api,
) -> None:
    port = free_port()
    controllers.start("ctl-a", "--listen", f"127.0.0.1:{port}")
    world = World(ledger, kube_namespace, f"127.0.0.1:{port}", kube_cluster, apps)
    reference, helped = Reader(tmp_path / "reference"), Reader(tmp_path / "help")
    try:
        ran = run_document(
            DOCUMENTS[REFERENCE], reference, kubectl_scene(world, reference, healthy=True)
        ).ran
        status = _output_of(ran, "kubectl steward status")
        assert "Promoted" in status, status
        assert "kubectl-steward" in _output_of(ran, "kubectl plugin list")

        # The reference's last `release` wrote release.evt; as its comment says, a second
        # approver signs it and it is submitted, which releases the global kill switch.
        for step in ("steward sign release.evt --key bob.pem", "steward submit release.evt"):
            code, output = reference.shell.run(step, 60)
            assert code == 0, f"{step}: exited {code}\n{output}"

        ran = run_document(DOCUMENTS[HELP], helped, kubectl_scene(world, helped, healthy=False)).ran
        status = _output_of(ran, "kubectl steward status")
        assert "RolledBack" in status, status
    finally:
        reference.shell.close()
        helped.shell.close()


# The documents this module runs, and the test that runs them (for the coverage check).
KUBECTL_SCENES = dict.fromkeys((REFERENCE, HELP), test_kubectl_documents_run_as_written)
