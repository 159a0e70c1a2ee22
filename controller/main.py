"""``steward-controller``: replay the ledger and drive canary rollouts on Kubernetes.

Example (SQLite ledger on this machine, local cluster)::

    steward-controller --ledger 127.0.0.1:7443 --store sqlite:ledger.db \\
        --kubeconfig kubeconfig --key controller.key --namespace models \\
        --snapshot-db controller.db --lease-namespace steward-system --identity ctl-a

The log is read directly from the store when ``--store`` is given (docs/DESIGN.md §2: the controller
verifies what it reads itself), otherwise through the ledger's Read stream. Appends always go
through the ledger server, which checks every step again at ingest. Logs are JSON lines on
stderr. SIGTERM/SIGINT stop cleanly: the Lease is released and a last snapshot written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.notify import RetryPolicy, check_sink_url
from controller.planner import PlannerConfig
from controller.replay import LedgerReadStore, Replayer, SnapshotStore
from controller.runtime import Controller, ControllerConfig
from ledger.errors import StewardError
from ledger.keys import PrivateKey
from ledger.store.base import LogStore

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from controller.grpc_server import ServiceListen

log = logging.getLogger("steward.controller")

DEFAULT_PASSPHRASE_ENV = "STEWARD_CONTROLLER_KEY_PASSPHRASE"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `key=value` pairs in the message become fields too."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        for token in msg.split(" "):
            key, sep, value = token.partition("=")
            if sep and key.isidentifier() and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steward-controller", description=__doc__.split("\n\n")[0])
    p.add_argument("--ledger", required=True, metavar="HOST:PORT", help="ledger gRPC address")
    p.add_argument(
        "--ledger-ca", help="CA certificate of the ledger server (TLS); plaintext without"
    )
    p.add_argument(
        "--ledger-cert",
        help="client certificate for the ledger's mutual TLS (PEM); the "
        "ledger's access file needs read and append for its name",
    )
    p.add_argument("--ledger-key", help="private key of --ledger-cert (PEM)")
    p.add_argument(
        "--store",
        metavar="SPEC",
        help="replay straight from the log store: sqlite:PATH or kafka:BOOTSTRAP/TOPIC "
        "(default: the ledger's Read stream)",
    )
    from ledger.store.kafka_flags import add_security_arguments

    add_security_arguments(
        p.add_argument_group('Kafka security (with --store kafka:...; docs/KAFKA.md "Security")')
    )
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)"
    )
    p.add_argument(
        "--key",
        "--key-file",
        dest="key",
        required=True,
        help="the controller's Ed25519 private key (PKCS#8 PEM)",
    )
    p.add_argument(
        "--passphrase-env",
        default=DEFAULT_PASSPHRASE_ENV,
        metavar="VAR",
        help=f"environment variable holding the key's passphrase (default {DEFAULT_PASSPHRASE_ENV})",
    )
    p.add_argument(
        "--namespace",
        "--namespaces",
        dest="namespaces",
        action="append",
        required=True,
        help="namespace to manage (repeat or comma-separate)",
    )
    p.add_argument("--snapshot-db", help="SQLite file (or SQLAlchemy URL) for replay snapshots")
    p.add_argument("--snapshot-every-entries", type=int, default=500)
    p.add_argument("--snapshot-every-seconds", type=float, default=5.0)
    p.add_argument(
        "--identity",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="this controller's name in the leader Lease",
    )
    p.add_argument(
        "--lease-namespace",
        help="namespace of the leader-election Lease (without it this process always acts)",
    )
    p.add_argument("--lease-name", default="steward-controller")
    p.add_argument("--lease-seconds", type=int, default=5)
    p.add_argument("--renew-seconds", type=float, default=1.5)
    p.add_argument("--listen", help="HOST:PORT for gRPC health and ControllerService")
    svc = p.add_argument_group(
        "ControllerService security (with --listen; docs/security/network.md)"
    )
    svc.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    svc.add_argument("--tls-key", help="the private key of --tls-cert (PEM)")
    svc.add_argument(
        "--client-ca", help="CA that signs client certificates: mutual TLS, certificates required"
    )
    svc.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="serve plaintext on an address other machines can reach (logged as a warning)",
    )
    svc.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1.Health alone, plaintext, here (kubelet probes)",
    )
    svc.add_argument(
        "--max-streams", type=int, default=32, help="open WatchRollouts in all (default 32)"
    )
    svc.add_argument(
        "--max-streams-per-peer",
        type=int,
        default=8,
        help="open WatchRollouts of one peer: certificate name or IP address (default 8)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (port 0: a free one)",
    )
    p.add_argument("--tick-seconds", type=float, default=0.25, help="re-plan at least this often")
    p.add_argument(
        "--not-ready-grace-seconds",
        type=float,
        default=120.0,
        help="a canary pod not Ready this long triggers a rollback",
    )
    p.add_argument("--no-mirror", action="store_true", help="do not write ModelRollout objects")
    n = p.add_argument_group(
        'Events and notifications (docs/CONTROLLER.md "Events and notifications")',
        "Every RolloutStep, kill switch and release on the ledger becomes a Kubernetes Event "
        "on the ModelRollout and its Deployment and a CloudEvent POSTed to each webhook sink: "
        "the global ones below plus those of the policy governing the rollout "
        "(PolicySet.notify). Delivery is at-least-once, in ledger order per sink; the "
        "CloudEvent id is the ledger entry's hash, so receivers drop repeats by id.",
    )
    n.add_argument(
        "--notify-url",
        action="append",
        default=[],
        metavar="URL",
        help="an http(s) webhook sink for every rollout's CloudEvents; repeat for several. "
        "Logs name it by host and a hash only: a token in its user info, path or query is "
        "never written anywhere",
    )
    n.add_argument(
        "--notify-state",
        metavar="PATH",
        help="JSON file keeping each sink's delivery position, so a restart neither loses "
        "nor repeats notifications (default: <--snapshot-db>.notify.json when --snapshot-db "
        "is a file; without either, a restart notifies only what happens after it)",
    )
    n.add_argument(
        "--notify-dead-letter",
        metavar="PATH",
        help="JSON-lines file receiving each notification a sink still refused after the "
        "last attempt (sink by hash, error, the whole CloudEvent); without it they are "
        "only logged as errors",
    )
    n.add_argument(
        "--notify-attempts",
        type=int,
        default=5,
        metavar="N",
        help="POST attempts per notification and sink before dead-lettering it (default 5; "
        "a 4xx other than 408/409/425/429 is final at once)",
    )
    n.add_argument(
        "--notify-backoff-seconds",
        type=float,
        default=0.5,
        metavar="S",
        help="wait before the 2nd attempt; doubled for each next one, at most 30 s (default 0.5)",
    )
    n.add_argument(
        "--notify-timeout-seconds",
        type=float,
        default=5.0,
        metavar="S",
        help="give up one POST after this long (a slow sink delays only its own queue; "
        "never the kill switch) (default 5)",
    )
    n.add_argument(
        "--no-events",
        action="store_true",
        help="do not create Kubernetes Events (the RBAC then needs no create on events)",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", choices=("json", "text"), default="json")
    return p


def open_store(spec: str, kafka_security: dict[str, Any] | None = None) -> tuple[LogStore, str]:
    """A LogStore from `sqlite:PATH` or `kafka:BOOTSTRAP/TOPIC`, and its snapshot source name.

    `kafka_security`: `KafkaStoreConfig` security fields (`security_from_args`)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        from ledger.store.sqlite import SQLiteLogStore

        return SQLiteLogStore(rest), f"sqlite:{Path(rest).name}"
    if kind == "kafka" and "/" in rest:
        from ledger.store.kafka import KafkaLogStore
        from ledger.store.kafka_config import KafkaStoreConfig

        bootstrap, topic = rest.rsplit("/", 1)
        # A reader never creates topics; the ledger server owns them.
        config = KafkaStoreConfig(
            bootstrap_servers=bootstrap,
            topic=topic,
            create_topics=False,
            client_id="steward-controller",
            **(kafka_security or {}),
        )
        return KafkaLogStore(config), f"kafka:{topic}"
    raise StewardError(f"--store {spec!r}: expected sqlite:PATH or kafka:BOOTSTRAP/TOPIC")


