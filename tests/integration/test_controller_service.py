"""ControllerService on a real gRPC server next to a real ledger (SQLite), fed by the controller's
replay of that ledger; and `kubectl-steward` reading it (and the ledger) as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controller.replay import Replayer
from controller.service import RolloutBoard, add_controller_service, follow_replayer, register
from controller.view import RolloutView
from infra.processes import wait_for
from ledger.client import LedgerClient
from ledger.formats import KillScope, SignedEvent
from ledger.grpc_errors import Status
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve
from ledger.store.sqlite import SQLiteLogStore
from steward.v1 import common_pb2, controller_pb2, controller_pb2_grpc

V2 = "registry.example/model-server:v2"


@dataclass
class Env:
    server: RunningServer
    client: LedgerClient
    flow: Flow
    stub: controller_pb2_grpc.ControllerServiceStub
    board: RolloutBoard
    address: str

    def ok(self, event: SignedEvent) -> bytes:
        return self.client.append(event).leaf_hash

    def approved(self, deployment: str = "model-server") -> bytes:
        p = self.ok(self.flow.propose(V2, deployment=deployment))
        evals = (
            self.ok(self.flow.eval(p, "safety", 0.99)),
            self.ok(self.flow.eval(p, "quality", 0.91)),
        )
        self.ok(self.flow.approve(p, evals, "alice"))
        self.ok(self.flow.approve(p, evals, "bob"))
        return p

    def wait_version(self, size: int, timeout: float = 10) -> None:
        """Until the replay feeding the board has folded `size` entries' worth of changes."""

        def reached() -> bool:
            _, views = self.board.snapshot()
            return bool(views) and max(v.last_seq for v in views) >= size - 1

        wait_for(f"the board to reach seq {size - 1}", reached, timeout, every=0.02)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    cast = Cast.create(seed="controller-service")
    board = RolloutBoard()
    # ControllerService shares the ledger's gRPC server, as serve(add_services=...) allows.
    running = serve(
        LedgerServerConfig(store=tmp_path / "ledger.db", checkpoint_key=cast.checkpoint_key),
        add_services=[lambda server, _ledger: add_controller_service(server, board)],
    )
    client = LedgerClient(running.address)
    flow = Flow(cast, ledger="svc", origin="steward.dev/ledger/svc")
    client.append(flow.genesis())
    for grant in flow.grants():
        client.append(grant)
    client.append(flow.policy())
    store = SQLiteLogStore(tmp_path / "ledger.db")
    stop = threading.Event()
    feeder = follow_replayer(Replayer(store), board, stop, interval=0.05)
    channel = grpc.insecure_channel(running.address)
    try:
        yield Env(
            running,
            client,
            flow,
            controller_pb2_grpc.ControllerServiceStub(channel),
            board,
            running.address,
        )
    finally:
        stop.set()
        feeder.join(5)
        channel.close()
        client.close()
        running.stop(grace=None)
        store.close()


def refused(call: Any, request: Any) -> Status:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return Status.from_rpc_error(info.value)  # type: ignore[arg-type]


def test_get_and_list_follow_the_log(env: Env) -> None:
    p = env.approved()
    env.wait_version(env.client.head().size)
    r = env.stub.GetRollout(controller_pb2.GetRolloutRequest(proposal=p), timeout=10)
    assert (r.proposal, r.namespace, r.deployment, r.phase, r.step, r.weight) == (
        p,
        "models",
        "model-server",
        "PENDING",
        0,
        0,
    )
    assert list(r.approvals) == ["human:alice@example.org", "human:bob@example.org"]
    assert (r.approvals_required, r.candidate_image, r.kill_switch) == (2, V2, False)
    assert r.last_seq == env.client.head().size - 1

    env.ok(env.flow.step(p, 0, 10, "STARTED"))
    env.wait_version(env.client.head().size)
    (listed,) = env.stub.ListRollouts(controller_pb2.ListRolloutsRequest(), timeout=10).rollouts
    assert (listed.phase, listed.step, listed.weight, listed.stable_image) == (
        "STARTED",
        0,
        10,
        "registry.example/model-server:v1",
    )


def test_refusals_name_the_field(env: Env) -> None:
    missing = refused(env.stub.GetRollout, controller_pb2.GetRolloutRequest(proposal=b"\x07" * 32))
    assert (missing.code, missing.violation_code, missing.field) == (
        grpc.StatusCode.NOT_FOUND,
        "PROPOSAL_NOT_FOUND",
        "proposal",
    )
    short = refused(env.stub.GetRollout, controller_pb2.GetRolloutRequest(proposal=b"\x07" * 5))
    assert (short.code, short.field) == (grpc.StatusCode.INVALID_ARGUMENT, "proposal")
    assert "32-byte" in short.message
    phase = refused(env.stub.ListRollouts, controller_pb2.ListRolloutsRequest(phase="DONE"))
    assert (phase.code, phase.field) == (grpc.StatusCode.INVALID_ARGUMENT, "phase")


