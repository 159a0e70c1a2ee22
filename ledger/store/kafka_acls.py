"""The Kafka ACLs each Steward role needs on a cluster that enforces them, and nothing more.

One table, three roles, tested one ACL at a time against a broker running the KRaft
``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``
(tests/integration/test_kafka_secured.py: each role works with exactly these, and loses a named
operation without any one of them). `steward kafka acls` prints them as ``kafka-acls.sh`` lines;
docs/KAFKA.md ("Security") shows the same table.

- ``writer``: the ledger server (``python -m ledger.server --kafka-bootstrap``).
- ``reader``: a `KafkaLogStore` that only reads: ``steward-controller --store kafka:...``, the
  projector, `Replayer`.
- ``auditor``: ``steward-audit --kafka`` (kafka-python, reads the ledger and its checkpoints).

All patterns are LITERAL: a PREFIXED ``T`` would also cover every other topic whose name starts
with ``T`` (another ledger ``T2``, say).
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.store.kafka_topic import checkpoints_topic, writers_topic

ROLES = ("writer", "reader", "auditor")


@dataclass(frozen=True)
class KafkaAcl:
    """One ALLOW ACL: `operation` on `resource_type` `name`, and the Steward step needing it."""

    resource_type: str  # "topic", "transactional-id", "group", "cluster"
    name: str
    operation: str  # Kafka's operation name: Read, Write, Describe, DescribeConfigs, Create
    needed_for: str

    def kafka_acls_line(
        self, principal: str, bootstrap: str = "BOOTSTRAP", command_config: str = "admin.properties"
    ) -> str:
        """The ``kafka-acls.sh`` command that grants it."""
        resource = {
            "topic": f"--topic {self.name}",
            "transactional-id": f"--transactional-id {self.name}",
            "group": f"--group {self.name}",
            "cluster": "--cluster",
        }[self.resource_type]
        return (
            f"kafka-acls.sh --bootstrap-server {bootstrap} --command-config {command_config} "
            f"--add --allow-principal {principal} --operation {self.operation} {resource} "
            f"--resource-pattern-type literal"
        )


def role_acls(
    role: str, topic: str, *, transactional_id: str = "", create_topics: bool = False
) -> list[KafkaAcl]:
    """Exactly the ACLs `role` needs for the ledger on `topic`.

    `transactional_id` defaults to the store's (``steward-ledger-<topic>``); `create_topics`
    adds ``Create`` on the three topics for a writer that creates them (without
    ``--no-create-topics``).
    """
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    cps, claims = checkpoints_topic(topic), writers_topic(topic)
    # Kafka lets Read and Write imply Describe: a topic that is read needs no Describe ACL.
    if role == "auditor":
        return [
            KafkaAcl(
                "topic",
                topic,
                "Read",
                "steward-audit: reading the entries (Metadata, ListOffsets, Fetch)",
            ),
            KafkaAcl("topic", cps, "Read", "steward-audit: reading the checkpoint notes"),
        ]
    acls = [
        KafkaAcl(
            "topic",
            topic,
            "Read",
            "replaying and following the log (Fetch; its "
            "implied Describe: Metadata at start, ListOffsets for the end offset)",
        ),
        KafkaAcl("topic", cps, "Read", "reading the checkpoint notes"),
    ]
    acls += [
        KafkaAcl(
            "topic",
            name,
            "DescribeConfigs",
            "checking the topic's retention, cleanup and ISR settings at start",
        )
        for name in (topic, cps, claims)
    ]
    if role == "reader":
        acls.append(
            KafkaAcl(
                "topic",
                claims,
                "Describe",
                "checking at start that the claim log exists (Metadata)",
            )
        )
        return acls
    tid = transactional_id or f"steward-ledger-{topic}"
    acls += [
        KafkaAcl("topic", claims, "Read", "reading the last claim (who holds the ledger)"),
        KafkaAcl("topic", claims, "Write", "writing this server's claim record at start"),
        KafkaAcl("topic", topic, "Write", "appending entries (Produce in a transaction)"),
        KafkaAcl("topic", cps, "Write", "publishing checkpoint notes"),
        KafkaAcl(
            "transactional-id",
            tid,
            "Write",
            "the transactional producer (FindCoordinator, "
            "InitProducerId, AddPartitionsToTxn, EndTxn)",
        ),
    ]
    if create_topics:
        acls += [
            KafkaAcl("topic", name, "Create", "creating the topic at the first start")
            for name in (topic, cps, claims)
        ]
    return acls
    tid = transactional_id or f"steward-ledger-{topic}"
    acls += [
        KafkaAcl("topic", claims, "Read", "reading the last claim (who holds the ledger)"),
        KafkaAcl("topic", claims, "Write", "writing this server's claim record at start"),
        KafkaAcl("topic", topic, "Write", "appending entries (Produce in a transaction)"),
        KafkaAcl("topic", cps, "Write", "publishing checkpoint notes"),
        KafkaAcl(
            "transactional-id",
            tid,
            "Write",
            "the transactional producer (InitProducerId, AddPartitionsToTxn, EndTxn)",
        ),
        KafkaAcl(
            "transactional-id",
            tid,
            "Describe",
            "finding the transaction coordinator (FindCoordinator)",
        ),
    ]
    if create_topics:
        acls += [
            KafkaAcl("topic", name, "Create", "creating the topic at the first start")
            for name in (topic, cps, claims)
        ]
    return acls
