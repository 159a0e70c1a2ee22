"""C2SP checkpoints, signed notes, vkeys and tlog-proof bundles.

ledger/c2sp_text.py, ledger/signed_note.py, ledger/checkpoint.py and ledger/tlog_proof.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.c2sp_text import MalformedError
from ledger.checkpoint import Checkpoint, Signer, sign_checkpoint, verify_checkpoint
from ledger.errors import FormatError, VerificationError
from ledger.merkle import MerkleTree, leaf_hash
from ledger.signed_note import (
    Verifier,
    key_id,
    make_vkey,
    open_note,
    open_note_full,
    parse_vkey,
    sign_note,
)
from ledger.tlog_proof import (
    TLOG_PROOF_HEADER,
    TlogProof,
    parse_tlog_proof,
    verify_tlog_proof,
    write_tlog_proof,
)

# The example of the C2SP signed-note spec, as quoted in shared/vectors/README.md.
EXAMPLE_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
EXAMPLE_TEXT = "This is an example message.\n"
EXAMPLE_SIG = (
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM="
)
EXAMPLE_NOTE = f"{EXAMPLE_TEXT}\n\u2014 example.com/foo {EXAMPLE_SIG}\n"


def shared_vectors_dir() -> Path:
    override = os.environ.get("STEWARD_SHARED_VECTORS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def flip_b64(b64: str, byte: int, bit: int = 0) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[byte] ^= 1 << bit
    return base64.b64encode(bytes(raw)).decode()


# --------------------------------------------------------------------------------------------
# The C2SP signed-note example
# --------------------------------------------------------------------------------------------


def test_shared_readme_quotes_the_example() -> None:
    """The inlined example is the one in shared/vectors/README.md (which must exist)."""
    readme = (shared_vectors_dir() / "README.md").read_text(encoding="utf-8")
    assert f"`{EXAMPLE_VKEY}`" in readme
    block = re.search(r"^    (This is an example message\.)\n\n    (\u2014 .*)$", readme, re.M)
    assert block is not None
    assert f"{block.group(1)}\n\n{block.group(2)}\n" == EXAMPLE_NOTE


def test_example_note_verifies() -> None:
    text, signers = open_note(EXAMPLE_NOTE, EXAMPLE_VKEY)
    assert text == EXAMPLE_TEXT
    assert signers == ["example.com/foo"]
    v = parse_vkey(EXAMPLE_VKEY)
    assert v.name == "example.com/foo"
    assert v.key_id.hex() == "530d903a"
    assert v.vkey == EXAMPLE_VKEY
    assert make_vkey(v.name, v.public_key) == EXAMPLE_VKEY
    assert open_note(EXAMPLE_NOTE, [v]) == (EXAMPLE_TEXT, ["example.com/foo"])


@pytest.mark.parametrize(
    "note",
    [
        EXAMPLE_NOTE.replace("example message", "example massage"),
        EXAMPLE_NOTE.replace("This is", "This was"),
        "X" + EXAMPLE_NOTE,
        EXAMPLE_NOTE.replace(EXAMPLE_SIG, flip_b64(EXAMPLE_SIG, 10)),  # signature byte
        EXAMPLE_NOTE.replace(EXAMPLE_SIG, flip_b64(EXAMPLE_SIG, 67, 7)),  # last signature byte
    ],
    ids=["text", "text-start", "prefix", "sig-byte", "sig-last-byte"],
)
def test_tampered_example_fails(note: str) -> None:
    with pytest.raises(VerificationError, match="does not verify"):
        open_note(note, EXAMPLE_VKEY)


def test_tampered_key_id_makes_the_signature_unknown() -> None:
    note = EXAMPLE_NOTE.replace(EXAMPLE_SIG, flip_b64(EXAMPLE_SIG, 0))
    with pytest.raises(VerificationError, match="no signature from a known key"):
        open_note(note, EXAMPLE_VKEY)


def test_example_with_other_or_no_verifiers_fails() -> None:
    other = Signer.generate("example.com/foo")  # same name, other key: unknown key ID
    with pytest.raises(VerificationError, match="no signature from a known key"):
        open_note(EXAMPLE_NOTE, other.vkey)
    with pytest.raises(VerificationError, match="known keys: none"):
        open_note(EXAMPLE_NOTE, [])


# --------------------------------------------------------------------------------------------
# Notes with generated keys
# --------------------------------------------------------------------------------------------


def test_sign_and_open_round_trip() -> None:
    signer = Signer.generate("steward.example/ledger")
    text = "hello\n\nworld, with a blank line inside\n"
    note = signer.sign_note(text)
    assert note.startswith(text + "\n\u2014 steward.example/ledger ")
    assert open_note(note, signer.vkey) == (text, ["steward.example/ledger"])
    assert open_note(note, signer.verifier) == (text, ["steward.example/ledger"])
    # The module-level function produces the same (Ed25519 is deterministic).
    key = Ed25519PrivateKey.generate()
    s2 = Signer("n", key)
    assert sign_note(text, "n", key) == s2.sign_note(text)


def test_key_id_is_the_c2sp_hash() -> None:
    signer = Signer.generate("a.example/k")
    want = hashlib.sha256(b"a.example/k\n\x01" + signer.public_key).digest()[:4]
    assert key_id("a.example/k", signer.public_key) == want == signer.key_id
    note = signer.sign_note("x\n")
    raw = base64.b64decode(note.rsplit(" ", 1)[1])
    assert raw[:4] == want and len(raw) == 68


def test_unknown_signers_are_ignored_and_known_bad_signature_rejects() -> None:
    log, witness, stranger = (Signer.generate(n) for n in ("log.example", "w.example", "s.ex"))
    text = "body\n"
    cosigned = log.sign_note(text) + stranger.sign_note(text).split("\n\n")[1]
    opened = open_note_full(cosigned, [log.vkey, witness.vkey])
    assert opened.signers == ("log.example",)
    assert len(opened.unverified) == 1 and opened.unverified[0].startswith("\u2014 s.ex ")
    # A second, broken signature from a known key rejects the whole note.
    bad_line = witness.sign_note("other\n").split("\n\n")[1]
    with pytest.raises(VerificationError, match=r"w\.example .* does not verify"):
        open_note(log.sign_note(text) + bad_line, [log.vkey, witness.vkey])
    # Only unknown signers: rejected.
    with pytest.raises(VerificationError, match="no signature from a known key"):
        open_note(stranger.sign_note(text), [log.vkey])


@pytest.mark.parametrize(
    ("note", "why"),
    [
        (EXAMPLE_TEXT + "\u2014 example.com/foo " + EXAMPLE_SIG + "\n", "no blank line"),
        ("This is an example message.", "no blank line"),
        (EXAMPLE_TEXT + "\n", "no signature lines"),
        (EXAMPLE_TEXT + "\n\n", "no signature lines"),
        (EXAMPLE_NOTE[:-1], "does not end with a newline"),
        (EXAMPLE_NOTE.replace("\u2014 ", "- "), "not a signature line"),
        (EXAMPLE_NOTE.replace("\u2014 ", "\u2014"), "not a signature line"),
        (EXAMPLE_NOTE.replace("foo ", "foo"), "expected '\u2014 <name> <base64>'"),
        (EXAMPLE_NOTE.replace("foo ", "foo+x "), "invalid key name"),
        (EXAMPLE_NOTE.replace(EXAMPLE_SIG, EXAMPLE_SIG[:-1]), "not valid base64"),
        (EXAMPLE_NOTE.replace(EXAMPLE_SIG, "AAAA"), "3 bytes"),
        (EXAMPLE_NOTE.replace("This", "Th\tis"), "control character U\\+0009"),
        (EXAMPLE_NOTE.replace("\n", "\r\n"), "control character U\\+000D"),
        (EXAMPLE_NOTE + "\u2014 x AAAAAAAA\n" * 100, "at most 100"),
    ],
)
def test_malformed_notes_are_rejected(note: str, why: str) -> None:
    with pytest.raises(MalformedError, match=why) as info:
        open_note(note, EXAMPLE_VKEY)
    assert isinstance(info.value, FormatError) and isinstance(info.value, VerificationError)


def test_sign_note_rules() -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(MalformedError, match="end with a newline"):
        sign_note("no newline", "n", key)
    with pytest.raises(MalformedError, match="control character"):
        sign_note("bell\x07\n", "n", key)
    for bad in ("", "has space", "has+plus", "tab\tname", "nbsp\u00a0name"):
        with pytest.raises(MalformedError, match="key name"):
            sign_note("ok\n", bad, key)


# --------------------------------------------------------------------------------------------
# vkeys
# --------------------------------------------------------------------------------------------


def test_vkey_round_trip() -> None:
    signer = Signer.generate("steward.example/ledger")
    vkey = make_vkey(signer.name, signer.public_key)
    assert vkey == signer.vkey
    name, hex_id, b64 = vkey.split("+", 2)  # the base64 key may itself contain '+'
    assert name == signer.name and hex_id == signer.key_id.hex()
    assert base64.b64decode(b64) == b"\x01" + signer.public_key
    v = parse_vkey(vkey)
    assert v == signer.verifier == Verifier(signer.name, signer.public_key)
    assert parse_vkey(f"{name}+{hex_id.upper()}+{b64}") == v


def test_vkey_key_hash_is_checked() -> None:
    name, hex_id, b64 = EXAMPLE_VKEY.split("+", 2)
    wrong_id = f"{int(hex_id, 16) ^ 1:08x}"
    with pytest.raises(MalformedError, match="does not match the name and key"):
        parse_vkey(f"{name}+{wrong_id}+{b64}")
    with pytest.raises(MalformedError, match="does not match"):  # renamed key
        parse_vkey(f"example.com/bar+{hex_id}+{b64}")
    with pytest.raises(MalformedError, match="does not match"):  # another key
        parse_vkey(f"{name}+{hex_id}+{flip_b64(b64, 5)}")


@pytest.mark.parametrize(
    ("vkey", "why"),
    [
        ("example.com/foo", "expected <name>"),
        ("example.com/foo+530d903a", "expected <name>"),
        ("+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "key name"),
        ("example.com/foo+530d903+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 hex"),
        ("example.com/foo+530d903g+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 hex"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2", "base64"),
        ("example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "type 0x02"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv", "bytes"),
        ("example.com/foo+530d903a+", "empty"),
    ],
)
def test_malformed_vkeys(vkey: str, why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        parse_vkey(vkey)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

ROOT = hashlib.sha256(b"root").digest()


def test_checkpoint_text_and_parse_round_trip() -> None:
    cp = Checkpoint("steward.example/ledger", 20852163, ROOT)
    text = cp.to_text()
    assert text == f"steward.example/ledger\n20852163\n{base64.b64encode(ROOT).decode()}\n"
    assert Checkpoint.parse(text) == cp
    ext = Checkpoint("o", 0, ROOT, ("ext one", "ext two"))
    assert ext.to_text().endswith("\next one\next two\n")
    assert Checkpoint.parse(ext.to_text()) == ext


def test_spec_example_checkpoint_parses() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.parse(text)
    assert (cp.origin, cp.size, len(cp.root), cp.extensions) == (
        "example.com/behind-the-sofa",
        20852163,
        32,
        (),
    )


GOOD_ROOT = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"o\n012\n{GOOD_ROOT}\n", r"line 2 \(tree size\).*leading zeros"),
        (f"o\n00\n{GOOD_ROOT}\n", "leading zeros"),
        (f"o\n-1\n{GOOD_ROOT}\n", "line 2"),
        (f"o\n+1\n{GOOD_ROOT}\n", "line 2"),
        (f"o\n 1\n{GOOD_ROOT}\n", "line 2"),
        (f"o\n\u0661\n{GOOD_ROOT}\n", "line 2"),  # Arabic-Indic digit one
        (f"o\n{2**64}\n{GOOD_ROOT}\n", "64 bits"),
        ("o\n1\nnot base64!\n", r"line 3 \(root hash\).*not valid base64"),
        (f"o\n1\n{GOOD_ROOT[:-1]}\n", "not valid base64"),
        (f"o\n1\n{GOOD_ROOT[:-2]}X=\n", "not canonical base64"),
        (f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", "31 bytes, expected 32"),
        (f"o\n1\n{base64.b64encode(ROOT + b'x').decode()}\n", "33 bytes, expected 32"),
        (f"o\n1\n{GOOD_ROOT}", "does not end with a newline"),
        ("o\n1\n", "2 lines"),
        (f"\n1\n{GOOD_ROOT}\n", r"line 1 \(origin\) is empty"),
        (f"o\n1\n{GOOD_ROOT}\n\n", r"line 4 \(extension\) is empty"),
        (f"o\n1\n{GOOD_ROOT}\next\n\nmore\n", "line 5"),
        (f"o\r\n1\n{GOOD_ROOT}\n", "control character"),
    ],
)
def test_checkpoint_parse_errors(text: str, why: str) -> None:
    with pytest.raises(MalformedError, match=why):
        Checkpoint.parse(text)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(FormatError, match="32 bytes"):
        Checkpoint("o", 1, b"short")
    with pytest.raises(FormatError, match="size"):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(FormatError, match="origin"):
        Checkpoint("two\nlines", 1, ROOT)
    with pytest.raises(FormatError, match="extension"):
        Checkpoint("o", 1, ROOT, ("",))


def test_sign_and_verify_checkpoint() -> None:
    signer = Signer.generate("steward.example/ledger")
    cp = Checkpoint("steward.example/ledger", 7, ROOT)
    note = sign_checkpoint(cp, signer)
    assert note.startswith(cp.to_text() + "\n\u2014 steward.example/ledger ")
    assert verify_checkpoint(note, signer.vkey) == cp
    assert verify_checkpoint(note, signer.verifier, expected_origin=cp.origin) == cp
    with pytest.raises(VerificationError, match=r"origin is 'steward\.example/ledger', expected"):
        verify_checkpoint(note, signer.vkey, expected_origin="other.example/log")
    other = Signer.generate("steward.example/ledger")
    with pytest.raises(VerificationError, match="no signature from a known key"):
        verify_checkpoint(note, other.vkey)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_checkpoint(note.replace("\n7\n", "\n8\n"), signer.vkey)
    # A properly signed note whose text is not a checkpoint.
    with pytest.raises(MalformedError, match="leading zeros"):
        verify_checkpoint(signer.sign_note(f"o\n07\n{GOOD_ROOT}\n"), signer.vkey)


# --------------------------------------------------------------------------------------------
# tlog-proof@v1
# --------------------------------------------------------------------------------------------

ORIGIN = "steward.example/ledger"


@pytest.fixture
def logged() -> tuple[MerkleTree, Signer, list[bytes], str]:
    hs = [leaf_hash(b"entry %d" % i) for i in range(13)]
    tree = MerkleTree.from_leaves(hs)
    signer = Signer.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), signer)
    return tree, signer, hs, note


def test_tlog_proof_layout(logged: tuple[MerkleTree, Signer, list[bytes], str]) -> None:
    tree, signer, hs, note = logged
    proof = tree.inclusion_proof(5, tree.size)
    bundle = write_tlog_proof(5, proof, note)
    lines = bundle.split("\n")
    assert lines[0] == TLOG_PROOF_HEADER == "c2sp.org/tlog-proof@v1"
    assert lines[1] == "index 5"
    assert lines[2 : 2 + len(proof)] == [base64.b64encode(h).decode() for h in proof]
    assert lines[2 + len(proof)] == ""
    assert bundle.endswith("\n\n" + note)
    assert parse_tlog_proof(bundle) == TlogProof(5, tuple(proof), note)

    with_extra = write_tlog_proof(5, proof, note, extra=b"vrf proof")
    assert with_extra.split("\n")[1] == "extra " + base64.b64encode(b"vrf proof").decode()
    assert parse_tlog_proof(with_extra).extra == b"vrf proof"
    assert verify_tlog_proof(with_extra, hs[5], signer.vkey).size == tree.size


def test_tlog_proof_round_trip_for_every_leaf(
    logged: tuple[MerkleTree, Signer, list[bytes], str],
) -> None:
    tree, signer, hs, note = logged
    for i, h in enumerate(hs):
        bundle = write_tlog_proof(i, tree.inclusion_proof(i, tree.size), note)
        cp = verify_tlog_proof(bundle, h, signer.vkey, expected_origin=ORIGIN)
        assert (cp.origin, cp.size, cp.root) == (ORIGIN, tree.size, tree.root())


def test_tlog_proof_tampering_fails(logged: tuple[MerkleTree, Signer, list[bytes], str]) -> None:
    tree, signer, hs, note = logged
    proof = tree.inclusion_proof(5, tree.size)
    bundle = write_tlog_proof(5, proof, note)

    with pytest.raises(VerificationError, match="leads to root"):  # wrong index
        verify_tlog_proof(bundle.replace("index 5\n", "index 4\n"), hs[5], signer.vkey)
    with pytest.raises(VerificationError, match="not in the checkpoint's tree of size 13"):
        verify_tlog_proof(bundle.replace("index 5\n", "index 13\n"), hs[5], signer.vkey)
    with pytest.raises(VerificationError, match="leads to root"):  # wrong leaf
        verify_tlog_proof(bundle, hs[6], signer.vkey)
    with pytest.raises(VerificationError, match="leads to root"):  # flipped proof byte
        flipped = bytearray(proof[1])
        flipped[3] ^= 0x10
        verify_tlog_proof(
            write_tlog_proof(5, [proof[0], bytes(flipped), *proof[2:]], note), hs[5], signer.vkey
        )
    with pytest.raises(VerificationError, match="expected 4"):  # dropped proof hash
        verify_tlog_proof(write_tlog_proof(5, proof[:-1], note), hs[5], signer.vkey)

    # The checkpoint signed by another key (same name) is not trusted.
    impostor = Signer.generate(ORIGIN)
    forged = sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), impostor)
    with pytest.raises(VerificationError, match=r"tlog-proof checkpoint: .*no signature"):
        verify_tlog_proof(write_tlog_proof(5, proof, forged), hs[5], signer.vkey)
    # A checkpoint for another tree, properly signed, does not match the proof.
    other_root = MerkleTree.from_leaves([*hs[:12], leaf_hash(b"x")]).root()
    other = sign_checkpoint(Checkpoint(ORIGIN, tree.size, other_root), signer)
    with pytest.raises(VerificationError, match="leads to root"):
        verify_tlog_proof(write_tlog_proof(5, proof, other), hs[5], signer.vkey)
    # Tampered checkpoint text.
    with pytest.raises(VerificationError, match="does not verify"):
        verify_tlog_proof(bundle.replace("\n13\n", "\n12\n"), hs[5], signer.vkey)
    with pytest.raises(VerificationError, match="origin"):
        verify_tlog_proof(bundle, hs[5], signer.vkey, expected_origin="other.example")


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b.replace(TLOG_PROOF_HEADER, "c2sp.org/tlog-proof@v2"), "line 1"),
        (lambda b: b.replace("index 5", "index 05"), "leading zeros"),
        (lambda b: b.replace("index 5", "idx 5"), "expected 'index <N>'"),
        (lambda b: b.replace("index 5\n", "index 5\n!!!!\n"), "not valid base64"),
        (lambda b: b.replace("index 5\n", "index 5\nAAAA\n"), "3 bytes, expected 32"),
        (lambda b: b.replace("index 5\n", "extra !\nindex 5\n"), "extra"),
        (lambda b: b.split("\n\n")[0], "no empty line"),
        (lambda b: b[: b.index("\n\n") + 2], "no checkpoint"),
    ],
)
def test_tlog_proof_parse_errors(
    logged: tuple[MerkleTree, Signer, list[bytes], str], mutate: object, why: str
) -> None:
    tree, signer, hs, note = logged
    bundle = write_tlog_proof(5, tree.inclusion_proof(5, tree.size), note)
    assert callable(mutate)
    with pytest.raises(MalformedError, match=why):
        verify_tlog_proof(mutate(bundle), hs[5], signer.vkey)


def test_write_tlog_proof_validates() -> None:
    signer = Signer.generate(ORIGIN)
    note = sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), signer)
    with pytest.raises(MalformedError, match="32 bytes"):
        write_tlog_proof(0, [b"short"], note)
    with pytest.raises(MalformedError, match="index"):
        write_tlog_proof(-1, [], note)
    with pytest.raises(MalformedError, match="blank line"):
        write_tlog_proof(0, [], "not a note\n")
