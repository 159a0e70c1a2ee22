"""The gRPC server of ``steward-controller --listen``: ControllerService and health, hardened
like the ledger's (docs/security/network.md).

Before issue #14 it was eight worker threads on plaintext: eight idle ``WatchRollouts`` from
anyone who could reach the port held every worker, and the kubelet's gRPC liveness probe on
the same port then failed until the pod was restarted (a restart during which no kill switch
is acted on). Now every stream takes a slot first (``max_streams``, ``max_streams_per_peer``;
refusals are RESOURCE_EXHAUSTED STREAM_LIMIT), ``unary_workers`` threads stay for unary calls
(health checks, Get, List), plaintext off loopback must be asked for, and TLS (mutual with a
client CA) comes from files; ``health_listen`` serves health alone, plaintext, for probes that
cannot present a certificate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ledger.access import ServerGate
from ledger.errors import ConfigError
from ledger.limits import StreamSlots
from ledger.server_tls import server_credentials

log = logging.getLogger("steward.controller.grpc")


@dataclass(frozen=True)
class ServiceListen:
    """Where and how ``steward-controller`` serves ControllerService."""

    listen: str
    tls_cert: str | Path | None = None
    tls_key: str | Path | None = None
    client_ca: str | Path | None = None  # mutual TLS: client certificates required
    insecure_plaintext: bool = False
    health_listen: str | None = None
    max_streams: int = 32
    max_streams_per_peer: int = 8
    unary_workers: int = 4


@dataclass
class ServingControllerService:
    server: grpc.Server
    port: int
    health_server: grpc.Server | None
    health_port: int

    def stop(self, grace: float | None) -> None:
        self.server.stop(grace)
        if self.health_server is not None:
            self.health_server.stop(grace)


def check_service_listen(config: ServiceListen) -> grpc.ServerCredentials | None:
    """The credentials ``config`` asks for; ConfigError naming the flag if it is not servable."""
    if config.max_streams < 1 or config.max_streams_per_peer < 1:
        raise ConfigError("--max-streams and --max-streams-per-peer must be at least 1")
    if config.unary_workers < 2:
        raise ConfigError("unary_workers must be at least 2: the lane that streams cannot fill")
    return server_credentials(
        config.listen,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        client_ca=config.client_ca,
        require_client_cert=config.client_ca is not None,
        insecure_plaintext=config.insecure_plaintext,
    )


def serve_controller_service(
    config: ServiceListen, add_services: Callable[[grpc.Server], object]
) -> ServingControllerService:
    """Bind and start; ConfigError (naming the flag) before anything is bound."""
    creds = check_service_listen(config)
    if creds is None and config.insecure_plaintext:
        log.warning(
            "insecure_plaintext listen=%s: anyone who reaches this address may read every "
            "rollout's state, unauthenticated and unencrypted",
            config.listen,
        )
    slots = StreamSlots(config.max_streams, config.max_streams_per_peer)
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_streams + config.unary_workers,
            thread_name_prefix="controller-rpc",
        ),
        interceptors=[ServerGate(None, slots, log)],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    add_services(server)
    port = (
        server.add_secure_port(config.listen, creds)
        if creds is not None
        else server.add_insecure_port(config.listen)
    )
    if port == 0:
        raise ConfigError(f"--listen {config.listen}: cannot listen there")
    health_server, health_port = None, 0
    if config.health_listen is not None:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="controller-health")
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(config.health_listen)
        if health_port == 0:
            raise ConfigError(f"--health-listen {config.health_listen}: cannot listen there")
        health_server.start()
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return ServingControllerService(server, port, health_server, health_port)
