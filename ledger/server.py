"""The ledger server process: configuration, ``serve`` and ``python -m ledger.server``.

:func:`serve` puts the writer (:class:`ledger.writer.LedgerServer`) behind a gRPC server with
its LedgerService (:mod:`ledger.servicer`), health and reflection, and any further services
(QueryService ...); it binds, replays the store, then reports SERVING. Every call passes the
gate of :mod:`ledger.access` first (permissions with mutual TLS, stream slots); the worker
pool keeps ``unary_workers`` threads that streams can never hold, so a kill switch and a health
check are answered whatever other clients keep open (docs/security/network.md).

Run it with ``python -m ledger.server --db PATH --checkpoint-key FILE`` (see ``--help``) or
``serve(LedgerServerConfig(...))``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ledger.access import AccessPolicy, ServerGate, is_loopback
from ledger.errors import ConfigError, StewardError, StoreDamagedError
from ledger.heap import settle_heap, tune_collector
from ledger.keys import PrivateKey
from ledger.limits import (
    AppendLimits,
    PenaltyBox,
    PenaltyRule,
    RateLimit,
    ReadBudget,
    StreamSlots,
)
from ledger.server_flags import add_server_arguments
from ledger.server_tls import server_credentials
from ledger.servicer import SERVICE_NAME, LedgerServicer
from ledger.sigcheck import SignatureChecker
from ledger.store.base import LogStore
from ledger.store.sqlite import SQLiteLogStore
from ledger.tiles_http import TilesHTTPServer, serve_tiles
from ledger.tiles_log import LedgerTileLog
from ledger.witness import WitnessClient, WitnessEndpoint, WitnessPolicy
from ledger.writer import DEFAULT_MAX_MESSAGE_BYTES, MAX_BATCH_EVENTS, LedgerServer
from steward.v1 import ledger_pb2_grpc

log = logging.getLogger("ledger.server")


@dataclass(frozen=True)
class LedgerServerConfig:
    """How to run one ledger server. Secrets are never stored here, only where to find them."""

    store: str | Path | LogStore = field(compare=False)  # a SQLite path or a LogStore object
    checkpoint_key: str | Path | PrivateKey = field(repr=False, compare=False)
    # Name of the environment variable holding the key's passphrase (never the passphrase).
    checkpoint_key_passphrase_env: str | None = None
    listen: str = "127.0.0.1:0"
    checkpoint_every_entries: int = 256
    checkpoint_every_ms: int = 1000
    tls_cert: str | Path | None = None  # server certificate chain (PEM)
    tls_key: str | Path | None = None  # its private key (PEM)
    client_ca: str | Path | None = None  # CA that signs client certificates (mutual TLS)
    # None: required exactly when client_ca is given. False with client_ca: optional (a
    # client without one is anonymous and, with an access file, may call nothing but health).
    require_client_cert: bool | None = None
    # Identity -> permissions (ledger.access); needs client_ca. Without it every client the
    # CA certified may call everything.
    access_file: str | Path | None = None
    # Plaintext on an address other clients can reach must be asked for explicitly.
    insecure_plaintext: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Worker threads: one per open stream, up to max_streams (max_streams_per_peer for one
    # peer), plus unary_workers that only unary calls (Append, Health/Check ...) can use.
    max_streams: int = 128
    max_streams_per_peer: int = 32
    unary_workers: int = 16
    # Append rate limits (ledger.limits); None: not enforced.
    append_rate_per_peer: RateLimit | None = None
    append_rate_per_principal: RateLimit | None = None
    kill_switch_rate_per_peer: RateLimit | None = None
    # Strikes (rate-limit refusals) of one peer within a window that box its appends for a
    # cool-down (ledger.limits.PenaltyBox); None: no box.
    penalty_box: PenaltyRule | None = None
    # Get and proof calls per second per peer (ledger.limits.ReadBudget); None: not enforced.
    read_rate_per_peer: RateLimit | None = None
    # A second, plaintext port that serves only grpc.health.v1.Health (for kubelet probes,
    # which cannot present a client certificate).
    health_listen: str | None = None
    max_batch_events: int = MAX_BATCH_EVENTS
    # An AppendStream with nothing in flight that sends no batch for this long is ended
    # (RESOURCE_EXHAUSTED, STREAM_IDLE), so its slot is free again; 0: never.
    stream_idle_seconds: float = 60.0
    # Signature-checking worker processes for streamed batches (ledger.sigcheck): 0 checks in
    # the serving process, None one when the machine has more than one core.
    verify_processes: int | None = None
    # Where the server's per-entry indexes and idle proposals go (ledger.spilled_index): a
    # file unlinked once open, about 375 bytes per entry of the log. None: TMPDIR or /tmp.
    scratch_dir: str | None = None
    # Witnesses that cosign every published checkpoint (ledger.witness, docs/WITNESS.md); the
    # threshold says how many cosignatures make a checkpoint witnessed (None: all of them).
    witnesses: tuple[WitnessEndpoint, ...] = ()
    witness_threshold: int | None = None
    witness_timeout_s: float = 5.0
    witness_max_backoff_s: float = 30.0  # the longest wait between retries to a failing witness
    # HOST:PORT to serve the log as C2SP tlog-tiles over HTTP, read-only (docs/TILES.md).
    tiles_listen: str | None = None


def _load_checkpoint_key(config: LedgerServerConfig) -> PrivateKey:
    if isinstance(config.checkpoint_key, PrivateKey):
        return config.checkpoint_key
    passphrase = None
    if config.checkpoint_key_passphrase_env:
        value = os.environ.get(config.checkpoint_key_passphrase_env)
        if value is None:
            raise ConfigError(
                f"environment variable {config.checkpoint_key_passphrase_env} "
                "(the checkpoint key passphrase) is not set"
            )
        passphrase = value.encode()
    return PrivateKey.load(Path(config.checkpoint_key), passphrase)


@dataclass
class RunningServer:
    """A started server: its bound address, the ledger and the gRPC server."""

    address: str
    port: int
    ledger: LedgerServer
    grpc_server: grpc.Server
    health: health.HealthServicer
    _owns_store: bool = True
    health_server: grpc.Server | None = None
    health_port: int = 0
    witnessing: WitnessClient | None = None
    tiles_server: TilesHTTPServer | None = None

    @property
    def tiles_url(self) -> str | None:
        """The tlog-tiles prefix (``http://host:port/``), when tiles are served."""
        if self.tiles_server is None:
            return None
        host = str(self.tiles_server.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.tiles_server.port}/"

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        if self.tiles_server is not None:
            self.tiles_server.stop()
        self.ledger.stop()
        if self.witnessing is not None:
            self.witnessing.stop()
        if self.health_server is not None:
            self.health_server.stop(None)
        self.grpc_server.stop(grace).wait()
        self.ledger.close()
        self.ledger.checker.close()
        if self._owns_store:
            self.ledger.store.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def requires_client_cert(config: LedgerServerConfig) -> bool:
    """A client CA means required client certificates, unless the config says otherwise."""
    if config.require_client_cert is None:
        return config.client_ca is not None
    return config.require_client_cert


def _credentials(config: LedgerServerConfig) -> grpc.ServerCredentials | None:
    required = requires_client_cert(config)
    if config.access_file is not None and config.client_ca is None:
        raise ConfigError(
            "an access file maps client certificates to permissions: it needs "
            "client_ca (--client-ca), the CA that signs them"
        )
    return server_credentials(
        config.listen,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        client_ca=config.client_ca,
        require_client_cert=required,
        insecure_plaintext=config.insecure_plaintext,
    )


def _warn_about_exposure(config: LedgerServerConfig, creds: grpc.ServerCredentials | None) -> None:
    if creds is None and not is_loopback(config.listen):
        log.warning(
            "insecure_plaintext listen=%s: anyone who reaches this address may call "
            "every method unauthenticated and unencrypted",
            config.listen,
        )
    if config.client_ca is not None and config.access_file is None:
        log.warning(
            "no_access_file: every client certified by the client CA may call every "
            "method, reflection and on-demand checkpoints included; give an access file"
        )
    if config.client_ca is not None and not requires_client_cert(config):
        log.warning("client_cert_optional: clients without a certificate are admitted anonymously")
    if config.tiles_listen is not None and config.access_file is not None:
        log.warning(
            "tiles_public listen=%s: the tiles serve the whole log to anyone who reaches this "
            "address, whatever the access file allows over gRPC",
            config.tiles_listen,
        )


# Registers one more servicer (QueryService, ControllerService ...) on the same gRPC server
# and returns its full service name, so health and reflection cover it too.
AddService = Callable[[grpc.Server, "LedgerServer"], str]


def serve(config: LedgerServerConfig, *, add_services: Sequence[AddService] = ()) -> RunningServer:
    """Bind, replay the store, then report SERVING. Returns once the server accepts appends."""
    creds = _credentials(config)  # configuration errors first, before anything is opened
    policy = AccessPolicy.load(config.access_file) if config.access_file is not None else None
    slots = StreamSlots(config.max_streams, config.max_streams_per_peer)
    limits = AppendLimits(
        config.append_rate_per_peer,
        config.append_rate_per_principal,
        config.kill_switch_rate_per_peer,
    )
    box = PenaltyBox(config.penalty_box) if config.penalty_box is not None else None
    reads = ReadBudget(config.read_rate_per_peer) if config.read_rate_per_peer else None
    if config.unary_workers < 2:
        raise ConfigError("unary_workers must be at least 2: the lane that streams cannot fill")
    _warn_about_exposure(config, creds)
    key = _load_checkpoint_key(config)
    owns_store = not isinstance(config.store, LogStore)
    store = config.store if isinstance(config.store, LogStore) else SQLiteLogStore(config.store)
    health_servicer = health.HealthServicer()

    names = [SERVICE_NAME]

    def set_health(status: int) -> None:
        for name in ("", *names):
            health_servicer.set(name, status)

    def on_fenced() -> None:
        set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    ledger = LedgerServer(
        store,
        key,
        checkpoint_every_entries=config.checkpoint_every_entries,
        checkpoint_every_ms=config.checkpoint_every_ms,
        on_fenced=on_fenced,
        checker=SignatureChecker(config.verify_processes),
        scratch_dir=config.scratch_dir,
    )
    witnessing = None
    if config.witness_threshold and not config.witnesses:
        raise ConfigError("a witness threshold needs witnesses (--witness)")
    if config.witnesses:
        witnessing = WitnessClient(
            WitnessPolicy(
                config.witnesses,
                config.witness_threshold,
                config.witness_timeout_s,
                max_backoff_s=config.witness_max_backoff_s,
            )
        )
        witnessing.attach(ledger)  # before the replay: no publication is missed
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
        # A fixed receive window per stream (64 KiB, gRPC's default lookahead) instead of one
        # that bandwidth probing grows to megabytes: a stream the gate holds or refuses without
        # reading can make the server take in (decrypt, frame, buffer) only that much. Measured
        # with the bench's attacker: 0.15 -> 0.06 cores of server CPU (docs/PERFORMANCE.md,
        # "Kill switch under attack"). 64 KiB in flight per stream is still far more than the
        # ingest rate needs on a LAN.
        ("grpc.http2.bdp_probe", 0),
    ]
    # Streams hold at most max_streams workers (ServerGate refuses the next one), so
    # unary_workers always remain for unary calls.
    server = grpc.server(
        futures.ThreadPoolExecutor(
            max_workers=config.max_streams + config.unary_workers, thread_name_prefix="ledger-rpc"
        ),
        options=options,
        interceptors=[ServerGate(policy, slots, log, box, reads)],
    )
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(
            ledger,
            max_batch_events=config.max_batch_events,
            stream_idle_seconds=config.stream_idle_seconds,
            limits=limits if limits.enabled else None,
            access=policy,
            penalty_box=box,
        ),
        server,
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names.extend(add(server, ledger) for add in add_services)
    set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until the replay has finished
    reflection.enable_server_reflection(
        (
            *names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = (
        server.add_secure_port(config.listen, creds)
        if creds is not None
        else server.add_insecure_port(config.listen)
    )
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}")
    host = config.listen.rsplit(":", 1)[0]
    health_server, health_port = None, 0
    if config.health_listen is not None:
        health_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ledger-health")
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = health_server.add_insecure_port(config.health_listen)
        if health_port == 0:
            raise ConfigError(f"cannot listen on {config.health_listen} (health)")
        health_server.start()
    tiles_server = None
    if config.tiles_listen is not None:
        # Bound before the replay, like the gRPC port, so a taken port fails at once; while it
        # replays every path is 503 (retry), then 404 until a checkpoint is published.
        try:
            tiles_server = serve_tiles(config.tiles_listen, LedgerTileLog(ledger))
        except (OSError, ValueError) as exc:
            server.stop(None)
            if health_server is not None:
                health_server.stop(None)
            ledger.checker.close()
            if owns_store:
                store.close()
            raise ConfigError(f"cannot listen on {config.tiles_listen} (tiles): {exc}") from exc
    server.start()
    try:
        report = ledger.start()
    except BaseException:
        server.stop(None)
        if health_server is not None:
            health_server.stop(None)
        if tiles_server is not None:
            tiles_server.stop()
        ledger.checker.close()
        if owns_store:
            store.close()
        raise
    if witnessing is not None:
        witnessing.start()
    set_health(health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    log.info(
        "listening address=%s tls=%s mtls=%s access_file=%s entries=%d skipped=%d tiles_port=%s",
        address,
        creds is not None,
        creds is not None and requires_client_cert(config),
        config.access_file,
        report.entries,
        report.skipped,
        tiles_server.port if tiles_server is not None else None,
    )
    return RunningServer(
        address,
        port,
        ledger,
        server,
        health_servicer,
        owns_store,
        health_server,
        health_port,
        witnessing,
        tiles_server,
    )


# --------------------------------------------------------------------------------------------
# python -m ledger.server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ledger.server",
        description="Run a Steward ledger server on a SQLite or Kafka log.",
    )
    add_server_arguments(p)
    return p


def _secret_from_env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"environment variable {var} ({what}) is not set")
    return value


