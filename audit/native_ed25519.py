"""The auditor's native strict Ed25519 verifier (native/ed25519, Rust), loaded through ctypes.

Why a second implementation: the ledger verifies with libsodium, and an auditor that checks it
with a different implementation of the same strict rules does not share its bugs. It is also
faster here: built for this CPU (AVX-512 IFMA), a signature in a batch costs 25.5 µs against
libsodium's 58 µs (2026-12-07, five alternating rounds, 200-byte messages), and ctypes lets go
of the interpreter lock for the length of a call, so a batch verifies in a thread while Python
folds the one before.

Where the library is: ``$STEWARD_ED25519_LIB`` if set (an empty value turns the native path
off), else ``<sys.prefix>/lib/steward-native/`` where ``python -m infra.native build`` (run by
scripts/setup) installs it. When it is absent or does not load, :data:`LIBRARY` is None and
the auditor verifies through libsodium instead (audit.ed25519, audit.signatures): the same
verdicts (tests/unit/test_ed25519_native.py), only slower.
"""

from __future__ import annotations

import ctypes
import os
import sys
from array import array
from itertools import accumulate
from pathlib import Path
from typing import cast

LIBRARY_NAME = "libsteward_ed25519.so"
ENV = "STEWARD_ED25519_LIB"
KEY_SIZE = 32
SIGNATURE_SIZE = 64
# Verdict bytes, as audit.signatures has them: refused, valid, no key by that id.
FALSE, TRUE, NOKEY = 0, 1, 2
_NO_KEY = bytes(KEY_SIZE)
_NO_SIG = bytes(SIGNATURE_SIZE)


def library_path() -> Path | None:
    """Where the library is looked for; None when ``$STEWARD_ED25519_LIB`` is set empty."""
    configured = os.environ.get(ENV)
    if configured is not None:
        return Path(configured) if configured else None
    return Path(sys.prefix) / "lib" / "steward-native" / LIBRARY_NAME


def _load() -> ctypes.CDLL | None:
    path = library_path()
    if path is None or not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))  # CDLL, not PyDLL: each call releases the interpreter lock
        one = lib.steward_ed25519_verify
        batch = lib.steward_ed25519_verify_bodies
    except (OSError, AttributeError):
        return None
    one.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    one.restype = ctypes.c_int
    batch.argtypes = [
        ctypes.c_char_p,  # prefix
        ctypes.c_size_t,  # prefix length
        ctypes.c_size_t,  # bytes skipped at each body's start
        ctypes.c_char_p,  # bodies, end to end
        ctypes.c_char_p,  # each body's end offset (u64)
        ctypes.c_char_p,  # signatures per body (u32)
        ctypes.c_size_t,  # bodies
        ctypes.c_char_p,  # public keys, 32 bytes each
        ctypes.c_char_p,  # signatures, 64 bytes each
        ctypes.c_void_p,  # verdicts, read and written
        ctypes.c_size_t,  # signatures
    ]
    batch.restype = ctypes.c_int
    return lib


LIBRARY = _load()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s valid strict Ed25519 signature over `message`.

    Only when :data:`LIBRARY` loaded (audit.ed25519 chooses)."""
    assert LIBRARY is not None
    if len(signature) != SIGNATURE_SIZE or len(public_key) != KEY_SIZE:
        return False
    status: int = LIBRARY.steward_ed25519_verify(public_key, signature, message, len(message))
    return status == 1


def verify_bodies(
    prefix: bytes,
    skip: int,
    bodies: list[bytes],
    counts: list[int],
    pubs: list[bytes | None],
    sigs: list[bytes],
) -> bytes:
    """One verdict byte per signature over ``prefix ‖ body[skip:]`` (audit.signatures.SigTask).

    Body i carries counts[i] signatures, in order in ``pubs`` and ``sigs``. A missing key
    (None) gives NOKEY; a key or signature of the wrong size gives FALSE without a check.
    """
    assert LIBRARY is not None
    n = len(sigs)
    if len(pubs) != n or sum(counts) != n or len(counts) != len(bodies):
        raise ValueError(
            f"a signature batch that does not add up: {len(bodies)} bodies, {len(counts)} "
            f"counts summing to {sum(counts)}, {len(pubs)} keys, {n} signatures"
        )
    known = cast("list[bytes]", pubs)  # read as such only once None is ruled out
    if (
        None not in pubs
        and set(map(len, known)) <= {KEY_SIZE}
        and set(map(len, sigs)) <= {SIGNATURE_SIZE}
    ):
        # Every key known and every size right: the common case, without a loop in Python.
        verdicts = bytearray(b"\x01" * n)
        pub_bytes = b"".join(known)
        sig_bytes = b"".join(sigs)
    else:
        verdicts = bytearray(n)
        pub_parts: list[bytes] = []
        sig_parts: list[bytes] = []
        for i, (pub, sig) in enumerate(zip(pubs, sigs, strict=True)):
            if pub is None:
                verdicts[i] = NOKEY
            elif len(pub) == KEY_SIZE and len(sig) == SIGNATURE_SIZE:
                verdicts[i] = TRUE
                pub_parts.append(pub)
                sig_parts.append(sig)
                continue
            pub_parts.append(_NO_KEY)
            sig_parts.append(_NO_SIG)
        pub_bytes = b"".join(pub_parts)
        sig_bytes = b"".join(sig_parts)
    ends = array("Q", accumulate(map(len, bodies)))
    out = (ctypes.c_char * n).from_buffer(verdicts) if n else None
    status = LIBRARY.steward_ed25519_verify_bodies(
        prefix,
        len(prefix),
        skip,
        b"".join(bodies),
        ends.tobytes(),
        array("I", counts).tobytes(),
        len(bodies),
        pub_bytes,
        sig_bytes,
        ctypes.addressof(out) if out is not None else None,
        n,
    )
    if status != 0:
        raise ValueError(f"the native verifier refused the batch's shape (status {status})")
    del out  # the buffer export must end before the bytearray is read as bytes
    return bytes(verdicts)
