"""A replay's signatures, checked one chunk ahead of its fold in a libsodium worker process.

Every start of the ledger server folds its whole log again through the rules
(ledger.integrity), and so does ``steward store check``. The rules verify each signature with
libsodium in the folding thread: at 100,000 generated entries that was 45 µs of a start's
100 µs per entry (cProfile, 2026-12-07), on one core of two while the other idled.

So :func:`fold_checked_ahead` decodes the records a chunk at a time and sends each chunk's
signatures to the signature worker (:class:`ledger.sigcheck.SignatureChecker` with
``native=False``: libsodium, as the rules use) while the thread folds the chunk before it. The
rules then find those signatures among the verified ones and check everything else as before.

What keeps a verdict the rules' own:

- Each signature is sent with the public key the state knows for its key id when its chunk is
  decoded, a hint; the rules still decide, at each seq, whether that key may sign at all. A key
  granted in the chunk before or the same chunk is not known yet: its signatures are verified
  by the rules, in the fold, as before.
- A "no" from the worker, or a worker that failed (the checker then verifies that chunk in the
  calling thread), only means the rules verify that signature again themselves.
- It stays libsodium, never the native verifier, so a start remains the second implementation
  that the native verifier's appends are checked against (DESIGN decision 20).

On a machine with one core there is nothing to overlap: :func:`replay_checker` gives None and
the fold verifies in line, as it always did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from ledger.errors import FormatError
from ledger.formats import LogEntry, decode_log_entry
from ledger.integrity import ChainCheck, Skip
from ledger.rules import VerifiedSignature
from ledger.sigcheck import PendingChecks, SignatureChecker, default_processes
from ledger.state import KeyInfo

CHUNK = 1024
"""Records decoded, and their signatures sent to the worker, at a time: about 50 ms of the
worker's work, so the pipe's round trip is a small part of it."""

CHUNK_BYTES = 8 * 1024 * 1024
"""And at most about this many bytes a chunk (the records, and the signed bytes sent with each
signature): entries of 600 bytes fill a chunk by count at about 1.5 MB, while 1,024 entries of
64 KiB bodies with 16 signatures each would send 1 GiB to the worker. Two or three chunks are
in memory at a time."""

Decoded = tuple[int, LogEntry | FormatError]  # a record's store position, its entry or why not


def replay_checker() -> SignatureChecker | None:
    """A libsodium checker with a worker process, or None on a machine with one core."""
    if not default_processes():
        return None
    return SignatureChecker(1, native=False)


def fold_checked_ahead(
    chain: ChainCheck,
    records: Iterable[tuple[int, bytes]],
    checker: SignatureChecker | None,
    *,
    chunk: int = CHUNK,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Skip | None]:
    """Fold `records` ((store position, value), in store order) into `chain`, yielding what
    ChainCheck.add returns for each, in order: the same as calling it on each record, with
    the signatures of each chunk checked by `checker` while the previous chunk is folded.
    None: verify in the fold (ChainCheck.add)."""
    if checker is None:
        for position, value in records:
            yield chain.add(position, value)
        return
    keys: Callable[[], Mapping[bytes, KeyInfo]] = lambda: chain.core.state.keys  # noqa: E731
    with ThreadPoolExecutor(1, thread_name_prefix="replay-verify") as pool:
        ahead: tuple[list[Decoded], Future[frozenset[VerifiedSignature]]] | None = None
        for decoded, pending in chunks(records, keys, chunk=chunk, chunk_bytes=chunk_bytes):
            # The worker checks this chunk while the loop below folds the one before it.
            checked = pool.submit(checker.verified, pending)
            if ahead is not None:
                yield from _fold(chain, *ahead)
            ahead = (decoded, checked)
        if ahead is not None:
            yield from _fold(chain, *ahead)


def chunks(
    records: Iterable[tuple[int, bytes]],
    keys: Callable[[], Mapping[bytes, KeyInfo]],
    *,
    chunk: int = CHUNK,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[list[Decoded], PendingChecks]]:
    """The records decoded, `chunk` at a time or fewer once they weigh `chunk_bytes`, each
    chunk with its signatures to check against `keys()` as they are when it starts."""
    it = iter(records)
    while True:
        pending = PendingChecks(keys())
        decoded: list[Decoded] = []
        weight = 0
        for position, value in it:
            weight += len(value)
            try:
                e = decode_log_entry(value)
            except FormatError as exc:
                decoded.append((position, exc))
            else:
                decoded.append((position, e))
                before = len(pending.items)
                pending.add(e.entry.body, e.entry.signatures)
                weight += sum(len(message) for _, _, message in pending.items[before:])
            if len(decoded) >= chunk or weight >= chunk_bytes:
                break
        if not decoded:
            return
        yield decoded, pending


def _fold(
    chain: ChainCheck,
    decoded: list[Decoded],
    checked: Future[frozenset[VerifiedSignature]],
) -> Iterator[Skip | None]:
    verified = checked.result()
    for position, e in decoded:
        if isinstance(e, FormatError):
            yield chain.add_malformed(position, e)
        else:
            yield chain.add_entry(position, e, verified)