def check_notify_args(args: argparse.Namespace) -> None:
    """Refuse notification settings that cannot work, naming the flag (ValueError)."""
    if args.notify_attempts < 1:
        raise ValueError(f"--notify-attempts {args.notify_attempts}: at least 1")
    if args.notify_backoff_seconds < 0:
        raise ValueError(f"--notify-backoff-seconds {args.notify_backoff_seconds}: negative")
    if args.notify_timeout_seconds <= 0:
        raise ValueError(f"--notify-timeout-seconds {args.notify_timeout_seconds}: must be > 0")
    for url in args.notify_url:
        check_sink_url(url)


def notify_state_path(explicit: str | None, snapshot_db: str | None) -> str | None:
    """--notify-state, or next to a --snapshot-db file (not a database URL)."""
    if explicit:
        return explicit
    if snapshot_db and "://" not in snapshot_db:
        return f"{snapshot_db}.notify.json"
    return None


def load_kube(kubeconfig: str | None) -> ApiClient:
    from kubernetes import config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()
    except config.ConfigException:
        return config.new_client_from_config()


def _service_listen(args: argparse.Namespace) -> ServiceListen:
    from controller.grpc_server import ServiceListen

    return ServiceListen(
        listen=args.listen,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        client_ca=args.client_ca,
        insecure_plaintext=args.insecure_plaintext,
        health_listen=args.health_listen,
        max_streams=args.max_streams,
        max_streams_per_peer=args.max_streams_per_peer,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)

    namespaces = tuple(
        sorted({n.strip() for v in args.namespaces for n in v.split(",") if n.strip()})
    )
    try:
        check_notify_args(args)
        if args.listen:
            from controller.grpc_server import check_service_listen

            check_service_listen(_service_listen(args))  # a bad --listen setup fails first
        passphrase = os.environ.get(args.passphrase_env)
        key = PrivateKey.load(Path(args.key), passphrase.encode() if passphrase else None)
        from ledger.client import LedgerClient

        if (args.ledger_cert is None) != (args.ledger_key is None):
            raise StewardError("--ledger-cert and --ledger-key go together")
        ledger = LedgerClient(
            args.ledger,
            ca_file=args.ledger_ca,
            cert_file=args.ledger_cert,
            key_file=args.ledger_key,
        )
        if args.store:
            from ledger.store.kafka_flags import security_from_args

            store, source = open_store(args.store, security_from_args(args))
        else:
            store, source = LedgerReadStore(ledger), f"grpc:{args.ledger}"
        snapshots = SnapshotStore(args.snapshot_db, exclusive=True) if args.snapshot_db else None
        from ledger.sigcheck import SignatureChecker

        replayer = Replayer(
            store,
            snapshots=snapshots,
            source=source,
            snapshot_every_entries=args.snapshot_every_entries,
            snapshot_every_seconds=args.snapshot_every_seconds,
            checker=SignatureChecker(),
            background_snapshots=True,
        )
        config = ControllerConfig(
            namespaces=namespaces,
            identity=args.identity,
            lease_namespace=args.lease_namespace,
            lease_name=args.lease_name,
            lease_seconds=args.lease_seconds,
            renew_seconds=args.renew_seconds,
            tick_seconds=args.tick_seconds,
            mirror=not args.no_mirror,
            planner=PlannerConfig(not_ready_grace_ms=int(args.not_ready_grace_seconds * 1000)),
            settle_heap=True,
            kube_events=not args.no_events,
            notify_urls=tuple(check_sink_url(u) for u in args.notify_url),
            notify_state=notify_state_path(args.notify_state, args.snapshot_db),
            notify_dead_letter=args.notify_dead_letter,
            notify_retry=RetryPolicy(
                attempts=args.notify_attempts, first_backoff=args.notify_backoff_seconds
            ),
            notify_timeout=args.notify_timeout_seconds,
        )
        controller = Controller(config, replayer, ledger, key, load_kube(args.kubeconfig))
    except (StewardError, OSError, ValueError) as exc:
        print(f"steward-controller: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("stopping signal=%d", signum)
        stop.set()
        controller.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.listen:
        from controller import service
        from controller.grpc_server import serve_controller_service

        try:
            server = serve_controller_service(
                _service_listen(args), lambda grpc_server: service.register(grpc_server, controller)
            )
        except StewardError as exc:
            print(f"steward-controller: {exc}", file=sys.stderr)
            return 2
    metrics_server = None
    if args.metrics_listen:
        from controller import metrics

        metrics_server = metrics.serve(controller, args.metrics_listen)
    log.info(
        "starting identity=%s namespaces=%s store=%s lease=%s",
        args.identity,
        ",".join(namespaces),
        source,
        args.lease_namespace or "-",
    )
    try:
        controller.run(stop)
    except Exception:
        log.exception("controller failed")
        return 1
    finally:
        if server is not None:
            server.stop(grace=1)
        if metrics_server is not None:
            metrics_server.stop()
        if controller.leader is not None:
            controller.leader.release()
        replayer.snapshot()
        if snapshots is not None:
            snapshots.close()  # lets a running compaction commit (or roll back) first
        store.close()
        ledger.close()
    log.info("stopped identity=%s", args.identity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
