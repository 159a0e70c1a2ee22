"""kafka-python computes record-batch CRC32C with the C `crc32c` package, not in pure Python.

kafka-python silently falls back to a pure-Python CRC32C when `crc32c` is not importable; the
fallback costs 100-250 µs of the ledger server's single interpreter per produced record
(bench.ingest --profile), so the dependency is declared and this guards that it is used.
"""

from __future__ import annotations

from kafka.record import util


def test_kafka_python_uses_the_c_crc32c() -> None:
    assert util.crc32c_c is not None, "the crc32c package is not importable: pip install -e ."
    data = b"steward/v1/event\n" * 64
    # Same checksum as the pure-Python fallback, and the one kafka-python will use.
    assert util.calc_crc32c(data) == util.crc32c_c(data) == util.crc32c_py(data)
