"""Steward on a secured Kafka: TLS, SASL/SCRAM-SHA-512 and the ACL authorizer, per role.

The brokers (infra/kafka_security.py) accept clients only on SASL_SSL (and mutual TLS), run
the KRaft StandardAuthorizer with ``allow.everyone.if.no.acl.found=false``, and know the SCRAM
users ``ledger``, ``controller`` and ``auditor``. Each role gets exactly the ACLs of
`ledger.store.kafka_acls.role_acls` (the table of docs/KAFKA.md, "Security"):

* the ledger server (a real ``python -m ledger.server`` process), the controller's store
  (`controller.main.open_store` with the flags of ``steward-controller``, replaying and
  following) and ``steward-audit verify --kafka`` all work with those ACLs;
* without any single one of them, the role stops with a message naming the missing ACL
  (operation and resource), within `FAIL_FAST_S`;
* a wrong password, an untrusted CA and a plaintext client on the TLS listener fail as fast,
  naming the cause; no password ever reaches a log;
* the README's Kafka example runs as printed (placeholders mapped) on three secured brokers
  (marked slow).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from audit.cli import main as audit_main
from controller.main import build_parser as controller_parser
from controller.main import open_store
from controller.replay import Replayer
from infra.kafka_cluster import KafkaCluster
from infra.kafka_security import CertificateAuthority
from ledger.client import LedgerClient, LedgerRpcError
from ledger.errors import StewardError
from ledger.scenario import Cast, Flow
from ledger.store.kafka_acls import KafkaAcl, role_acls
from ledger.store.kafka_flags import security_from_args
from ledger.store.kafka_topic import TopicSettings, ensure_ledger_topics
from tests.audit_tamper import Builder
from tests.fixtures.kafka import grant_acls, revoke_acls

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
SEED = "secured-kafka"
# Every failure below must surface within this; kafka-python alone would wait 30 s.
FAIL_FAST_S = 15.0
START_TIMEOUT = 120.0
PASSWORD_ENV = "STEWARD_KAFKA_PASSWORD"
MEASURED: dict[str, float] = {}  # failure mode -> seconds, printed at the end of the module


@dataclass
class Ledger:
    """A ledger topic on the secured cluster, and how each role logs in to it."""

    cluster: KafkaCluster
    topic: str
    workdir: Path
    key: Path
    flow: Flow
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap_servers

    @property
    def ca(self) -> str:
        assert self.cluster.security is not None
        return str(self.cluster.security.ca_file)

    def password(self, user: str) -> str:
        assert self.cluster.security is not None
        return self.cluster.security.password(user)

    def security_flags(self, user: str, *, ca: str | None = None) -> list[str]:
        return [
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            user,
            "--kafka-sasl-password-env",
            PASSWORD_ENV,
            "--kafka-ssl-cafile",
            ca or self.ca,
        ]

    def server(
        self,
        name: str,
        user: str = "ledger",
        *,
        flags: list[str] | None = None,
        password: str | None = None,
        topic: str | None = None,
        create_topics: bool = False,
    ) -> Server:
        port_file = self.workdir / f"{name}.port"
        log_file = self.workdir / f"{name}.log"
        args = [
            sys.executable,
            "-m",
            "ledger.server",
            "--kafka-bootstrap",
            self.bootstrap,
            "--topic",
            topic or self.topic,
            "--kafka-timeout",
            "10",
            *([] if create_topics else ["--no-create-topics"]),
            "--checkpoint-key",
            str(self.key),
            "--port-file",
            str(port_file),
            "--checkpoint-every-entries",
            "4",
            "--checkpoint-every-ms",
            "0",
            "--projections",
            "off",
            *(flags if flags is not None else self.security_flags(user)),
        ]
        env = {**os.environ, PASSWORD_ENV: password or self.password(user)}
        with log_file.open("wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.procs.append(proc)
        return Server(proc, port_file, log_file)

    def audit(
        self,
        user: str = "auditor",
        *,
        ca: str | None = None,
        password: str | None = None,
        capsys: pytest.CaptureFixture[str],
    ) -> tuple[int, str]:
        trust = self.workdir / "trust.json"
        trust.write_text(json.dumps(Builder(seed=SEED).trust()))
        os.environ[PASSWORD_ENV] = password or self.password(user)
        try:
            code = audit_main(
                [
                    "verify",
                    "--kafka",
                    self.bootstrap,
                    "--topic",
                    self.topic,
                    "--trust-root",
                    str(trust),
                    "--no-progress",
                    *self.security_flags(user, ca=ca),
                ]
            )
        finally:
            del os.environ[PASSWORD_ENV]
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    def controller_store(self, user: str = "controller") -> object:
        """The store `steward-controller --store kafka:BOOTSTRAP/TOPIC` opens, same flags."""
        args = controller_parser().parse_args(
            [
                "--ledger",
                "127.0.0.1:1",
                "--key",
                "unused",
                "--namespace",
                "models",
                "--store",
                f"kafka:{self.bootstrap}/{self.topic}",
                *self.security_flags(user),
            ]
        )
        os.environ[PASSWORD_ENV] = self.password(user)
        try:
            store, _source = open_store(args.store, security_from_args(args))
        finally:
            del os.environ[PASSWORD_ENV]
        return store


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port_file: Path
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def wait(self) -> str | None:
        """The address once serving, or None if the process exited first."""
        deadline = time.monotonic() + START_TIMEOUT
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                return None
            assert time.monotonic() < deadline, f"server did not start:\n{self.log()[-3000:]}"
            time.sleep(0.05)
        return f"127.0.0.1:{int(self.port_file.read_text())}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def ledger(
    kafka_secured_cluster: KafkaCluster, kafka_topic_name: str, tmp_path: Path
) -> Iterator[Ledger]:
    """Topics created by the operator (the admin), each role holding exactly its ACLs."""
    cast = Cast.create(seed=SEED)
    key = tmp_path / "checkpoint.pem"
    cast.checkpoint_key.save(key)
    found = Ledger(kafka_secured_cluster, kafka_topic_name, tmp_path, key, Flow(cast))
    admin = kafka_secured_cluster.admin()
    try:
        ensure_ledger_topics(admin, found.topic, TopicSettings())
    finally:
        admin.close()
    grants = {
        f"User:{role_user}": role_acls(role, found.topic)
        for role, role_user in (
            ("writer", "ledger"),
            ("reader", "controller"),
            ("auditor", "auditor"),
        )
    }
    for principal, acls in grants.items():
        grant_acls(kafka_secured_cluster, principal, acls)
    try:
        yield found
    finally:
        for proc in found.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for principal, acls in grants.items():
            revoke_acls(kafka_secured_cluster, principal, acls)


def _fill(address: str, flow: Flow) -> int:
    """Genesis, grants, a policy and a proposal with evals through the server; the entry count."""
    client = LedgerClient(address, timeout=30, retries=0)
    try:
        events = [flow.genesis(), *flow.grants(), flow.policy()]
        for event in events:
            client.append(event)
        p = client.append(flow.propose()).leaf_hash
        client.append(flow.eval(p, "safety", 0.99))
        client.checkpoint(publish_now=True)
        return client.head().size
    finally:
        client.close()


def _names_acl(text: str, acl: KafkaAcl) -> bool:
    """Whether `text` names the ACL to add: its operation and its resource."""
    resource = {"topic": "topic", "transactional-id": "transactional-id"}[acl.resource_type]
    return bool(
        re.search(
            rf"ACL {re.escape(acl.operation)}( \([^)]*\))? on "
            rf"{resource} {re.escape(acl.name)}\b",
            text,
        )
    )


def _measure(label: str, started: float) -> float:
    took = time.monotonic() - started
    MEASURED[label] = took
    return took


@pytest.fixture(scope="module", autouse=True)
def _report_timings() -> Iterator[None]:
    yield
    if MEASURED:
        lines = "\n".join(f"  {k}: {v:.1f}s" for k, v in sorted(MEASURED.items()))
        print(f"\nsecured Kafka, time until each failure surfaced:\n{lines}")


# --------------------------------------------------------------------------------------------
# Every role with exactly its ACLs


def test_each_role_works_with_exactly_its_acls(
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ledger.server("writer")
    address = server.wait()
    assert address is not None, server.log()[-3000:]
    size = _fill(address, ledger.flow)

    # The controller's store: the topic checks, a full replay, then following new entries.
    store = ledger.controller_store()
    try:
        replayer = Replayer(store)  # type: ignore[arg-type]
        replayer.catch_up()
        assert replayer.state.ledger.size == size
        stop = threading.Event()
        follower = threading.Thread(target=replayer.run, args=(stop,), daemon=True)
        follower.start()
        client = LedgerClient(address, timeout=30, retries=0)
        try:
            client.append(ledger.flow.propose("registry.example/m:2", deployment="m-2"))
        finally:
            client.close()
        assert replayer.wait_for_size(size + 1, 30), "the controller did not follow the append"
        stop.set()
        follower.join(10)
    finally:
        store.close()  # type: ignore[attr-defined]

    code, out = ledger.audit(capsys=capsys)
    assert code == 0, out
    server.stop()
    for user in ("ledger", "controller", "auditor", "admin"):
        assert ledger.password(user) not in server.log() + out


def test_store_check_reads_a_secured_topic_with_a_readers_flags(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """`steward store check --store kafka:...` takes the same --kafka-* flags as the
    controller: with the reader's credentials and ACLs it verifies the whole topic; with a
    wrong password it is one line naming the cause, exit 2, and no password is printed."""
    from ledger.cli import main as steward_main

    server = ledger.server("writer")
    address = server.wait()
    assert address is not None, server.log()[-3000:]
    size = _fill(address, ledger.flow)
    server.stop()
    spec = f"kafka:{ledger.bootstrap}/{ledger.topic}"
    for password, expected_code in (
        (ledger.password("controller"), 0),
        ("not-the-password-9f3", 2),
    ):
        os.environ[PASSWORD_ENV] = password
        try:
            code = steward_main(
                ["store", "check", "--store", spec, *ledger.security_flags("controller")]
            )
        finally:
            del os.environ[PASSWORD_ENV]
        out = capsys.readouterr()
        assert code == expected_code, out.out + out.err
        assert password not in out.out + out.err
        if expected_code == 0:
            assert f"chain: {size:,} entries" in out.out, out.out
        else:
            (line,) = [x for x in out.err.splitlines() if x.startswith("steward:")]
            assert "SASL authentication failed" in line, out.err


# --------------------------------------------------------------------------------------------
# Without any one ACL: a named error, fast


def _writer_fails_naming(ledger: Ledger, acl: KafkaAcl, name: str) -> tuple[str, float]:
    """Start a server and append; the first failure's text and how long it took to surface."""
    server = ledger.server(name)
    started = time.monotonic()
    address = server.wait()
    if address is None:
        return server.log(), time.monotonic() - started
    client = LedgerClient(address, timeout=30, retries=0)
    started = time.monotonic()
    try:
        client.append(ledger.flow.propose(f"registry.example/{name}:1", deployment=name))
        client.checkpoint(publish_now=True)
    except LedgerRpcError as exc:
        return exc.message, time.monotonic() - started
    finally:
        client.close()
        server.stop()
    pytest.fail(f"the writer worked without {acl}:\n{server.log()[-2000:]}")


