"""The flags of a ledger server, shared by ``python -m ledger.server`` and ``steward serve``.

Argparse only (no gRPC, no store): the ``steward`` command line builds its parser on every
run, and a command that never serves should not pay for importing the server.
"""

from __future__ import annotations

import argparse

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # as ledger.writer.DEFAULT_MAX_MESSAGE_BYTES


def rate_limit(text: str) -> tuple[float, int] | None:
    """``RATE:BURST`` (events per second, events at once) or ``off``; for argparse."""
    if text == "off":
        return None
    rate, sep, burst = text.partition(":")
    try:
        parsed = (float(rate), int(burst) if sep else max(1, int(float(rate))))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected RATE:BURST or off, got {text!r}") from exc
    if parsed[0] <= 0 or parsed[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the rate must be > 0 and the burst >= 1")
    return parsed


def penalty_rule(text: str) -> tuple[int, float, float] | None:
    """``STRIKES:WINDOW_S:COOLDOWN_S`` or ``off``; for argparse."""
    if text == "off":
        return None
    parts = text.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        parsed = (int(parts[0]), float(parts[1]), float(parts[2]))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected STRIKES:WINDOW_S:COOLDOWN_S or off, got {text!r}"
        ) from exc
    if parsed[0] < 1 or parsed[1] <= 0 or parsed[2] <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: strikes must be >= 1, the window and the cool-down > 0"
        )
    return parsed


# The limits `python -m ledger.server` and `steward serve` apply unless told otherwise; the
# Python API (LedgerServerConfig) enforces none by default. Generous for people and one
# controller, tight enough that one agent cannot bury the log (docs/security/network.md).
DEFAULT_APPEND_RATE_PER_PEER = "2000:10000"
DEFAULT_APPEND_RATE_PER_PRINCIPAL = "100:1000"
DEFAULT_KILL_SWITCH_RATE_PER_PEER = "10:100"
# 16 refusals for a rate in 10 s: far more than a client that backs off ever collects, and a
# client that reopens refused streams at once collects them in a fraction of a second.
DEFAULT_PENALTY_BOX = "16:10:10"
# Proofs and single entries per second per peer: a client checking its receipts needs a few; at
# 0.2-0.7 ms of a core for a cold proof (10M entries kept as tiles), 200/s is at most ~14% of one.
DEFAULT_READ_RATE_PER_PEER = "200:1000"


