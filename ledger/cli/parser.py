"""The `steward` command line's grammar: `build_parser`, every command's flags, and the
longer help texts (the epilog's end-to-end flow, `store check`/`restore`, `kafka acls`)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Sequence
from typing import Any

from ledger.cli.decisions import cmd_decide, cmd_eval, cmd_propose
from ledger.cli.event_files import cmd_sign, cmd_submit
from ledger.cli.governance import cmd_grant, cmd_init, cmd_policy_set, cmd_revoke
from ledger.cli.health import cmd_health_report
from ledger.cli.keys import cmd_keys_new, cmd_keys_show
from ledger.cli.kill import cmd_kill
from ledger.cli.reading import (
    cmd_checkpoint,
    cmd_export,
    cmd_log,
    cmd_proof,
    cmd_status,
    cmd_trust_root,
    cmd_vkey,
)
from ledger.cli.rollout import cmd_rollout
from ledger.cli.serving import cmd_kafka_acls, cmd_serve
from ledger.cli.store import cmd_store_check, cmd_store_restore
from ledger.store.kafka_flags import add_security_arguments

EPILOG = """\
environment:
  STEWARD_SERVER            ledger address (host:port) when --server is not given
  STEWARD_KEY_PASSPHRASE    passphrase of encrypted key files (or name another
                            variable with --passphrase-env)
  STEWARD_TLS_CA            CA bundle of the server (enables TLS) when --tls-ca is not given
  STEWARD_TLS_CERT          client certificate (mutual TLS) when --tls-cert is not given
  STEWARD_TLS_KEY           its private key when --tls-key is not given

a governance flow, end to end, from an empty directory (two roots, a ledger server
on SQLite, an agent's proposal, evals, an approval, a kill switch engaged and released;
policy.yaml as in docs/GOVERNANCE.md):
  steward keys new root-a.pem --principal human:ada@example.org
  steward keys new root-b.pem --principal human:grace@example.org
  steward keys new ledger.pem
  steward serve --db ledger.db --checkpoint-key ledger.pem --listen 127.0.0.1:7443 &
  export STEWARD_SERVER=127.0.0.1:7443
  steward ledger init --name prod --origin example.org/steward/prod \\
      --root root-a.pub.pem --root root-b.pub.pem --threshold 2 \\
      --checkpoint-public ledger.pub.pem --key root-a.pem --key root-b.pem
  steward keys new agent.pem --principal agent:researcher-7
  steward keys new evalbot.pem --principal service:evalbot
  steward keys new alice.pem --principal human:alice@example.org
  steward keys new bob.pem --principal human:bob@example.org
  steward keys new oncall.pem --principal human:oncall@example.org
  steward grant --public-key agent.pub.pem --role proposer --key root-a.pem --key root-b.pem
  steward grant --public-key evalbot.pub.pem --role evaluator --key root-a.pem --key root-b.pem
  steward grant --public-key alice.pub.pem --role approver --key root-a.pem --key root-b.pem
  steward grant --public-key bob.pub.pem --role approver --key root-a.pem --key root-b.pem
  steward grant --public-key oncall.pub.pem --role operator --key root-a.pem --key root-b.pem
  steward policy set policy.yaml --key root-a.pem --key root-b.pem
  steward propose --target models/model-server --image registry.example/model:v2 --key agent.pem
  steward eval --proposal 3fa2c1 --suite safety --metric refusal_rate=0.99 --key evalbot.pem
  steward eval --proposal 3fa2c1 --suite quality --metric accuracy=0.91 --key evalbot.pem
  steward approve --proposal 3fa2c1 --key alice.pem
  steward kill engage --target models/model-server --reason "error spike" --key oncall.pem
  steward kill release --target models/model-server --key alice.pem --key bob.pem
  steward log --follow
  steward store check --store sqlite:ledger.db     # offline: every entry and checkpoint

(3fa2c1 stands for the first digits of the hash `steward propose` printed.) A key made with
--principal names its principal in its .pub.pem, so grant and ledger init --root need no
separate principal; --principal and PRINCIPAL=FILE still say it explicitly.
"""

STORE_CHECK_HELP = """\
Verify a ledger store offline, as the server does on start: every record decodes and
extends the chain (seqs contiguous, each prev the leaf hash of the one before, every
signature and rule), and every stored checkpoint verifies with the genesis's checkpoint
key and carries the root of the entries it covers. Records written around the server are
listed and skipped (docs/DESIGN.md 2.2). Changes nothing: a SQLite file is opened
read-only, a Kafka topic is read without claiming it.

