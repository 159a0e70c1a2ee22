"""Where the auditor reads a log from: an export file, a Kafka topic, a ledger gRPC server, a
tiled log over HTTP (C2SP tlog-tiles).

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
from typing import Any, BinaryIO, Protocol

from audit.avro import canonical_form
from audit.container import ContainerError, ContainerReader, read_long, shown
from audit.errors import AuditError

EXPORT_FORMAT = "steward-export/v1"
CHECKPOINTS_SUFFIX = ".checkpoints"


class Source(Protocol):
    name: str
    total: int | None
    # Whether the log is live (a server, a topic): entries past the newest signed checkpoint are
    # then pending, not yet vouched for; in a file they never will be, and that is a finding.
    live: bool

    def checkpoints(self) -> list[str]: ...

    def records(self, start: int = 0) -> Iterator[bytes]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# Offline export: an Avro object container file (schema audit/schemas/export_record.v1.avsc)


def _export_schema() -> str:
    """The Parsing Canonical Form of the shipped ExportRecord schema: the only one accepted."""
    return canonical_form(
        json.loads((Path(__file__).parent / "schemas" / "export_record.v1.avsc").read_text())
    )


class ExportSource:
    """Records ``{seq, entry}`` in seq order; checkpoints in the metadata ``steward.checkpoints``.

    Read with the auditor's own bounded container reader (audit.container): a malformed file
    raises ContainerError (exit status 2) naming the byte offset or block, never anything else.
    """

    live = False  # a file: nothing more will be signed for it, an uncovered tail is a finding

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.path = path
        self.total: int | None = None
        try:
            self._file: BinaryIO = path.open("rb")
        except OSError as exc:
            raise AuditError(f"cannot read the export {path}: {exc.strerror}") from exc
        try:
            self._container = ContainerReader(self._file, str(path))
            self._check_header()
        except BaseException:
            self._file.close()
            raise

    def _check_header(self) -> None:
        c = self._container
        fmt = c.text("steward.format", EXPORT_FORMAT)
        if fmt != EXPORT_FORMAT:
            raise ContainerError(
                f"{self.path}: metadata steward.format at byte {c.offsets['steward.format']}: "
                f"export format {shown(fmt)}, this auditor reads {EXPORT_FORMAT}"
            )
        where = f"metadata avro.schema at byte {c.offsets.get('avro.schema', 0)}"
        if "avro.schema" not in c.metadata:
            raise ContainerError(f"{self.path}: header (byte 4): no avro.schema in the metadata")
        try:
            schema = canonical_form(c.json("avro.schema", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ContainerError(
                f"{self.path}: {where}: not an Avro schema ({shown(str(exc))})"
            ) from None
        if schema != _export_schema():
            raise ContainerError(
                f"{self.path}: {where}: the records are {shown(schema, 80)}, "
                "not steward.v1.ExportRecord {seq: long, entry: bytes}"
            )
        listed = c.json("steward.checkpoints", "[]")
        where = f"metadata steward.checkpoints at byte {c.offsets.get('steward.checkpoints', 0)}"
        if not isinstance(listed, list):
            raise ContainerError(f"{self.path}: {where}: not a JSON list of {{size, note}}")
        self._checkpoints: list[str] = []
        for i, item in enumerate(listed):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("note"), str)
                and type(item.get("size")) is int
                and item["size"] >= 0
            ):
                raise ContainerError(
                    f'{self.path}: {where}: item {i} is not {{"size": n >= 0, "note": text}}'
                )
            self._checkpoints.append(item["note"])

    def checkpoints(self) -> list[str]:
        return list(self._checkpoints)

    def records(self, start: int = 0) -> Iterator[bytes]:
        index = 0
        try:
            for number, at, count, raw in self._container.blocks():
                for entry in _export_records(
                    raw, count, f"{self.path}: block {number} at byte {at}"
                ):
                    if index >= start:
                        yield entry
                    index += 1
        except OSError as exc:
            raise AuditError(f"cannot read the export {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        self._file.close()


def _export_records(raw: bytes, count: int, where: str) -> Iterator[bytes]:
    """The entry bytes of the `count` ExportRecords {seq: long, entry: bytes} in a block's data,
    which they must fill exactly."""
    pos = 0
    for i in range(count):
        seq = read_long(raw, pos)
        if seq is None:
            raise ContainerError(
                f"{where}: record {i} of {count}: its seq runs past the block's {len(raw)} bytes"
            )
        length = read_long(raw, seq[1])
        if length is None:
            raise ContainerError(
                f"{where}: record {i} of {count}: its entry length runs past the block's data"
            )
        n, pos = length
        if not 0 <= n <= len(raw) - pos:
            raise ContainerError(
                f"{where}: record {i} of {count}: entry length {n} at block byte {seq[1]}, "
                f"but {len(raw) - pos} bytes remain in the block (truncated or corrupt)"
            )
        yield raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise ContainerError(
            f"{where}: {len(raw) - pos} bytes after its {count} records (a wrong count or a corrupt block)"
        )


def write_export(
    path: Path,
    records: list[bytes],
    checkpoints: list[tuple[int, str]],
    origin: str = "",
    vkey: str = "",
    ledger: str = "",
) -> None:
    """Write an export file (tests and tooling; the ledger's `steward export` writes the same)."""
    import fastavro

    from audit.formats import decode_entry

    schema = fastavro.parse_schema(
        json.loads((Path(__file__).parent / "schemas" / "export_record.v1.avsc").read_text())
    )
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
    def from_env(
        cls,
        protocol: str,
        sasl_mechanism: str | None,
        username: str | None,
        password_env: str | None,
        cafile: str | None,
        certfile: str | None,
        keyfile: str | None,
        key_password_env: str | None,
    ) -> KafkaSecurity:
        return cls(
            protocol,
            sasl_mechanism,
            username,
            _env(password_env, "SASL password"),
            cafile,
            certfile,
            keyfile,
            _env(key_password_env, "client key password"),
        )

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's options (includes secrets)."""
        opts = {
            "security_protocol": self.protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.username,
            "sasl_plain_password": self.password,
            "ssl_cafile": self.cafile,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_password": self.key_password,
        }
        return {k: v for k, v in opts.items() if v is not None}

    def librdkafka(self) -> dict[str, Any]:
        """librdkafka's names for the same options (includes secrets)."""
        opts = {
            "security.protocol": self.protocol,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password,
            "ssl.ca.location": self.cafile,
            "ssl.certificate.location": self.certfile,
            "ssl.key.location": self.keyfile,
            "ssl.key.password": self.key_password,
        }
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
    (
        "certificate verify failed",
        "TLS: the broker's certificate is not signed by a CA this client trusts (--kafka-ssl-cafile)",
    ),
    (
        "in state APIVERSION_QUERY",
        "the broker closed the connection before answering ApiVersions: the listener expects TLS "
        "(--kafka-security-protocol SSL or SASL_SSL)",
    ),
    (
        "SSL connection closed by peer",
        "the broker closed the TLS connection: it requires SASL (SASL_SSL) or a client certificate",
    ),
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
        "bootstrap.servers": bootstrap,
        "client.id": "steward-audit",
        **security.librdkafka(),
        "logger": Collect(),
        "error_cb": lambda err: lines.append(f"{err.name()}: {err.str()}"),
    }
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
                    raise AuditError(
                        f"Kafka at {bootstrap} ({security.protocol}{user}): "
                        f"{verdict}. librdkafka: {line}"
                    )