def test_the_writer_names_each_missing_acl(ledger: Ledger) -> None:
    first = ledger.server("seed")
    address = first.wait()
    assert address is not None, first.log()[-3000:]
    _fill(address, ledger.flow)  # entries and checkpoints: a restart must read them all
    first.stop()
    for i, acl in enumerate(role_acls("writer", ledger.topic)):
        revoke_acls(ledger.cluster, "User:ledger", [acl])
        try:
            text, took = _writer_fails_naming(ledger, acl, f"without-{i}")
        finally:
            grant_acls(ledger.cluster, "User:ledger", [acl])
        MEASURED[
            f"writer without {acl.operation} on {acl.resource_type} "
            f"{acl.name.replace(ledger.topic, 'T')}"
        ] = took
        assert _names_acl(text, acl), f"without {acl}: {text[-2000:]}"
        assert took < FAIL_FAST_S, f"without {acl}: {took:.1f}s"


def test_a_writer_creating_its_topics_needs_create_and_names_it(ledger: Ledger) -> None:
    """Without --no-create-topics on missing topics: exactly the --create-topics table."""
    topic = f"{ledger.topic}-new"
    acls = role_acls("writer", topic, create_topics=True)
    creates = [a for a in acls if a.operation == "Create"]
    assert len(creates) == 3
    grant_acls(ledger.cluster, "User:ledger", [a for a in acls if a.operation != "Create"])
    try:
        server = ledger.server("no-create", topic=topic, create_topics=True)
        started = time.monotonic()
        assert server.wait() is None, "the server created its topics without Create"
        MEASURED["writer without Create on topic T (topics missing)"] = time.monotonic() - started
        assert _names_acl(server.log(), creates[0]), server.log()[-2000:]
        grant_acls(ledger.cluster, "User:ledger", creates)
        server = ledger.server("create", topic=topic, create_topics=True)
        address = server.wait()
        assert address is not None, server.log()[-3000:]
        _fill(address, ledger.flow)
        server.stop()
    finally:
        revoke_acls(ledger.cluster, "User:ledger", acls)


