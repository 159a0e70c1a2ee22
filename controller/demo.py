"""The whole story: ledger, controller and a real Kubernetes control plane.

It starts the local control plane (etcd, kube-apiserver, controller-manager, scheduler and
KWOK; built from Go modules on first use, then cached), creates the user's Deployment
`models/model-server` (4 replicas of v1) and its Service, starts a ledger server on the embedded
SQLite store, `steward-controller` reading that log itself, a Prometheus (Debian's package) on
loopback scraping the model server's request metrics, and `steward-monitor`. Then, through gRPC:

1. genesis, keys and a policy (canary 25% → 50% (gated by an error-rate check on Prometheus)
   → 100%, then promotion);
2. an agent proposes v2; evals; the agent's own approval is refused; two people approve;
3. the controller starts the canary; on-call engages the kill switch; the controller removes
   the canary at once (the time is printed); a release needs two approvers;
4. the agent proposes v3; evals, approvals; steward-monitor measures the canary's error rate
   at step 1 and signs the samples; the controller walks every step and promotes: the stable
   Deployment ends on v3; the values that gated each step are printed;
5. the timeline; an export and a trust root; the steward-audit command that verifies them.

Run: python -m controller.demo [--dir DIR] [--keep-cluster]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from infra.kube_build import binaries_present, build
from infra.kube_cluster import LocalCluster
from infra.prometheus import MetricsSource, PrometheusServer
from ledger.client import LedgerClient
from ledger.demo import ledger_server, narrator, save_keys, say
from ledger.formats import (
    HealthCheck,
    HealthReported,
    KillScope,
    NoDataRule,
    PlanStep,
    RolloutStep,
    SignedEvent,
)
from ledger.rules import check
from ledger.scenario import Cast, Flow, followed_state
from ledger.state import LedgerState
from ledger.timeline import lines

NAMESPACE, NAME = "models", "model-server"
V1, V2, V3 = (f"registry.example/model-server:{v}" for v in ("v1", "v2", "v3"))
PLAN = (PlanStep(25, 2, False), PlanStep(50, 2, True), PlanStep(100, 1, False))
# The health gate of step 1: the canary's share of 5xx responses, measured every second by
# steward-monitor on the demo's Prometheus (docs/ANALYSIS.md).
ERROR_RATE = HealthCheck(
    name="error-rate",
    query=(
        'sum(rate(http_requests_total{{canary_selector},code=~"5.."}[5s]))'
        " / sum(rate(http_requests_total{{canary_selector}}[5s]))"
    ),
    op="LE",
    threshold=0.01,
    interval_seconds=1,
    count=3,
    failure_limit=2,
    steps=None,
    no_data=NoDataRule(90, "ROLLBACK"),
)
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def fold(client: LedgerClient) -> LedgerState:
    state = LedgerState()
    for e in client.read(0):
        if check(state, e) is None:
            state.apply(e)
    return state


def create_target(cluster: LocalCluster) -> None:
    labels = f"app: {NAME}"
    manifest = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {NAME}, namespace: {NAMESPACE}, labels: {{{labels}}}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{{labels}}}}}
  template:
    metadata: {{labels: {{{labels}}}}}
    spec: {{containers: [{{name: server, image: "{V1}"}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {NAME}, namespace: {NAMESPACE}}}
spec: {{selector: {{{labels}}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""
    path = cluster.state / "target.yaml"
    path.write_text(manifest)
    cluster.kubectl("apply", "-f", str(path))
    crd = Path(__file__).resolve().parents[1] / "k8s" / "base" / "crd-modelrollouts.yaml"
    if crd.exists():
        cluster.kubectl("apply", "-f", str(crd))


_APPS: dict[Path, Any] = {}


def deployments(cluster: LocalCluster) -> dict[str, tuple[int, int, str]]:
    """name → (spec replicas, ready replicas, image) in the target namespace."""
    from kubernetes import client

    if cluster.kubeconfig not in _APPS:  # one API client per cluster, not one per poll
        _APPS[cluster.kubeconfig] = client.AppsV1Api(cluster.api_client())
    api = _APPS[cluster.kubeconfig]
    out = {}
    for d in api.list_namespaced_deployment(NAMESPACE).items:
        out[d.metadata.name] = (
            d.spec.replicas or 0,
            d.status.ready_replicas or 0,
            d.spec.template.spec.containers[0].image,
        )
    return out


def show(cluster: LocalCluster) -> str:
    return ", ".join(
        f"{n} {r[1]}/{r[0]} ready ({r[2].rsplit(':', 1)[-1]})"
        for n, r in sorted(deployments(cluster).items())
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


METRICS_PORT = free_port()


def scrape_metrics(prefix: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(prefix)]


@contextmanager
def controller_process(
    workdir: Path, address: str, cluster: LocalCluster
) -> Iterator[subprocess.Popen[bytes]]:
    log = (workdir / "controller.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.main",
            "--ledger",
            address,
            "--store",
            f"sqlite:{workdir / 'ledger.db'}",
            "--kubeconfig",
            str(cluster.kubeconfig),
            "--key",
            str(workdir / "keys" / "controller.pem"),
            "--namespace",
            NAMESPACE,
            "--snapshot-db",
            str(workdir / "controller.db"),
            "--lease-namespace",
            NAMESPACE,
            "--identity",
            "demo-controller",
            "--not-ready-grace-seconds",
            "30",
            "--metrics-listen",
            f"127.0.0.1:{METRICS_PORT}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"steward-controller exited; see {workdir / 'controller.log'}")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def monitor_process(workdir: Path, address: str, prometheus: str) -> Iterator[None]:
    log = (workdir / "monitor.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "--server",
            address,
            "--key",
            str(workdir / "keys" / "monitor.pem"),
            "--prometheus",
            prometheus,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(0.5)
        if proc.poll() is not None:
            raise SystemExit(f"steward-monitor exited; see {workdir / 'monitor.log'}")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def gating_values(client: LedgerClient, proposal: bytes) -> list[str]:
    """For each step the rollout left, the checks' last report on it and the advance it opened."""
    out: list[str] = []
    last: dict[int, HealthReported] = {}
    for e in client.read(0):
        p = e.body.payload
        if isinstance(p, HealthReported) and p.proposal == proposal and p.checks:
            last[p.step] = p
        elif isinstance(p, RolloutStep) and p.proposal == proposal and p.phase == "ADVANCED":
            report = last.get(p.step - 1)
            if report is None:
                continue
            for c in report.checks:
                values = ", ".join("-" if x.value is None else f"{x.value:.4f}" for x in c.samples)
                out.append(f"step {report.step}: {c.name} {c.verdict} from [{values}] ({c.query})")
            out.append(f"step {p.step - 1} → {p.step}: {p.reason}")
    return out


