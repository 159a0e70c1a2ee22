"""Issue #14, attack 1 on the controller's own port: ControllerService and its health.

Before, ``steward-controller --listen`` served eight worker threads in plaintext: eight idle
WatchRollouts from anyone who could reach the port held every worker, and the kubelet's gRPC
liveness probe on that port failed until the pod was restarted (a restart during which no
kill switch is acted on). These tests serve ControllerService the way the controller does
(controller.grpc_server) and attack it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controller.grpc_server import ServiceListen, ServingControllerService, serve_controller_service
from controller.service import RolloutBoard, add_controller_service
from infra.pki import Pki, make_pki
from ledger.errors import ConfigError
from ledger.grpc_errors import VIOLATION_CODE_KEY, VIOLATION_FIELD_KEY
from steward.v1 import controller_pb2, controller_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


def _serve(config: ServiceListen) -> tuple[ServingControllerService, RolloutBoard]:
    board = RolloutBoard()
    return serve_controller_service(config, lambda s: add_controller_service(s, board)), board


@pytest.fixture
def plaintext() -> Iterator[ServingControllerService]:
    serving, board = _serve(ServiceListen("127.0.0.1:0", health_listen="127.0.0.1:0"))
    try:
        yield serving
    finally:
        board.close()
        serving.stop(None)


def test_idle_watches_cannot_starve_health_nor_unary_calls(
    plaintext: ServingControllerService,
) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{plaintext.port}")
    stub = controller_pb2_grpc.ControllerServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        watches = [stub.WatchRollouts(controller_pb2.WatchRolloutsRequest()) for _ in range(20)]
        time.sleep(1.0)  # admitted streams stay open (an empty board sends nothing)
        refused = [c for c in watches if c.done()]  # type: ignore[misc]
        assert len(refused) == 12, f"{len(refused)} of 20 watches ended; 8 should stay open"
        for call in refused:
            md = dict(call.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert md.get(VIOLATION_CODE_KEY) == "STREAM_LIMIT", md
            assert md.get(VIOLATION_FIELD_KEY) == "max_streams_per_peer", md
        for _ in range(5):  # the lane streams cannot fill: health and unary calls answer
            started = time.monotonic()
            answer = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            stub.ListRollouts(controller_pb2.ListRolloutsRequest(), timeout=2)
            assert time.monotonic() - started < 2
        # The probe port answers too, whatever the main port holds.
        probe = grpc.insecure_channel(f"127.0.0.1:{plaintext.health_port}")
        assert (
            health_pb2_grpc.HealthStub(probe)
            .Check(health_pb2.HealthCheckRequest(), timeout=2)
            .status
            == health_pb2.HealthCheckResponse.SERVING
        )
        probe.close()
        for call in watches:
            call.cancel()
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ServiceListen("0.0.0.0:0"), "or say --insecure-plaintext"),
        (ServiceListen("127.0.0.1:0", client_ca="ca.pem"), "mutual TLS needs TLS"),
        (ServiceListen("127.0.0.1:0", tls_cert="tls.crt"), "needs both tls_cert and tls_key"),
        (ServiceListen("127.0.0.1:0", max_streams_per_peer=0), "at least 1"),
    ],
)
def test_an_unsafe_or_broken_listen_is_refused_naming_the_flag(
    config: ServiceListen, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _serve(config)


def test_the_controller_refuses_plaintext_off_loopback_before_anything_else(
    tmp_path: Path,
) -> None:
    """Exit 2 with one line, before the key is read or the ledger and cluster are dialled."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.main",
            "--ledger",
            "127.0.0.1:1",
            "--key",
            str(tmp_path / "no-such-key.pem"),
            "--namespace",
            "models",
            "--listen",
            "0.0.0.0:0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "plaintext on 0.0.0.0:0" in out.stderr and "--insecure-plaintext" in out.stderr
    assert "no-such-key" not in out.stderr  # refused before the key was looked at


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def test_mutual_tls_admits_certified_clients_only(pki: Pki) -> None:
    serving, board = _serve(
        ServiceListen(
            "127.0.0.1:0",
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_path,
        )
    )
    target = f"localhost:{serving.port}"
    try:
        cert = pki.client("release-engineer")
        with grpc.secure_channel(
            target, grpc.ssl_channel_credentials(pki.ca, cert.key, cert.cert)
        ) as channel:
            controller_pb2_grpc.ControllerServiceStub(channel).ListRollouts(
                controller_pb2.ListRolloutsRequest(), timeout=5
            )
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(pki.ca)) as anonymous:
            with pytest.raises(grpc.RpcError) as info:
                controller_pb2_grpc.ControllerServiceStub(anonymous).ListRollouts(
                    controller_pb2.ListRolloutsRequest(), timeout=5
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with grpc.insecure_channel(target) as plain, pytest.raises(grpc.RpcError):
            controller_pb2_grpc.ControllerServiceStub(plain).ListRollouts(
                controller_pb2.ListRolloutsRequest(), timeout=5
            )
    finally:
        board.close()
        serving.stop(None)
