"""Installing Apache Kafka for the local brokers: the broker jars, fetched once with Maven.

`fetch()` resolves the broker classpath from infra/kafka/pom.xml with Maven into
``${STEWARD_CACHE:-$HOME/.cache/steward}/kafka/<version>/libs`` (`libs_dir`), skipped when a
stamp says it is complete. infra/kafka_cluster.py runs brokers from it; ``python -m infra.kafka
fetch`` is the command line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra import InfraError, steward_cache

KAFKA_VERSION = "4.2.0"
LOG4J_VERSION = "2.25.3"

# infra/kafka/: the Maven project that names the jars, and the brokers' log4j2 configuration.
KAFKA_FILES = Path(__file__).with_name("kafka")


class KafkaInfraError(InfraError):
    """Fetching, starting or stopping the local Kafka failed; the message says what and why."""


def cache_root() -> Path:
    return steward_cache("kafka")


def libs_dir(version: str = KAFKA_VERSION) -> Path:
    return cache_root() / version / "libs"


def kafka_log(msg: str) -> None:
    """A progress line of the local Kafka (fetch, start, stop) on stderr."""
    print(f"[kafka] {msg}", file=sys.stderr, flush=True)


def fetch(version: str = KAFKA_VERSION, *, log4j_version: str = LOG4J_VERSION) -> Path:
    """Fill the classpath folder with Maven once; later calls return it at once (stamp file)."""
    libs = libs_dir(version)
    stamp = libs.parent / "libs.stamp"
    if stamp.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaInfraError("cannot fetch Kafka jars: `mvn` (Apache Maven) is not on PATH")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(KAFKA_FILES / "pom.xml", work / "pom.xml")
    partial = work / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    kafka_log(
        f"fetching Apache Kafka {version} broker jars (log4j {log4j_version}) with Maven "
        f"into {libs} ..."
    )
    started = time.monotonic()
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(work / "pom.xml"),
        f"-Dkafka.version={version}",
        f"-Dlog4j.version={log4j_version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={partial}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise KafkaInfraError(
            f"Maven could not fetch org.apache.kafka:kafka_2.13:{version} "
            f"(exit {proc.returncode}):\n{tail}"
        )
    if not any(partial.glob(f"kafka_2.13-{version}.jar")):
        raise KafkaInfraError(f"Maven finished but {partial} has no kafka_2.13-{version}.jar")
    # Swap in the complete folder only, so an interrupted fetch is never mistaken for a good one.
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    stamp.write_text(f"kafka_2.13 {version}\nlog4j {log4j_version}\n")
    jars = len(list(libs.glob("*.jar")))
    kafka_log(f"fetched {jars} jars in {time.monotonic() - started:.1f}s")
    return libs
