"""Installing and starting the real infrastructure Steward runs on (Kafka, Kubernetes, PostgreSQL)."""

from __future__ import annotations

import os
from pathlib import Path


def steward_cache(*parts: str) -> Path:
    """Where downloads and builds are cached, outside the repository: $STEWARD_CACHE or ~/.cache/steward."""
    base = os.environ.get("STEWARD_CACHE") or str(Path.home() / ".cache" / "steward")
    return Path(base).joinpath(*parts)


class InfraError(RuntimeError):
    """Base of every deliberate error of the infrastructure helpers: a service that would not
    install, build or start, named with what it said (the tail of its log)."""
