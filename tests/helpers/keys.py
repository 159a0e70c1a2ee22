"""Key files for the processes a test starts: the ledger's checkpoint key and a principal's key."""

from __future__ import annotations

from pathlib import Path

from ledger.scenario import Cast


def write_checkpoint_key(cast: Cast, directory: Path) -> Path:
    """The cast's checkpoint signing key as ``directory/checkpoint.pem`` (mode 0600)."""
    path = directory / "checkpoint.pem"
    cast.checkpoint_key.save(path)
    return path


def write_principal_key(cast: Cast, who: str, directory: Path) -> Path:
    """The signing key of the cast member ``who`` (e.g. "controller") as ``directory/WHO.pem``."""
    path = directory / f"{who}.pem"
    cast[who].key.save(path)
    return path
