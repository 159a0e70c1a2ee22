"""Steward's native strict Ed25519 verifier (native/ed25519, Rust), loaded through ctypes.

A primitive, like libsodium: the ledger's signature checks (ledger.sigcheck) and the auditor's
(audit.signatures) both call it when it is installed, and neither imports the other. It applies
libsodium's strict rules and is held to libsodium's verdicts case by case
(tests/unit/test_ed25519_native.py). It is faster here: built for this CPU (AVX-512 IFMA), a
signature in a batch costs 25.5 µs against libsodium's 58 µs (2026-12-07, five alternating
rounds, 200-byte messages), and ctypes lets go of the interpreter lock for the length of a call,
so a batch verifies in a thread while Python folds the one before.

Two implementations stay in play. The ledger server re-verifies its whole log with libsodium
at every start (ledger.integrity through ledger.rules), and an auditor who wants an
implementation other than the one the ledger used while appending runs with the native path
off (below).

Where the library is: ``$STEWARD_ED25519_LIB`` if set (an empty value turns the native path
off), else ``<sys.prefix>/lib/steward-native/`` where ``python -m infra.native build`` (run by
scripts/setup) installs it. When it is absent or does not load, :data:`LIBRARY` is None and
callers verify through libsodium instead: the same verdicts, only slower.
"""

from __future__ import annotations

import ctypes
import os
import sys
from array import array
from collections.abc import Callable, Sequence
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
        for name in ("pool_new", "pool_submit", "ticket_wait", "pool_free"):
            getattr(lib, f"steward_ed25519_{name}")
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
    pool_new = lib.steward_ed25519_pool_new
    pool_new.argtypes = [ctypes.c_size_t, ctypes.c_int]
    pool_new.restype = ctypes.c_void_p
    submit = lib.steward_ed25519_pool_submit
    submit.argtypes = [ctypes.c_void_p, *batch.argtypes]
    submit.restype = ctypes.c_void_p
    wait = lib.steward_ed25519_ticket_wait
    wait.argtypes = [ctypes.c_void_p]
    wait.restype = ctypes.c_int
    pool_free = lib.steward_ed25519_pool_free
    pool_free.argtypes = [ctypes.c_void_p]
    pool_free.restype = None
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


class _Batch:
    """A signature batch laid out for the library: every buffer it reads, and the verdicts.

    The object keeps the buffers alive: a batch handed to a pool thread must outlive the
    thread's reading of it, which :class:`VerifierPool` guarantees by holding the batch until
    its ticket is waited for."""

    __slots__ = ("args", "n", "verdicts")

    def __init__(
        self,
        prefix: bytes,
        skip: int,
        bodies: list[bytes],
        counts: list[int],
        pubs: list[bytes | None],
        sigs: list[bytes],
    ) -> None:
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
            initial = b"\x01" * n
            pub_bytes = b"".join(known)
            sig_bytes = b"".join(sigs)
        else:
            marks = bytearray(n)
            pub_parts: list[bytes] = []
            sig_parts: list[bytes] = []
            for i, (pub, sig) in enumerate(zip(pubs, sigs, strict=True)):
                if pub is None:
                    marks[i] = NOKEY
                elif len(pub) == KEY_SIZE and len(sig) == SIGNATURE_SIZE:
                    marks[i] = TRUE
                    pub_parts.append(pub)
                    sig_parts.append(sig)
                    continue
                pub_parts.append(_NO_KEY)
                sig_parts.append(_NO_SIG)
            initial = bytes(marks)
            pub_bytes = b"".join(pub_parts)
            sig_bytes = b"".join(sig_parts)
        self.n = n
        self.verdicts = ctypes.create_string_buffer(initial, max(n, 1))
        self.args = (
            prefix,
            len(prefix),
            skip,
            b"".join(bodies),
            array("Q", accumulate(map(len, bodies))).tobytes(),
            array("I", counts).tobytes(),
            len(bodies),
            pub_bytes,
            sig_bytes,
            ctypes.addressof(self.verdicts),
            n,
        )

    def result(self, status: int) -> bytes:
        if status != 0:
            raise ValueError(f"the native verifier refused the batch's shape (status {status})")
        return self.verdicts.raw[: self.n]


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
    batch = _Batch(prefix, skip, bodies, counts, pubs, sigs)
    status: int = LIBRARY.steward_ed25519_verify_bodies(*batch.args)
    return batch.result(status)


def verify_items(items: Sequence[tuple[bytes, bytes, bytes]]) -> bytes:
    """One verdict byte per (public key, signature, message), 1 when it verifies, else 0:
    ledger.ed25519.verify_many's answer, in one call that lets go of the interpreter lock."""
    assert LIBRARY is not None
    if not items:
        return b""
    pubs: list[bytes | None] = [public for public, _, _ in items]
    sigs = [signature for _, signature, _ in items]
    messages = [message for _, _, message in items]
    return verify_bodies(b"", 0, messages, [1] * len(items), pubs, sigs)


class VerifierPool:
    """Native verifying threads that never take the interpreter lock: :meth:`submit` hands
    over a batch and returns a wait that gives its verdicts (as :func:`verify_bodies` would).

    Why not Python threads calling :func:`verify_bodies`: each needs the lock to pick a task
    up and to hand its answer back, and waits up to the switch interval for it while the main
    thread decodes (docs/AUDIT.md "Speed"). Used as a context manager, the pool waits for
    every batch still out before its threads stop, so no thread reads a freed buffer even
    when the caller gives up half-way.
    """

    def __init__(self, threads: int, nice: int = 10) -> None:
        assert LIBRARY is not None
        self._pool = LIBRARY.steward_ed25519_pool_new(max(1, threads), nice)
        if not self._pool:
            raise OSError("the native verifier could not start its threads")
        self._out: dict[int, _Batch] = {}  # ticket -> its batch, kept alive until waited

    def submit(
        self,
        prefix: bytes,
        skip: int,
        bodies: list[bytes],
        counts: list[int],
        pubs: list[bytes | None],
        sigs: list[bytes],
    ) -> Callable[[], bytes]:
        assert LIBRARY is not None
        if not self._pool:
            raise RuntimeError("the verifier pool is closed")
        batch = _Batch(prefix, skip, bodies, counts, pubs, sigs)
        ticket: int | None = LIBRARY.steward_ed25519_pool_submit(self._pool, *batch.args)
        if not ticket:
            raise RuntimeError("the verifier pool refused the batch: it is shutting down")
        self._out[ticket] = batch
        return lambda: self._wait(ticket)

    def _wait(self, ticket: int) -> bytes:
        assert LIBRARY is not None
        batch = self._out.get(ticket)
        if batch is None:
            raise RuntimeError("this batch's verdicts were already taken")
        status: int = LIBRARY.steward_ed25519_ticket_wait(ticket)  # lets go of the lock
        del self._out[ticket]
        return batch.result(status)

    def close(self) -> None:
        """Waits for every batch still out, then stops the threads. Idempotent."""
        if not self._pool:
            return
        assert LIBRARY is not None
        for ticket in list(self._out):
            LIBRARY.steward_ed25519_ticket_wait(ticket)
            del self._out[ticket]
        LIBRARY.steward_ed25519_pool_free(self._pool)
        self._pool = None

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
