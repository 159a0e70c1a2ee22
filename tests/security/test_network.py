"""Attack 1 of issue #14: one client must not starve the kill switch (docs/security/network.md).

A real ledger server on SQLite in its own process (``python -m ledger.server`` with its default
flags, so that the attacker's threads in this process do not share the server's interpreter),
real gRPC. ``STEWARD_TEST_SERVER_FLAGS`` adds flags, e.g. ``--append-rate-per-peer off`` for
the worst case where only the stream limits and the unary lane protect. One attacker,
unauthenticated, on the same loopback
address as everyone else, opens idle AppendStreams, idle following Reads and streams of garbage
batches; meanwhile an operator's unary ``Append`` of a ``KillSwitchEngaged`` and
``grpc.health.v1.Health/Check`` must answer within a generous multiple of their latency on the
same server without the attack, measured first in the same test.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledger.client import LedgerClient
from ledger.formats import KillScope
from ledger.grpc_errors import VIOLATION_CODE_KEY, VIOLATION_FIELD_KEY
from ledger.scenario import Cast, Flow
from ledger.server import LedgerServerConfig, serve
from steward.v1 import ledger_pb2, ledger_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
TRIALS = 8
CALL_TIMEOUT_S = 5.0


@dataclass
class Ledger:
    address: str
    client: LedgerClient
    flow: Flow
    health: health_pb2_grpc.HealthStub
    channel: grpc.Channel
    kills: int = 0

    def kill_switch_and_health(self) -> tuple[list[float], list[float]]:
        """Engage TRIALS kill switches (each on its own target) and check health after each."""
        appends, checks = [], []
        for _ in range(TRIALS):
            self.kills += 1
            event = self.flow.kill(
                KillScope("TARGET", namespace="models", deployment=f"svc-{self.kills}")
            )
            start = time.monotonic()
            self.client.append(event)
            appends.append(time.monotonic() - start)
            start = time.monotonic()
            answer = self.health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            checks.append(time.monotonic() - start)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        return appends, checks


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    cast = Cast.create()
    flow = Flow(cast)
    (tmp_path / "checkpoint.pem").write_bytes(cast.checkpoint_key.to_pem())
    port_file = tmp_path / "port"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ledger.server",
            "--db",
            str(tmp_path / "ledger.db"),
            "--checkpoint-key",
            str(tmp_path / "checkpoint.pem"),
            "--port-file",
            str(port_file),
            "--projections",
            "off",
            "--log-level",
            "WARNING",
            *os.environ.get("STEWARD_TEST_SERVER_FLAGS", "").split(),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the ledger server did not start"
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        client = LedgerClient(address, timeout=CALL_TIMEOUT_S, retries=0)
        channel = grpc.insecure_channel(address)
        client.append(flow.genesis())
        for grant in flow.grants():
            client.append(grant)
        client.append(flow.policy())
        yield Ledger(address, client, flow, health_pb2_grpc.HealthStub(channel), channel)
        channel.close()
        client.close()
    finally:
        server.terminate()
        server.wait(15)


@dataclass
class Attacker:
    """One client's worth of hostile streams; records how the server answered each."""

    target: str
    channels: list[grpc.Channel] = field(default_factory=list)
    calls: list[grpc.RpcContext] = field(default_factory=list)
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _stub(self) -> ledger_pb2_grpc.LedgerServiceStub:
        # A few connections, as one process would open: the limits count the peer, not a socket.
        if len(self.channels) < 4:
            self.channels.append(grpc.insecure_channel(self.target))
        return ledger_pb2_grpc.LedgerServiceStub(
            self.channels[len(self.calls) % len(self.channels)]
        )

    def _drain(self, call: grpc.RpcContext) -> None:
        try:
            for _ in call:  # type: ignore[attr-defined]
                pass
            outcome = ("OK", "", "")
        except grpc.RpcError as err:
            md = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
            outcome = (
                err.code().name,
                md.get(VIOLATION_CODE_KEY, ""),  # type: ignore[attr-defined]
                md.get(VIOLATION_FIELD_KEY, ""),
            )
        with self._lock:
            self.outcomes[outcome] += 1

    def _start(self, call: grpc.RpcContext) -> None:
        self.calls.append(call)
        threading.Thread(target=self._drain, args=(call,), daemon=True).start()

    def idle_append_streams(self, n: int) -> None:
        def nothing() -> Iterator[ledger_pb2.AppendBatch]:
            self.stop.wait()
            return
            yield  # a generator that sends no batch until the attack ends

        for _ in range(n):
            self._start(self._stub().AppendStream(nothing()))

    def follow_readers(self, n: int) -> None:
        for _ in range(n):
            self._start(self._stub().Read(ledger_pb2.ReadRequest(start_seq=0, follow=True)))

    def garbage_streams(self, n: int, events_per_batch: int = 256) -> None:
        def garbage() -> Iterator[ledger_pb2.AppendBatch]:
            batch_id = 0
            while not self.stop.is_set():
                batch_id += 1
                yield ledger_pb2.AppendBatch(
                    batch_id=batch_id,
                    signed_events=[os.urandom(96) for _ in range(events_per_batch)],
                )
                time.sleep(0.005)

        for _ in range(n):
            self._start(self._stub().AppendStream(garbage()))

    def leave(self) -> None:
        self.stop.set()
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            channel.close()


