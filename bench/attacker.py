"""One hostile client of a ledger server, for bench.killswitch (issue #14, attack 1).

It opens idle AppendStreams, idle following Reads, and keeps streams of garbage batches going
(a refused or ended stream is opened again at once), all from one process, while a thread
asks ``grpc.health.v1.Health/Check`` every 50 ms and counts the answers.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from steward.v1 import ledger_pb2, ledger_pb2_grpc


def channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


class Attacker:
    def __init__(
        self,
        target: str,
        *,
        idle_streams: int,
        followers: int,
        garbage_streams: int,
        events_per_batch: int = 256,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.stop = threading.Event()
        self.channels = [channel(target, credentials) for _ in range(4)]
        self.calls: list[Any] = []
        self.outcomes: Counter[str] = Counter()
        self.garbage_batches = 0
        self._lock = threading.Lock()
        self._plan = (idle_streams, followers, garbage_streams, events_per_batch)

    def _stub(self, i: int) -> ledger_pb2_grpc.LedgerServiceStub:
        return ledger_pb2_grpc.LedgerServiceStub(self.channels[i % len(self.channels)])

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _drain(self, call: Any) -> None:
        try:
            for _ in call:
                pass
            self._count("OK")
        except grpc.RpcError as err:
            self._count(err.code().name)

    def _idle(self) -> Iterator[ledger_pb2.AppendBatch]:
        self.stop.wait()
        return
        yield

    def _garbage(self) -> Iterator[ledger_pb2.AppendBatch]:
        batch_id = 0
        while not self.stop.is_set():
            batch_id += 1
            with self._lock:
                self.garbage_batches += 1
            yield ledger_pb2.AppendBatch(
                batch_id=batch_id, signed_events=[os.urandom(96) for _ in range(self._plan[3])]
            )

    def _flood(self, i: int) -> None:
        while not self.stop.is_set():
            call = self._stub(i).AppendStream(self._garbage())
            self.calls.append(call)
            self._drain(call)
            time.sleep(0.01)

    def start(self) -> Attacker:
        idle, followers, garbage, _ = self._plan
        # The garbage streams first, so that they hold stream slots and keep the server
        # decoding, rather than being refused behind the idle ones.
        for i in range(garbage):
            threading.Thread(target=self._flood, args=(i,), daemon=True).start()
        time.sleep(0.5)
        for i in range(idle):
            call = self._stub(i).AppendStream(self._idle())
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        for i in range(followers):
            call = self._stub(i).Read(ledger_pb2.ReadRequest(start_seq=0, follow=True))
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        return self

    def leave(self) -> None:
        self.stop.set()
        for call in list(self.calls):
            call.cancel()
        for channel in self.channels:
            channel.close()


class HealthProbe(threading.Thread):
    """Health/Check every `every` seconds with a `timeout`; counts the SERVING answers."""

    def __init__(
        self,
        target: str,
        every: float = 0.05,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.channel = channel(target, credentials)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.every, self.timeout = every, timeout
        self.asked = self.answered = 0
        self.latencies: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.asked += 1
            start = time.monotonic()
            try:
                reply = self.stub.Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    self.answered += 1
                    self.latencies.append(time.monotonic() - start)
            except grpc.RpcError:
                pass
            self.done.wait(self.every)

    def finish(self) -> None:
        self.done.set()
        self.join(5)
        self.channel.close()
