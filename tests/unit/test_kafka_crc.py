"""kafka-python computes record-batch CRC32C with the C `crc32c` package, not in pure Python.

The ledger's writer is librdkafka now (confluent-kafka, C), but every reader is still
kafka-python: the ledger server's replay, the projector, the controller's replayer, the
auditor and the store's own claim-log reads. Its consumer checks the CRC32C of every fetched
record batch (``check_crcs=True``, ``DefaultRecordBatch.validate_crc``), and it silently falls
back to a pure-Python CRC32C when `crc32c` is not importable: ~300 ns per byte here against
~0.25 ns in C, i.e. ~150 µs of the reader's interpreter per 500-byte entry (a replay of a
million entries would spend minutes on checksums alone). The dependency is declared; this
guards that it is used. (kafka-python producers remain in tests and benches only.)
"""

from __future__ import annotations

from kafka.record import util


def test_kafka_python_uses_the_c_crc32c() -> None:
    assert util.crc32c_c is not None, "the crc32c package is not importable: run scripts/setup"
    data = b"steward/v1/event\n" * 64
    # Same checksum as the pure-Python fallback, and the one kafka-python will use.
    assert util.calc_crc32c(data) == util.crc32c_c(data) == util.crc32c_py(data)
