"""steward-audit: verify a Steward ledger without trusting its servers, storage or transport."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from audit import report as reports
from audit.errors import AuditError
from audit.heap import audit_collector
from audit.sources import (
    ExportSource,
    GrpcSource,
    KafkaSecurity,
    KafkaSource,
    Source,
    TilesSource,
)
from audit.trust import TrustRoot
from audit.verify import verify

EPILOG = """\
examples:
  # offline, from an export written by `steward export`
  steward-audit verify --export ledger.avro --trust-root trust.json

  # save the newest verified checkpoint, and next time prove the log only grew since then
  steward-audit verify --export ledger.avro --trust-root trust.json --save-checkpoint seen.note
  steward-audit verify --export later.avro --trust-root trust.json --since-checkpoint seen.note

  # online, straight from Kafka (read_committed) or from a ledger server
  steward-audit verify --kafka 127.0.0.1:9092 --topic steward-ledger --trust-root trust.json
  steward-audit verify --grpc 127.0.0.1:50051 --trust-root trust.json --json

  # reports, and signature checks on two worker processes
  steward-audit verify --export ledger.avro --trust-root trust.json --html report.html --workers 2

  # keep watching; exits 1 with an ALERT line on the first finding
  steward-audit watch --kafka 127.0.0.1:9092 --topic steward-ledger --trust-root trust.json --state-dir ./audit-state

trust root file (JSON): {"roots": [{"principal": "human:root-ada@example.org",
  "public_key_hex": "..."} or {"principal": ..., "public_pem": "-----BEGIN PUBLIC KEY-----..."}],
  "vkey": "origin+keyid+base64key" (optional pin), "origin": "..." (optional pin),
  "threshold": m (optional minimum root signatures on genesis), "version": 2,
  "witnesses": [{"name", "vkey"}] and "witness_threshold": k (optional: the cosignatures a
  checkpoint needs, default all listed; docs/WITNESS.md)}

exit status:
  0 verified: no finding. From a live source (--grpc, --kafka) entries past the newest signed
    checkpoint, if any, are reported PENDING, never as verified; --grpc first asks the server
    to sign a checkpoint of its current size (unless --no-checkpoint-request), so none remain;
    --tiles reads exactly what the served checkpoint covers
  1 findings: the log breaks a check (in an export, entries past the newest signed checkpoint
    are the finding UNCOVERED_TAIL)
  2 cannot audit the input: a malformed or unreadable export (one line says what, where and
    why), an unreachable broker or server, a tile that contradicts the entries it covers (the
    tiles name it), a bad trust-root file, a usage error
  Export files are read with bounds: a block may hold and inflate to at most 16 MiB, the
  header's metadata at most 64 MiB, its JSON at most 16 levels deep.
See docs/AUDIT.md for every step and finding code.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steward-audit",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    def sources(sp: argparse.ArgumentParser, export: bool) -> None:
        g = sp.add_mutually_exclusive_group(required=True)
        if export:
            g.add_argument(
                "--export", type=Path, metavar="FILE", help="an export file (Avro container)"
            )
        g.add_argument(
            "--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers (with --topic)"
        )
        g.add_argument("--grpc", metavar="HOST:PORT", help="a ledger gRPC server")
        g.add_argument(
            "--tiles",
            metavar="URL",
            help="a tiled log over HTTP (C2SP tlog-tiles, as a ledger server's --tiles-listen "
            "serves it): its checkpoint and every tile it covers (docs/TILES.md)",
        )
        if export:
            sp.add_argument(
                "--no-checkpoint-request",
                action="store_true",
                help="with --grpc: do not ask the server to sign a checkpoint of its current size "
                "(entries past its newest checkpoint are then reported pending)",
            )
        sp.add_argument(
            "--topic", help="the ledger's Kafka topic (checkpoints: <topic>.checkpoints)"
        )
        sp.add_argument(
            "--tls-ca", type=Path, metavar="PEM", help="with --grpc: CA of the ledger server (TLS)"
        )
        sp.add_argument(
            "--tls-cert",
            type=Path,
            metavar="PEM",
            help="with --grpc: client certificate (mutual TLS; needs the read permission)",
        )
        sp.add_argument("--tls-key", type=Path, metavar="PEM", help="with --grpc: its private key")
        k = sp.add_argument_group('Kafka security (with --kafka; docs/KAFKA.md "Security")')
        k.add_argument(
            "--kafka-security-protocol",
            default="PLAINTEXT",
            choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        )
        k.add_argument("--kafka-sasl-mechanism", help="e.g. SCRAM-SHA-512")
        k.add_argument("--kafka-sasl-username")
        k.add_argument(
            "--kafka-sasl-password-env",
            metavar="VAR",
            help="environment variable holding the SASL password (never on the command line)",
        )
        k.add_argument(
            "--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates (PEM)"
        )
        k.add_argument("--kafka-ssl-certfile", help="client certificate (PEM), for mutual TLS")
        k.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
        k.add_argument(
            "--kafka-ssl-password-env",
            metavar="VAR",
            help="environment variable holding the client key's password",
        )
        sp.add_argument(
            "--trust-root", type=Path, required=True, metavar="FILE", help="pinned root keys (JSON)"
        )

    v = sub.add_parser(
        "verify",
        help="verify a whole log once",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources(v, export=True)
    v.add_argument(
        "--since-checkpoint", type=Path, metavar="FILE", help="a checkpoint note saved earlier"
    )
    v.add_argument(
        "--save-checkpoint",
        type=Path,
        metavar="FILE",
        help="write the newest verified checkpoint here",
    )
    v.add_argument("--json", action="store_true", help="JSON report on stdout")
    v.add_argument("--html", type=Path, metavar="FILE", help="HTML report with a rollout timeline")
    v.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help=(
            "how many verify signatures (default 1: the main process itself); with 2 or more "
            "they are the native verifier's threads when it is installed (python -m infra.native "
            "status), else processes"
        ),
    )
    v.add_argument(
        "--progress", action="store_true", help="progress bar even when stderr is not a terminal"
    )
    v.add_argument("--no-progress", action="store_true", help="no progress bar")
    v.add_argument(
        "--kubeconfig", type=Path, help="compare the live cluster with the log (step 11)"
    )

    w = sub.add_parser(
        "watch",
        help="follow a log and alert on the first finding",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources(w, export=False)
    w.add_argument(
        "--state-dir", type=Path, required=True, help="keeps the last verified checkpoint"
    )
    w.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    w.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: forever)")
    return p