def _assert_heard(
    base: tuple[list[float], list[float]], attacked: tuple[list[float], list[float]]
) -> None:
    for what, before, during in (
        ("kill switch Append", base[0], attacked[0]),
        ("Health/Check", base[1], attacked[1]),
    ):
        # Generous on purpose (a shared 2-core machine): 10x the worst unloaded call, plus 250 ms.
        bound = 10 * max(before) + 0.25
        assert max(during) <= bound, (
            f"{what} under attack: max {max(during) * 1000:.0f} ms, median "
            f"{statistics.median(during) * 1000:.0f} ms; unloaded max {max(before) * 1000:.0f} ms "
            f"(bound {bound * 1000:.0f} ms)"
        )


def _attack(ledger: Ledger, *, idle: int = 0, followers: int = 0, garbage: int = 0) -> Attacker:
    attacker = Attacker(ledger.address)
    attacker.garbage_streams(garbage)  # first, so that they hold slots and keep the server decoding
    time.sleep(0.2)
    attacker.idle_append_streams(idle)
    attacker.follow_readers(followers)
    time.sleep(1.0)  # every stream has reached the server and holds (or was refused) a worker
    return attacker


def test_32_idle_append_streams_do_not_starve_the_kill_switch(ledger: Ledger) -> None:
    base = ledger.kill_switch_and_health()
    attacker = _attack(ledger, idle=32)
    try:
        _assert_heard(base, ledger.kill_switch_and_health())
    finally:
        attacker.leave()


def test_32_idle_follow_readers_do_not_starve_the_kill_switch(ledger: Ledger) -> None:
    base = ledger.kill_switch_and_health()
    attacker = _attack(ledger, followers=32)
    try:
        _assert_heard(base, ledger.kill_switch_and_health())
    finally:
        attacker.leave()


def test_500_idle_streams_100_followers_and_garbage_do_not_starve_the_kill_switch(
    ledger: Ledger,
) -> None:
    base = ledger.kill_switch_and_health()
    attacker = _attack(ledger, idle=500, followers=100, garbage=4)
    past_the_limit = 500 + 100 + 4 - LedgerServerConfig.max_streams_per_peer

    def refused() -> int:  # by the stream limit, or (garbage streams) by the peer's append rate
        return sum(
            n for (code, _, _), n in attacker.outcomes.items() if code == "RESOURCE_EXHAUSTED"
        )

    try:
        # Streams past the per-peer limit are refused with the limit named; on a busy machine
        # the last refusals may take a few seconds to arrive.
        deadline = time.monotonic() + 20
        while refused() < past_the_limit and time.monotonic() < deadline:
            time.sleep(0.1)
        assert refused() >= past_the_limit, attacker.outcomes
        assert (
            attacker.outcomes[("RESOURCE_EXHAUSTED", "STREAM_LIMIT", "max_streams_per_peer")]
            >= 500 + 100 - 32
        )
        assert all(field for code, _, field in attacker.outcomes if code == "RESOURCE_EXHAUSTED"), (
            f"every refusal names its limit: {attacker.outcomes}"
        )
        _assert_heard(base, ledger.kill_switch_and_health())
    finally:
        attacker.leave()
    assert ledger.client.head().size == 1 + len(ledger.flow.grants()) + 1 + ledger.kills, (
        "garbage must append nothing"
    )


def test_streams_are_limited_per_peer_and_in_all(tmp_path: Path) -> None:
    cast = Cast.create()
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            max_streams=6,
            max_streams_per_peer=4,
            unary_workers=2,
        )
    )
    client = LedgerClient(running.address, retries=0, timeout=CALL_TIMEOUT_S)
    attacker = Attacker(running.address)
    try:
        client.append(Flow(cast).genesis())
        attacker.follow_readers(5)
        time.sleep(1.0)
        assert attacker.outcomes == Counter(
            {("RESOURCE_EXHAUSTED", "STREAM_LIMIT", "max_streams_per_peer"): 1}
        )
        with pytest.raises(grpc.RpcError) as info:
            list(
                grpc.insecure_channel(running.address).unary_stream(
                    "/steward.v1.LedgerService/Read",
                    request_serializer=ledger_pb2.ReadRequest.SerializeToString,
                    response_deserializer=ledger_pb2.EntryMessage.FromString,
                )(ledger_pb2.ReadRequest(start_seq=0, follow=True), timeout=CALL_TIMEOUT_S)
            )
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "max_streams_per_peer is 4" in info.value.details()  # type: ignore[attr-defined]
        assert client.head().size == 1  # unary calls still have their lane
    finally:
        attacker.leave()
        client.close()
        running.stop(None)


