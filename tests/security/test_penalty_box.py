"""The penalty box (issue #14, attack 1; docs/security/network.md, "The penalty box").

A client that reopens its refused garbage streams at once made the server start, read and
refuse hundreds of streams a second, each on the cores the controller needs. Once a peer's
appends have been refused for a rate limit ``strikes`` times within the window, its
AppendStreams are held in their slot for a second and refused at the gate, and its unary
Appends other than KillSwitchEngaged are refused before they are checked, for the cool-down.

A real server on SQLite over real gRPC with mutual TLS (a throwaway CA, infra.pki), so that the
attacker and the honest clients, all on 127.0.0.1, are different peers, as in the bench.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from infra.pki import Pki, make_pki
from ledger.client import LedgerClient, LedgerRpcError
from ledger.formats import KillScope
from ledger.grpc_errors import VIOLATION_CODE_KEY, VIOLATION_FIELD_KEY
from ledger.limits import PenaltyRule, RateLimit
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, RunningServer, serve
from steward.v1 import ledger_pb2, ledger_pb2_grpc

CODE = grpc.StatusCode
ACCESS = """\
identities:
  research-infra: [append, read]
  operator-laptop: [append, read]
  bench: [append, read]
"""
RULE = PenaltyRule(strikes=3, window_s=10, cooldown_s=4)


@dataclass
class Boxed:
    running: RunningServer
    pki: Pki
    flow: Flow

    def channel(self, name: str) -> grpc.Channel:
        cert = self.pki.client(name)
        creds = grpc.ssl_channel_credentials(self.pki.ca, cert.key, cert.cert)
        return grpc.secure_channel(f"localhost:{self.running.port}", creds)

    def client(self, name: str) -> LedgerClient:
        cert = self.pki.client(name)
        return LedgerClient(
            f"localhost:{self.running.port}",
            ca_file=self.pki.ca,
            cert_file=cert.cert,
            key_file=cert.key,
            retries=0,
            timeout=10,
        )


@pytest.fixture
def boxed(tmp_path: Path) -> Iterator[Boxed]:
    cast = Cast.create()
    pki = make_pki(tmp_path)
    (tmp_path / "access.yaml").write_text(ACCESS)
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "ledger.db",
            checkpoint_key=cast.checkpoint_key,
            tls_cert=pki.server_cert,
            tls_key=pki.server_key,
            client_ca=pki.ca_path,
            access_file=tmp_path / "access.yaml",
            # A batch of 64 garbage events is always over this peer rate: each stream of them
            # is refused by the rate, one strike each, until the box takes over.
            append_rate_per_peer=RateLimit(20, 40),
            append_rate_per_principal=RateLimit(100, 1000),
            kill_switch_rate_per_peer=RateLimit(10, 100),
            penalty_box=RULE,
        )
    )
    flow = Flow(cast)
    try:
        with Boxed(running, pki, flow).client("bench") as admin:
            admin.append(flow.genesis())
            for grant in flow.grants():
                admin.append(grant)
            admin.append(flow.policy())
        yield Boxed(running, pki, flow)
    finally:
        running.stop(None)


def _garbage_stream(stub: ledger_pb2_grpc.LedgerServiceStub) -> tuple[str, str, str, float]:
    """One AppendStream of one garbage batch: (code, violation code, field, seconds)."""
    batch = ledger_pb2.AppendBatch(batch_id=1, signed_events=[os.urandom(96) for _ in range(64)])
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(stub.AppendStream(iter([batch]), timeout=10))
    err = info.value
    md = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    return (
        err.code().name,  # type: ignore[attr-defined]
        md.get(VIOLATION_CODE_KEY, ""),
        md.get(VIOLATION_FIELD_KEY, ""),
        time.monotonic() - start,
    )


def _box(boxed: Boxed, name: str) -> ledger_pb2_grpc.LedgerServiceStub:
    """Have `name` reopen refused garbage streams until it is in the box."""
    stub = ledger_pb2_grpc.LedgerServiceStub(boxed.channel(name))
    for _ in range(RULE.strikes):
        code, violation, field, _ = _garbage_stream(stub)
        assert (code, violation, field) == (
            "RESOURCE_EXHAUSTED",
            "RATE_LIMITED",
            "append_rate_per_peer",
        )
    return stub


def test_a_peer_that_reopens_refused_streams_is_boxed_and_held(boxed: Boxed) -> None:
    size = boxed.running.ledger.head().size
    stub = _box(boxed, "research-infra")
    # Boxed: each stream is refused at the gate, the limit named, after being held ~1 s, so a
    # client that reopens at once makes about one stream a second, not hundreds.
    outcomes = []
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        outcomes.append(_garbage_stream(stub))
    assert {o[:3] for o in outcomes} == {("RESOURCE_EXHAUSTED", "PENALTY_BOX", "penalty_box")}
    assert 2 <= len(outcomes) <= 3, outcomes
    assert all(o[3] >= 0.8 for o in outcomes), outcomes
    with pytest.raises(grpc.RpcError) as info:
        list(stub.AppendStream(iter([]), timeout=10))
    assert "3 rate-limit refusals within 10 s" in info.value.details()  # type: ignore[attr-defined]
    assert "peer cert:research-infra" in info.value.details()  # type: ignore[attr-defined]
    assert boxed.running.ledger.head().size == size, "garbage appends nothing"


def test_another_identity_is_not_boxed(boxed: Boxed) -> None:
    _box(boxed, "research-infra")
    with boxed.client("bench") as honest:
        proposal = honest.append(boxed.flow.propose("registry.example/model-server:v2"))
        results = honest.append_many(
            [
                boxed.flow.eval(proposal.leaf_hash, "safety", 0.99),
                boxed.flow.eval(proposal.leaf_hash, "quality", 0.91),
            ]
        )
        assert all(not isinstance(r, LedgerRpcError) for r in results), results
        started = time.monotonic()
        honest.append(boxed.flow.kill(KillScope("PROPOSAL", proposal=proposal.leaf_hash)))
        assert time.monotonic() - started < 1.0  # not held, not refused


def test_a_boxed_peer_may_still_engage_the_kill_switch_but_nothing_else(boxed: Boxed) -> None:
    """Decision: the box never stops a kill switch. The peer that must stop a rollout is often
    the client that just misbehaved (an operator's tooling in a retry loop, or the service
    behind the same certificate); its engagement still pays its own bucket
    (kill_switch_rate_per_peer) and the rules still demand an operator's signature, so a boxed
    attacker without an operator key gains nothing but a refusal."""
    _box(boxed, "operator-laptop")
    with boxed.client("operator-laptop") as operator:
        with pytest.raises(LedgerRpcError) as info:
            operator.append(boxed.flow.propose("registry.example/model-server:v3"))
        err = info.value
        assert (err.code, err.violation_code, err.field) == (
            CODE.RESOURCE_EXHAUSTED,
            "PENALTY_BOX",
            "penalty_box",
        )
        receipt = operator.append(boxed.flow.kill(KillScope("GLOBAL")))
        assert receipt.seq == boxed.running.ledger.head().size - 1
        # After the cool-down the peer is an ordinary peer again.
        time.sleep(RULE.cooldown_s)
        operator.append(boxed.flow.propose("registry.example/model-server:v4"))
