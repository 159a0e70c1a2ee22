"""The health probe of bench.killswitch: ``grpc.health.v1.Health/Check`` every 50 ms, counted.

It is measurement, so it runs in the bench's own process, while the attacker it watches for
runs in a process of its own (bench.attacker).
"""

from __future__ import annotations

import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
        self.channel = (
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
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