def test_the_controller_names_each_missing_acl(ledger: Ledger) -> None:
    for acl in role_acls("reader", ledger.topic):
        revoke_acls(ledger.cluster, "User:controller", [acl])
        started = time.monotonic()
        try:
            with pytest.raises(StewardError) as refused:
                store = ledger.controller_store()
                store.close()  # type: ignore[attr-defined]
        finally:
            grant_acls(ledger.cluster, "User:controller", [acl])
        took = _measure(
            f"controller without {acl.operation} on {acl.resource_type} "
            f"{acl.name.replace(ledger.topic, 'T')}",
            started,
        )
        assert _names_acl(str(refused.value), acl), f"without {acl}: {refused.value}"
        assert took < FAIL_FAST_S


def test_the_controller_process_exits_naming_the_acl(ledger: Ledger, tmp_path: Path) -> None:
    """`steward-controller` itself (not only its store) reports it, before any Kubernetes."""
    from ledger.keys import PrivateKey

    key = tmp_path / "controller.pem"
    PrivateKey.generate().save(key)
    acl = role_acls("reader", ledger.topic)[0]
    revoke_acls(ledger.cluster, "User:controller", [acl])
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "controller.main",
                "--ledger",
                "127.0.0.1:1",
                "--key",
                str(key),
                "--namespace",
                "models",
                "--store",
                f"kafka:{ledger.bootstrap}/{ledger.topic}",
                *ledger.security_flags("controller"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
            env={**os.environ, PASSWORD_ENV: ledger.password("controller")},
        )
        _measure("controller process exit (missing ACL)", started)
    finally:
        grant_acls(ledger.cluster, "User:controller", [acl])
    assert proc.returncode == 2, proc.stderr
    assert _names_acl(proc.stderr, acl), proc.stderr