exit status: 0 clean, 2 damaged or unreadable (the last line names the first damage:
the seq and what is wrong).

examples:
  steward store check --store sqlite:ledger.db
  steward store check --store kafka:broker1:9092,broker2:9092/steward-prod  # not run here: a production cluster (docs/RECOVERY.md runs it on a test broker)
  steward store check --export ledger-export.avro

what to do about damage: docs/RECOVERY.md
"""

STORE_RESTORE_HELP = """\
Write a new SQLite store from a good copy of the ledger: an export (steward export), a
SQLite backup, or the Kafka topic. The whole copy is verified first (as store check does);
from a store only the ledger's own chain is copied, with its checkpoints. Never writes
over an existing file; the new file is checked again before it is moved into place.

examples:
  steward store restore --export ledger-export.avro --to sqlite:ledger.restored.db
  steward store restore --from sqlite:backup/ledger.db --to sqlite:ledger.restored.db
  steward store restore --from kafka:broker1:9092/steward-prod --to sqlite:ledger.db  # not run here: a production cluster (docs/RECOVERY.md runs it on a test broker)

then: stop the server, move the damaged file aside, move the restored one into its place
(or start with --db on it). docs/RECOVERY.md has every step.
"""

ROLLOUT_PAUSE_HELP = """\
One approver or operator signs; the ledger accepts a pause only for a rollout that has
started and is neither promoted nor rolled back, and not already paused. The controller
then records PAUSED at the current step and weight and holds there (through restarts:
the pause is on the log). A kill switch still stops a paused rollout at once.

example:
  steward rollout pause --proposal 3fa2c1 --reason "p99 latency up 40%" --key oncall.pem

then: steward rollout resume (docs/GOVERNANCE.md "Pause and resume")
"""

ROLLOUT_RESUME_HELP = """\
A resume names the pause it ends and needs the signatures of the policy's
resume_approvals distinct approvers of its approver_kinds (default 1), never the
proposer's. The rollout then goes on from its step, whose hold time starts again.

examples:
  steward rollout resume --proposal 3fa2c1 --key alice.pem --key bob.pem --reason "a noisy neighbour"
  # or each approver in turn, as for a kill-switch release (here: after a later pause):
  steward rollout resume --proposal 3fa2c1 --key alice.pem --out resume.evt
  steward sign resume.evt --key bob.pem
  steward submit resume.evt

refused with: ROLLOUT_NOT_PAUSED (nothing to resume), RESUME_NOT_FOR_CURRENT_PAUSE
(signed for another pause), THRESHOLD_NOT_MET (too few approvers: the message says who
was not counted and why).
"""

KAFKA_ACLS_EPILOG = """\
roles:
  writer   the ledger server (python -m ledger.server --kafka-bootstrap ...)
  reader   steward-controller --store kafka:..., the projector: reads the log, writes nothing
  auditor  steward-audit --kafka ...: reads the log and its checkpoints only

example (run the printed lines as a cluster admin, or pipe them to sh):
  steward kafka acls --role writer --principal User:ledger --topic steward-prod \\
      --bootstrap kafka-1:9093 --command-config admin.properties