def test_an_idle_append_stream_is_ended_and_its_slot_freed(tmp_path: Path) -> None:
    """A stream that sends nothing holds a slot and three threads; past stream_idle_seconds
    with nothing in flight it is ended (RESOURCE_EXHAUSTED, STREAM_IDLE), so a peer's idle
    streams cannot keep its slots from its own real appends. A stream that keeps sending is
    not ended, however long it lives."""
    cast = Cast.create()
    flow = Flow(cast)
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            max_streams_per_peer=3,
            stream_idle_seconds=0.5,
        )
    )
    client = LedgerClient(running.address, retries=0, timeout=CALL_TIMEOUT_S)
    channel = grpc.insecure_channel(running.address)
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    leave = threading.Event()

    def idle() -> Iterator[ledger_pb2.AppendBatch]:
        leave.wait()
        return
        yield

    def busy() -> Iterator[ledger_pb2.AppendBatch]:
        for i in range(8):  # 8 x 0.2 s: longer than the idle limit in all
            yield ledger_pb2.AppendBatch(batch_id=i)
            time.sleep(0.2)

    try:
        client.append(flow.genesis())
        idle_calls = [stub.AppendStream(idle(), timeout=30) for _ in range(2)]
        started = time.monotonic()
        assert len(list(stub.AppendStream(busy(), timeout=30))) == 8
        assert time.monotonic() - started > 1.5
        for call in idle_calls:
            with pytest.raises(grpc.RpcError) as info:
                list(call)
            err = info.value
            md = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err  # type: ignore[attr-defined]
            assert md.get(VIOLATION_CODE_KEY) == "STREAM_IDLE", md
            assert md.get(VIOLATION_FIELD_KEY) == "stream_idle_seconds", md
            assert "sent no batch for 0.5 s" in err.details()  # type: ignore[attr-defined]

        # Their slots are free again: the peer holds all three at once, and each is answered.
        def one_then_wait() -> Iterator[ledger_pb2.AppendBatch]:
            yield ledger_pb2.AppendBatch(batch_id=1)
            leave.wait()

        held = [stub.AppendStream(one_then_wait(), timeout=30) for _ in range(3)]
        assert [next(call).batch_id for call in held] == [1, 1, 1]
    finally:
        leave.set()
        channel.close()
        client.close()
        running.stop(None)


def test_reads_of_history_are_limited_per_peer_and_never_cost_the_kill_switch(
    tmp_path: Path,
) -> None:
    """Proofs and single entries are read back from disk (the tree kept as tiles), outside the
    writer's lock: a flood cannot delay an append, but it could keep a core busy. Each peer has
    a read budget; past it a read is RESOURCE_EXHAUSTED (RATE_LIMITED, read_rate_per_peer),
    while the same peer's kill switch, head and streamed Read are served, and the budget
    refills at its rate."""
    from ledger.limits import RateLimit

    cast = Cast.create()
    flow = Flow(cast)
    running = serve(
        LedgerServerConfig(
            store=tmp_path / "l.db",
            checkpoint_key=cast.checkpoint_key,
            read_rate_per_peer=RateLimit(2.0, 6),
        )
    )
    client = LedgerClient(running.address, retries=0, timeout=CALL_TIMEOUT_S)
    stub = ledger_pb2_grpc.LedgerServiceStub(grpc.insecure_channel(running.address))
    reads = [
        lambda: stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(seq=0)),
        lambda: stub.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(size1=1)),
        lambda: stub.Get(ledger_pb2.GetRequest(seq=1)),
    ]
    try:
        client.append(flow.genesis())
        for grant in flow.grants():
            client.append(grant)
        for i in range(6):  # the burst, in each kind of read
            reads[i % 3]()
        for read in reads:
            with pytest.raises(grpc.RpcError) as info:
                read()
            err = info.value
            md = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert md.get(VIOLATION_CODE_KEY) == "RATE_LIMITED", md
            assert md.get(VIOLATION_FIELD_KEY) == "read_rate_per_peer", md
            assert "read_rate_per_peer (2/s, burst 6) used up by peer ip:127.0.0.1" in (
                err.details()  # type: ignore[attr-defined]
            )
        size = client.head().size
        receipt = client.append(flow.kill(KillScope("GLOBAL")))
        assert receipt.seq == size
        assert len(list(client.read(0))) == size + 1  # reading much: a stream, not proofs
        time.sleep(0.6)  # one token back at 2/s
        assert stub.Get(ledger_pb2.GetRequest(seq=0)).seq == 0
    finally:
        client.close()
        running.stop(None)
