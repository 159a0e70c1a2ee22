"""The ledger server process: configuration, ``serve`` and ``python -m ledger.server``.

:func:`serve` puts the writer (:class:`ledger.writer.LedgerServer`) behind a gRPC server with
its LedgerService (:mod:`ledger.servicer`), health and reflection, and any further services
(QueryService ...); it binds, replays the store, then reports SERVING.

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

from ledger.errors import ConfigError, StewardError, StoreDamagedError
from ledger.heap import settle_heap, tune_collector
from ledger.keys import PrivateKey
from ledger.servicer import SERVICE_NAME, LedgerServicer
from ledger.sigcheck import SignatureChecker
from ledger.store.base import LogStore
from ledger.store.sqlite import SQLiteLogStore
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
    require_client_cert: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_workers: int = 32  # each following Read stream holds one worker
    max_batch_events: int = MAX_BATCH_EVENTS
    # Signature-checking worker processes for streamed batches (ledger.sigcheck): 0 checks in
    # the serving process, None one when the machine has more than one core.
    verify_processes: int | None = None


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

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.ledger.stop()
        self.grpc_server.stop(grace).wait()
        self.ledger.close()
        self.ledger.checker.close()
        if self._owns_store:
            self.ledger.store.close()

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def _read(path: str | Path | None) -> bytes | None:
    return Path(path).read_bytes() if path is not None else None


def _credentials(config: LedgerServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None and config.tls_key is None:
        if config.client_ca is not None or config.require_client_cert:
            raise ConfigError("mutual TLS needs TLS: give tls_cert and tls_key too")
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ConfigError("TLS needs both tls_cert and tls_key")
    if config.require_client_cert and config.client_ca is None:
        raise ConfigError("require_client_cert needs client_ca, the CA that signs client certificates")
    pair = (_read(config.tls_key), _read(config.tls_cert))
    return grpc.ssl_server_credentials([pair], root_certificates=_read(config.client_ca),  # type: ignore[list-item]
                                       require_client_auth=config.require_client_cert)


# Registers one more servicer (QueryService, ControllerService ...) on the same gRPC server
# and returns its full service name, so health and reflection cover it too.
AddService = Callable[[grpc.Server, "LedgerServer"], str]


def serve(config: LedgerServerConfig, *, add_services: Sequence[AddService] = ()) -> RunningServer:
    """Bind, replay the store, then report SERVING. Returns once the server accepts appends."""
    creds = _credentials(config)  # configuration errors first, before anything is opened
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

    ledger = LedgerServer(store, key, checkpoint_every_entries=config.checkpoint_every_entries,
                          checkpoint_every_ms=config.checkpoint_every_ms, on_fenced=on_fenced,
                          checker=SignatureChecker(config.verify_processes))
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                                    thread_name_prefix="ledger-rpc"),
                         options=options)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(ledger, max_batch_events=config.max_batch_events), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names.extend(add(server, ledger) for add in add_services)
    set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until the replay has finished
    reflection.enable_server_reflection(
        (*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    port = (server.add_secure_port(config.listen, creds) if creds is not None
            else server.add_insecure_port(config.listen))
    if port == 0:
        raise ConfigError(f"cannot listen on {config.listen}")
    host = config.listen.rsplit(":", 1)[0]
    server.start()
    try:
        report = ledger.start()
    except BaseException:
        server.stop(None)
        ledger.checker.close()
        if owns_store:
            store.close()
        raise
    set_health(health_pb2.HealthCheckResponse.SERVING)
    address = f"{host}:{port}"
    log.info("listening address=%s tls=%s mtls=%s entries=%d skipped=%d", address, creds is not None,
             config.require_client_cert, report.entries, report.skipped)
    return RunningServer(address, port, ledger, server, health_servicer, owns_store)


# --------------------------------------------------------------------------------------------
# python -m ledger.server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ledger.server",
                                description="Run a Steward ledger server on a SQLite or Kafka log.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite file of the log (created if missing)")
    where.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,...]",
                       help="Kafka bootstrap servers: keep the log on a Kafka topic (docs/KAFKA.md)")
    p.add_argument("--checkpoint-key", required=True, help="the ledger's checkpoint private key (PEM)")
    p.add_argument("--passphrase-env", metavar="VAR",
                   help="environment variable that holds the checkpoint key's passphrase")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks a free one)")
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument("--checkpoint-every-entries", type=int, default=256)
    p.add_argument("--checkpoint-every-ms", type=int, default=1000)
    p.add_argument("--tls-cert", help="server certificate chain (PEM)")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--client-ca", help="CA for client certificates (mutual TLS)")
    p.add_argument("--require-client-cert", action="store_true", help="refuse clients without a certificate")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument("--verify-processes", type=int, choices=(0, 1), default=None, metavar="0|1",
                   help="check the signatures of streamed batches in a worker process (1) or "
                        "in the serving process (0); default: 1 on a machine with more than "
                        "one core")
    p.add_argument("--projections", default="same", metavar="URL|PATH",
                   help="where the query projections live and QueryService reads them: a SQLAlchemy "
                        "URL or a SQLite file path; 'same' (default) uses the --db SQLite file (with "
                        "--kafka-bootstrap: no projections), 'off' serves no QueryService")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--kafka-log-level", default="WARNING",
                   help="level of the Kafka clients' loggers: kafka-python's (their INFO is a "
                        "line per connection) and librdkafka's (logger kafka.librdkafka)")
    k = p.add_argument_group("Kafka store (with --kafka-bootstrap)")
    k.add_argument("--topic", help="the ledger topic (checkpoints go to TOPIC.checkpoints)")
    k.add_argument("--ledger", default="", metavar="NAME",
                   help="ledger name for the transactional id steward-ledger-NAME (default: the topic)")
    k.add_argument("--replication-factor", type=int, default=1,
                   help="replication factor of created topics, minimum of existing ones (production: 3)")
    k.add_argument("--min-insync-replicas", type=int, default=1,
                   help="min.insync.replicas of created topics, minimum of existing ones (production: 2)")
    k.add_argument("--no-create-topics", action="store_true",
                   help="never create the topics: they must exist (they are still checked)")
    k.add_argument("--kafka-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="longest one Kafka append or read may take before the store reports UNAVAILABLE "
                        "(one broker request: at most half of it, and at most 15 s)")
    k.add_argument("--kafka-security-protocol", default="PLAINTEXT",
                   choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
    k.add_argument("--kafka-sasl-mechanism", help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...")
    k.add_argument("--kafka-sasl-username")
    k.add_argument("--kafka-sasl-password-env", metavar="VAR",
                   help="environment variable that holds the SASL password (never on the command line)")
    k.add_argument("--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates (PEM)")
    k.add_argument("--kafka-ssl-certfile", help="client certificate (PEM)")
    k.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
    k.add_argument("--kafka-ssl-password-env", metavar="VAR",
                   help="environment variable that holds the client key's password")
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
        bootstrap_servers=args.kafka_bootstrap, topic=args.topic, ledger=args.ledger,
        replication_factor=args.replication_factor, min_insync_replicas=args.min_insync_replicas,
        create_topics=not args.no_create_topics, operation_timeout_s=args.kafka_timeout,
        # kafka-python wants delivery_timeout_ms (= the operation timeout) > request_timeout_ms.
        request_timeout_ms=min(15000, int(args.kafka_timeout * 500)),
        security_protocol=args.kafka_security_protocol, sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_plain_username=args.kafka_sasl_username,
        sasl_plain_password=_secret_from_env(args.kafka_sasl_password_env, "the Kafka SASL password"),
        ssl_cafile=args.kafka_ssl_cafile, ssl_certfile=args.kafka_ssl_certfile,
        ssl_keyfile=args.kafka_ssl_keyfile,
        ssl_password=_secret_from_env(args.kafka_ssl_password_env, "the Kafka client key password"))
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


def projections_service(url: str, stop: threading.Event) -> AddService:
    """QueryService over projections that a background thread keeps caught up with the log.

    The projector follows the same store the ledger writes and commits rows together with its
    read position, so the projections are never ahead of or behind what they say they cover.
    """
    import sqlalchemy as sa

    from ledger.projections import Projector
    from ledger.query import add_query_service
    from ledger.store.sqlite import sqlite_engine
    from steward.v1 import query_pb2

    def add(server: grpc.Server, ledger: LedgerServer) -> str:
        if url.startswith("sqlite:///"):
            engine = sqlite_engine(url.removeprefix("sqlite:///"))
        else:
            engine = sa.create_engine(url, pool_pre_ping=True)
        projector = Projector(ledger.store, engine)
        threading.Thread(target=projector.run, args=(stop,), name="projector", daemon=True).start()
        add_query_service(server, engine)
        return str(query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name)

    return add


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.db is not None and args.topic:
        parser.error("--topic is for --kafka-bootstrap, not --db")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(args.kafka_log_level.upper())
    store: str | LogStore = args.db
    try:
        if args.kafka_bootstrap is not None:
            store = kafka_store_from_args(args)
        config = LedgerServerConfig(
            store=store, checkpoint_key=args.checkpoint_key,
            checkpoint_key_passphrase_env=args.passphrase_env, listen=args.listen,
            checkpoint_every_entries=args.checkpoint_every_entries,
            checkpoint_every_ms=args.checkpoint_every_ms, tls_cert=args.tls_cert,
            tls_key=args.tls_key, client_ca=args.client_ca,
            require_client_cert=args.require_client_cert, max_message_bytes=args.max_message_bytes,
            verify_processes=args.verify_processes)
        done = threading.Event()
        services: list[AddService] = []
        url = _projections_url(args)
        if url is not None:
            services.append(projections_service(url, done))
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