def _source(args: argparse.Namespace, request_checkpoint: bool = True) -> Source:
    if getattr(args, "export", None):
        return ExportSource(args.export)
    if args.tiles:
        return TilesSource(args.tiles)
    if args.kafka:
        if not args.topic:
            raise AuditError("--kafka needs --topic")
        security = KafkaSecurity.from_env(
            args.kafka_security_protocol,
            args.kafka_sasl_mechanism,
            args.kafka_sasl_username,
            args.kafka_sasl_password_env,
            args.kafka_ssl_cafile,
            args.kafka_ssl_certfile,
            args.kafka_ssl_keyfile,
            args.kafka_ssl_password_env,
        )
        return KafkaSource(args.kafka, args.topic, security=security)
    return GrpcSource(
        args.grpc,
        request_checkpoint=request_checkpoint,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AuditError(f"cannot read {what} {path}: {exc.strerror}") from exc


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file, fsync, rename: a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_verify(args: argparse.Namespace) -> int:
    trust = TrustRoot.load(args.trust_root)
    since = (
        _read_text(args.since_checkpoint, "the saved checkpoint") if args.since_checkpoint else None
    )
    if args.workers < 1:
        raise AuditError("--workers must be at least 1")
    source = _source(args, request_checkpoint=not args.no_checkpoint_request)
    try:
        checkpoints = source.checkpoints()
        show = not args.no_progress and (args.progress or sys.stderr.isatty())
        result = verify(
            source.records(),
            trust,
            checkpoints,
            since,
            workers=args.workers,
            progress=sys.stderr if show else None,
            total=source.total,
            tail="pending" if source.live else "finding",
        )
    finally:
        source.close()
    if args.kubeconfig:
        from audit.drift import check_drift

        result.findings.extend(check_drift(result, args.kubeconfig))
        result.steps_run[11] = "run"
    if args.json:
        sys.stdout.write(reports.as_json(result, source.name))
    else:
        sys.stdout.write(reports.text(result, source.name))
    if args.html:
        try:
            args.html.write_text(reports.as_html(result, source.name), encoding="utf-8")
        except OSError as exc:
            raise AuditError(f"cannot write {args.html}: {exc.strerror}") from exc
    if args.save_checkpoint and result.verified_checkpoint and result.ok:
        atomic_write(args.save_checkpoint, result.verified_checkpoint)
    return 0 if result.ok else 1


def cmd_watch(args: argparse.Namespace) -> int:
    """Poll the source; each round verifies the log against the last verified checkpoint."""
    trust = TrustRoot.load(args.trust_root)
    state = args.state_dir / "last-verified.note"
    rounds = 0
    while True:
        since = state.read_text(encoding="utf-8") if state.exists() else None
        # No checkpoint is asked for: a watcher polling every few seconds would have the server
        # sign one each round. The server's own checkpoints catch up; the tail is pending.
        source = _source(args, request_checkpoint=False)
        try:
            checkpoints = source.checkpoints()
            result = verify(source.records(), trust, checkpoints, since, tail="pending")
        finally:
            source.close()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if result.findings:
            for f in result.findings:
                print(f"{stamp} ALERT steward-audit {source.name}: {f}", flush=True)
            return 1
        if result.verified_checkpoint and result.verified_checkpoint != since:
            atomic_write(state, result.verified_checkpoint)
        pending = (
            ""
            if result.pending is None
            else f", seq {result.pending[0]}..{result.pending[1]} pending"
        )
        print(
            f"{stamp} ok {source.name}: {result.entries} entries, verified checkpoint {result.verified_size}{pending}",
            flush=True,
        )
        rounds += 1
        if args.rounds and rounds >= args.rounds:
            return 0
        time.sleep(args.interval)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: usage errors exit 2, --help exits 0
        return int(exc.code or 0)
    try:
        with audit_collector():  # process-wide, so here and not in verify() (audit.heap)
            return cmd_verify(args) if args.command == "verify" else cmd_watch(args)
    except AuditError as exc:
        print(f"steward-audit: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 2
    except Exception as exc:  # a bug, not a finding: exit 1 must only ever mean findings
        print(
            f"steward-audit: internal error (a bug in steward-audit, please report it): "
            f"{type(exc).__name__}: {one_line(str(exc))}",
            file=sys.stderr,
        )
        return 2


def one_line(text: str) -> str:
    """An error message as one line: whatever it quotes cannot start a line of its own."""
    return " ".join(text.split("\n")).replace("\r", " ")


if __name__ == "__main__":
    sys.exit(main())
