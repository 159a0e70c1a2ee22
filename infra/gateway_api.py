"""The Gateway API CRDs (HTTPRoute and friends) for the local control plane, from a pinned Go module.

Traffic mode (docs/CONTROLLER.md) sets the ``backendRefs`` weights of an ``HTTPRoute``, so its
tests need the real CustomResourceDefinitions and their validation, not a copy. They come from
the ``sigs.k8s.io/gateway-api`` Go module's ``config/crd/standard`` manifests, fetched once with
``go mod download`` (the Go module proxy, like the Kubernetes binaries of infra/kube_build.py)
and copied into the cache, so later runs need neither the network nor the go command.

``python -m infra.gateway_api fetch`` fetches them (scripts/setup calls it);
``python -m infra.gateway_api path`` prints the directory holding them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from infra import InfraError, steward_cache
from infra.go_build import go_env

if TYPE_CHECKING:
    from infra.kube_cluster import LocalCluster

# The one place the version is pinned.
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = os.environ.get("STEWARD_GATEWAY_API_VERSION", "v1.6.3")
CHANNEL = "standard"
# The CRDs traffic mode needs established before its first write (the others come along).
HTTPROUTE_CRD = "httproutes.gateway.networking.k8s.io"


class GatewayApiError(InfraError):
    """The Gateway API manifests could not be fetched; the message says what go answered."""


def crd_dir(version: str = GATEWAY_API_VERSION) -> Path:
    """Where the pinned version's ``config/crd/standard/*.yaml`` are (or will be) cached."""
    return steward_cache("gateway-api", version, CHANNEL)


def manifests(version: str = GATEWAY_API_VERSION) -> list[Path]:
    """The cached manifests, fetching them first if the cache lacks them."""
    return sorted(fetch(version).glob("*.yaml"))


def fetch(version: str = GATEWAY_API_VERSION) -> Path:
    """Copy the module's standard-channel CRDs into the cache unless they are there; return it."""
    target = crd_dir(version)
    if (target / ".complete").is_file():
        return target
    if shutil.which("go") is None:
        raise GatewayApiError("the go toolchain is not on PATH; it fetches the Gateway API CRDs")
    module = f"{GATEWAY_API_MODULE}@{version}"
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            ["go", "mod", "download", "-json", module],
            cwd=work,
            env=go_env(),
            capture_output=True,
            text=True,
            check=False,
        )
    try:
        info = json.loads(out.stdout)
    except json.JSONDecodeError:
        info = {}
    if out.returncode != 0 or info.get("Error") or not info.get("Dir"):
        raise GatewayApiError(
            f"go mod download {module} failed: {info.get('Error') or out.stderr.strip()}"
        )
    source = Path(info["Dir"]) / "config" / "crd" / CHANNEL
    found = sorted(source.glob("*.yaml"))
    if not any(p.name == "gateway.networking.k8s.io_httproutes.yaml" for p in found):
        raise GatewayApiError(f"{module}: no HTTPRoute CRD under config/crd/{CHANNEL}")
    # Copied whole into a fresh directory, then renamed: a half-copied cache never looks done.
    staging = target.with_name(f".{CHANNEL}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in found:
        shutil.copyfile(path, staging / path.name)
    (staging / ".complete").write_text(f"{module}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def install(cluster: LocalCluster, version: str = GATEWAY_API_VERSION) -> None:
    """Apply the CRDs to ``cluster`` and wait until HTTPRoute is served.

    Server-side: the HTTPRoute CRD is larger than the annotation a client-side apply keeps."""
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=steward-infra"]
    for path in manifests(version):
        args += ["-f", str(path)]
    cluster.kubectl(*args)
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{HTTPROUTE_CRD}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.gateway_api",
        description=f"Fetch the Gateway API CRDs ({GATEWAY_API_MODULE} {GATEWAY_API_VERSION}).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the CRDs into the cache (skipped when present)")
    sub.add_parser("path", help="print the directory holding the CRDs, fetching them if needed")
    args = parser.parse_args(argv)
    try:
        directory = fetch()
    except GatewayApiError as exc:
        print(f"gateway-api: {exc}", file=sys.stderr)
        return 1
    if args.command == "fetch":
        print(f"[gateway-api] {len(manifests())} CRD manifests in {directory}", file=sys.stderr)
    else:
        print(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
