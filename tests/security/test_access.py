"""Attack 9 of issue #14: access beyond signatures (docs/security/network.md).

Real servers on SQLite over real gRPC with TLS; certificates come from a throwaway CA
(infra.pki). With mutual TLS an access file maps certificate names to permissions;
appends are rate limited per peer and per signing principal; plaintext off loopback and
optional client certificates must be asked for.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from infra.pki import ClientCert, Pki, make_pki
from ledger.client import LedgerClient, LedgerRpcError
from ledger.errors import ConfigError
from ledger.formats import KillScope
from ledger.limits import RateLimit
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, projections_service, serve
from steward.v1 import ledger_pb2, ledger_pb2_grpc, query_pb2, query_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CODE = grpc.StatusCode
ACCESS = """\
identities:
  ops-admin: [append, read, query, admin]
  research-infra: [append, read]
  auditor.steward.test: [read]      # a DNS subject alternative name
  dashboard: [query]
"""


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
def mtls(tmp_path: Path, pki: Pki) -> Iterator[tuple[RunningServer, Cast]]:
    cast = Cast.create()
    (tmp_path / "access.yaml").write_text(ACCESS)
    stop = threading.Event()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            checkpoint_every_ms=0,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_path,
            access_file=tmp_path / "access.yaml",
        ),
        add_services=[projections_service(f"sqlite:///{tmp_path / 'ledger.db'}", stop)],
    )
    try:
        with _client(running, pki, pki.client("ops-admin")) as admin:
            flow = Flow(cast)
            admin.append(flow.genesis())
            admin.checkpoint(publish_now=True)
        yield running, cast
    finally:
        stop.set()
        running.stop(None)


def _client(running: RunningServer, pki: Pki, cert: ClientCert | None) -> LedgerClient:
    return LedgerClient(
        f"localhost:{running.port}",
        ca_file=pki.ca,
        cert_file=cert.cert if cert else None,
        key_file=cert.key if cert else None,
        retries=0,
        timeout=5,
    )


def _channel(running: RunningServer, pki: Pki, cert: ClientCert) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(pki.ca, cert.key, cert.cert)
    return grpc.secure_channel(f"localhost:{running.port}", creds)


def _denied(call: object, method: str, permission: str) -> None:
    with pytest.raises(LedgerRpcError) as info:
        call()  # type: ignore[operator]
    err = info.value
    assert err.code == CODE.PERMISSION_DENIED, err
    assert method in err.message and repr(permission) in err.message, err.message
    assert err.field == permission


def test_a_reader_may_read_but_not_append_nor_force_checkpoints(
    mtls: tuple[RunningServer, Cast], pki: Pki
) -> None:
    running, cast = mtls
    with _client(running, pki, pki.client("reader-cn", dns=("auditor.steward.test",))) as reader:
        assert [e.seq for e in reader.read(0)] == [0]
        assert reader.head().size == 1
        reader.checkpoint()
        _denied(
            lambda: reader.append(Flow(cast).grant("alice")),
            "/steward.v1.LedgerService/Append",
            "append",
        )
        _denied(
            lambda: reader.checkpoint(publish_now=True),
            "/steward.v1.LedgerService/GetCheckpoint with publish_now",
            "admin",
        )
    assert running.ledger.head().size == 1


def test_reflection_needs_admin_and_query_needs_query(
    mtls: tuple[RunningServer, Cast], pki: Pki
) -> None:
    running, _cast = mtls
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for name, allowed in (("research-infra", False), ("ops-admin", True)):
        with _channel(running, pki, pki.client(name)) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            if allowed:
                (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
                assert answer.list_services_response.service
            else:
                with pytest.raises(grpc.RpcError) as info:
                    list(stub.ServerReflectionInfo(iter([request]), timeout=5))
                assert info.value.code() == CODE.PERMISSION_DENIED  # type: ignore[attr-defined]
                assert "'admin'" in info.value.details()  # type: ignore[attr-defined]
    for name, allowed in (("dashboard", True), ("research-infra", False)):
        with _channel(running, pki, pki.client(name)) as channel:
            query = query_pb2_grpc.QueryServiceStub(channel)
            if allowed:
                query.ListProposals(query_pb2.ListProposalsRequest(), timeout=5)
            else:
                with pytest.raises(grpc.RpcError) as info:
                    query.ListProposals(query_pb2.ListProposalsRequest(), timeout=5)
                assert info.value.code() == CODE.PERMISSION_DENIED  # type: ignore[attr-defined]
                assert "ListProposals needs the permission 'query'" in info.value.details()  # type: ignore[attr-defined]


def test_an_unknown_identity_gets_nothing_but_health(
    mtls: tuple[RunningServer, Cast], pki: Pki
) -> None:
    running, cast = mtls
    stranger = pki.client("stranger")
    with _client(running, pki, stranger) as client:
        _denied(client.head, "/steward.v1.LedgerService/GetHead", "read")
        _denied(lambda: list(client.read(0)), "/steward.v1.LedgerService/Read", "read")
        _denied(
            lambda: client.append(Flow(cast).grant("alice")),
            "/steward.v1.LedgerService/Append",
            "append",
        )
    with _channel(running, pki, stranger) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_client_ca_alone_requires_client_certificates(tmp_path: Path, pki: Pki) -> None:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_path,
        )
    )
    try:
        with _client(running, pki, None) as anonymous, pytest.raises(LedgerRpcError) as info:
            anonymous.head()
        assert info.value.code == CODE.UNAVAILABLE  # the handshake fails
        with _client(running, pki, pki.client("anyone")) as certified:
            assert certified.head().size == 0
    finally:
        running.stop(None)
    # Optional client certificates only when asked for.
    optional = serve(
        LedgerServerConfig(
            store=tmp_path / "m.db",
            checkpoint_key=cast.checkpoint_key,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_path,
            require_client_cert=False,
        )
    )
    try:
        with _client(optional, pki, None) as anonymous:
            assert anonymous.head().size == 0
    finally:
        optional.stop(None)


def test_plaintext_off_loopback_needs_the_explicit_flag(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cast = Cast.create()
    with pytest.raises(ConfigError, match=r"plaintext on 0\.0\.0\.0:0.*--insecure-plaintext"):
        serve(
            LedgerServerConfig(
                store=tmp_path / "l.db", checkpoint_key=cast.checkpoint_key, listen="0.0.0.0:0"
            )
        )
    caplog.set_level(logging.WARNING, logger="ledger.server")
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            listen="0.0.0.0:0",
            insecure_plaintext=True,
        )
    )
    running.stop(None)
    assert "insecure_plaintext listen=0.0.0.0:0" in caplog.text
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ledger.server",
            "--db",
            str(tmp_path / "c.db"),
            "--checkpoint-key",
            str(_key_file(tmp_path, cast)),
            "--listen",
            "0.0.0.0:0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--insecure-plaintext" in out.stderr, out.stderr


def _key_file(tmp_path: Path, cast: Cast) -> Path:
    path = tmp_path / "checkpoint.pem"
    if not path.exists():
        path.write_bytes(cast.checkpoint_key.to_pem())
    return path


def test_steward_serve_serves_mutual_tls_with_an_access_file(tmp_path: Path, pki: Pki) -> None:
    cast = Cast.create()
    (tmp_path / "access.yaml").write_text(ACCESS)
    admin = pki.client("ops-admin")
    (tmp_path / "admin.pem").write_bytes(admin.cert)
    (tmp_path / "admin.key").write_bytes(admin.key)
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.cli",
            "serve",
            "--db",
            str(tmp_path / "l.db"),
            "--checkpoint-key",
            str(_key_file(tmp_path, cast)),
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--tls-cert",
            str(pki.server_cert),
            "--tls-key",
            str(pki.server_key),
            "--client-ca",
            str(pki.ca_path),
            "--access-file",
            str(tmp_path / "access.yaml"),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None, server.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        port = int(port_file.read_text())
        with LedgerClient(
            f"localhost:{port}", ca_file=pki.ca, cert_file=admin.cert, key_file=admin.key
        ) as client:
            client.append(Flow(cast).genesis())
        # The steward CLI presents its certificate from the environment.
        env = {
            **os.environ,
            "STEWARD_SERVER": f"localhost:{port}",
            "STEWARD_TLS_CA": str(pki.ca_path),
            "STEWARD_TLS_CERT": str(tmp_path / "admin.pem"),
            "STEWARD_TLS_KEY": str(tmp_path / "admin.key"),
        }
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "checkpoint", "--publish"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        env.pop("STEWARD_TLS_CERT"), env.pop("STEWARD_TLS_KEY")
        out = subprocess.run(
            [sys.executable, "-m", "ledger.cli", "checkpoint", "--timeout", "3"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0  # no certificate, no call
    finally:
        server.terminate()
        server.wait(15)


# --------------------------------------------------------------------------------------------
# Rate limits


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[RunningServer, LedgerClient, Flow]]:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            append_rate_per_peer=RateLimit(1, 60),
            append_rate_per_principal=RateLimit(0.2, 20),
            kill_switch_rate_per_peer=RateLimit(1, 5),
        )
    )
    client = LedgerClient(running.address, retries=0, timeout=5)
    flow = Flow(cast)
    client.append(flow.genesis())
    for grant in flow.grants():
        client.append(grant)
    client.append(flow.policy())
    try:
        yield running, client, flow
    finally:
        client.close()
        running.stop(None)


def test_one_agent_cannot_flood_proposals(
    limited: tuple[RunningServer, LedgerClient, Flow],
) -> None:
    running, client, flow = limited
    for i in range(20):  # the burst of principal agent:researcher-7
        client.append(flow.propose(f"registry.example/model-server:v{i}"))
    size = running.ledger.head().size
    with pytest.raises(LedgerRpcError) as info:
        client.append(flow.propose("registry.example/model-server:flood"))
    err = info.value
    assert (err.code, err.violation_code, err.field) == (
        CODE.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
        "append_rate_per_principal",
    )
    assert "principal agent:researcher-7" in err.message
    assert running.ledger.head().size == size
    # Another principal on the same connection is not held back by the agent's flood.
    client.append(flow.eval(client.read(size - 1).__next__().leaf_hash, "safety", 0.99))


def test_a_peer_over_its_rate_can_still_engage_the_kill_switch(
    limited: tuple[RunningServer, LedgerClient, Flow],
) -> None:
    running, client, flow = limited
    garbage = [os.urandom(64) for _ in range(64)]
    stub = ledger_pb2_grpc.LedgerServiceStub(grpc.insecure_channel(running.address))
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.AppendStream(
                iter([ledger_pb2.AppendBatch(batch_id=1, signed_events=garbage)]), timeout=5
            )
        )
    assert info.value.code() == CODE.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "append_rate_per_peer" in info.value.details()  # type: ignore[attr-defined]
    for _ in range(60):  # garbage by unary Append until the peer's bucket is empty
        with pytest.raises(LedgerRpcError) as refused:
            client.append(os.urandom(64))
        if refused.value.code == CODE.RESOURCE_EXHAUSTED:
            break
    assert refused.value.field == "append_rate_per_peer", refused.value
    assert "peer ip:127.0.0.1" in refused.value.message
    size = running.ledger.head().size
    receipt = client.append(flow.kill(KillScope("GLOBAL")))  # its own bucket
    assert receipt.seq == size


def test_a_reader_waits_for_the_periodic_checkpoint_rather_than_ordering_one(
    mtls: tuple[RunningServer, Cast], pki: Pki
) -> None:
    """A proof of an entry no checkpoint covers yet would have the server sign and store a
    checkpoint for the caller: a read-only identity asking for the newest entry after every
    append would double the server's writes. It waits for the periodic publisher instead
    (here there is none, so it is told to retry); an identity that may append still gets its
    proof at once, with the checkpoint published for it."""
    running, cast = mtls
    flow = Flow(cast)
    with _client(running, pki, pki.client("ops-admin")) as admin:
        admin.append(flow.grant("alice"))
    published = len(running.ledger.checkpoints())
    with _client(running, pki, pki.client("reader-cn", dns=("auditor.steward.test",))) as reader:
        for ask in (lambda: reader.inclusion_proof(1), lambda: reader.consistency_proof(2)):
            with pytest.raises(LedgerRpcError) as info:
                ask()
            err = info.value
            assert err.code == CODE.UNAVAILABLE, err
            assert err.violation_code == "CHECKPOINT_PENDING", err
            assert "needs 'append' or 'admin'" in err.message, err.message
        assert len(running.ledger.checkpoints()) == published
        # A proof against a size some checkpoint covers needs nothing new: the reader gets it.
        assert reader.inclusion_proof(0, tree_size=1).tree_size == 1
    with _client(running, pki, pki.client("research-infra")) as writer:
        assert writer.inclusion_proof(1).tree_size == 2
    assert len(running.ledger.checkpoints()) == published + 1