def test_list_pages_and_filters(env: Env) -> None:
    hashes = [env.approved(f"model-{i}") for i in range(3)]
    env.wait_version(env.client.head().size)
    first = env.stub.ListRollouts(
        controller_pb2.ListRolloutsRequest(page=common_pb2.PageRequest(page_size=2)), timeout=10
    )
    assert [r.proposal for r in first.rollouts] == hashes[:2] and first.page.next_page_token
    rest = env.stub.ListRollouts(
        controller_pb2.ListRolloutsRequest(
            page=common_pb2.PageRequest(page_size=2, page_token=first.page.next_page_token)
        ),
        timeout=10,
    )
    assert [r.proposal for r in rest.rollouts] == hashes[2:] and not rest.page.next_page_token
    other = refused(
        env.stub.ListRollouts,
        controller_pb2.ListRolloutsRequest(
            deployment="model-1", page=common_pb2.PageRequest(page_token=first.page.next_page_token)
        ),
    )
    assert (other.code, other.violation_code) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    only = env.stub.ListRollouts(
        controller_pb2.ListRolloutsRequest(deployment="model-1"), timeout=10
    )
    assert [r.proposal for r in only.rollouts] == [hashes[1]]


def test_watch_sends_the_current_state_then_each_change(env: Env) -> None:
    p = env.approved()
    other = env.approved("other-model")
    env.wait_version(env.client.head().size)
    stream = env.stub.WatchRollouts(controller_pb2.WatchRolloutsRequest(proposal=p), timeout=30)
    first = next(stream)
    assert (first.proposal, first.phase) == (p, "PENDING")

    started = time.monotonic()
    env.ok(env.flow.step(p, 0, 10, "STARTED"))
    second = next(stream)
    assert (second.phase, second.weight) == ("STARTED", 10)
    assert time.monotonic() - started < 5

    env.ok(env.flow.kill(KillScope("TARGET", "models", "other-model")))  # not this rollout's
    env.ok(env.flow.kill(KillScope("PROPOSAL", proposal=p)))
    third = next(stream)
    assert third.kill_switch and third.proposal == p
    stream.cancel()
    assert other != p


def test_register_serves_the_controller_loops_views(env: Env) -> None:
    """steward-controller's hook: the board follows Controller.add_listener."""

    class FakeController:
        views: list[RolloutView] = []

        def __init__(self) -> None:
            self.listeners: list[Any] = []

        def add_listener(self, fn: Any) -> None:
            self.listeners.append(fn)

    ctl = FakeController()
    server = grpc.server(__import__("concurrent.futures").futures.ThreadPoolExecutor(max_workers=4))
    board = register(server, ctl)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        view = RolloutView(
            b"\x01" * 32,
            "models",
            "m",
            "STARTED",
            "Progressing",
            0,
            10,
            ("human:a",),
            2,
            7,
            V2,
            "v1",
            3,
            1,
            3,
            1,
            0,
            "",
            "canary pods ready 0/1",
        )
        (listener,) = ctl.listeners
        listener([view])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = controller_pb2_grpc.ControllerServiceStub(channel)
            got = stub.GetRollout(
                controller_pb2.GetRolloutRequest(proposal=b"\x01" * 32), timeout=10
            )
        assert (got.message, got.weight, board.version) == ("canary pods ready 0/1", 10, 1)
        listener([view])  # the same view again is not a change
        assert board.version == 1
    finally:
        server.stop(None)


# -------------------------------------------------------------------------------- the plugin


