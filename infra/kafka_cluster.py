"""Real Apache Kafka brokers (KRaft) on this machine: start 1 or 3, kill, restart, stop them.

Brokers run the jars of infra/kafka_install.py with the machine's Java on 127.0.0.1, on ports
picked at run time, in a temporary directory.

Python API::

    with KafkaCluster(brokers=3) as cluster:
        cluster.bootstrap_servers        # "127.0.0.1:PORT,..."
        cluster.kill_broker(2)           # SIGKILL, data dir and ports kept
        cluster.restart_broker(2)        # same config, waits until it is back
        cluster.leader_of("topic", 0)    # node id or None
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.kafka_install import KAFKA_FILES, KAFKA_VERSION, KafkaInfraError, fetch, libs_dir
from infra.kafka_security import KafkaSecurity

STARTED_MARKER = "Kafka Server started"
JVM_HEAP = ("-Xms256m", "-Xmx512m")


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaInfraError("cannot start Kafka: `java` is not on PATH and JAVA_HOME is unset")
    return java


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def random_cluster_id() -> str:
    """Same shape as `StorageTool random-uuid` (saves a JVM start): base64url of 16 bytes."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka avoids ids that look like a CLI flag
            return text


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(data[-lines:])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


@dataclass
class BrokerNode:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    # Secured clusters only (infra/kafka_security.py): `port` is then the SASL_SSL listener,
    # `ssl_port` the mutual-TLS one and `internal_port` the PLAINTEXT inter-broker one.
    ssl_port: int = 0
    internal_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None  # set also when adopted from a state file (no Popen object)

    @property
    def config_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class KafkaCluster:
    """1 or 3 KRaft nodes (each broker + controller) on 127.0.0.1; a context manager."""

    brokers: int = 1
    version: str = KAFKA_VERSION
    workdir: Path | None = None
    start_timeout: float = 180.0
    extra_config: dict[str, str] = field(default_factory=dict)
    # TLS + SCRAM + ACL authorizer (infra/kafka_security.py); None: PLAINTEXT, no authorizer.
    security: KafkaSecurity | None = None
    nodes: dict[int, BrokerNode] = field(default_factory=dict, init=False)
    cluster_id: str = field(default="", init=False)
    _own_workdir: bool = field(default=False, init=False)
    _detached: bool = field(default=False, init=False)
    startup_seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.brokers not in (1, 3):
            raise ValueError(f"brokers is {self.brokers}, expected 1 or 3")

    # -- public API

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(n.address for n in self.nodes.values())

    @property
    def node_ids(self) -> list[int]:
        return sorted(self.nodes)

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, detach: bool = False) -> KafkaCluster:
        """Format storage and start every node; returns once all are ready.

        detach=True leaves the brokers running after this Python process exits (the CLI).
        """
        if self.nodes:
            raise KafkaInfraError("this KafkaCluster was already started")
        libs = fetch(self.version)
        self._detached = detach
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="steward-kafka-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_id = random_cluster_id()
        per_node = 2 if self.security is None else 4
        ports = free_ports(per_node * self.brokers)
        for i in range(self.brokers):
            node_id = i + 1
            mine = ports[per_node * i : per_node * (i + 1)]
            self.nodes[node_id] = BrokerNode(
                node_id=node_id,
                port=mine[0],
                controller_port=mine[1],
                directory=self.workdir / f"node-{node_id}",
                ssl_port=mine[2] if self.security else 0,
                internal_port=mine[3] if self.security else 0,
            )
        if self.security is not None:
            self.security.prepare(self.workdir / "tls")
        started = time.monotonic()
        try:
            for node in self.nodes.values():
                node.directory.mkdir(parents=True, exist_ok=True)
                node.config_file.write_text(self._server_properties(node))
            self._format_all(libs)
            for node in self.nodes.values():
                self._launch(node, libs)
            if not detach:
                atexit.register(self._atexit_kill)
            self._wait_ready(list(self.nodes.values()), time.monotonic() + self.start_timeout)
        except BaseException:
            self._kill_all()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node (controlled shutdown), SIGKILL what is left after `timeout`."""
        pids = [p for p in (self._pid(n) for n in self.nodes.values()) if p is not None]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            self._wait_exit(node, max(0.0, deadline - time.monotonic()))
        self._kill_all()
        with contextlib.suppress(Exception):
            atexit.unregister(self._atexit_kill)
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.nodes.clear()

    def kill_broker(self, node_id: int) -> None:
        """SIGKILL one node (no controlled shutdown); its data dir and ports are kept."""
        node = self._node(node_id)
        pid = self._pid(node)
        if pid is None:
            raise KafkaInfraError(f"broker {node_id} is not running")
        os.kill(pid, signal.SIGKILL)
        self._wait_exit(node, 30.0)
        node.process = None
        node.pid = None

    def restart_broker(self, node_id: int, timeout: float | None = None) -> None:
        """Start a killed or stopped node again on the same ports and data; wait until ready."""
        node = self._node(node_id)
        if self._pid(node) is not None:
            raise KafkaInfraError(f"broker {node_id} is still running (pid {self._pid(node)})")
        # Keep the old log for post-mortems; readiness looks only at the new one.
        if node.log_file.exists():
            node.log_file.rename(node.log_file.with_suffix(f".{int(time.time() * 1000)}.log"))
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while _port_open(node.port) or _port_open(node.controller_port):
            if time.monotonic() > deadline:
                raise KafkaInfraError(f"broker {node_id}: port {node.port} still in use")
            time.sleep(0.2)
        self._launch(node, libs_dir(self.version))
        self._wait_ready([node], deadline)

    # Short aliases used by the fault tests.
    kill = kill_broker
    restart = restart_broker

    def is_running(self, node_id: int) -> bool:
        return self._pid(self._node(node_id)) is not None

    def admin(self, **kwargs: Any) -> Any:
        """A kafka-python KafkaAdminClient on the running nodes (the caller closes it)."""
        from kafka import KafkaAdminClient

        servers = [n.address for n in self.nodes.values() if self._pid(n) is not None]
        # On a secured cluster: the admin user (a super user) over SASL_SSL.
        secured = self.security.client_options() if self.security is not None else {}
        return KafkaAdminClient(
            bootstrap_servers=servers or self.bootstrap_servers,
            client_id="steward-infra",
            request_timeout_ms=15000,
            **{**secured, **kwargs},
        )

    def leader_of(self, topic: str, partition: int = 0, timeout: float = 30.0) -> int | None:
        """Node id leading `topic`/`partition` now, or None while it has no leader."""
        # kafka-python's admin sends metadata requests to one node it picks from its cached
        # metadata and raises KafkaConnectionError if that node was just killed, instead of
        # trying another (docs/KAFKA.md): retry with a fresh client until the deadline.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._leader_once(topic, partition)
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise KafkaInfraError(
                        f"cannot describe topic {topic}: {type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(0.5)

    def _leader_once(self, topic: str, partition: int) -> int | None:
        admin = self.admin()
        try:
            # kafka-python 3.x: [{"name", "error_code", "partitions": [{"partition_index",
            # "leader_id", "replica_nodes", "isr_nodes", ...}]}]
            for t in admin.describe_topics([topic]):
                if t.get("name") != topic:
                    continue
                for p in t.get("partitions", []):
                    if p.get("partition_index") == partition:
                        leader = int(p.get("leader_id", -1))
                        return leader if leader >= 0 else None
            return None
        finally:
            admin.close()

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        return _tail(self._node(node_id).log_file, lines)

    # -- state file (CLI start/stop across processes)

    def state(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cluster_id": self.cluster_id,
            "workdir": str(self.workdir),
            "own_workdir": self._own_workdir,
            "bootstrap_servers": self.bootstrap_servers,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "port": n.port,
                    "controller_port": n.controller_port,
                    "directory": str(n.directory),
                    "pid": self._pid(n),
                }
                for n in self.nodes.values()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KafkaCluster:
        cluster = cls(
            brokers=len(state["nodes"]), version=state["version"], workdir=Path(state["workdir"])
        )
        cluster.cluster_id = state["cluster_id"]
        cluster._own_workdir = bool(state.get("own_workdir"))
        cluster._detached = True
        for n in state["nodes"]:
            cluster.nodes[n["node_id"]] = BrokerNode(
                node_id=n["node_id"],
                port=n["port"],
                controller_port=n["controller_port"],
                directory=Path(n["directory"]),
                pid=n["pid"],
            )
        return cluster

    # -- internals

    def _node(self, node_id: int) -> BrokerNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KafkaInfraError(
                f"no broker with node id {node_id} (have {self.node_ids})"
            ) from None

    def _pid(self, node: BrokerNode) -> int | None:
        if node.process is not None:
            return node.process.pid if node.process.poll() is None else None
        if node.pid is not None and _pid_alive(node.pid):
            return node.pid
        return None

    def _server_properties(self, node: BrokerNode) -> str:
        n = self.brokers
        rf = 1 if n == 1 else 3
        min_isr = 1 if n == 1 else 2
        voters = ",".join(f"{x.node_id}@127.0.0.1:{x.controller_port}" for x in self.nodes.values())
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            # Topics are created explicitly with checked settings; a typo must not create one.
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            "group.initial.rebalance.delay.ms": "0",
            # The default 128 MiB dedupe buffer is allocated on the heap at start.
            "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
            "log.cleaner.threads": "1",
            # Two shared cores: fewer threads than the defaults (3 network, 8 io).
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "unclean.leader.election.enable": "false",
        }
        if self.security is not None:
            props.update(
                self.security.server_properties(
                    internal_port=node.internal_port,
                    sasl_ssl_port=node.port,
                    ssl_port=node.ssl_port,
                    controller_port=node.controller_port,
                )
            )
        props.update(self.extra_config)
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _jvm(self, libs: Path, main: str, *args: str, heap: Sequence[str] = JVM_HEAP) -> list[str]:
        return [
            _java(),
            *heap,
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_FILES / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format_all(self, libs: Path) -> None:
        # One StorageTool JVM per node, run in parallel (each is a few seconds of JVM start).
        procs = []
        for node in self.nodes.values():
            # SCRAM users are created here, before the first start (none on PLAINTEXT).
            scram = self.security.format_arguments() if self.security is not None else []
            cmd = self._jvm(
                libs,
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={self.cluster_id}",
                "-c",
                str(node.config_file),
                *scram,
                heap=("-Xmx256m",),
            )
            procs.append(
                (node, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
            )
        for node, proc in procs:
            out, _ = proc.communicate(timeout=self.start_timeout)
            if proc.returncode != 0:
                raise KafkaInfraError(
                    f"formatting KRaft storage of node {node.node_id} failed "
                    f"(kafka.tools.StorageTool exit {proc.returncode}):\n"
                    + "\n".join(out.decode(errors="replace").splitlines()[-30:])
                )

    def _launch(self, node: BrokerNode, libs: Path) -> None:
        with node.log_file.open("ab") as log:
            node.process = subprocess.Popen(
                self._jvm(libs, "kafka.Kafka", str(node.config_file)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own session: a Ctrl-C meant for pytest does not hit the brokers first.
                start_new_session=True,
            )
        node.pid = node.process.pid

    def _wait_ready(self, nodes: list[BrokerNode], deadline: float) -> None:
        pending = {n.node_id for n in nodes}
        while pending:
            for node in nodes:
                if node.node_id not in pending:
                    continue
                if self._pid(node) is None:
                    code = node.process.poll() if node.process else "?"
                    raise KafkaInfraError(
                        f"Kafka broker {node.node_id} exited during start-up (exit {code}); "
                        f"tail of {node.log_file}:\n{_tail(node.log_file)}"
                    )
                try:
                    text = node.log_file.read_text(errors="replace")
                except OSError:
                    text = ""
                if STARTED_MARKER in text:
                    pending.discard(node.node_id)
            if pending:
                if time.monotonic() > deadline:
                    raise self._not_ready(pending, "no 'Kafka Server started' in the log")
                time.sleep(0.25)
        # The log line alone is not enough: an admin call must see every live broker.
        expected = {n.node_id for n in self.nodes.values() if self._pid(n) is not None}
        last_error: str = ""
        while True:
            try:
                seen = self._brokers_seen()
                if expected <= seen:
                    return
                last_error = f"metadata lists brokers {sorted(seen)}, expected {sorted(expected)}"
            except Exception as exc:  # kafka-python raises many kinds while a broker warms up
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise self._not_ready(expected, f"admin call failed: {last_error}")
            time.sleep(0.5)

    def _brokers_seen(self) -> set[int]:
        admin = self.admin()
        try:
            info = admin.describe_cluster()
            # kafka-python 3.x: {"brokers": [{"broker_id", "host", "port", "is_fenced"}], ...}
            return {
                int(b["broker_id"])
                for b in info.get("brokers", [])
                if not b.get("is_fenced", False)
            }
        finally:
            admin.close()

    def _not_ready(self, node_ids: set[int], why: str) -> KafkaInfraError:
        tails = "\n".join(
            f"--- tail of {self.nodes[i].log_file}:\n{_tail(self.nodes[i].log_file)}"
            for i in sorted(node_ids)
        )
        return KafkaInfraError(
            f"Kafka broker(s) {sorted(node_ids)} not ready within {self.start_timeout:.0f}s "
            f"({why})\n{tails}"
        )

    def _wait_exit(self, node: BrokerNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=timeout)
            return
        while node.pid is not None and _pid_alive(node.pid) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _kill_all(self) -> None:
        for node in self.nodes.values():
            pid = self._pid(node)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_exit(node, 10.0)
            node.process = None
            node.pid = None

    def _atexit_kill(self) -> None:
        # The owning Python process is going away without stop(): leave no JVM behind.
        if not self._detached:
            self._kill_all()
            if self._own_workdir and self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