class KafkaSource:
    live = True  # the ledger server publishes checkpoints to <topic>.checkpoints as the log grows

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        timeout_s: float = 10.0,
        security: KafkaSecurity | None = None,
    ) -> None:
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
                f'topic {topic} (docs/KAFKA.md, "Security")'
            ) from exc
        except kerrors.KafkaError as exc:
            raise AuditError(f"reading {topic} from {self.bootstrap} failed: {exc}") from exc
        finally:
            consumer.close()

    def checkpoints(self) -> list[str]:
        notes = [
            (int(r.key.decode()), r.value.decode())
            for r in self._read(self.topic + CHECKPOINTS_SUFFIX, 0)
        ]
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
    """A ledger server. Unless told not to (`request_checkpoint=False`), the auditor first asks the
    server to sign a checkpoint of its current size (GetCheckpoint with publish_now) and then
    reads exactly that many entries, so that a signed checkpoint covers everything it reads. A
    server that refuses (an auditor without the right to ask, a fenced server) is read to its
    end, and the entries past its newest checkpoint are reported pending."""

    live = True

    def __init__(
        self,
        target: str,
        timeout_s: float = 30.0,
        request_checkpoint: bool = True,
        *,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        import grpc

        from steward.v1 import ledger_pb2_grpc

        self.name = f"grpc://{target}"
        self.total: int | None = None
        self.timeout_s = timeout_s
        self.request_checkpoint = request_checkpoint
        self.covered: int | None = None  # the size of the checkpoint asked for, once known
        self.refused: str | None = None  # why the server did not sign one, if it did not
        self._asked = False
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        if (tls_cert is None) != (tls_key is None):
            raise AuditError("--tls-cert and --tls-key go together")
        if tls_ca is not None or tls_cert is not None:
            try:
                creds = grpc.ssl_channel_credentials(
                    tls_ca.read_bytes() if tls_ca else None,
                    tls_key.read_bytes() if tls_key else None,
                    tls_cert.read_bytes() if tls_cert else None,
                )
            except OSError as exc:
                raise AuditError(f"cannot read a TLS file: {exc}") from exc
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
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

    def _ask_for_checkpoint(self) -> None:
        """Once, before reading: a checkpoint signed now covers the log as it is now."""
        import grpc

        from steward.v1 import ledger_pb2

        if self._asked or not self.request_checkpoint:
            return
        self._asked = True
        try:
            cp = self.stub.GetCheckpoint(
                ledger_pb2.GetCheckpointRequest(publish_now=True), timeout=self.timeout_s
            )
        except grpc.RpcError as exc:
            if exc.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.UNIMPLEMENTED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ):
                self.refused = f"{exc.code().name}: {exc.details()}"
                return
            raise AuditError(f"GetCheckpoint failed: {exc.code().name}: {exc.details()}") from exc
        self.covered = cp.size

    def checkpoints(self) -> list[str]:
        from steward.v1 import ledger_pb2

        self._ask_for_checkpoint()
        return self._call(
            "ListCheckpoints",
            lambda: [
                c.note
                for c in self.stub.ListCheckpoints(
                    ledger_pb2.ListCheckpointsRequest(), timeout=self.timeout_s
                )
            ],
        )

    def records(self, start: int = 0, follow: bool = False) -> Iterator[bytes]:
        import grpc

        from steward.v1 import ledger_pb2

        self._ask_for_checkpoint()
        # Exactly the entries the requested checkpoint covers (later ones are for a later audit).
        limit = 0 if follow or self.covered is None else max(self.covered - start, 0)
        if limit == 0 and self.covered is not None and not follow:
            return
        try:
            head = self.stub.GetHead(ledger_pb2.GetHeadRequest(), timeout=self.timeout_s)
            self.total = head.size if self.covered is None or follow else self.covered
            for msg in self.stub.Read(
                ledger_pb2.ReadRequest(start_seq=start, limit=limit, follow=follow)
            ):
                yield msg.entry_bytes
        except grpc.RpcError as exc:
            raise AuditError(f"Read failed: {exc.code().name}: {exc.details()}") from exc

    def follow(self, start: int = 0) -> Iterator[bytes]:
        return self.records(start, follow=True)

    def close(self) -> None:
        self.channel.close()


