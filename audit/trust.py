"""The auditor's trust input: the pinned root keys (and optionally the checkpoint vkey, the
origin and the root threshold) from a trust-root file (docs/AUDIT.md). Nothing else is trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.errors import AuditError
from audit.note import NoteError, parse_vkey


@dataclass(frozen=True)
class TrustRoot:
    roots: tuple[tuple[str, bytes], ...]  # (principal, raw Ed25519 public key)
    vkey: str | None = None
    origin: str | None = None
    threshold: int | None = None

    @classmethod
    def load(cls, path: Path) -> TrustRoot:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise AuditError(f"cannot read the trust-root file {path}: {exc.strerror}") from exc
        except json.JSONDecodeError as exc:
            raise AuditError(f"trust-root file {path} is not JSON: {exc}") from exc
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: Any) -> TrustRoot:
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("roots"), list)
            or not data["roots"]
        ):
            raise AuditError(
                'trust-root file: expected {"roots": [{"principal", "public_pem" | "public_key_hex"}, ...]}'
            )
        roots = []
        for i, r in enumerate(data["roots"]):
            if not isinstance(r, dict) or not isinstance(r.get("principal"), str):
                raise AuditError(f"trust-root file: roots[{i}] needs a principal")
            roots.append((r["principal"], _public_key(r, i)))
        vkey = data.get("vkey")
        if vkey is not None:
            try:
                parse_vkey(vkey)
            except NoteError as exc:
                raise AuditError(f"trust-root file: {exc}") from exc
        threshold = data.get("threshold", data.get("root_threshold"))
        if threshold is not None and (not isinstance(threshold, int) or threshold < 1):
            raise AuditError("trust-root file: threshold must be a positive integer")
        return cls(tuple(roots), vkey, data.get("origin"), threshold)


def _public_key(r: dict[str, Any], i: int) -> bytes:
    try:
        if "public_key_hex" in r:
            raw = bytes.fromhex(r["public_key_hex"])
        elif "public_pem" in r:
            key = serialization.load_pem_public_key(r["public_pem"].encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError("not an Ed25519 key")
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raise ValueError("needs public_pem or public_key_hex")
    except (ValueError, TypeError) as exc:
        raise AuditError(f"trust-root file: roots[{i}]: {exc}") from exc
    if len(raw) != 32:
        raise AuditError(f"trust-root file: roots[{i}]: an Ed25519 public key is 32 bytes")
    return raw