def kafka_store_from_args(args: argparse.Namespace) -> LogStore:
    """The KafkaLogStore the command line asks for, already claimed as this ledger's writer.

    The claim (InitProducerId) comes before serve() replays the log: once it returns, no other
    writer can append, so the tail we replay is the one our first append continues.
    """
    from ledger.store.kafka import KafkaLogStore
    from ledger.store.kafka_config import KafkaStoreConfig

    if not args.topic:
        raise ConfigError("--kafka-bootstrap needs --topic")
    config = KafkaStoreConfig(
        bootstrap_servers=args.kafka_bootstrap,
        topic=args.topic,
        ledger=args.ledger,
        replication_factor=args.replication_factor,
        min_insync_replicas=args.min_insync_replicas,
        create_topics=not args.no_create_topics,
        operation_timeout_s=args.kafka_timeout,
        # kafka-python wants delivery_timeout_ms (= the operation timeout) > request_timeout_ms.
        request_timeout_ms=min(15000, int(args.kafka_timeout * 500)),
        security_protocol=args.kafka_security_protocol,
        sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_plain_username=args.kafka_sasl_username,
        sasl_plain_password=_secret_from_env(
            args.kafka_sasl_password_env, "the Kafka SASL password"
        ),
        ssl_cafile=args.kafka_ssl_cafile,
        ssl_certfile=args.kafka_ssl_certfile,
        ssl_keyfile=args.kafka_ssl_keyfile,
        ssl_password=_secret_from_env(args.kafka_ssl_password_env, "the Kafka client key password"),
    )
    store = KafkaLogStore(config)
    try:
        store.claim_writer()
    except BaseException:
        store.close()
        raise
    log.info("kafka_store %r", store)  # repr() leaves the secrets out
    return store