# --------------------------------------------------------------------------------------------
# A tiled log over HTTP (C2SP tlog-tiles): `checkpoint`, hash tiles and entry bundles

# The largest resource a tiles server may send: a full bundle of 256 entries of at most 65,535
# bytes each (a hash tile is 8 KiB, a checkpoint note far less).
MAX_TILE_RESOURCE_BYTES = 256 * (2 + 0xFFFF)


class TilesSource:
    """A log served as tiles (``steward serve --tiles-listen``, or static files anywhere).

    It delivers the one checkpoint the server publishes and exactly the entries that checkpoint
    covers, read from the entry bundles; on the way every tile the checkpoint's tree is made of
    is compared with the entries (audit.tiles), and audit.verify then checks the entries against
    the checkpoint, its signature and everything else. A tile that contradicts the entries, a
    malformed bundle, or a server that fails (not 404) raises AuditError (exit status 2); a
    bundle the server does not have (404) ends the log there, which the verifier reports
    (LOG_TRUNCATED), as it would for an export cut short.
    """

    # Every entry served is one the served checkpoint claims to cover (nothing past it is ever
    # served), so an entry no valid checkpoint covers is a finding, as in a file, not pending.
    live = False

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AuditError(f"--tiles {url!r}: expected an http:// or https:// URL prefix")
        self.name = url
        self.total: int | None = None
        self.tiles_checked = 0
        self._scheme, self._netloc = parts.scheme, parts.netloc
        self._base = parts.path if parts.path.endswith("/") else parts.path + "/"
        self._timeout = timeout_s
        self._conn: Any = None
        self._note: str | None = None

    def _connection(self) -> Any:
        import http.client

        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._netloc, timeout=self._timeout)
        return self._conn

    def fetch(self, path: str) -> bytes | None:
        """The resource at ``path`` under the prefix; None when the server says 404 (or 410)."""
        import http.client
        import zlib

        url = f"{self._scheme}://{self._netloc}{self._base}{path}"
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, anew
            try:
                conn = self._connection()
                conn.request(
                    "GET",
                    self._base + path,
                    headers={"Accept-Encoding": "gzip, identity", "User-Agent": "steward-audit"},
                )
                resp = conn.getresponse()
                length = resp.getheader("Content-Length")
                if (
                    length is not None
                    and length.isascii()  # a hostile server's "²" is a digit to isdigit()
                    and length.isdigit()
                    and int(length) <= MAX_TILE_RESOURCE_BYTES
                ):
                    body = resp.read()
                else:  # no length, or one larger than any tile: read no more than the limit
                    body = resp.read(MAX_TILE_RESOURCE_BYTES + 1)
                    self.close()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise AuditError(f"cannot fetch {url}: {exc}") from exc
        if resp.status in (404, 410):
            return None
        if resp.status != 200:
            said = body[:200].decode("utf-8", "replace").split("\n")[0]
            raise AuditError(f"{url}: HTTP {resp.status} {resp.reason}: {said}")
        if len(body) > MAX_TILE_RESOURCE_BYTES:
            raise AuditError(
                f"{url}: more than {MAX_TILE_RESOURCE_BYTES} bytes, larger than any tile"
            )
        if (resp.getheader("Content-Encoding") or "identity").lower() == "gzip":
            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflate.decompress(body, MAX_TILE_RESOURCE_BYTES + 1)
            except zlib.error as exc:
                raise AuditError(f"{url}: not valid gzip ({exc})") from exc
            if len(body) > MAX_TILE_RESOURCE_BYTES or inflate.unconsumed_tail:
                raise AuditError(f"{url}: inflates past {MAX_TILE_RESOURCE_BYTES} bytes")
        return body

    def _checkpoint(self) -> str:
        if self._note is None:
            data = self.fetch("checkpoint")
            if data is None:
                raise AuditError(f"{self.name}: the server has no checkpoint (404)")
            try:
                self._note = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AuditError(f"{self.name}checkpoint is not UTF-8 text") from exc
        return self._note

    def checkpoints(self) -> list[str]:
        return [self._checkpoint()]

    def records(self, start: int = 0) -> Iterator[bytes]:
        from audit.note import NoteError, parse_checkpoint, parse_note
        from audit.tiles import TiledLogReader

        note = self._checkpoint()
        try:
            size = parse_checkpoint(parse_note(note).text).size
        except NoteError:
            return  # nothing is covered; the verifier reports the malformed checkpoint
        self.total = size
        reader = TiledLogReader(size, self.fetch)
        for index, entry in enumerate(reader.entries()):
            if index >= start:
                yield entry
        self.tiles_checked = reader.tiles_checked

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
