"""Running a ledger: `steward serve`, and `steward kafka acls` (what each role needs on the
ledger's Kafka topics)."""

from __future__ import annotations

import argparse


def cmd_serve(args: argparse.Namespace) -> int:
    from ledger.server import run

    return int(run(args, args.serve_parser) or 0)


def cmd_kafka_acls(args: argparse.Namespace) -> int:
    from ledger.store.kafka_acls import role_acls

    acls = role_acls(
        args.role,
        args.topic,
        transactional_id=args.transactional_id or "",
        create_topics=args.create_topics,
    )
    print(
        f"# Steward {args.role} on ledger topic {args.topic}: {len(acls)} ACLs, nothing more "
        '(docs/KAFKA.md, "Security")'
    )
    for acl in acls:
        print(f"# {acl.operation} on {acl.resource_type} {acl.name}: {acl.needed_for}")
        print(acl.kafka_acls_line(args.principal, args.bootstrap, args.command_config))
    return 0