def plugin(*args: str, env_vars: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("KUBECONFIG", "STEWARD_SERVER", "STEWARD_CONTROLLER")
    }
    env["HOME"] = env.get("HOME", "/nonexistent")
    env.update(env_vars or {})
    return subprocess.run(
        [sys.executable, "-m", "controller.kubectl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_plugin_reads_the_controller_and_the_ledger(env: Env, tmp_path: Path) -> None:
    p = env.approved()
    env.ok(env.flow.step(p, 0, 10, "STARTED"))
    env.wait_version(env.client.head().size)
    no_kube = {"KUBECONFIG": str(tmp_path / "absent-kubeconfig")}
    via_controller = plugin("list", "--controller", env.address, env_vars=no_kube)
    assert via_controller.returncode == 0, via_controller.stderr
    assert (
        f"model-server-{p.hex()[:10]}" in via_controller.stdout
        and "Progressing" in via_controller.stdout
    )

    via_ledger = plugin("get", p.hex()[:8], "--server", env.address, env_vars=no_kube)
    assert via_ledger.returncode == 0, via_ledger.stderr
    assert "Status:" in via_ledger.stdout and "◌ Progressing" in via_ledger.stdout
    assert (
        "Approvals:" in via_ledger.stdout
        and "2/2 (human:alice@example.org, human:bob@example.org)" in via_ledger.stdout
    )
    assert "Step:" in via_ledger.stdout

    history = plugin("history", p.hex()[:8], "--server", env.address, env_vars=no_kube)
    assert history.returncode == 0, history.stderr
    kinds = [line.split()[3] for line in history.stdout.splitlines()]
    assert kinds == [
        "ProposalSubmitted",
        "EvalRecorded",
        "EvalRecorded",
        "ApprovalRecorded",
        "ApprovalRecorded",
        "RolloutStep",
    ]

    waiting = plugin(
        "status",
        p.hex()[:8],
        "--server",
        env.address,
        "--timeout",
        "1.5",
        "--interval",
        "0.3",
        env_vars=no_kube,
    )
    assert waiting.returncode == 2, waiting.stdout + waiting.stderr
    assert (
        "Progressing, step 0, weight 10%" in waiting.stdout
        and "still Progressing" in waiting.stderr
    )
    watched = plugin(
        "get",
        p.hex()[:8],
        "-w",
        "--timeout",
        "1",
        "--interval",
        "0.3",
        "--server",
        env.address,
        env_vars=no_kube,
    )
    frames = watched.stdout.count("Name:")  # a pipe gets whole frames, one per change (ages tick)
    assert (
        watched.returncode == 0
        and 1 <= frames <= 4
        and watched.stdout.count("⟳ model-server-") == frames
    )

    env.ok(env.flow.step(p, 0, 0, "ROLLED_BACK", reason="unhealthy canary"))
    status = plugin(
        "status", p.hex()[:8], "--controller", env.address, "--timeout", "20", env_vars=no_kube
    )
    assert status.returncode == 1, status.stdout + status.stderr
    assert "RolledBack" in status.stdout

    unknown = plugin("get", "abcdef", "--server", env.address, env_vars=no_kube)
    assert unknown.returncode == 2 and "no proposal hash starting with it" in unknown.stderr


# -------------------------------------------------------------------------------- metrics


def test_metrics_endpoint_reports_rollouts_counts_and_kill_reaction(
    env: Env, tmp_path: Path
) -> None:
    """controller.metrics.serve on a controller-shaped object with a real replay of the ledger."""
    import dataclasses
    import types
    import urllib.request

    from controller import metrics

    p = env.approved()
    env.ok(env.flow.step(p, 0, 10, "STARTED"))
    kill_seq = env.client.append(env.flow.kill(KillScope("PROPOSAL", proposal=p))).seq
    store = SQLiteLogStore(tmp_path / "ledger.db")
    replayer = Replayer(store)
    replayer.catch_up()
    listeners: list[Any] = []
    ctl = types.SimpleNamespace(
        replayer=replayer,
        executor=types.SimpleNamespace(ledger=env.client),
        is_leader=True,
        add_listener=listeners.append,
    )
    server = metrics.serve(ctl, "127.0.0.1:0")  # type: ignore[arg-type]
    try:
        (listener,) = listeners
        from controller.view import rollout_views

        (view,) = rollout_views(replayer.state, {})
        listener(
            [dataclasses.replace(view, canary_replicas=1)]
        )  # the kill is folded, canary still up
        listener([dataclasses.replace(view, canary_replicas=0)])  # observed stopped
        deadline = time.monotonic() + 10
        registry = server.metrics.registry
        while time.monotonic() < deadline and not registry.get_sample_value(  # the worker's lookup
            "steward_kill_switch_reaction_seconds_count"
        ):
            time.sleep(0.02)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        received = env.client.get(kill_seq).entry.received_at
        assert received > 0
        lines = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
        assert float(lines["steward_kill_switch_reaction_seconds_count"]) == 1.0
        assert (
            float(lines["steward_events_applied_total"]) == replayer.state.applied == kill_seq + 1
        )
        assert float(lines["steward_invalid_events_total"]) == 0.0
        assert float(lines["steward_controller_leader"]) == 1.0
        target, proposal = 'deployment="model-server",namespace="models"', f'proposal="{p.hex()}"'
        assert float(lines[f'steward_rollout_phase{{{target},phase="STARTED",{proposal}}}']) == 1.0
        assert float(lines[f'steward_rollout_phase{{{target},phase="PENDING",{proposal}}}']) == 0.0
        assert float(lines[f"steward_rollout_weight{{{target},{proposal}}}"]) == 10.0
    finally:
        server.stop()
        store.close()
