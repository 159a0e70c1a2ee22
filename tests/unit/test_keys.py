"""Ed25519 keys: PEM round trips, passphrases, key ids, sign and verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ledger.errors import BadKeyError
from ledger.keys import PrivateKey, PublicKey, key_id


def test_key_id_is_sha256_of_the_raw_public_key() -> None:
    key = PrivateKey.generate()
    assert key.key_id == hashlib.sha256(key.public.raw).digest()
    assert key.public.key_id_hex == key.key_id.hex()
    assert key_id(key.public.raw) == key.key_id


def test_private_key_pem_round_trip_with_and_without_passphrase(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    key.save(tmp_path / "plain.pem")
    key.save(tmp_path / "locked.pem", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "locked.pem").read_bytes()
    assert PrivateKey.load(tmp_path / "plain.pem").key_id == key.key_id
    assert PrivateKey.load(tmp_path / "locked.pem", b"correct horse").key_id == key.key_id
    assert (tmp_path / "plain.pem").stat().st_mode & 0o777 == 0o600


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    key.save(tmp_path / "locked.pem", passphrase=b"pw")
    with pytest.raises(BadKeyError):
        PrivateKey.load(tmp_path / "locked.pem", b"wrong")
    with pytest.raises(BadKeyError, match="passphrase"):
        PrivateKey.load(tmp_path / "locked.pem")


def test_save_never_overwrites(tmp_path: Path) -> None:
    PrivateKey.generate().save(tmp_path / "k.pem")
    with pytest.raises(FileExistsError):
        PrivateKey.generate().save(tmp_path / "k.pem")


def test_public_pem_round_trip_and_verify() -> None:
    key = PrivateKey.generate()
    public = PublicKey.from_pem(key.public.to_pem())
    assert public == key.public
    sig = key.sign(b"message")
    assert public.verify(sig, b"message")
    assert not public.verify(sig, b"messagE")
    assert not public.verify(sig[:-1], b"message")


def test_non_ed25519_keys_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(BadKeyError, match="Ed25519"):
        PublicKey.from_pem(pem)
    with pytest.raises(BadKeyError, match="32 bytes"):
        PublicKey(b"short")


def test_repr_shows_no_secret() -> None:
    key = PrivateKey.generate()
    assert key.raw_private().hex() not in repr(key)
