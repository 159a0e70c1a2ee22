"""``python -m infra.kube``: build, start and stop the local Kubernetes control plane.

``build`` compiles etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
KWOK into a cache outside the repository (skipped when a stamp says they are there;
infra/kube_build.py). ``start``/``stop`` run them on loopback with a throw-away PKI, in the
background (infra/kube_cluster.py, whose :class:`LocalCluster` is the same thing as a Python API
for test fixtures). scripts/build-kube, start-kube and stop-kube call this.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from infra.kube_build import KUBE_VERSION, KubeInfraError, build, kube_log
from infra.kube_cluster import start_detached, stop_detached


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kube")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and cache the binaries (skipped when present)")
    b.add_argument("--version", default=KUBE_VERSION)
    b.add_argument("-p", "--parallel", type=int, default=None)
    s = sub.add_parser("start", help="start a cluster in the background and print its env")
    s.add_argument("--version", default=KUBE_VERSION)
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where state and logs go (default: a new temporary directory)",
    )
    s.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="also copy the env file (export KUBECONFIG=...) here",
    )
    t = sub.add_parser("stop", help="stop a cluster started by `start`")
    t.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="default: $STEWARD_KUBE_STATE, else the last started cluster",
    )
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build(args.version, args.parallel))
        elif args.cmd == "start":
            cluster = start_detached(args.version, args.nodes, args.state_dir)
            text = cluster.env_file.read_text()
            if args.env_file is not None:
                args.env_file.write_text(text)
            kube_log(f"cluster up: {cluster.server}; env file {cluster.env_file}")
            print(text, end="")
        elif args.cmd == "stop":
            kube_log(f"stopped cluster in {stop_detached(args.state_dir)}")
    except KubeInfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