def run(workdir: Path, keep_cluster: bool) -> int:
    if not binaries_present():
        say("building the local Kubernetes control plane (first run only; cached afterwards)…")
        build()
    cast = Cast.create()
    save_keys(cast, workdir / "keys")
    flow = Flow(cast, ledger="demo", origin="steward.dev/ledger/demo")
    with ExitStack() as stack:
        say(
            "starting the local Kubernetes control plane (etcd, apiserver, controller-manager, scheduler, KWOK)…"
        )
        cluster = LocalCluster()
        cluster.start()
        if not keep_cluster:
            stack.callback(cluster.stop)
        create_target(cluster)
        wait_for(
            "4 ready model-server pods", lambda: deployments(cluster).get(NAME, (0, 0, ""))[1] >= 4
        )
        say(f"  cluster up; kubeconfig {cluster.kubeconfig}; {show(cluster)}")

        # The model server's request metrics (its canary's and its stable's), which a real
        # Prometheus scrapes every second; the canary serves 0.4% errors.
        source = MetricsSource(NAMESPACE, NAME).start()
        stack.callback(source.stop)
        source.set("stable", rps=40, error_ratio=0.002)
        source.set("canary", rps=20, error_ratio=0.004)
        prometheus = PrometheusServer([source.address], workdir=workdir / "prometheus").start()
        stack.callback(prometheus.close)
        say(f"Prometheus on {prometheus.url} scraping the model server's metrics")

        address = stack.enter_context(ledger_server(workdir))
        client = LedgerClient(address)
        flow.state = followed_state(
            client.read
        )  # approvals, reports and releases name their binding
        say(f"ledger server on {address} (SQLite log {workdir / 'ledger.db'})")

        submit, refused = narrator(client)

        def phase_is(proposal: bytes, *phases: str) -> Callable[[], str | None]:
            def probe() -> str | None:
                p = fold(client).proposals.get(proposal)
                return p.phase if p is not None and p.phase in phases else None

            return probe

        say("\n1. genesis, keys and a policy")
        submit("genesis signed by two of three roots", flow.genesis())
        for grant in flow.grants():
            submit("grant " + grant_name(grant), grant)
        submit(
            "policy: 2 human approvals; canary 25→50→100%; step 1 gated by error rate ≤ 1%",
            flow.policy(namespace=NAMESPACE, plan=PLAN, analysis=(ERROR_RATE,)),
        )

        stack.enter_context(controller_process(workdir, address, cluster))
        say("steward-controller started (replays the SQLite log itself, appends through gRPC)")
        stack.enter_context(monitor_process(workdir, address, prometheus.url))
        say("steward-monitor started (follows the log, queries Prometheus, signs what it saw)")

        say("\n2. v2: proposed, evaluated, approved by people — then stopped by one")
        p2 = submit("agent proposes v2", flow.propose(V2, namespace=NAMESPACE, deployment=NAME))
        e2 = (
            submit("evalbot: safety", flow.eval(p2, "safety", 0.99)),
            submit("evalbot: quality", flow.eval(p2, "quality", 0.91)),
        )
        refused("the agent approves its own proposal", flow.approve(p2, e2, "agent"))
        submit("alice approves", flow.approve(p2, e2, "alice"))
        submit("bob approves", flow.approve(p2, e2, "bob"))
        wait_for("the canary to start", phase_is(p2, "STARTED", "ADVANCED"))
        wait_for(
            "a ready canary pod",
            lambda: deployments(cluster).get(f"{NAME}-canary", (0, 0, ""))[1] >= 1,
        )
        say(f"  controller started the canary: {show(cluster)}")
        scope = KillScope("TARGET", NAMESPACE, NAME)
        killed_at = time.monotonic()
        submit("on-call engages the kill switch", flow.kill(scope, reason="p99 latency spike"))
        wait_for(
            "the canary to be removed",
            lambda: (
                deployments(cluster).get(f"{NAME}-canary", (0, 0, ""))[0] == 0
                or f"{NAME}-canary" not in deployments(cluster)
            ),
            timeout=30,
        )
        say(
            f"  canary gone {1000 * (time.monotonic() - killed_at):.0f} ms after the kill switch was acknowledged: {show(cluster)}"
        )
        wait_for("the rollback to be recorded", phase_is(p2, "ROLLED_BACK"), timeout=30)
        # The metrics loop times the stop from the views it is shown; let it see this one
        # before the release changes what the views say.
        wait_for(
            "the controller to time its reaction",
            lambda: any(
                float(line.split()[-1]) >= 1
                for line in scrape_metrics("steward_kill_switch_reaction_seconds_count")
            ),
            timeout=15,
        )
        refused("alice alone releases the kill switch", flow.release(scope, signers=("alice",)))
        submit("alice and bob release it", flow.release(scope))

        say("\n3. v3: every step of the plan, then promotion")
        p3 = submit("agent proposes v3", flow.propose(V3, namespace=NAMESPACE, deployment=NAME))
        e3 = (
            submit("evalbot: safety", flow.eval(p3, "safety", 0.98)),
            submit("evalbot: quality", flow.eval(p3, "quality", 0.93)),
        )
        submit("alice approves", flow.approve(p3, e3, "alice"))
        submit("bob approves", flow.approve(p3, e3, "bob"))

        def at_step(step: int) -> Callable[[], bool]:
            def probe() -> bool:
                p = fold(client).proposals.get(p3)
                return bool(p and p.current and p.current.step >= step) or bool(
                    p and p.phase == "PROMOTED"
                )

            return probe

        wait_for("step 1 (50%)", at_step(1))
        say(f"  canary at 50%: {show(cluster)}; steward-monitor measures its error rate")
        wait_for("promotion", phase_is(p3, "PROMOTED"), timeout=120)
        for line in gating_values(client, p3):
            say(f"  gate: {line}")
        wait_for(
            "stable on v3 with 4 ready pods",
            lambda: (
                deployments(cluster).get(NAME, (0, 0, ""))[2] == V3
                and deployments(cluster)[NAME][1] >= 4
            ),
        )
        say(f"  promoted: {show(cluster)}")
        for line in scrape_metrics("steward_kill_switch_reaction_seconds_count") + scrape_metrics(
            "steward_events_applied_total"
        ):
            say(f"  metrics: {line}")

        client.checkpoint(publish_now=True)
        say("\n4. the timeline")
        for line in lines(client.read(0)):
            say("  " + line)

        from ledger.export import write_export, write_trust_root

        export, trust = workdir / "ledger-export.avro", workdir / "trust-root.json"
        count = write_export(client, export, progress=False)
        write_trust_root(client, trust)
    say(
        f"\nleft in {workdir}: keys/, ledger.db ({count} entries), controller.log, ledger-export.avro, trust-root.json"
    )
    say("verify it independently with:")
    say(f"  steward-audit verify --export {export} --trust-root {trust}")
    return 0


def grant_name(event: SignedEvent) -> str:
    from ledger.formats import KeyGranted, decode_body

    payload = decode_body(event.body).payload
    assert isinstance(payload, KeyGranted)
    return payload.principal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        help="where to leave keys, log and export (default: a new temporary directory)",
    )
    parser.add_argument(
        "--keep-cluster", action="store_true", help="leave the control plane running at the end"
    )
    args: Any = parser.parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="steward-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        parser.error(f"--dir {workdir} is not empty; the demo starts a new ledger")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    say(f"Steward demo in {workdir}")
    return run(workdir, args.keep_cluster)


if __name__ == "__main__":
    sys.exit(main())
