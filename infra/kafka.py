"""``python -m infra.kafka``: fetch the Kafka jars, start brokers in the background, stop them.

``fetch`` fills the jar cache with Maven (infra/kafka_install.py); ``start [--brokers 3]`` starts
brokers that outlive the command (infra/kafka_cluster.py, whose :class:`KafkaCluster` is the same
as a Python API for test fixtures) and records them in a state file; ``stop`` and ``status`` read
it. scripts/install-kafka calls ``fetch``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from infra.kafka_cluster import KafkaCluster
from infra.kafka_install import KAFKA_VERSION, KafkaInfraError, cache_root, fetch, kafka_log


def default_state_file() -> Path:
    return cache_root() / "run" / "state.json"


def _cli_start(args: argparse.Namespace) -> int:
    state_file = Path(args.state_file)
    if state_file.exists():
        old = KafkaCluster.from_state(json.loads(state_file.read_text()))
        if any(old.is_running(i) for i in old.node_ids):
            print(
                f"Kafka already running: {old.bootstrap_servers} (state {state_file}); "
                "run `python -m infra.kafka stop` first",
                file=sys.stderr,
            )
            return 1
    cluster = KafkaCluster(brokers=args.brokers, version=args.version)
    started = time.monotonic()
    cluster.start(detach=True)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(cluster.state(), indent=2) + "\n")
    env_file = state_file.with_name("kafka.env")
    env_file.write_text(
        f"KAFKA_BOOTSTRAP_SERVERS={cluster.bootstrap_servers}\n"
        f"STEWARD_KAFKA_BOOTSTRAP={cluster.bootstrap_servers}\n"
    )
    kafka_log(
        f"{args.brokers} broker(s) ready in {time.monotonic() - started:.1f}s; "
        f"state {state_file}, env {env_file}, logs under {cluster.workdir}"
    )
    print(cluster.bootstrap_servers)
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    state_file = Path(args.state_file)
    if not state_file.exists():
        kafka_log(f"nothing to stop (no {state_file})")
        return 0
    cluster = KafkaCluster.from_state(json.loads(state_file.read_text()))
    cluster.stop()
    state_file.unlink(missing_ok=True)
    state_file.with_name("kafka.env").unlink(missing_ok=True)
    kafka_log("stopped")
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    state_file = Path(args.state_file)
    if not state_file.exists():
        print("not running")
        return 1
    cluster = KafkaCluster.from_state(json.loads(state_file.read_text()))
    up = [i for i in cluster.node_ids if cluster.is_running(i)]
    print(f"{cluster.bootstrap_servers} nodes running: {up} of {cluster.node_ids}")
    return 0 if len(up) == len(cluster.node_ids) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.kafka", description="Local Apache Kafka (KRaft) for Steward"
    )
    parser.add_argument("--version", default=KAFKA_VERSION, help="Kafka version (Maven)")
    parser.add_argument(
        "--state-file",
        default=str(default_state_file()),
        help="where start records pids and ports for stop",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the broker jars with Maven (cached)")
    start = sub.add_parser("start", help="start brokers, print the bootstrap address")
    start.add_argument("--brokers", type=int, choices=(1, 3), default=1)
    sub.add_parser("stop", help="stop the brokers that start left running")
    sub.add_parser("status", help="print the bootstrap address and which nodes run")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(fetch(args.version))
            return 0
        if args.command == "start":
            return _cli_start(args)
        if args.command == "stop":
            return _cli_stop(args)
        return _cli_status(args)
    except KafkaInfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