def test_the_auditor_names_each_missing_acl(
    ledger: Ledger,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = ledger.server("writer")
    address = server.wait()
    assert address is not None, server.log()[-3000:]
    _fill(address, ledger.flow)
    server.stop()
    for acl in role_acls("auditor", ledger.topic):
        revoke_acls(ledger.cluster, "User:auditor", [acl])
        started = time.monotonic()
        try:
            code, out = ledger.audit(capsys=capsys)
        finally:
            grant_acls(ledger.cluster, "User:auditor", [acl])
        took = _measure(
            f"auditor without {acl.operation} on {acl.resource_type} "
            f"{acl.name.replace(ledger.topic, 'T')}",
            started,
        )
        assert code == 2, out
        assert _names_acl(out, acl), out
        assert took < FAIL_FAST_S


# --------------------------------------------------------------------------------------------
# Wrong password, untrusted CA, plaintext on the TLS listener


def test_bad_credentials_and_tls_fail_fast_naming_the_cause(
    ledger: Ledger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stranger = CertificateAuthority(tmp_path / "other-ca").create()
    wrong = "not-the-password"
    cases = {
        "wrong password": (
            ledger.security_flags("ledger"),
            wrong,
            "SASL authentication failed: wrong user name or password",
        ),
        "untrusted CA": (
            ledger.security_flags("ledger", ca=str(stranger.cert_file)),
            None,
            "not signed by a CA this client trusts",
        ),
        "plaintext client on the TLS listener": (
            ["--kafka-security-protocol", "PLAINTEXT"],
            None,
            "the listener expects TLS",
        ),
    }
    for label, (flags, password, cause) in cases.items():
        server = ledger.server(label.replace(" ", "-"), flags=flags, password=password)
        started = time.monotonic()
        assert server.wait() is None, f"{label}: the server started"
        took = _measure(f"server: {label}", started)
        assert server.proc.returncode == 2
        assert cause in server.log(), f"{label}:\n{server.log()[-2000:]}"
        assert wrong not in server.log() and ledger.password("ledger") not in server.log()
        assert took < FAIL_FAST_S + 10, f"{label}: {took:.1f}s (includes the interpreter start)"

    for label, kwargs, cause in (
        ("wrong password", {"password": wrong}, "SASL authentication failed"),
        ("untrusted CA", {"ca": str(stranger.cert_file)}, "not signed by a CA this client trusts"),
    ):
        started = time.monotonic()
        code, out = ledger.audit(capsys=capsys, **kwargs)  # type: ignore[arg-type]
        took = _measure(f"auditor: {label}", started)
        assert code == 2 and cause in out, out
        assert wrong not in out and ledger.password("auditor") not in out
        assert took < FAIL_FAST_S


# --------------------------------------------------------------------------------------------
# The README's example, as printed, on three secured brokers


def _readme_kafka_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Running on your Kafka cluster", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_readme_example_on_three_secured_brokers(
    kafka_secured_cluster3: KafkaCluster,
    kafka_topic_name: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ledger.cli import main as steward_main

    cluster = kafka_secured_cluster3
    assert cluster.security is not None
    cast = Cast.create(seed=SEED)
    key = tmp_path / "ledger-checkpoint.pem"
    cast.checkpoint_key.save(key)
    (tmp_path / "ca.pem").write_bytes(cluster.security.ca_file.read_bytes())
    mapping = {  # the README's placeholders -> this cluster (longest first)
        "User:steward-controller": "User:controller",
        "--kafka-sasl-username steward-controller": "--kafka-sasl-username controller",
        "broker1:9092,broker2:9092": cluster.bootstrap_servers,
        "broker1:9092": cluster.bootstrap_servers,
        "steward-prod": kafka_topic_name,
        "--kafka-sasl-username steward": "--kafka-sasl-username ledger",
        "User:steward": "User:ledger",
        "0.0.0.0:7443": "127.0.0.1:0",
    }

    def mapped(line: str) -> list[str]:
        for placeholder, value in mapping.items():
            line = line.replace(placeholder, value)
        return shlex.split(line, comments=True)

    lines = _readme_kafka_block()
    acl_lines = [mapped(x) for x in lines if x.startswith("steward kafka acls")]
    server_line = next(mapped(x) for x in lines if x.startswith("python -m ledger.server"))
    controller_line = next(mapped(x) for x in lines if x.startswith("steward-controller"))
    assert acl_lines and server_line and controller_line

    # The operator's step: the ACLs the README's command prints, applied as the admin.
    granted: dict[str, list[KafkaAcl]] = {}
    for argv in acl_lines:
        assert steward_main(argv[1:]) == 0
        printed = capsys.readouterr().out
        for command in printed.splitlines():
            if command.startswith("kafka-acls.sh"):
                principal, acl = _parse_kafka_acls_line(command)
                granted.setdefault(principal, []).append(acl)
    for principal, acls in granted.items():
        grant_acls(cluster, principal, acls)
    port_file = tmp_path / "port"
    env = {**os.environ, "STEWARD_KAFKA_PASSWORD": cluster.security.password("ledger")}
    proc = subprocess.Popen(
        [sys.executable, *server_line[1:], "--port-file", str(port_file), "--kafka-timeout", "20"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        server = Server(proc, port_file, tmp_path / "none.log")
        address = server.wait()
        assert address is not None, proc.stdout.read().decode() if proc.stdout else ""
        size = _fill(address, Flow(cast))
        # The controller line, with the same flags, as the controller principal, from the
        # directory the README's relative file names (ca.pem) are in.
        monkeypatch.chdir(tmp_path)
        args = controller_parser().parse_args(
            [
                "--ledger",
                "127.0.0.1:1",
                "--key",
                "unused",
                "--namespace",
                "models",
                *[a for a in controller_line[1:] if a != "..."],
            ]
        )
        os.environ["STEWARD_KAFKA_PASSWORD"] = cluster.security.password("controller")
        try:
            store, _ = open_store(args.store, security_from_args(args))
        finally:
            del os.environ["STEWARD_KAFKA_PASSWORD"]
        try:
            replayer = Replayer(store)
            replayer.catch_up()
            assert replayer.state.ledger.size == size
        finally:
            store.close()
    finally:
        with contextlib.suppress(Exception):
            proc.terminate()
            proc.wait(30)
        for principal, acls in granted.items():
            revoke_acls(cluster, principal, acls)


def _parse_kafka_acls_line(line: str) -> tuple[str, KafkaAcl]:
    """(principal, ACL) from one `steward kafka acls` output line."""
    words = shlex.split(line)
    value = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    for flag, kind in (
        ("--topic", "topic"),
        ("--transactional-id", "transactional-id"),
        ("--group", "group"),
    ):
        if flag in value:
            return value["--allow-principal"], KafkaAcl(kind, value[flag], value["--operation"], "")
    return value["--allow-principal"], KafkaAcl(
        "cluster", "kafka-cluster", value["--operation"], ""
    )
