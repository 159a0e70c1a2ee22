"""A real Kubernetes control plane on one machine, built from the Go module proxy.

``python -m infra.kube build`` compiles etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kubectl and KWOK into a cache outside the repository (skipped when a stamp
says they are there). ``start``/``stop`` run them on loopback with a throw-away PKI, and
:class:`LocalCluster` is the same thing as a Python API for test fixtures.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fcntl
import functools
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra import InfraError, steward_cache
from infra.processes import free_port

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

KUBE_VERSION = os.environ.get("STEWARD_KUBE_VERSION", "v1.35.4")
ETCD_VERSION = os.environ.get("STEWARD_ETCD_VERSION", "v3.6.16")
KWOK_VERSION = os.environ.get("STEWARD_KWOK_VERSION", "v0.8.0")

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBE_COMPONENTS, "etcd", "kwok")

# Pods whose image contains this string are driven to CrashLoopBackOff by a KWOK stage.
FAIL_IMAGE_MARKER = "steward.dev/fail"
FAIL_IMAGE = "example.invalid/steward.dev/fail:latest"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # first address of SERVICE_CIDR: the kubernetes Service

STAGES_DIR = Path(__file__).resolve().parent / "kube_stages"


class KubeInfraError(InfraError):
    """The local control plane could not be built or started; the message says which part."""


def _log(msg: str) -> None:
    print(f"[kube] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return steward_cache("kube")


def bin_dir(version: str = KUBE_VERSION) -> Path:
    return cache_root() / version / "bin"


def _stamp(version: str) -> Path:
    return bin_dir(version) / ".complete.json"


def binaries_present(version: str = KUBE_VERSION) -> bool:
    bd = bin_dir(version)
    return _stamp(version).is_file() and all((bd / b).is_file() for b in ALL_BINARIES)


# --------------------------------------------------------------------------------------- build


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["CGO_ENABLED"] = "0"
    # Never let the go command fetch a different toolchain behind our back.
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _run_go(args: Sequence[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    """Run a go command, heartbeat while it runs, and raise with the log tail if it fails."""
    start = time.monotonic()
    log_path = cwd / f"{what}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            list(args), cwd=cwd, env=env or _go_env(), stdout=log, stderr=subprocess.STDOUT
        )
        next_beat = 60.0
        while proc.poll() is None:
            time.sleep(1)
            elapsed = time.monotonic() - start
            if elapsed >= next_beat:
                _log(f"  {what}: still building ({elapsed / 60:.0f} min)")
                next_beat += 60
    out = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise KubeInfraError(f"{what} failed ({' '.join(args)}), exit {proc.returncode}:\n{tail}")
    return out


def _download_json(module: str, cwd: Path) -> dict[str, str]:
    cwd.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False,
    )
    try:
        info: dict[str, str] = json.loads(out.stdout)
    except json.JSONDecodeError as exc:
        raise KubeInfraError(f"go mod download {module} failed: {out.stderr.strip()}") from exc
    if info.get("Error") or out.returncode != 0:
        raise KubeInfraError(f"go mod download {module} failed: {info.get('Error') or out.stderr}")
    return info


def _parse_gomod(text: str) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """Return (go line, godebug line, [(module, local path)]) for local-path replaces."""
    go_line = godebug = None
    local: list[tuple[str, str]] = []
    in_replace = False
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if line.startswith("go ") and go_line is None:
            go_line = line
        elif line.startswith("godebug ") and godebug is None:
            godebug = line
        if line == "replace (":
            in_replace = True
            continue
        if in_replace and line == ")":
            in_replace = False
            continue
        if in_replace or line.startswith("replace "):
            spec = line.removeprefix("replace ").strip()
            if "=>" not in spec:
                continue
            left, right = (s.strip() for s in spec.split("=>", 1))
            mod = left.split()[0]
            target = right.split()
            if target and target[0].startswith("."):
                local.append((mod, target[0]))
    return go_line, godebug, local


def _write_wrapper(
    work: Path, name: str, require: str, version: str, replaces: list[str],
    go_line: str | None, godebug: str | None,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module steward.build/{name}", "", go_line or "go 1.25", ""]
    if godebug:
        lines += [godebug, ""]
    lines += [f"require {require} {version}", "", "replace ("]
    lines += [f"\t{r}" for r in replaces]
    lines += [")", ""]
    (work / "go.mod").write_text("\n".join(lines))


def _build_kube(version: str, work: Path, bd: Path, parallel: str) -> None:
    info = _download_json(f"k8s.io/kubernetes@{version}", work.parent)
    go_line, godebug, local = _parse_gomod(Path(info["GoMod"]).read_text())
    major, minor, patch = version.lstrip("v").split(".")[:3]
    staging_version = f"v0.{minor}.{patch}"
    replaces = [
        f"{mod} => {mod} {staging_version}"
        for mod, path in local
        if path.startswith("./staging/")
    ]
    if not replaces:
        raise KubeInfraError(f"k8s.io/kubernetes@{version}: no staging replaces found in its go.mod")
    _write_wrapper(work, "kube", "k8s.io/kubernetes", version, replaces, go_line, godebug)
    _log(f"wrapper for k8s.io/kubernetes {version}: {len(replaces)} staging modules "
         f"pinned to {staging_version}" + (f", {godebug}" if godebug else ""))
    build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    ldflags.append("-s -w")
    for comp in KUBE_COMPONENTS:
        if (bd / comp).is_file():
            _log(f"{comp}: already built, skipping")
            continue
        t0 = time.monotonic()
        _log(f"{comp}: building")
        tmp = bd / f".{comp}.tmp"
        _run_go(
            ["go", "build", "-mod=mod", "-p", parallel, "-trimpath",
             "-ldflags", " ".join(ldflags), "-o", str(tmp), f"k8s.io/kubernetes/cmd/{comp}"],
            work, comp,
        )
        tmp.rename(bd / comp)
        _log(f"{comp}: done in {time.monotonic() - t0:.0f}s")


def _build_etcd(version: str, work: Path, bd: Path, parallel: str) -> None:
    if (bd / "etcd").is_file():
        _log("etcd: already built, skipping")
        return
    t0 = time.monotonic()
    _log(f"etcd {version}: building")
    info = _download_json(f"go.etcd.io/etcd/server/v3@{version}", work.parent)
    go_line, godebug, local = _parse_gomod(Path(info["GoMod"]).read_text())
    # The server's go.mod points its sibling modules (api, client, pkg, ...) at ../; pin each
    # to the same published release instead.
    # Its other local replaces (go.etcd.io/etcd, tests => ./FORBIDDEN_DEPENDENCY) are guards
    # against importing those modules, not real dependencies: leave them out.
    replaces = [f"{mod} => {mod} {version}" for mod, path in local if path.startswith("../")]
    _write_wrapper(work, "etcd", "go.etcd.io/etcd/server/v3", version, replaces, go_line, godebug)
    tmp = bd / ".etcd.tmp"
    _run_go(
        ["go", "build", "-mod=mod", "-p", parallel, "-trimpath", "-ldflags", "-s -w",
         "-o", str(tmp), "go.etcd.io/etcd/server/v3"],
        work, "etcd",
    )
    tmp.rename(bd / "etcd")
    _log(f"etcd: done in {time.monotonic() - t0:.0f}s")


def _build_kwok(version: str, work: Path, bd: Path, parallel: str) -> None:
    if (bd / "kwok").is_file():
        _log("kwok: already built, skipping")
        return
    t0 = time.monotonic()
    _log(f"kwok {version}: building")
    work.mkdir(parents=True, exist_ok=True)
    env = _go_env()
    env["GOBIN"] = str(bd)
    _run_go(
        ["go", "install", "-p", parallel, "-trimpath", "-ldflags", "-s -w",
         f"sigs.k8s.io/kwok/cmd/kwok@{version}"],
        work, "kwok", env,
    )
    _log(f"kwok: done in {time.monotonic() - t0:.0f}s")


def build(version: str = KUBE_VERSION, parallel: int | None = None) -> Path:
    """Build every binary into the cache unless the stamp says it is complete; return bin dir."""
    bd = bin_dir(version)
    if binaries_present(version):
        _log(f"binaries for {version} present in {bd} (stamp found), nothing to build")
        return bd
    if shutil.which("go") is None:
        raise KubeInfraError("the go toolchain is not on PATH; it is needed to build the control plane")
    bd.mkdir(parents=True, exist_ok=True)
    # Two builds at once (two test sessions, CI and a person) would race on the same outputs:
    # the second waits for the first, then finds the stamp.
    with (cache_root() / version / ".build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _log("another build of these binaries is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if binaries_present(version):
            _log(f"binaries for {version} present in {bd} (built meanwhile)")
            return bd
        _build_all(version, bd, str(parallel or int(os.environ.get("STEWARD_GO_BUILD_P", "2"))))
    return bd


def _build_all(version: str, bd: Path, p: str) -> None:
    work = cache_root() / version / "build"
    t0 = time.monotonic()
    _log(f"building Kubernetes {version}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION} "
         f"into {bd} (go build -p {p})")
    _build_kube(version, work / "kube", bd, p)
    _build_etcd(ETCD_VERSION, work / "etcd", bd, p)
    _build_kwok(KWOK_VERSION, work / "kwok", bd, p)
    total = time.monotonic() - t0
    _stamp(version).write_text(json.dumps({
        "kubernetes": version, "etcd": ETCD_VERSION, "kwok": KWOK_VERSION,
        "seconds": round(total), "built_at": dt.datetime.now(dt.UTC).isoformat(),
    }, indent=2) + "\n")
    _log(f"all binaries built in {total:.0f}s ({total / 60:.1f} min)")

# ----------------------------------------------------------------------------------------- PKI


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


def _cert(
    subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
    sans: Sequence[x509.GeneralName] = (), usage: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30 if not ca else 365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=not ca,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        ), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """Paths of the throw-away PKI: one CA, a serving cert, an admin client cert, SA keys."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path) -> Pki:
    """Generate the PKI with ``cryptography`` (EC P-256: quick to generate, accepted everywhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "steward-local-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local"]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)]
    serving = _cert(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        serving_key, ca_name, ca_key, sans=sans, usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _cert(
        x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
        ]),
        admin_key, ca_name, ca_key,
        # kwok also serves its kubelet endpoint with this pair, so allow both uses.
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())

    pem = serialization.Encoding.PEM
    pki = Pki(
        ca_cert=directory / "ca.crt", serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key", admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key", sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.serving_cert.write_bytes(serving.public_bytes(pem))
    _write_key(pki.serving_key, serving_key)
    pki.admin_cert.write_bytes(admin.public_bytes(pem))
    _write_key(pki.admin_key, admin_key)
    _write_key(pki.sa_key, sa_key)
    pki.sa_pub.write_bytes(sa_key.public_key().public_bytes(
        pem, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pki


def write_kubeconfig(path: Path, server: str, pki: Pki) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "steward-local", "cluster": {
            "server": server, "certificate-authority-data": b64(pki.ca_cert)}}],
        "users": [{"name": "admin", "user": {
            "client-certificate-data": b64(pki.admin_cert),
            "client-key-data": b64(pki.admin_key)}}],
        "contexts": [{"name": "steward-local", "context": {
            "cluster": "steward-local", "user": "admin", "namespace": "default"}}],
        "current-context": "steward-local",
    }, indent=2) + "\n")
    path.chmod(0o600)


# ------------------------------------------------------------------------------------- cluster


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
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> LocalCluster:
        if self._procs:
            raise KubeInfraError("cluster already started")
        if not binaries_present(self.version):
            if not self.build_if_missing:
                raise KubeInfraError(f"binaries for {self.version} missing in {self.bin_dir}; "
                                "run `python -m infra.kube build`")
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
                retry = ("address already in use" in str(exc) and self._owns_state
                         and attempt < 3)
                _terminate(list(reversed(self._procs)), 10.0)
                self._procs.clear()
                if not retry:
                    self.stop()
                    raise
                _log(f"a port was taken meanwhile; retrying ({exc.args[0].splitlines()[0]})")
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
        self.ports = {name: free_port() for name in (
            "etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")}
        p = self.ports
        self.server = f"https://127.0.0.1:{p['apiserver']}"
        write_kubeconfig(self.kubeconfig, self.server, pki)

        etcd_url = f"http://127.0.0.1:{p['etcd-client']}"
        peer_url = f"http://127.0.0.1:{p['etcd-peer']}"
        self._spawn("etcd", [
            str(bd / "etcd"), "--name=steward", f"--data-dir={st / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=steward={peer_url}", "--initial-cluster-state=new",
            # Test data only: skipping fsync makes etcd fast on a shared disk.
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
        ])
        self._wait("etcd", deadline, lambda: _http_ok(f"{etcd_url}/health", b'"health":"true"'))

        self._spawn("kube-apiserver", [
            str(bd / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            # No default route here, so the advertise address must be given.
            "--advertise-address=127.0.0.1",
            f"--cert-dir={st / 'apiserver-certs'}",
            f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
            f"--client-ca-file={pki.ca_cert}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No kube-proxy or real endpoints: don't reconcile the kubernetes Service.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
        ])
        ctx = _client_ssl(pki)
        self._wait("kube-apiserver", deadline,
                   lambda: _http_ok(f"{self.server}/readyz", b"ok", ctx))

        kubeconfig = str(self.kubeconfig)
        common = [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                  f"--authorization-kubeconfig={kubeconfig}", "--leader-elect=false",
                  "--bind-address=127.0.0.1"]
        self._spawn("kube-controller-manager", [
            str(bd / "kube-controller-manager"), *common,
            f"--secure-port={p['controller-manager']}",
            f"--cert-dir={st / 'controller-manager-certs'}",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=false",
            # Fast eviction would fight KWOK's heartbeats on a loaded machine; keep defaults
            # except a short pod GC threshold for terminated pods.
            "--terminated-pod-gc-threshold=100",
        ])
        self._spawn("kube-scheduler", [
            str(bd / "kube-scheduler"), *common,
            f"--secure-port={p['scheduler']}", f"--cert-dir={st / 'scheduler-certs'}",
        ])
        # Their serving certs are self-signed in memory; only liveness matters here.
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for comp, port in (("kube-controller-manager", p["controller-manager"]),
                           ("kube-scheduler", p["scheduler"])):
            self._wait(comp, deadline,
                       functools.partial(_http_ok, f"https://127.0.0.1:{port}/healthz", b"ok",
                                         insecure))

        kwok_config = st / "kwok.yaml"
        kwok_config.write_text(stage_documents())
        self._spawn("kwok", [
            str(bd / "kwok"), f"--kubeconfig={kubeconfig}", f"--config={kwok_config}",
            "--manage-all-nodes=true",
            f"--tls-cert-file={pki.admin_cert}", f"--tls-private-key-file={pki.admin_key}",
            "--node-ip=127.0.0.1", f"--node-port={p['kwok']}",
            f"--server-address=127.0.0.1:{p['kwok']}",
            "--node-lease-duration-seconds=40",
        ])
        nodes = "".join(
            json.dumps(_node_manifest(f"kwok-node-{i}")) + "\n" for i in range(self.nodes))
        self.kubectl("apply", "-f", "-", input=nodes)
        self._wait("kwok (nodes Ready)", deadline, self._nodes_ready, log_of="kwok")

    def _nodes_ready(self) -> bool:
        out = self.kubectl(
            "get", "nodes", "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}'
            '{"\\n"}{end}', check=False)
        states = out.stdout.split()
        return out.returncode == 0 and len(states) == self.nodes and set(states) == {"True"}

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.state,
                # Own session: Ctrl-C in a test run must not kill the cluster mid-teardown.
                start_new_session=True,
            )
        self._procs.append(_Proc(name, popen, popen.pid, log))
        _log(f"started {name} (pid {popen.pid})")

    def _wait(
        self, what: str, deadline: float, ready: Callable[[], bool], log_of: str | None = None,
    ) -> None:
        proc = next(p for p in self._procs if p.name == (log_of or what))
        t0 = time.monotonic()
        while True:
            if proc.popen is not None and proc.popen.poll() is not None:
                raise KubeInfraError(f"{proc.name} exited with code {proc.popen.returncode} before "
                                f"becoming healthy; tail of {proc.log}:\n{_tail(proc.log)}")
            try:
                if ready():
                    _log(f"{what} healthy after {time.monotonic() - t0:.1f}s")
                    return
            except (OSError, KubeInfraError):
                pass
            if time.monotonic() > deadline:
                raise KubeInfraError(f"{what} did not become healthy in time; tail of "
                                f"{proc.log}:\n{_tail(proc.log)}")
            time.sleep(0.3)

    def _write_state(self) -> None:
        data = {"version": self.version, "server": self.server, "ports": self.ports,
                "pids": self.pids, "owns_state": self._owns_state,
                "binaries": {p.name: str(self.bin_dir / p.name) for p in self._procs}}
        (self.state / "state.json").write_text(json.dumps(data, indent=2) + "\n")
        env = self.env()
        env.update({f"STEWARD_KUBE_PID_{n.upper().replace('-', '_')}": str(pid)
                    for n, pid in self.pids.items()})
        self.env_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()))

    def stop(self, grace: float = 10.0) -> None:
        """Terminate components in reverse start order, then drop the state unless kept."""
        _terminate(list(reversed(self._procs)), grace)
        self._procs.clear()
        if self.state_dir is not None and self._owns_state and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- clients
    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; raise with its stderr on failure."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(argv, input=input, capture_output=True, text=True,
                             timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise KubeInfraError(f"kubectl {' '.join(args)} failed ({out.returncode}): "
                            f"{out.stderr.strip() or out.stdout.strip()}")
        return out

    def api_client(self) -> ApiClient:
        """An official ``kubernetes`` client bound to this cluster's kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def _http_ok(url: str, expect: bytes, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        # Loopback only: bypass any proxy configured in the environment.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
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
            _log(f"{p.name} (pid {p.pid}) ignored SIGTERM for {grace:.0f}s, killing")
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
        _log(f"stopped {name} (pid {pid})")
    if data.get("owns_state"):
        shutil.rmtree(state_dir, ignore_errors=True)
    pointer = _last_state_pointer()
    if pointer.is_file() and pointer.read_text().strip() == str(state_dir):
        pointer.unlink()
    return state_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.kube")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build and cache the binaries (skipped when present)")
    b.add_argument("--version", default=KUBE_VERSION)
    b.add_argument("-p", "--parallel", type=int, default=None)
    s = sub.add_parser("start", help="start a cluster in the background and print its env")
    s.add_argument("--version", default=KUBE_VERSION)
    s.add_argument("--nodes", type=int, default=2)
    s.add_argument("--state-dir", type=Path, default=None,
                   help="where state and logs go (default: a new temporary directory)")
    s.add_argument("--env-file", type=Path, default=None,
                   help="also copy the env file (export KUBECONFIG=...) here")
    t = sub.add_parser("stop", help="stop a cluster started by `start`")
    t.add_argument("--state-dir", type=Path, default=None,
                   help="default: $STEWARD_KUBE_STATE, else the last started cluster")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            print(build(args.version, args.parallel))
        elif args.cmd == "start":
            cluster = start_detached(args.version, args.nodes, args.state_dir)
            text = cluster.env_file.read_text()
            if args.env_file is not None:
                args.env_file.write_text(text)
            _log(f"cluster up: {cluster.server}; env file {cluster.env_file}")
            print(text, end="")
        elif args.cmd == "stop":
            _log(f"stopped cluster in {stop_detached(args.state_dir)}")
    except KubeInfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