def _projections_url(args: argparse.Namespace) -> str | None:
    """'off' -> None; 'same' -> the --db file (none on Kafka); a path -> a SQLite URL."""
    value: str = args.projections
    if value == "off" or (value == "same" and args.db is None):
        return None
    if value == "same":
        return f"sqlite:///{args.db}"
    return value if "://" in value else f"sqlite:///{value}"


def projections_service(
    url: str, stop: threading.Event, scratch_dir: str | None = None
) -> AddService:
    """QueryService over projections that a background thread keeps caught up with the log.

    The projector follows the same store the ledger writes and commits rows together with its
    read position, so the projections are never ahead of or behind what they say they cover.
    """
    import sqlalchemy as sa

    from ledger.projections import Projector
    from ledger.query import add_query_service
    from ledger.spilled_index import ScratchIndexes, spilled_state
    from ledger.store.sqlite import sqlite_engine
    from steward.v1 import query_pb2

    def add(server: grpc.Server, ledger: LedgerServer) -> str:
        if url.startswith("sqlite:///"):
            engine = sqlite_engine(url.removeprefix("sqlite:///"))
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        # Its state, like the writer's, keeps what grows with history in the scratch directory.
        projector = Projector(
            ledger.store,
            engine,
            new_state=lambda: spilled_state(ScratchIndexes(scratch_dir)),
        )
        threading.Thread(target=projector.run, args=(stop,), name="projector", daemon=True).start()
        add_query_service(server, engine)
        return str(query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name)

    return add


