"""steward-monitor: the command that runs :class:`monitor.service.Monitor`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from prometheus_client import start_http_server

from ledger.client import LedgerClient
from ledger.errors import StewardError
from ledger.keys import PrivateKey
from monitor.prometheus import Prometheus
from monitor.service import Monitor, MonitorMetrics

DEFAULT_PASSPHRASE_ENV = "STEWARD_KEY_PASSPHRASE"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steward-monitor",
        description=(
            "Automated canary analysis: for every rollout at a step gated by its policy's "
            "checks, query Prometheus at each check's interval and sign a health report with "
            "the samples and the verdict (docs/ANALYSIS.md). The key needs the monitor role."
        ),
        epilog=(
            "example:\n  steward-monitor --server 127.0.0.1:7443 --key monitor.pem "
            "--prometheus http://127.0.0.1:9090 --metrics-listen 127.0.0.1:9102"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--server", default=os.environ.get("STEWARD_SERVER"), help="ledger HOST:PORT")
    p.add_argument("--tls-ca", help="CA bundle to verify the ledger server (enables TLS)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS")
    p.add_argument("--tls-key", help="client private key for mutual TLS")
    p.add_argument("--key", required=True, help="the monitor's private key (role monitor)")
    p.add_argument(
        "--passphrase-env",
        default=DEFAULT_PASSPHRASE_ENV,
        help=f"environment variable holding the key's passphrase (default {DEFAULT_PASSPHRASE_ENV})",
    )
    p.add_argument("--prometheus", required=True, help="Prometheus base URL, http://HOST:PORT")
    p.add_argument("--query-timeout", type=float, default=5.0, help="seconds per query")
    p.add_argument(
        "--metrics-listen", default="127.0.0.1:0", help="HOST:PORT for the monitor's /metrics"
    )
    p.add_argument("--port-file", help="write the metrics port here once listening")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.server:
        print("steward-monitor: pass --server HOST:PORT or set STEWARD_SERVER", file=sys.stderr)
        return 2
    try:
        passphrase = os.environ.get(args.passphrase_env)
        key = PrivateKey.load(Path(args.key), passphrase.encode() if passphrase else None)
    except StewardError as exc:
        print(f"steward-monitor: {exc}", file=sys.stderr)
        return 2
    client = LedgerClient(
        args.server, ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key
    )
    metrics = MonitorMetrics()
    host, _, port = args.metrics_listen.rpartition(":")
    server, _thread = start_http_server(
        int(port), addr=host or "127.0.0.1", registry=metrics.registry
    )
    if args.port_file:
        Path(args.port_file).write_text(f"{server.server_port}\n")
    monitor = Monitor(client, key, Prometheus(args.prometheus, args.query_timeout), metrics)
    logging.getLogger("steward.monitor").info(
        "following the ledger at %s, querying %s; metrics on %s:%d",
        args.server,
        args.prometheus,
        host or "127.0.0.1",
        server.server_port,
    )
    signal.signal(signal.SIGTERM, lambda *_: monitor.stop())
    try:
        monitor.run()
    except KeyboardInterrupt:
        monitor.stop()
    finally:
        server.shutdown()
        client.close()
    return 0
