"""Where the auditor reads a log from: an export file, a Kafka topic, a ledger gRPC server.

None of them is trusted: a source only delivers bytes (entry records in log order and
checkpoint notes); every check happens in :mod:`audit.verify`. Infrastructure problems
(unreadable file, unreachable broker or server) raise :class:`AuditError` (exit status 2).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from audit.errors import AuditError

EXPORT_FORMAT = "steward-export/v1"
CHECKPOINTS_SUFFIX = ".checkpoints"


class Source(Protocol):
    name: str
    total: int | None

    def checkpoints(self) -> list[str]: ...

    def records(self, start: int = 0) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Offline export: an Avro object container file (schema audit/schemas/export_record.v1.avsc)


class ExportSource:
    """Records ``{seq, entry}`` in seq order; checkpoints in the metadata ``steward.checkpoints``."""

    def __init__(self, path: Path) -> None:
        import fastavro

        self.name = str(path)
        self.path = path
        try:
            with path.open("rb") as f:
                reader = fastavro.reader(f)
                self.metadata = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in reader.metadata.items()}
        except OSError as exc:
            raise AuditError(f"cannot read the export {path}: {exc.strerror}") from exc
        except Exception as exc:  # fastavro: not an Avro container file
            raise AuditError(f"{path} is not an Avro object container file: {exc}") from exc
        fmt = self.metadata.get("steward.format", EXPORT_FORMAT)
        if fmt != EXPORT_FORMAT:
            raise AuditError(f"{path}: export format {fmt!r}, this auditor reads {EXPORT_FORMAT}")
        self.total: int | None = None
        try:
            self._checkpoints = [str(c["note"]) for c in json.loads(self.metadata.get("steward.checkpoints", "[]"))]
        except (ValueError, TypeError, KeyError) as exc:
            raise AuditError(f"{path}: metadata steward.checkpoints is not a JSON list of {{size, note}}: {exc}") from exc

    def checkpoints(self) -> list[str]:
        return list(self._checkpoints)

    def records(self, start: int = 0) -> Iterator[bytes]:
        import fastavro

        try:
            with self.path.open("rb") as f:
                for i, rec in enumerate(fastavro.reader(f)):
                    if i >= start:
                        if not isinstance(rec, dict) or not isinstance(rec.get("entry"), bytes):
                            raise AuditError(f"{self.path}: record {i} has no entry bytes")
                        yield rec["entry"]
        except OSError as exc:
            raise AuditError(f"cannot read the export {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        pass


def write_export(path: Path, records: list[bytes], checkpoints: list[tuple[int, str]],
                 origin: str = "", vkey: str = "", ledger: str = "") -> None:
    """Write an export file (tests and tooling; the ledger's `steward export` writes the same)."""
    import fastavro

    from audit.formats import decode_entry

    schema = fastavro.parse_schema(json.loads(
        (Path(__file__).parent / "schemas" / "export_record.v1.avsc").read_text()))
    metadata = {
        "steward.format": EXPORT_FORMAT,
        "steward.ledger": ledger,
        "steward.origin": origin,
        "steward.vkey": vkey,
        "steward.genesis": records[0].hex() if records else "",
        "steward.checkpoints": json.dumps([{"size": s, "note": n} for s, n in checkpoints]),
    }

    def rows() -> Iterator[dict[str, Any]]:
        for i, raw in enumerate(records):
            try:
                seq = decode_entry(raw).seq
            except Exception:
                seq = i
            yield {"seq": seq, "entry": raw}

    with path.open("wb") as out:
        fastavro.writer(out, schema, rows(), metadata=metadata, codec="deflate")


# --------------------------------------------------------------------------------------------
# Kafka: one partition, read_committed, manual assignment, offset 0 to the end


@dataclass(frozen=True)
class KafkaSecurity:
    """How the auditor authenticates to Kafka (the flags of ``steward-audit --kafka``).

    Passwords come from environment variables named on the command line (`from_env`), never
    from the command line itself, and are left out of repr().
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, protocol: str, sasl_mechanism: str | None, username: str | None,
                 password_env: str | None, cafile: str | None, certfile: str | None,
                 keyfile: str | None, key_password_env: str | None) -> KafkaSecurity:
        return cls(protocol, sasl_mechanism, username, _env(password_env, "SASL password"),
                   cafile, certfile, keyfile, _env(key_password_env, "client key password"))

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's options (includes secrets)."""
        opts = {"security_protocol": self.protocol, "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.username, "sasl_plain_password": self.password,
                "ssl_cafile": self.cafile, "ssl_certfile": self.certfile,
                "ssl_keyfile": self.keyfile, "ssl_password": self.key_password}
        return {k: v for k, v in opts.items() if v is not None}

    def librdkafka(self) -> dict[str, Any]:
        """librdkafka's names for the same options (includes secrets)."""
        opts = {"security.protocol": self.protocol, "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.username, "sasl.password": self.password,
                "ssl.ca.location": self.cafile, "ssl.certificate.location": self.certfile,
                "ssl.key.location": self.keyfile, "ssl.key.password": self.key_password}
        return {k: v for k, v in opts.items() if v is not None}


def _env(var: str | None, what: str) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise AuditError(f"environment variable {var} (the Kafka {what}) is not set")
    return value


# How a connection that can never work shows in librdkafka's lines (kafka-python sees only
# "socket disconnected" until its 30 s bootstrap deadline), and what it means.
_CONNECTION_VERDICTS = (
    ("SASL authentication error", "SASL authentication failed: wrong user name or password"),
    ("certificate verify failed",
     "TLS: the broker's certificate is not signed by a CA this client trusts (--kafka-ssl-cafile)"),
    ("in state APIVERSION_QUERY",
     "the broker closed the connection before answering ApiVersions: the listener expects TLS "
     "(--kafka-security-protocol SSL or SASL_SSL)"),
    ("SSL connection closed by peer",
     "the broker closed the TLS connection: it requires SASL (SASL_SSL) or a client certificate"),
)


def check_kafka_connection(bootstrap: str, security: KafkaSecurity, timeout_s: float) -> None:
    """Connect once with librdkafka; AuditError naming the cause if it can never work."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    lines: list[str] = []

    class Collect:
        def log(self, _level: int, msg: str, *args: Any) -> None:
            lines.append(msg % args if args else msg)

    options: dict[str, Any] = {
        "bootstrap.servers": bootstrap, "client.id": "steward-audit", **security.librdkafka(),
        "logger": Collect(), "error_cb": lambda err: lines.append(f"{err.name()}: {err.str()}")}
    client = AdminClient(options)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            client.list_topics(timeout=0.5)
            return
        except KafkaException:
            pass
        client.poll(0)
        for line in lines:
            for marker, verdict in _CONNECTION_VERDICTS:
                if marker in line:
                    user = f", user {security.username}" if security.username else ""
                    raise AuditError(f"Kafka at {bootstrap} ({security.protocol}{user}): "
                                     f"{verdict}. librdkafka: {line}")


class KafkaSource:
    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0,
                 security: KafkaSecurity | None = None) -> None:
        self.name = f"kafka://{bootstrap}/{topic}"
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self.security = security or KafkaSecurity()
        self.total: int | None = None
        self._consumer: Any = None
        check_kafka_connection(bootstrap, self.security, timeout_s)

    def _new_consumer(self) -> Any:
        from kafka import KafkaConsumer
        from kafka import errors as kerrors

        try:
            return KafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset="earliest",
                request_timeout_ms=int(self.timeout_s * 1000) + 1000,
                max_poll_records=1000,
                fetch_max_bytes=64 * 1024 * 1024,
                **self.security.kafka_python(),
            )
        except kerrors.KafkaError as exc:
            raise AuditError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc

    def _read(self, topic: str, start: int, follow: bool = False) -> Iterator[Any]:
        from kafka import TopicPartition
        from kafka import errors as kerrors

        consumer = self._new_consumer()
        tp = TopicPartition(topic, 0)
        try:
            if consumer.partitions_for_topic(topic) is None:
                raise AuditError(f"topic {topic} does not exist on {self.bootstrap}")
            consumer.assign([tp])
            consumer.seek(tp, start)
            end = consumer.end_offsets([tp])[tp]
            self.total = end if topic == self.topic else self.total
            while follow or consumer.position(tp) < end:
                batch = consumer.poll(timeout_ms=500)
                yield from batch.get(tp, [])
                if not follow and not batch:
                    end = consumer.end_offsets([tp])[tp]
        except kerrors.TopicAuthorizationFailedError as exc:
            raise AuditError(
                f"reading {topic} from {self.bootstrap}: not authorized "
                f"(TOPIC_AUTHORIZATION_FAILED): the auditor's principal needs ACL Read on "
                f"topic {topic} (docs/KAFKA.md, \"Security\")") from exc
        except kerrors.KafkaError as exc:
            raise AuditError(f"reading {topic} from {self.bootstrap} failed: {exc}") from exc
        finally:
            consumer.close()

    def checkpoints(self) -> list[str]:
        notes = [(int(r.key.decode()), r.value.decode()) for r in self._read(self.topic + CHECKPOINTS_SUFFIX, 0)]
        return [n for _, n in sorted(notes, key=lambda x: x[0])]

    def records(self, start: int = 0) -> Iterator[bytes]:
        for rec in self._read(self.topic, start):
            yield rec.value

    def follow(self, start: int = 0) -> Iterator[bytes]:
        for rec in self._read(self.topic, start, follow=True):
            yield rec.value

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# A ledger gRPC server: Read (stream) and ListCheckpoints (stream)


class GrpcSource:
    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        import grpc

        from steward.v1 import ledger_pb2_grpc

        self.name = f"grpc://{target}"
        self.total: int | None = None
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError as exc:
            raise AuditError(f"cannot reach the ledger server at {target}") from exc
        self.stub = ledger_pb2_grpc.LedgerServiceStub(self.channel)

    def _call(self, what: str, fn: Any) -> Any:
        import grpc

        try:
            return fn()
        except grpc.RpcError as exc:
            raise AuditError(f"{what} failed: {exc.code().name}: {exc.details()}") from exc

    def checkpoints(self) -> list[str]:
        from steward.v1 import ledger_pb2

        return self._call("ListCheckpoints", lambda: [
            c.note for c in self.stub.ListCheckpoints(ledger_pb2.ListCheckpointsRequest(), timeout=self.timeout_s)])

    def records(self, start: int = 0, follow: bool = False) -> Iterator[bytes]:
        import grpc

        from steward.v1 import ledger_pb2

        try:
            head = self.stub.GetHead(ledger_pb2.GetHeadRequest(), timeout=self.timeout_s)
            self.total = head.size
            for msg in self.stub.Read(ledger_pb2.ReadRequest(start_seq=start, limit=0, follow=follow)):
                yield msg.entry_bytes
        except grpc.RpcError as exc:
            raise AuditError(f"Read failed: {exc.code().name}: {exc.details()}") from exc

    def follow(self, start: int = 0) -> Iterator[bytes]:
        return self.records(start, follow=True)

    def close(self) -> None:
        self.channel.close()
