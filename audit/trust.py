"""The auditor's trust input: the pinned root keys (and optionally the checkpoint vkey, the
origin and the root threshold), and the witnesses whose cosignatures make a checkpoint final
with their threshold, from a trust-root file (docs/AUDIT.md, docs/WITNESS.md). Nothing else is
trusted.

Versions of the file: 1 (no ``version`` key: roots, vkey, origin, threshold) and 2 (adds
``witnesses`` ``[{"name", "vkey"}]`` and ``witness_threshold``). A version 1 file names no
witness: its witness threshold is 0. A version 2 file that names witnesses without a threshold
requires all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.cosignature import Witness, parse_witness_vkey
from audit.errors import AuditError
from audit.note import NoteError, parse_vkey

VERSIONS = (1, 2)


@dataclass(frozen=True)
class TrustRoot:
    roots: tuple[tuple[str, bytes], ...]  # (principal, raw Ed25519 public key)
    vkey: str | None = None
    origin: str | None = None
    threshold: int | None = None
    witnesses: tuple[Witness, ...] = ()
    witness_threshold: int = 0  # cosignatures a checkpoint needs to be relied on

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
        version = data.get("version", 1)
        if version not in VERSIONS:
            raise AuditError(
                f"trust-root file: version {version!r} is not one this auditor reads "
                f"({', '.join(map(str, VERSIONS))})"
            )
        witnesses, witness_threshold = _witnesses(data) if version >= 2 else ((), 0)
        return cls(tuple(roots), vkey, data.get("origin"), threshold, witnesses, witness_threshold)


def _witnesses(data: dict[str, Any]) -> tuple[tuple[Witness, ...], int]:
    listed = data.get("witnesses", [])
    if not isinstance(listed, list):
        raise AuditError('trust-root file: expected "witnesses": [{"name", "vkey"}, ...]')
    out: list[Witness] = []
    for i, w in enumerate(listed):
        if not isinstance(w, dict) or not isinstance(w.get("vkey"), str):
            raise AuditError(f"trust-root file: witnesses[{i}] needs a vkey")
        try:
            witness = parse_witness_vkey(w["vkey"])
        except NoteError as exc:
            raise AuditError(f"trust-root file: witnesses[{i}]: {exc}") from exc
        if w.get("name", witness.name) != witness.name:
            raise AuditError(
                f"trust-root file: witnesses[{i}] is named {w['name']!r} but its vkey is "
                f"{witness.name!r}'s"
            )
        if witness in out:
            raise AuditError(f"trust-root file: witnesses[{i}] is listed twice")
        out.append(witness)
    threshold = data.get("witness_threshold", len(out))
    if (
        not isinstance(threshold, int)
        or isinstance(threshold, bool)
        or not 0 <= threshold <= len(out)
    ):
        raise AuditError(
            f"trust-root file: witness_threshold must be an integer in 0..{len(out)} "
            "(the number of witnesses listed)"
        )
    return tuple(out), threshold


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
