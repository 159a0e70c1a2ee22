"""The local Kubernetes control plane: etcd, kube-apiserver, controller-manager, scheduler and KWOK.

:class:`LocalCluster` runs the binaries of infra/kube_build.py on loopback with the throw-away PKI
of infra/kube_pki.py (``with LocalCluster() as c: c.kubectl("get", "nodes")``), for test fixtures
and the demo; `start_detached`/`stop_detached` are the same for ``python -m infra.kube start`` and
``stop``, whose components outlive the command.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from infra.kube_build import (
    KUBE_VERSION,
    KubeInfraError,
    bin_dir,
    binaries_present,
    build,
    cache_root,
    kube_log,
)
from infra.kube_pki import SERVICE_CIDR, Pki, make_pki, write_kubeconfig
from infra.processes import free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# Pods whose image contains this string are driven to CrashLoopBackOff by a KWOK stage.
FAIL_IMAGE_MARKER = "steward.dev/fail"
FAIL_IMAGE = "example.invalid/steward.dev/fail:latest"

STAGES_DIR = Path(__file__).resolve().parent / "kube_stages"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _node_manifest(name: str) -> dict[str, object]:
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "node-role.kubernetes.io/agent": "",
            },
        },
        # Nodes accept status on create; node-initialize keeps these numbers.
        "status": {"allocatable": resources, "capacity": resources},
    }


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes] | None
    pid: int
    log: Path


@dataclass
class LocalCluster:
    """etcd + kube-apiserver + controller-manager + scheduler + KWOK on loopback.

    ``with LocalCluster() as c: c.kubectl("get", "nodes")``. Binaries come from
    :func:`build` (run first if missing); state lives in ``state_dir`` (a fresh temporary
    directory unless given) and is removed on :meth:`stop` unless ``keep_state``.
    """

    version: str = KUBE_VERSION
    nodes: int = 2
    state_dir: Path | None = None
    keep_state: bool = False
    build_if_missing: bool = True
    _procs: list[_Proc] = field(default_factory=list, repr=False)
    _owns_state: bool = field(default=False, repr=False)
    server: str = ""
    ports: dict[str, int] = field(default_factory=dict)

    # -- locations
    @property
    def bin_dir(self) -> Path:
        return bin_dir(self.version)

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def state(self) -> Path:
        if self.state_dir is None:
            raise KubeInfraError("cluster not started: no state directory yet")
        return self.state_dir

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.state / "env"

    @property
    def pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self._procs}

    def env(self) -> dict[str, str]:
        """Variables a client needs: KUBECONFIG and where kubectl/state live."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "STEWARD_KUBECTL": str(self.kubectl_path),
            "STEWARD_KUBE_STATE": str(self.state),
            "STEWARD_KUBE_SERVER": self.server,
        }

    # -- lifecycle
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> LocalCluster:
        if self._procs:
            raise KubeInfraError("cluster already started")
        if not binaries_present(self.version):
            if not self.build_if_missing:
                raise KubeInfraError(
                    f"binaries for {self.version} missing in {self.bin_dir}; "
                    "run `python -m infra.kube build`"
                )
            build(self.version)
        if self.state_dir is None:
            self.state_dir = Path(tempfile.mkdtemp(prefix="steward-kube-"))
            self._owns_state = True
        self.state.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                self._start_all(deadline)
                break
            except KubeInfraError as exc:
                # Ports are picked free but bound later by another process: another session
                # may take one in between. Retry with fresh ports in a fresh state directory.
                retry = "address already in use" in str(exc) and self._owns_state and attempt < 3
                _terminate(list(reversed(self._procs)), 10.0)
                self._procs.clear()
                if not retry:
                    self.stop()
                    raise
                kube_log(f"a port was taken meanwhile; retrying ({exc.args[0].splitlines()[0]})")
                shutil.rmtree(self.state, ignore_errors=True)
                self.state.mkdir(parents=True)
            except BaseException:
                self.stop()
                raise
        self._write_state()
        return self

    def _start_all(self, deadline: float) -> None:
        st, bd = self.state, self.bin_dir
        pki = make_pki(st / "pki")
        self.ports = {
            name: free_port()
            for name in (
                "etcd-client",
                "etcd-peer",
                "apiserver",
                "controller-manager",
                "scheduler",
                "kwok",
            )
        }
        p = self.ports
        self.server = f"https://127.0.0.1:{p['apiserver']}"
        write_kubeconfig(self.kubeconfig, self.server, pki)

        etcd_url = f"http://127.0.0.1:{p['etcd-client']}"
        peer_url = f"http://127.0.0.1:{p['etcd-peer']}"
        self._spawn(
            "etcd",
            [
                str(bd / "etcd"),
                "--name=steward",
                f"--data-dir={st / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=steward={peer_url}",
                "--initial-cluster-state=new",
                # Test data only: skipping fsync makes etcd fast on a shared disk.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self._wait("etcd", deadline, lambda: _http_ok(f"{etcd_url}/health", b'"health":"true"'))

        self._spawn(
            "kube-apiserver",
            [
                str(bd / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                # No default route here, so the advertise address must be given.
                "--advertise-address=127.0.0.1",
                f"--cert-dir={st / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # No kube-proxy or real endpoints: don't reconcile the kubernetes Service.
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
            ],
        )
        ctx = _client_ssl(pki)
        self._wait(
            "kube-apiserver", deadline, lambda: _http_ok(f"{self.server}/readyz", b"ok", ctx)
        )

        kubeconfig = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        self._spawn(
            "kube-controller-manager",
            [
                str(bd / "kube-controller-manager"),
                *common,
                f"--secure-port={p['controller-manager']}",
                f"--cert-dir={st / 'controller-manager-certs'}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=false",
                # Fast eviction would fight KWOK's heartbeats on a loaded machine; keep defaults
                # except a short pod GC threshold for terminated pods.
                "--terminated-pod-gc-threshold=100",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(bd / "kube-scheduler"),
                *common,
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={st / 'scheduler-certs'}",
            ],
        )
        # Their serving certs are self-signed in memory; only liveness matters here.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for comp, port in (
            ("kube-controller-manager", p["controller-manager"]),
            ("kube-scheduler", p["scheduler"]),
        ):
            self._wait(
                comp,
                deadline,
                functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz", b"ok", insecure),
            )

        kwok_config = st / "kwok.yaml"
        kwok_config.write_text(stage_documents())
        self._spawn(
            "kwok",
            [
                str(bd / "kwok"),
                f"--kubeconfig={kubeconfig}",
                f"--config={kwok_config}",
                "--manage-all-nodes=true",
                f"--tls-cert-file={pki.admin_cert}",
                f"--tls-private-key-file={pki.admin_key}",
                "--node-ip=127.0.0.1",
                f"--node-port={p['kwok']}",
                f"--server-address=127.0.0.1:{p['kwok']}",
                "--node-lease-duration-seconds=40",
            ],
        )
        nodes = "".join(
            json.dumps(_node_manifest(f"kwok-node-{i}")) + "\n" for i in range(self.nodes)
        )
        self.kubectl("apply", "-f", "-", input=nodes)
        self._wait("kwok (nodes Ready)", deadline, self._nodes_ready, log_of="kwok")

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "nodes",
            "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            check=False,
        )
        states = out.stdout.split()
        return out.returncode == 0 and len(states) == self.nodes and set(states) == {"True"}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                argv,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.state,
                # Own session: Ctrl-C in a test run must not kill the cluster mid-teardown.
                start_new_session=True,
            )
        self._procs.append(_Proc(name, popen, popen.pid, log))
        kube_log(f"started {name} (pid {popen.pid})")

    def _wait(
        self,
        what: str,
        deadline: float,
        ready: Callable[[], bool],
        log_of: str | None = None,
    ) -> None:
        proc = next(p for p in self._procs if p.name == (log_of or what))
        t0 = time.monotonic()
        while True:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise KubeInfraError(
                    f"{proc.name} exited with code {proc.popen.returncode} before "
                    f"becoming healthy; tail of {proc.log}:\n{_tail(proc.log)}"
                )
            try:
                if ready():
                    kube_log(f"{what} healthy after {time.monotonic() - t0:.1f}s")
                    return
            except (OSError, KubeInfraError):
                pass
            if time.monotonic() > deadline:
                raise KubeInfraError(
                    f"{what} did not become healthy in time; tail of {proc.log}:\n{_tail(proc.log)}"
                )
            time.sleep(0.3)

    def _write_state(self) -> None:
        data = {
            "version": self.version,
            "server": self.server,
            "ports": self.ports,
            "pids": self.pids,
            "owns_state": self._owns_state,
            "binaries": {p.name: str(self.bin_dir / p.name) for p in self._procs},
        }
        (self.state / "state.json").write_text(json.dumps(data, indent=2) + "\n")
        env = self.env()
        env.update(
            {
                f"STEWARD_KUBE_PID_{n.upper().replace('-', '_')}": str(pid)
                for n, pid in self.pids.items()
            }
        )
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))

    def stop(self, grace: float = 10.0) -> None:
        """Terminate components in reverse start order, then drop the state unless kept."""
        _terminate(list(reversed(self._procs)), grace)
        self._procs.clear()
        if self.state_dir is not None and self._owns_state and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- clients
    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raise with its stderr on failure."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and out.returncode != 0:
            raise KubeInfraError(
                f"kubectl {' '.join(args)} failed ({out.returncode}): "
                f"{out.stderr.strip() or out.stdout.strip()}"
            )
        return out

    def api_client(self) -> ApiClient:
        """An official ``kubernetes`` client bound to this cluster's kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def _http_ok(url: str, expect: bytes, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        # Loopback only: bypass any proxy configured in the environment.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )
        with opener.open(url, timeout=2) as resp:
            return resp.status == 200 and expect in resp.read()
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def _client_ssl(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    return ctx


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _terminate(procs: list[_Proc], grace: float) -> None:
    for p in procs:
        if _alive(p.pid):
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while _alive(p.pid) and time.monotonic() < deadline:
            if p.popen is not None:
                p.popen.poll()
            time.sleep(0.1)
        if _alive(p.pid):
            kube_log(f"{p.name} (pid {p.pid}) ignored SIGTERM for {grace:.0f}s, killing")
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if p.popen is not None:
            try:
                p.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def stage_documents() -> str:
    """All KWOK Stage documents, as one multi-document YAML for ``kwok --config``."""
    files = sorted(STAGES_DIR.glob("*.yaml"))
    if not files:
        raise KubeInfraError(f"no KWOK stage files found in {STAGES_DIR}")
    return "".join("---\n" + f.read_text() for f in files)


def _last_state_pointer() -> Path:
    return cache_root() / "last-state"


def start_detached(version: str, nodes: int, state_dir: Path | None) -> LocalCluster:
    """CLI start: the components outlive this process; ``stop`` finds them via state.json."""
    cluster = LocalCluster(version=version, nodes=nodes, state_dir=state_dir, keep_state=True)
    cluster.start()
    # Forget the Popen objects so nothing reaps or kills them when we exit.
    for p in cluster._procs:
        p.popen = None
    _last_state_pointer().parent.mkdir(parents=True, exist_ok=True)
    _last_state_pointer().write_text(str(cluster.state) + "\n")
    return cluster


def stop_detached(state_dir: Path | None) -> Path:
    if state_dir is None:
        env = os.environ.get("STEWARD_KUBE_STATE")
        pointer = _last_state_pointer()
        if env:
            state_dir = Path(env)
        elif pointer.is_file():
            state_dir = Path(pointer.read_text().strip())
        else:
            raise KubeInfraError("no cluster to stop: pass --state-dir or set STEWARD_KUBE_STATE")
    state_file = state_dir / "state.json"
    if not state_file.is_file():
        raise KubeInfraError(f"{state_file} not found: is {state_dir} a cluster state directory?")
    data = json.loads(state_file.read_text())
    procs: list[_Proc] = []
    for name, pid in reversed(list(data["pids"].items())):
        # Only signal a pid that still runs our binary (pids get reused).
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if Path(exe).name == Path(data["binaries"][name]).name:
            procs.append(_Proc(name, None, int(pid), state_dir / "logs" / f"{name}.log"))
    _terminate(procs, 10.0)
    for name, pid in data["pids"].items():
        kube_log(f"stopped {name} (pid {pid})")
    if data.get("owns_state"):
        shutil.rmtree(state_dir, ignore_errors=True)
    pointer = _last_state_pointer()
    if pointer.is_file() and pointer.read_text().strip() == str(state_dir):
        pointer.unlink()
    return state_dir