def add_server_arguments(
    p: argparse.ArgumentParser, *, default_listen: str = "127.0.0.1:0"
) -> None:
    """The server's flags, shared by ``python -m ledger.server`` and ``steward serve``."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", help="SQLite file of the log (created if missing)")
    where.add_argument(
        "--kafka-bootstrap",
        metavar="HOST:PORT[,...]",
        help="Kafka bootstrap servers: keep the log on a Kafka topic (docs/KAFKA.md)",
    )
    p.add_argument(
        "--checkpoint-key", required=True, help="the ledger's checkpoint private key (PEM)"
    )
    p.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="environment variable that holds the checkpoint key's passphrase",
    )
    p.add_argument(
        "--listen",
        default=default_listen,
        help=f"HOST:PORT (port 0 picks a free one; default {default_listen})",
    )
    p.add_argument("--port-file", help="write the bound port here once serving")
    p.add_argument(
        "--scratch-dir",
        metavar="DIR",
        help="where the server keeps its per-entry indexes and idle proposals while it runs: "
        "a file of about 375 bytes per entry of the log, rebuilt at every start and unlinked as "
        "soon as it is open (default: TMPDIR or /tmp; in a pod with a read-only root, a "
        "volume)",
    )
    p.add_argument("--checkpoint-every-entries", type=int, default=256)
    p.add_argument("--checkpoint-every-ms", type=int, default=1000)
    t = p.add_argument_group("TLS and access (docs/API.md)")
    t.add_argument("--tls-cert", help="server certificate chain (PEM)")
    t.add_argument("--tls-key", help="server private key (PEM)")
    t.add_argument(
        "--client-ca",
        help="CA for client certificates (mutual TLS; client certificates are then required)",
    )
    optional = t.add_mutually_exclusive_group()
    optional.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate (the default with --client-ca)",
    )
    optional.add_argument(
        "--client-cert-optional",
        action="store_true",
        help="with --client-ca, admit clients without a certificate anonymously",
    )
    t.add_argument(
        "--access-file",
        metavar="YAML",
        help="client certificate identity -> permissions (append, read, query, admin); "
        "needs --client-ca",
    )
    t.add_argument(
        "--insecure-plaintext",
        action="store_true",
        help="allow plaintext on an address other than loopback (logs a warning)",
    )
    t.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve grpc.health.v1.Health alone, plaintext, here (kubelet probes)",
    )
    t.add_argument(
        "--tiles-listen",
        metavar="HOST:PORT",
        help="also serve the log read-only over HTTP as C2SP tlog-tiles here (checkpoint, "
        "tile/..., public by design: docs/TILES.md)",
    )
    lim = p.add_argument_group("limits (docs/security/network.md)")
    lim.add_argument(
        "--max-streams",
        type=int,
        default=128,
        help="open streams (AppendStream, following Read ...) in all (default 128)",
    )
    lim.add_argument(
        "--max-streams-per-peer",
        type=int,
        default=32,
        help="open streams of one peer: certificate identity or IP address (default 32)",
    )
    lim.add_argument(
        "--stream-idle-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="end an AppendStream that sends no batch for S seconds with nothing in flight, "
        "freeing its slot (RESOURCE_EXHAUSTED, STREAM_IDLE; default 60, 0: never)",
    )
    lim.add_argument(
        "--unary-workers",
        type=int,
        default=16,
        help="worker threads only unary calls may use (default 16)",
    )
    lim.add_argument(
        "--append-rate-per-peer",
        type=rate_limit,
        metavar="RATE:BURST|off",
        default=DEFAULT_APPEND_RATE_PER_PEER,
        help=f"events per second a peer may submit (default {DEFAULT_APPEND_RATE_PER_PEER})",
    )
    lim.add_argument(
        "--append-rate-per-principal",
        type=rate_limit,
        metavar="RATE:BURST|off",
        default=DEFAULT_APPEND_RATE_PER_PRINCIPAL,
        help="events per second one signing principal may append "
        f"(default {DEFAULT_APPEND_RATE_PER_PRINCIPAL})",
    )
    lim.add_argument(
        "--kill-switch-rate-per-peer",
        type=rate_limit,
        metavar="RATE:BURST|off",
        default=DEFAULT_KILL_SWITCH_RATE_PER_PEER,
        help="KillSwitchEngaged per second a peer may send by Append, in a bucket of "
        f"their own (default {DEFAULT_KILL_SWITCH_RATE_PER_PEER})",
    )
    lim.add_argument(
        "--penalty-box",
        type=penalty_rule,
        metavar="STRIKES:WINDOW_S:COOLDOWN_S|off",
        default=DEFAULT_PENALTY_BOX,
        help="a peer whose appends are refused for a rate limit STRIKES times within WINDOW_S "
        "seconds has its AppendStreams, and its Appends other than KillSwitchEngaged, refused "
        f"early for COOLDOWN_S seconds (RESOURCE_EXHAUSTED, PENALTY_BOX; default "
        f"{DEFAULT_PENALTY_BOX})",
    )
    lim.add_argument(
        "--read-rate-per-peer",
        type=rate_limit,
        metavar="RATE:BURST|off",
        default=DEFAULT_READ_RATE_PER_PEER,
        help="Get, GetInclusionProof and GetConsistencyProof calls per second a peer may make "
        f"(RESOURCE_EXHAUSTED, RATE_LIMITED; default {DEFAULT_READ_RATE_PER_PEER}); Read, the "
        "tiles and exports are for reading much",
    )
    w = p.add_argument_group("witnesses (docs/WITNESS.md)")
    w.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="NAME=URL,VKEY",
        help="a C2SP tlog-witness to cosign every checkpoint: a label for the logs, the URL "
        "prefix of its add-checkpoint endpoint, its cosigner vkey (repeat for each witness)",
    )
    w.add_argument(
        "--witness-threshold",
        type=int,
        default=None,
        metavar="N",
        help="cosignatures that make a checkpoint witnessed (default: every --witness)",
    )
    w.add_argument(
        "--witness-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="longest one add-checkpoint request may take (default 5)",
    )
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument(
        "--verify-processes",
        type=int,
        choices=(0, 1),
        default=None,
        metavar="0|1",
        help="check the signatures of streamed batches in a worker process (1) or "
        "in the serving process (0); default: 1 on a machine with more than "
        "one core",
    )
    p.add_argument(
        "--projections",
        default="same",
        metavar="URL|PATH",
        help="where the query projections live and QueryService reads them: a SQLAlchemy "
        "URL or a SQLite file path; 'same' (default) uses the --db SQLite file (with "
        "--kafka-bootstrap: no projections), 'off' serves no QueryService",
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument(
        "--kafka-log-level",
        default="WARNING",
        help="level of the Kafka clients' loggers: kafka-python's (their INFO is a "
        "line per connection) and librdkafka's (logger kafka.librdkafka)",
    )
    k = p.add_argument_group("Kafka store (with --kafka-bootstrap)")
    k.add_argument("--topic", help="the ledger topic (checkpoints go to TOPIC.checkpoints)")
    k.add_argument(
        "--ledger",
        default="",
        metavar="NAME",
        help="ledger name for the transactional id steward-ledger-NAME (default: the topic)",
    )
    k.add_argument(
        "--replication-factor",
        type=int,
        default=1,
        help="replication factor of created topics, minimum of existing ones (production: 3)",
    )
    k.add_argument(
        "--min-insync-replicas",
        type=int,
        default=1,
        help="min.insync.replicas of created topics, minimum of existing ones (production: 2)",
    )
    k.add_argument(
        "--no-create-topics",
        action="store_true",
        help="never create the topics: they must exist (they are still checked)",
    )
    k.add_argument(
        "--kafka-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest one Kafka append or read may take before the store reports UNAVAILABLE "
        "(one broker request: at most half of it, and at most 15 s)",
    )
    k.add_argument(
        "--kafka-security-protocol",
        default="PLAINTEXT",
        choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    k.add_argument("--kafka-sasl-mechanism", help="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...")
    k.add_argument("--kafka-sasl-username")
    k.add_argument(
        "--kafka-sasl-password-env",
        metavar="VAR",
        help="environment variable that holds the SASL password (never on the command line)",
    )
    k.add_argument(
        "--kafka-ssl-cafile", help="CA bundle that signs the brokers' certificates (PEM)"
    )
    k.add_argument("--kafka-ssl-certfile", help="client certificate (PEM)")
    k.add_argument("--kafka-ssl-keyfile", help="client private key (PEM)")
    k.add_argument(
        "--kafka-ssl-password-env",
        metavar="VAR",
        help="environment variable that holds the client key's password",
    )
