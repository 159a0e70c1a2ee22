"""Reading a Kafka topic around the ledger's stores, with a plain kafka-python consumer."""

from __future__ import annotations

from kafka import KafkaConsumer, TopicPartition


def committed_records(bootstrap: str, topic: str) -> list[tuple[int, bytes, bytes]]:
    """Every read_committed record of partition 0 as (offset, key, value)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out: list[tuple[int, bytes, bytes]] = []
        while consumer.position(tp) < end:
            for rec in consumer.poll(timeout_ms=500).get(tp, []):
                out.append((rec.offset, rec.key, rec.value))
        return out
    finally:
        consumer.close()