def _rate(parsed: tuple[float, int] | None) -> RateLimit | None:
    return RateLimit(*parsed) if parsed is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run(parser.parse_args(argv), parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve what parsed `args` (add_server_arguments) ask for, until SIGTERM or SIGINT."""
    if args.db is not None and args.topic:
        parser.error("--topic is for --kafka-bootstrap, not --db")
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("kafka").setLevel(args.kafka_log_level.upper())
    store: str | LogStore = args.db
    try:
        if args.kafka_bootstrap is not None:
            store = kafka_store_from_args(args)
        config = LedgerServerConfig(
            store=store,
            checkpoint_key=args.checkpoint_key,
            checkpoint_key_passphrase_env=args.passphrase_env,
            listen=args.listen,
            checkpoint_every_entries=args.checkpoint_every_entries,
            checkpoint_every_ms=args.checkpoint_every_ms,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            client_ca=args.client_ca,
            require_client_cert=(
                False if args.client_cert_optional else True if args.require_client_cert else None
            ),
            access_file=args.access_file,
            insecure_plaintext=args.insecure_plaintext,
            health_listen=args.health_listen,
            max_streams=args.max_streams,
            max_streams_per_peer=args.max_streams_per_peer,
            stream_idle_seconds=args.stream_idle_seconds,
            unary_workers=args.unary_workers,
            append_rate_per_peer=_rate(args.append_rate_per_peer),
            append_rate_per_principal=_rate(args.append_rate_per_principal),
            kill_switch_rate_per_peer=_rate(args.kill_switch_rate_per_peer),
            penalty_box=PenaltyRule(*args.penalty_box) if args.penalty_box else None,
            read_rate_per_peer=_rate(args.read_rate_per_peer),
            max_message_bytes=args.max_message_bytes,
            verify_processes=args.verify_processes,
            scratch_dir=args.scratch_dir,
            witnesses=tuple(WitnessEndpoint.parse(w) for w in args.witness),
            witness_threshold=args.witness_threshold,
            witness_timeout_s=args.witness_timeout,
            tiles_listen=args.tiles_listen,
        )
        done = threading.Event()
        services: list[AddService] = []
        url = _projections_url(args)
        if url is not None:
            services.append(projections_service(url, done, args.scratch_dir))
        tune_collector()  # before the replay: it allocates the long-lived state
        running = serve(config, add_services=services)
        settle_heap()
    except StewardError as exc:
        if isinstance(store, LogStore):
            store.close()
        # Damage: the writer would not append over it (docs/RECOVERY.md says what to do).
        refused = "refusing to start: " if isinstance(exc, StoreDamagedError) else ""
        print(f"ledger server: {refused}{exc}", file=sys.stderr)
        return 2
    print(f"listening on {running.address}", flush=True)
    if running.tiles_url is not None:
        print(f"tiles on {running.tiles_url}", flush=True)
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(f"{running.port}\n")
        tmp.replace(args.port_file)  # readers never see a half-written file

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping signal=%d", signum)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    running.stop()
    if isinstance(store, LogStore):
        store.close()  # serve() does not close a store it was given
    return 0


if __name__ == "__main__":
    sys.exit(main())
