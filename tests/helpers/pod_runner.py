"""Plays the kubelet for the shipped manifests: each pod scheduled on the local control plane
(KWOK plays the nodes, so nothing else runs containers) runs as a local process, exactly as
its pod spec says.

:class:`PodRunner` watches the pods of the namespaces it is given. For each pod bound to a node
it runs the container in its own mount, network and UTS namespaces (tests/helpers/pod_sandbox.py)
with the pod's command and args (``$(VAR)`` expanded as the kubelet does), its env (literal,
``fieldRef``, ``secretKeyRef``, ``configMapKeyRef``, ``envFrom``), every volume materialised
from the API at its mount path (Secrets, ConfigMaps and projected volumes as files with their
modes, the ServiceAccount token from the TokenRequest API bound to the pod, ``emptyDir``, a
PersistentVolumeClaim through its bound hostPath PersistentVolume), the
``KUBERNETES_SERVICE_HOST``/``PORT`` of the ``kubernetes`` Service, the user, groups and
``no_new_privs`` of its securityContext. The image must be ``steward:<version of the wheel>``:
the wheel's virtual environment stands for it (first on PATH, nothing of the checkout on
the import path). A pod whose Secret, ConfigMap or claim is missing waits, as on a node; a
container that exits is restarted with a back-off and its exits are kept (`crash_loops`), so a
manifest whose arguments the program rejects shows up. A deleted pod's process gets SIGTERM
and its grace period.

Services work as on a cluster: inside every pod each Service's cluster IP answers on its ports
and /etc/hosts names it (``NAME.NAMESPACE.svc``); connections go to a running pod the selector
picks (tests/helpers/pod_relay.py). `forward` is ``kubectl port-forward`` for the test.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from infra.kube_cluster import LocalCluster
from infra.processes import Child, free_port, start, wait_for
from tests.helpers.wheel_env import WheelEnvironment

REPO = Path(__file__).resolve().parents[2]
# What k8s/Dockerfile gives every container: its ENV, its USER and WORKDIR.
IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
IMAGE_USER = 10001
IMAGE_WORKDIR = "/var/lib/steward"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodWaiting(Exception):
    """The pod cannot start yet (a Secret, ConfigMap or claim it needs is missing)."""


@dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    directory: Path
    pod: Any  # V1Pod as it was when started
    child: Child | None = None
    exits: list[int] = field(default_factory=list)
    restart_at: float = 0.0

    sockets: Path = Path()  # the pod's container ports as Unix sockets (a short path)

    @property
    def ports_dir(self) -> Path:
        return self.sockets

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob("container-*.log"))
        )


class PodRunner:
    def __init__(
        self,
        cluster: LocalCluster,
        wheel: WheelEnvironment,
        root: Path,
        namespaces: tuple[str, ...],
    ) -> None:
        self.cluster = cluster
        self.wheel = wheel
        self.root = root
        self.namespaces = namespaces
        self.api = cluster.api_client()
        self.core = client.CoreV1Api(self.api)
        self.pods: dict[str, PodProcess] = {}
        self.waiting: dict[str, str] = {}  # pod -> why it cannot start
        self.routes = root / "routes.json"
        # Unix socket paths are limited to 107 bytes; a test's temporary directory is longer.
        self.sockets = Path(tempfile.mkdtemp(prefix="stw-"))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relays: list[Child] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> PodRunner:
        self.root.mkdir(parents=True, exist_ok=True)
        self.routes.write_text("{}")
        # Pods reach the API server through the `kubernetes` Service, like everything else.
        self._relay(
            "apiserver",
            [
                (
                    f"unix:{self.sockets / 'apiserver.sock'}",
                    f"tcp:127.0.0.1:{self.cluster.ports['apiserver']}",
                )
            ],
        )
        self._thread = threading.Thread(target=self._loop, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            for proc in list(self.pods.values()):
                self._kill(proc)
            self.pods.clear()
        for relay in self._relays:
            relay.stop(grace=5)
        shutil.rmtree(self.sockets, ignore_errors=True)
        self.api.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
            except Exception as exc:  # a failed look at the API must not end the node
                (self.root / "runner-errors.log").open("a").write(f"{time.time()} {exc!r}\n")
            self._stop.wait(0.5)

    # -- what the kubelet does ------------------------------------------------------------

    def sync(self) -> None:
        with self._lock:
            seen = set()
            for ns in self.namespaces:
                for pod in self.core.list_namespaced_pod(ns).items:
                    key = f"{ns}/{pod.metadata.name}"
                    if not pod.spec.node_name or pod.metadata.deletion_timestamp:
                        continue
                    seen.add(pod.metadata.uid)
                    known = self.pods.get(pod.metadata.uid)
                    if known is None:
                        self._try_start(key, pod)
                    elif known.child is not None and not known.child.running():
                        known.exits.append(known.child.returncode or 0)
                        known.child = None
                        known.restart_at = time.monotonic() + min(10.0, 2.0 ** len(known.exits))
                    elif known.child is None and time.monotonic() >= known.restart_at:
                        self._launch(known)
            for uid, proc in list(self.pods.items()):
                if uid not in seen:
                    self._kill(proc)
                    del self.pods[uid]
            self._write_routes()

    def _try_start(self, key: str, pod: Any) -> None:
        directory = (
            self.root
            / "pods"
            / pod.metadata.namespace
            / f"{pod.metadata.name}-{pod.metadata.uid[:8]}"
        )
        try:
            proc = PodProcess(
                pod.metadata.namespace, pod.metadata.name, pod.metadata.uid, directory, pod
            )
            proc.sockets = self.sockets / pod.metadata.uid[:8]
            self._prepare(proc)
        except PodWaiting as why:
            self.waiting[key] = str(why)
            shutil.rmtree(directory, ignore_errors=True)
            shutil.rmtree(self.sockets / pod.metadata.uid[:8], ignore_errors=True)
            return
        self.waiting.pop(key, None)
        self.pods[pod.metadata.uid] = proc
        self._launch(proc)

    def _kill(self, proc: PodProcess) -> None:
        if proc.child is not None and proc.child.running():
            proc.child.stop(grace=float(proc.pod.spec.termination_grace_period_seconds or 30))
        proc.child = None

    # -- the pod's parts --------------------------------------------------------------------

    def _prepare(self, proc: PodProcess) -> None:
        pod = proc.pod
        (container,) = pod.spec.containers  # every Steward pod has one container
        image = container.image
        expected = f"steward:{self.wheel.wheel.name.split('-')[1]}"
        if image != expected:
            raise AssertionError(f"{proc.name}: image {image!r}; the wheel is {expected!r}")
        proc.directory.mkdir(parents=True)
        proc.ports_dir.mkdir()
        security = self._security(pod, container)
        volumes = {
            v.name: self._volume(proc, v, security["fsGroup"]) for v in pod.spec.volumes or []
        }
        mounts = []
        for m in container.volume_mounts or []:
            if m.sub_path:
                raise AssertionError(f"{proc.name}: subPath mounts are not simulated")
            mounts.append(
                {
                    "source": str(volumes[m.name]),
                    "target": m.mount_path,
                    "readOnly": bool(m.read_only),
                }
            )
        env = self._env(pod, container)
        services = self._services()
        argv = [_expand(a, env) for a in [*(container.command or []), *(container.args or [])]]
        if not argv:
            raise AssertionError(
                f"{proc.name}: no command; the image's entrypoint is not simulated"
            )
        listen = [
            (
                f"unix:{proc.ports_dir / f'{p.container_port}.sock'}",
                f"tcp:127.0.0.1:{p.container_port}",
            )
            for p in container.ports or []
        ]
        # Listening on a Service's address and port would keep the pod's own container from
        # binding 0.0.0.0 on that port (kube-proxy rewrites packets instead), so a pod does not
        # reach a Service on a port it serves itself.
        own = {p.container_port for p in container.ports or []}
        listen += [
            (f"tcp:{ip}:{port}", f"route:{svc_ns}/{name}:{port}")
            for svc_ns, name, ip, ports in services
            for port in ports
            if port not in own
        ]
        relay_spec = proc.directory / "relay.json"
        relay_spec.write_text(json.dumps({"listen": listen, "routes": str(self.routes)}))
        hosts = ["127.0.0.1 localhost", f"127.0.0.1 {pod.metadata.name}"]
        for svc_ns, name, ip, _ in services:
            names = [
                f"{name}.{svc_ns}.svc.cluster.local",
                f"{name}.{svc_ns}.svc",
                f"{name}.{svc_ns}",
            ]
            hosts.append(" ".join([ip, *names, *([name] if svc_ns == proc.namespace else [])]))
        spec = {
            "work": str(proc.directory / "sandbox"),
            "hostname": pod.metadata.name[:63],
            "addresses": sorted({ip for _, _, ip, _ in services}),
            "hosts": "\n".join(hosts) + "\n",
            "mounts": mounts,
            "relay": str(relay_spec),
            "repo": str(REPO),
            "argv": argv,
            "env": env,
            "cwd": container.working_dir or IMAGE_WORKDIR,
            **security,
            "expose": [str(self.wheel.venv), sys.base_prefix],
        }
        (proc.directory / "sandbox").mkdir()
        (proc.directory / "spec.json").write_text(json.dumps(spec, indent=2))

    def _launch(self, proc: PodProcess) -> None:
        n = len(proc.exits)
        proc.child = start(
            [
                "unshare",
                "--mount",
                "--net",
                "--uts",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "tests.helpers.pod_sandbox",
                str(proc.directory / "spec.json"),
            ],
            proc.directory / f"container-{n:02d}.log",
            name=f"{proc.namespace}/{proc.name}",
            env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", SYSTEM_PATH)},
        )

    def _security(self, pod: Any, container: Any) -> dict[str, Any]:
        ps = pod.spec.security_context or client.V1PodSecurityContext()
        cs = container.security_context or client.V1SecurityContext()
        user = cs.run_as_user if cs.run_as_user is not None else ps.run_as_user
        user = IMAGE_USER if user is None else user
        if (cs.run_as_non_root or ps.run_as_non_root) and user == 0:
            raise AssertionError(f"{pod.metadata.name}: runAsNonRoot with user 0")
        group = cs.run_as_group if cs.run_as_group is not None else ps.run_as_group
        groups = [g for g in [ps.fs_group, *(ps.supplemental_groups or [])] if g is not None]
        return {
            "user": user,
            "group": IMAGE_USER if group is None else group,
            "groups": groups,
            "fsGroup": ps.fs_group,
            "noNewPrivs": cs.allow_privilege_escalation is False,
        }

    def _services(self) -> list[tuple[str, str, str, list[int]]]:
        out = []
        for ns in ("default", *self.namespaces):
            for svc in self.core.list_namespaced_service(ns).items:
                ip = svc.spec.cluster_ip
                if ns == "default" and svc.metadata.name != "kubernetes":
                    continue
                if ip and ip != "None":
                    out.append((ns, svc.metadata.name, ip, [p.port for p in svc.spec.ports or []]))
        return out

    def _write_routes(self) -> None:
        """The endpoints: for each Service port, the sockets of the running pods it selects."""
        routes: dict[str, list[str]] = {
            "default/kubernetes:443": [str(self.sockets / "apiserver.sock")]
        }
        for ns in self.namespaces:
            for svc in self.core.list_namespaced_service(ns).items:
                selector = svc.spec.selector or {}
                for port in svc.spec.ports or []:
                    key = f"{ns}/{svc.metadata.name}:{port.port}"
                    routes[key] = []
                    for proc in self.pods.values():
                        labels = proc.pod.metadata.labels or {}
                        if proc.namespace != ns or proc.child is None or not selector:
                            continue
                        if all(labels.get(k) == v for k, v in selector.items()):
                            number = _target_port(proc.pod, port.target_port or port.port)
                            routes[key].append(str(proc.ports_dir / f"{number}.sock"))
        tmp = self.routes.with_suffix(".tmp")
        tmp.write_text(json.dumps(routes))
        tmp.replace(self.routes)

    # -- env and volumes --------------------------------------------------------------------

    def _env(self, pod: Any, container: Any) -> dict[str, str]:
        kube = self.core.read_namespaced_service("kubernetes", "default")
        env = {
            "PATH": f"{self.wheel.bin}:{SYSTEM_PATH}",
            "HOSTNAME": pod.metadata.name,
            "HOME": "/",
            **IMAGE_ENV,
            "KUBERNETES_SERVICE_HOST": kube.spec.cluster_ip,
            "KUBERNETES_SERVICE_PORT": str(kube.spec.ports[0].port),
        }
        for source in container.env_from or []:
            ref = source.config_map_ref or source.secret_ref
            data = self._data(
                "secret" if source.secret_ref else "configmap",
                pod.metadata.namespace,
                ref.name,
                ref.optional,
            )
            env.update({f"{source.prefix or ''}{k}": v.decode() for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", env)
                continue
            vf = var.value_from
            if vf.field_ref is not None:
                env[var.name] = _field(pod, vf.field_ref.field_path)
            elif vf.secret_key_ref is not None or vf.config_map_key_ref is not None:
                ref = vf.secret_key_ref or vf.config_map_key_ref
                kind = "secret" if vf.secret_key_ref is not None else "configmap"
                data = self._data(kind, pod.metadata.namespace, ref.name, ref.optional)
                if ref.key not in data:
                    if ref.optional:
                        continue
                    raise PodWaiting(f"{kind} {ref.name} has no key {ref.key}")
                env[var.name] = data[ref.key].decode()
            else:
                raise AssertionError(f"{pod.metadata.name}: env {var.name}: source not simulated")
        return env

    def _data(self, kind: str, ns: str, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            if kind == "secret":
                obj = self.core.read_namespaced_secret(name, ns)
                return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
            obj = self.core.read_namespaced_config_map(name, ns)
            data = {k: v.encode() for k, v in (obj.data or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
            return data
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise PodWaiting(f"{kind} {ns}/{name} not found") from None
            raise

    def _volume(self, proc: PodProcess, volume: Any, fs_group: int | None) -> Path:
        path = proc.directory / "volumes" / volume.name
        path.mkdir(parents=True)
        pod, ns = proc.pod, proc.namespace
        if volume.empty_dir is not None:
            path.chmod(0o777)
        elif volume.secret is not None or volume.config_map is not None:
            src = volume.secret or volume.config_map
            kind = "secret" if volume.secret is not None else "configmap"
            name = src.secret_name if volume.secret is not None else src.name
            _write_items(
                path,
                self._data(kind, ns, name, src.optional),
                src.items,
                src.default_mode,
                fs_group,
            )
        elif volume.projected is not None:
            for source in volume.projected.sources:
                if source.service_account_token is not None:
                    tok = source.service_account_token
                    token = self._token(pod, tok.audience, tok.expiration_seconds)
                    _write_items(
                        path,
                        {tok.path: token.encode()},
                        None,
                        volume.projected.default_mode,
                        fs_group,
                    )
                elif source.config_map is not None or source.secret is not None:
                    src = source.config_map or source.secret
                    kind = "secret" if source.secret is not None else "configmap"
                    data = self._data(kind, ns, src.name, src.optional)
                    _write_items(path, data, src.items, volume.projected.default_mode, fs_group)
                elif source.downward_api is not None:
                    for item in source.downward_api.items:
                        data = {item.path: _field(pod, item.field_ref.field_path).encode()}
                        _write_items(path, data, None, volume.projected.default_mode, fs_group)
                else:
                    raise AssertionError(f"{proc.name}: projected source not simulated: {source}")
        elif volume.persistent_volume_claim is not None:
            claim = self.core.read_namespaced_persistent_volume_claim(
                volume.persistent_volume_claim.claim_name, ns
            )
            if claim.status.phase != "Bound":
                raise PodWaiting(f"claim {claim.metadata.name} is {claim.status.phase}")
            pv = self.core.read_persistent_volume(claim.spec.volume_name)
            if pv.spec.host_path is None:
                raise AssertionError(f"{proc.name}: only hostPath volumes can be bound here")
            path.rmdir()
            return Path(pv.spec.host_path.path)
        else:
            raise AssertionError(f"{proc.name}: volume {volume.name}: type not simulated")
        return path

    def _token(self, pod: Any, audience: str | None, seconds: int | None) -> str:
        """A token from the TokenRequest API, bound to this pod, as the kubelet asks for one."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[audience] if audience else [],
                expiration_seconds=seconds or 3607,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        )
        response = self.core.create_namespaced_service_account_token(
            pod.spec.service_account_name, pod.metadata.namespace, request
        )
        return str(response.status.token)

    # -- for the test -----------------------------------------------------------------------

    def _relay(self, name: str, pairs: list[tuple[str, str]]) -> Child:
        spec = self.root / f"relay-{name}.json"
        spec.write_text(json.dumps({"listen": pairs, "routes": str(self.routes)}))
        child = start(
            [sys.executable, "-m", "tests.helpers.pod_relay", str(spec)],
            self.root / f"relay-{name}.log",
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self._relays.append(child)
        wait_for(f"relay {name}", lambda: "relay ready" in child.log() or not child.running(), 30)
        if not child.running():
            raise AssertionError(f"relay {name} exited:\n{child.log()}")
        return child

    def forward(self, namespace: str, service: str, port: int) -> str:
        """``kubectl port-forward svc/SERVICE PORT``: a loopback address that reaches it."""
        local = free_port()
        self._relay(
            f"{namespace}-{service}-{port}-{local}",
            [(f"tcp:127.0.0.1:{local}", f"route:{namespace}/{service}:{port}")],
        )
        return f"127.0.0.1:{local}"

    def forward_pod(self, pod: PodProcess, port: int) -> str:
        """``kubectl port-forward pod/NAME PORT``: a loopback address that reaches it."""
        local = free_port()
        target = f"unix:{pod.ports_dir / f'{port}.sock'}"
        self._relay(f"{pod.name}-{port}-{local}", [(f"tcp:127.0.0.1:{local}", target)])
        return f"127.0.0.1:{local}"

    def running(self, namespace: str, prefix: str) -> list[PodProcess]:
        with self._lock:
            return [
                p
                for p in self.pods.values()
                if p.namespace == namespace
                and p.name.startswith(prefix)
                and p.child is not None
                and p.child.running()
            ]

    def diagnosis(self) -> str:
        """What the node knows, for a failed wait: pods waiting and why, exits, API errors."""
        errors = self.root / "runner-errors.log"
        return (
            f"waiting: {self.waiting}\nexits: {self.crash_loops()}\n"
            f"runner errors: {errors.read_text()[-3000:] if errors.exists() else 'none'}\n"
            f"{self.logs(self.namespaces[0], '')}"
        )

    def crash_loops(self) -> dict[str, list[int]]:
        """Every pod whose container has exited, with its exit codes."""
        with self._lock:
            return {f"{p.namespace}/{p.name}": list(p.exits) for p in self.pods.values() if p.exits}

    def logs(self, namespace: str, prefix: str) -> str:
        with self._lock:
            return "\n".join(
                f"--- {p.name}\n{p.log()[-6000:]}"
                for p in self.pods.values()
                if p.namespace == namespace and p.name.startswith(prefix)
            )


def _expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)``: replaced when VAR is defined, ``$$`` escapes, else kept."""

    def one(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return env.get(match.group(1), match.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, text)


def _field(pod: Any, path: str) -> str:
    values = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": pod.metadata.uid,
        "spec.nodeName": pod.spec.node_name,
        "spec.serviceAccountName": pod.spec.service_account_name,
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
    }
    if path not in values:
        raise AssertionError(f"{pod.metadata.name}: fieldRef {path} not simulated")
    return str(values[path])


def _target_port(pod: Any, target: int | str) -> int:
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for port in pod.spec.containers[0].ports or []:
        if port.name == target:
            return int(port.container_port)
    raise AssertionError(f"{pod.metadata.name}: no container port named {target}")


def _write_items(
    directory: Path,
    data: dict[str, bytes],
    items: list[Any] | None,
    default_mode: int | None,
    fs_group: int | None,
) -> None:
    """Files as the kubelet writes a Secret or ConfigMap volume: each key (or the items' paths),
    the item's mode or the default (0644), group-owned by fsGroup."""
    chosen = [(i.key, i.path, i.mode) for i in items] if items else [(k, k, None) for k in data]
    for key, rel, mode in chosen:
        if key not in data:
            raise PodWaiting(f"no key {key}")
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data[key])
        target.chmod(
            mode if mode is not None else default_mode if default_mode is not None else 0o644
        )
        if fs_group is not None:
            os.chown(target, 0, fs_group)