Every line grants one operation on one literal resource; none is optional (each was removed
in turn in the tests, and the role then fails with a message naming it). The consumer group
steward-end-offsets needs no ACL: no role ever joins it.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steward",
        description="Govern a Steward ledger: keys, policies, proposals, evals, approvals, pauses, kill switches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="ledger gRPC address host:port (default $STEWARD_SERVER)")
    common.add_argument("--tls-ca", help="CA bundle to verify the server (enables TLS)")
    common.add_argument("--tls-cert", help="client certificate for mutual TLS")
    common.add_argument("--tls-key", help="client private key for mutual TLS")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default 10)")
    common.add_argument(
        "--passphrase-env",
        default="STEWARD_KEY_PASSPHRASE",
        help="environment variable holding key passphrases (default STEWARD_KEY_PASSPHRASE)",
    )
    # `sign` takes only the keys: it signs a file in place and neither submits nor writes
    # elsewhere, so the event-making commands' --out and --ledger-name mean nothing to it.
    keys_only = argparse.ArgumentParser(add_help=False)
    keys_only.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="private key file to sign with (repeat for several signers)",
    )
    signing = argparse.ArgumentParser(add_help=False, parents=[keys_only])
    signing.add_argument(
        "--out",
        metavar="FILE",
        help="write the signed event to FILE instead of submitting it, so others can `steward sign` it",
    )
    signing.add_argument(
        "--ledger-name", help="ledger name, to sign offline with --out without asking the server"
    )

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str,
        help_text: str,
        func: Callable[[argparse.Namespace], int],
        parents: Sequence[argparse.ArgumentParser] = (common,),
        target: Any = sub,
    ) -> argparse.ArgumentParser:
        p = target.add_parser(name, help=help_text, description=help_text, parents=list(parents))
        p.set_defaults(func=func)
        return p

    keys = sub.add_parser("keys", help="create and show Ed25519 keys").add_subparsers(
        dest="keys_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "new",
        "create an Ed25519 key pair (PKCS#8 PEM, mode 600) and its .pub.pem",
        cmd_keys_new,
        target=keys,
    )
    p.add_argument("file", help="private key file to create (never overwritten)")
    p.add_argument(
        "--encrypt", action="store_true", help="encrypt with the passphrase in --passphrase-env"
    )
    p.add_argument(
        "--principal",
        metavar="KIND:NAME",
        help="who holds the key (human:, agent: or service:); written into the .pub.pem, "
        "where grant and ledger init --root read it when not given",
    )
    p = add("show", "print a key's id and public PEM", cmd_keys_show, target=keys)
    p.add_argument("file", help="private or public key file")

    ledger = sub.add_parser("ledger", help="create a ledger").add_subparsers(
        dest="ledger_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "init",
        "sign the genesis (seq 0): roots, their threshold and the checkpoint key",
        cmd_init,
        (common, signing),
        target=ledger,
    )
    p.add_argument("--name", required=True, help="the ledger's name (every event names it)")
    p.add_argument(
        "--origin", required=True, help="checkpoint origin line, e.g. example.org/steward/prod"
    )
    p.add_argument(
        "--root",
        action="append",
        required=True,
        metavar="[PRINCIPAL=]PUBPEM",
        help="a root key (repeat); the principal defaults to the one its .pub.pem names",
    )
    p.add_argument(
        "--threshold",
        type=int,
        required=True,
        help="distinct root principals needed to sign root actions",
    )
    p.add_argument(
        "--checkpoint-public",
        required=True,
        metavar="PUBPEM",
        help="public key the ledger signs checkpoints with",
    )
    p.add_argument("--checkpoint-name", help="signed-note key name (default: the origin)")

    # The same flags as `python -m ledger.server` (one parser), not the client's --tls-*.
    from ledger.server_flags import add_server_arguments

    p = add(
        "serve",
        "run a ledger server (SQLite or Kafka; TLS, access file, limits: docs/API.md)",
        cmd_serve,
        parents=(),
    )
    add_server_arguments(p, default_listen="127.0.0.1:7443")
    p.set_defaults(serve_parser=p)

    p = add("grant", "grant a key roles (needs the root threshold)", cmd_grant, (common, signing))
    p.add_argument(
        "--principal",
        help="kind:name, kind one of human, agent, service "
        "(default: the principal the public key file names)",
    )
    p.add_argument("--public-key", required=True, metavar="PUBPEM")
    p.add_argument(
        "--role",
        action="append",
        required=True,
        choices=["root", "proposer", "evaluator", "approver", "operator", "monitor", "controller"],
    )
    p.add_argument("--expires", help="ISO 8601 expiry with a time zone")

    p = add(
        "revoke",
        "revoke a key: by the root threshold, or by the key itself",
        cmd_revoke,
        (common, signing),
    )
    p.add_argument("--key-id", required=True, help="64 hex digits")
    p.add_argument("--reason", default="revoked")

    policy = sub.add_parser("policy", help="set a rollout policy").add_subparsers(
        dest="policy_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "set",
        "set a policy from a YAML file (format: docs/GOVERNANCE.md)",
        cmd_policy_set,
        (common, signing),
        target=policy,
    )
    p.add_argument("file")

    p = add(
        "propose",
        "propose a candidate model for a target Deployment",
        cmd_propose,
        (common, signing),
    )
    p.add_argument("--target", required=True, metavar="NS/DEPLOYMENT")
    p.add_argument("--image", required=True)
    p.add_argument("--digest", default="", help="model digest, e.g. sha256:...")
    p.add_argument("--baseline-image", default="")
    p.add_argument("--baseline-digest", default="")
    p.add_argument("--rationale", default="")
    p.add_argument("--agent", default="", help="originating agent")
    p.add_argument("--run", default="", help="originating run id")

    p = add(
        "eval",
        "record an eval result (pass/fail is recomputed from the policy)",
        cmd_eval,
        (common, signing),
    )
    p.add_argument(
        "--proposal", required=True, help="proposal hash or a unique prefix (6+ hex digits)"
    )
    p.add_argument("--suite", required=True)
    p.add_argument("--metric", action="append", required=True, metavar="NAME=VALUE")
    p.add_argument("--artifact", default="", help="artifact digest of the eval run")

    for name, decision in (("approve", "APPROVE"), ("reject", "REJECT")):
        p = add(
            name,
            f"{name} a proposal, bound to the latest eval of every required suite",
            functools.partial(cmd_decide, decision=decision),
            (common, signing),
        )
        p.add_argument("--proposal", required=True, help="proposal hash or a unique prefix")
        p.add_argument("--comment", default="")

    health = sub.add_parser("health", help="report a rollout step's health").add_subparsers(
        dest="health_cmd", required=True, metavar="ACTION"
    )
    p = add(
        "report",
        "report a step healthy or unhealthy, judged by hand (a monitor key; bound to the run "
        "of the step; steps gated by the policy's checks open only on their verdicts)",
        cmd_health_report,
        (common, signing),
        target=health,
    )
    p.add_argument("--proposal", required=True, help="proposal hash or a unique prefix")
    p.add_argument("--step", required=True, type=int, help="the plan step (0-based)")
    p.add_argument("--metric", action="append", metavar="NAME=VALUE", help="what was observed")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--healthy", dest="healthy", action="store_true")
    verdict.add_argument("--unhealthy", dest="healthy", action="store_false")

    kill = sub.add_parser("kill", help="engage or release a kill switch").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    for action, help_text in (
        ("engage", "stop now: one operator or approver signature"),
        ("release", "allow rollouts again: k distinct approvers on one event"),
    ):
        p = add(action, help_text, cmd_kill, (common, signing), target=kill)
        p.add_argument("--all", action="store_true", help="global scope")
        p.add_argument("--target", metavar="NS/DEPLOYMENT")
        p.add_argument("--proposal", metavar="HASH")
        p.add_argument("--reason", required=action == "engage", default="released")

    rollout = sub.add_parser(
        "rollout", help="pause or resume a running rollout (signed events the policy governs)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_text, epilog in (
        ("pause", "hold a running rollout at its step and weight", ROLLOUT_PAUSE_HELP),
        ("resume", "let a paused rollout go on", ROLLOUT_RESUME_HELP),
    ):
        p = rollout.add_parser(
            action,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[common, signing],
        )
        p.set_defaults(func=cmd_rollout)
        p.add_argument(
            "--proposal", required=True, help="proposal hash or a unique prefix (6+ hex digits)"
        )
        p.add_argument(
            "--reason",
            required=action == "pause",
            default="resumed",
            help="why: recorded on the log and shown by `steward log` and `kubectl steward history`",
        )

    p = add(
        "sign",
        "add your signature to an event file written with --out; the file is rewritten in "
        "place and not submitted (`steward submit FILE` does that)",
        cmd_sign,
        (common, keys_only),
    )
    p.add_argument("file")
    p = add("submit", "submit an event file", cmd_submit)
    p.add_argument("file")

    p = add(
        "status",
        "proposals, rollouts and kill switches, from a locally verified fold of the log",
        cmd_status,
    )
    p.add_argument("--proposal", help="only proposals whose hash starts with this")
    p.add_argument("--json", action="store_true")

    p = add("log", "a readable timeline of the log", cmd_log)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--from", dest="from_seq", type=int, help="start printing at this seq")

    p = add("checkpoint", "print the latest signed checkpoint", cmd_checkpoint)
    p.add_argument(
        "--publish",
        action="store_true",
        help="ask the ledger to sign one at the current size first",
    )
    p = add("proof", "print an inclusion proof as a C2SP tlog-proof bundle", cmd_proof)
    p.add_argument("--seq", type=int, required=True)
    add("vkey", "print the ledger's checkpoint verifier key (C2SP vkey)", cmd_vkey)
    kafka = sub.add_parser("kafka", help="Kafka cluster set-up for a ledger").add_subparsers(
        dest="kafka_cmd", required=True, metavar="ACTION"
    )
    p = kafka.add_parser(
        "acls",
        help="print the kafka-acls.sh commands a role needs (writer, reader, auditor)",
        description="Print the kafka-acls.sh commands that give one Steward role exactly the "
        "ACLs it needs on a ledger's topics, each with what it is for. Nothing is "
        "sent to Kafka: review the lines, then run them as a cluster admin.",
        epilog=KAFKA_ACLS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_kafka_acls)
    p.add_argument("--role", required=True, choices=["writer", "reader", "auditor"])
    p.add_argument(
        "--principal",
        required=True,
        metavar="User:NAME",
        help="the role's Kafka principal: User:<SASL user>, or the name its TLS "
        "certificate maps to",
    )
    p.add_argument(
        "--topic",
        required=True,
        help="the ledger topic (its companions TOPIC.checkpoints and TOPIC.writers are included)",
    )
    p.add_argument(
        "--transactional-id",
        metavar="ID",
        help="writer: the server's transactional id (default steward-ledger-TOPIC; "
        "steward-ledger-NAME with the server's --ledger NAME)",
    )
    p.add_argument(
        "--create-topics",
        action="store_true",
        help="writer: add Create on the three topics (a server without "
        "--no-create-topics creates missing ones)",
    )
    p.add_argument(
        "--bootstrap",
        default="BOOTSTRAP",
        metavar="HOST:PORT",
        help="put into each line's --bootstrap-server",
    )
    p.add_argument(
        "--command-config",
        default="admin.properties",
        metavar="FILE",
        help="the admin's client properties for kafka-acls.sh (default admin.properties)",
    )

    p = add("export", "write the offline export file auditors verify", cmd_export)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument(
        "--cosignatures",
        type=int,
        default=0,
        metavar="N",
        help="wait (up to 30 s) until the covering checkpoint carries N witness cosignatures "
        "(docs/WITNESS.md)",
    )

    p = add(
        "trust-root",
        "write the auditor's trust root: the genesis roots, the ledger's vkey, its witnesses",
        cmd_trust_root,
    )
    p.add_argument("--out", required=True)
    p.add_argument(
        "--witness",
        action="append",
        default=[],
        metavar="VKEY",
        help="a witness whose cosignatures checkpoints need: its cosigner vkey (repeat)",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        default=None,
        metavar="N",
        help="cosignatures a checkpoint needs (default: every --witness)",
    )

    store = sub.add_parser(
        "store", help="check a ledger store offline, or restore one"
    ).add_subparsers(dest="store_cmd", required=True, metavar="ACTION")
    p = store.add_parser(
        "check",
        help="verify every entry and checkpoint of a store, offline",
        description=STORE_CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_store_check)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--store",
        metavar="SPEC",
        help="sqlite:PATH or kafka:BOOTSTRAP/TOPIC (as steward-controller names it)",
    )
    source.add_argument("--export", metavar="FILE", help="an export file (steward export)")
    add_security_arguments(
        p.add_argument_group('Kafka security (with --store kafka:...; docs/KAFKA.md "Security")')
    )
    p = store.add_parser(
        "restore",
        help="write a new SQLite store from an export, a backup or a topic",
        description=STORE_RESTORE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_store_restore)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from",
        dest="source",
        metavar="SPEC",
        help="sqlite:PATH or kafka:BOOTSTRAP/TOPIC: a good copy of the store",
    )
    source.add_argument("--export", metavar="FILE", help="an export file (steward export)")
    p.add_argument(
        "--to", required=True, metavar="sqlite:PATH", help="the new SQLite file to write"
    )
    add_security_arguments(
        p.add_argument_group('Kafka security (with --from kafka:...; docs/KAFKA.md "Security")')
    )
    return parser
