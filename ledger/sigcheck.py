"""Checking the signatures of a staged batch, in a worker process when there is one.

Ed25519 verification is most of what staging a batch costs (docs/PERFORMANCE.md "Ingest").
libsodium releases the interpreter lock while it verifies, but a thread returning from it must
win the lock back from the threads running Python (decoding, the rules, gRPC), which with the
interpreter's 5 ms switch interval stalls it after nearly every signature. A worker process
has no such lock to win: a batch's signatures go to it as one request over a pipe, and the
serving process waits for the verdicts with its lock released.

The worker (``python -m ledger.sigworker``) is a plain child process, not a multiprocessing
pool: it imports only libsodium's bindings (no re-import of the server's main module, no fork
of a process running gRPC's and librdkafka's threads) and starts in tens of milliseconds.

Small batches (a unary Append) are verified in the calling thread: the round trip would cost
more than the check. If the worker dies, answers nonsense or takes longer than
WORKER_TIMEOUT_S, it is killed, that batch is verified in the calling thread and a new worker
is started for the next one. Verdicts never depend on where they were computed: the same
function (ledger.ed25519.verify_many) runs in both places.

With Steward's native verifier installed (steward_ed25519), none of that is needed: a whole
batch is one ctypes call that holds no interpreter lock from start to end, so it verifies in
the calling thread, beside the Python threads, at 25.5 µs a signature instead of libsodium's
58 µs, and with no request to encode in Python. On Kafka it took the signature work from about
0.6 of a core to 0.25 at 8,000-9,500 events/s (bench.ingest, 2026-12-07), which on two cores is
the room the broker and the serving process need. ``native=False`` keeps libsodium (and the
worker); so does ``STEWARD_ED25519_LIB=`` for a whole process.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

import steward_ed25519
from ledger.ed25519 import verify_many
from ledger.errors import StewardError
from ledger.formats import Signature, signed_bytes
from ledger.rules import VerifiedSignature
from ledger.sigworker import encode_request
from ledger.state import KeyInfo

log = logging.getLogger(__name__)

# Below this many signatures a batch is verified in the calling thread.
MIN_POOLED = 32
# A worker that has not answered within this many seconds is given up on.
WORKER_TIMEOUT_S = 30.0

Item = tuple[bytes, bytes, bytes]  # (public key, signature, signed bytes)


class PendingChecks:
    """The signatures of a batch to check together, each against the key known for its id
    now (a hint: a key granted later is left to the rules, which also decide, at each seq,
    whether a key may sign at all)."""

    def __init__(self, keys: Mapping[bytes, KeyInfo]) -> None:
        self.keys = keys
        self.items: list[Item] = []
        self.bodies: list[bytes] = []  # the body bytes each item's signature signs

    def add(self, body: bytes, signatures: Sequence[Signature]) -> None:
        message: bytes | None = None
        for sig in signatures:
            info = self.keys.get(sig.key_id)
            if info is None:
                continue
            if message is None:
                message = signed_bytes(body)
            self.items.append((info.public_key, sig.sig, message))
            self.bodies.append(body)


class SignatureWorkerError(StewardError):
    """The worker died, hung or answered something that is not an answer."""


def default_processes() -> int:
    """One worker on a machine with more than one core; none on a single core."""
    return 1 if (os.cpu_count() or 1) > 1 else 0


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ledger.sigworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            close_fds=True,
            bufsize=0,
        )
        self.lock = threading.Lock()  # one request at a time on the pipe

    def check(self, items: Sequence[Item], timeout: float) -> bytes:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(encode_request(list(items)))
        except OSError as exc:
            raise SignatureWorkerError(f"sending the batch: {exc}") from exc
        deadline = time.monotonic() + timeout
        head = self._read(4, deadline, timeout)
        (count,) = struct.unpack(">I", head)
        if count != len(items):
            raise SignatureWorkerError(f"answered {count} verdicts for {len(items)} signatures")
        verdicts = self._read(count, deadline, timeout)
        if any(v > 1 for v in verdicts):
            raise SignatureWorkerError("answered a verdict that is neither 0 nor 1")
        return verdicts

    def _read(self, n: int, deadline: float, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks: list[bytes] = []
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise SignatureWorkerError(f"no answer within {timeout:g} s")
            chunk = os.read(fd, n)
            if not chunk:
                raise SignatureWorkerError(f"exited (status {self.proc.poll()})")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the worker ends at end of input
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class SignatureChecker:
    """Verifies many signatures at once: `check(items)` -> one bool per item, in order.

    `processes`: 0 verifies in the calling thread; 1 uses a worker process (None: one when the
    machine has more than one core). Thread-safe: concurrent callers take turns on the worker
    (while one waits for its verdicts, another's batch is verified in its own thread rather
    than queueing). `native`: verify through steward_ed25519 in the calling thread, with no
    worker (None: when it is installed).
    """

    def __init__(
        self,
        processes: int | None = None,
        *,
        min_pooled: int = MIN_POOLED,
        timeout: float = WORKER_TIMEOUT_S,
        native: bool | None = None,
    ) -> None:
        installed = steward_ed25519.LIBRARY is not None
        if native and not installed:
            raise SignatureWorkerError(
                f"the native verifier is not installed (looked for {steward_ed25519.library_path()}); "
                "run `python -m infra.native build`"
            )
        self.native = installed if native is None else native
        self.processes = min(1, default_processes() if processes is None else max(0, processes))
        self.min_pooled = min_pooled
        self.timeout = timeout
        self._lock = threading.Lock()
        self._worker: _Worker | None = None
        self._closed = False
        self.fallbacks = 0  # batches verified here because the worker failed

    def check(self, items: Sequence[Item]) -> list[bool]:
        if self.native:
            return [v == 1 for v in steward_ed25519.verify_items(items)]
        if not self.processes or len(items) < self.min_pooled or self._closed:
            return [v == 1 for v in verify_many(items)]
        worker = self._get_worker()
        if worker is None or not worker.lock.acquire(blocking=False):
            # Busy with another caller's batch (or cannot start): verify here in parallel.
            return [v == 1 for v in verify_many(items)]
        try:
            verdicts = worker.check(items, self.timeout)
        except SignatureWorkerError as exc:
            self.fallbacks += 1
            log.warning(
                "signature worker pid %d failed (%s); verifying this batch in the "
                "serving process, a new worker starts with the next batch",
                worker.proc.pid,
                exc,
            )
            self._discard(worker)
            verdicts = verify_many(items)
        finally:
            worker.lock.release()
        return [v == 1 for v in verdicts]

    def verified(self, pending: PendingChecks) -> frozenset[VerifiedSignature]:
        """The (public key, signature, body) triples of `pending` that verify."""
        verdicts = self.check(pending.items)
        return frozenset(
            (pub, sig, body)
            for (pub, sig, _), body, ok in zip(pending.items, pending.bodies, verdicts, strict=True)
            if ok
        )

    def _get_worker(self) -> _Worker | None:
        with self._lock:
            if self._closed:
                return None
            if self._worker is None:
                try:
                    self._worker = _Worker()
                except OSError as exc:
                    log.warning(
                        "cannot start a signature worker (%s); verifying in the serving process",
                        exc,
                    )
                    return None
            return self._worker

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            if self._worker is worker:
                self._worker = None
        worker.proc.kill()
        worker.close()

    def worker_pid(self) -> int | None:
        """The worker's process id, None when there is none (for tests and operators)."""
        with self._lock:
            return self._worker.proc.pid if self._worker is not None else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        if worker is not None:
            with worker.lock:
                worker.close()
