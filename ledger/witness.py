"""The ledger's witness client: submits each published checkpoint to the witnesses named in the
server's configuration (C2SP tlog-witness ``add-checkpoint``) and keeps the cosignatures they
return (C2SP tlog-cosignature, ledger/cosignature.py) with the checkpoint.

One thread per witness, fed by the writer's checkpoint listener through a queue: a witness that
is down, slow or refusing never holds an append or a checkpoint publication (the listener only
queues). For each checkpoint the thread sends ``old <size>`` (the size the witness last
cosigned, as far as we know), the consistency proof from there, and the ledger's signed note;
then:

- **200**: every returned line by the configured witness key is verified before it is kept;
  an answer without one is an error (a witness with another key is not the one we trust).
- **409** (the witness's size differs): retried at once from the size it reports. A witness
  that reports a size beyond this checkpoint has seen a larger tree of this origin than this
  ledger published: logged as an error, that checkpoint is skipped.
- **422** (the consistency proof does not verify from the witness's view): the witness saw
  another history of this origin: a split view, or this store was forked or rolled back.
  Logged as an error; never retried for that checkpoint.
- **403/404** (the witness does not know this log or its key), **400**, other answers, timeouts
  and connection errors: logged and retried with exponential backoff.

While a witness is failing only the newest pending checkpoint is retried: a witness cosigns a
log's latest tree, and once it is back one consistency proof catches it up.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ledger.c2sp_text import DECIMAL, MalformedError, b64
from ledger.cosignature import WitnessKey, cosignature_lines, verify_cosignatures
from ledger.errors import ConfigError, VerificationError
from ledger.signed_note import split_note

log = logging.getLogger("ledger.witness")

ADD_CHECKPOINT = "add-checkpoint"
MAX_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness as the ledger's configuration names it: a label for logs, the URL prefix of
    its tlog-witness API, and its cosigner key."""

    label: str
    url: str
    key: WitnessKey

    @classmethod
    def parse(cls, text: str) -> WitnessEndpoint:
        """``NAME=URL,VKEY`` (the flag ``--witness``)."""
        label, sep, rest = text.partition("=")
        url, sep2, vkey = rest.rpartition(",")
        if not sep or not sep2 or not label or not url or not vkey:
            raise ConfigError(f"--witness {text!r}: expected NAME=URL,VKEY")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"--witness {text!r}: the URL must be http:// or https://")
        try:
            key = WitnessKey.parse(vkey)
        except MalformedError as exc:
            raise ConfigError(f"--witness {label}: {exc}") from None
        return cls(label, url.rstrip("/"), key)


@dataclass(frozen=True)
class WitnessPolicy:
    """The witnesses to ask, and how many cosignatures make a checkpoint witnessed (logged as
    ``checkpoint_witnessed``). The default threshold is every witness named."""

    witnesses: tuple[WitnessEndpoint, ...]
    threshold: int | None = None
    timeout_s: float = 5.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        keys = [w.key.key_id for w in self.witnesses]
        if len(set(keys)) != len(keys) or len({w.label for w in self.witnesses}) != len(keys):
            raise ConfigError("each witness must be named once (label and key)")
        if self.threshold is not None and not 0 <= self.threshold <= len(self.witnesses):
            raise ConfigError(
                f"witness threshold {self.threshold}: expected 0..{len(self.witnesses)}"
            )

    @property
    def required(self) -> int:
        return len(self.witnesses) if self.threshold is None else self.threshold


class Checkpoints(Protocol):
    """What the witness client needs of the writer (ledger.writer.LedgerServer)."""

    def on_checkpoint_published(self, listener: Callable[[_Published], None]) -> None: ...

    def checkpoints(self) -> Sequence[_Published]: ...

    def checkpoint(self, size: int | None = None) -> _Published: ...

    def consistency_proof(self, size1: int, size2: int | None) -> _Proof: ...

    def add_cosignatures(self, size: int, lines: Sequence[str]) -> _Published: ...


class _Published(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def note(self) -> str: ...
    @property
    def cosignatures(self) -> tuple[str, ...]: ...


class _Proof(Protocol):
    @property
    def proof(self) -> tuple[bytes, ...]: ...


@dataclass(frozen=True)
class WitnessStatus:
    """What one witness has done for this ledger since the server started."""

    label: str
    cosigned_size: int = 0  # the newest checkpoint it cosigned for us (0: none yet)
    cosignatures: int = 0
    conflicts: int = 0  # 409 answers (its size differed from ours)
    refusals: int = 0  # 422, or a size beyond ours: it saw another history
    failures: int = 0  # anything else: down, slow, unknown log, bad answer
    last_error: str = ""


@dataclass
class _Answer:
    status: int
    body: str
    content_type: str = ""


@dataclass
class _Worker:
    endpoint: WitnessEndpoint
    pending: deque[_Published] = field(default_factory=deque)
    known_size: int = 0
    status: WitnessStatus = field(init=False)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.status = WitnessStatus(self.endpoint.label)


class WitnessClient:
    """Collects cosignatures for every checkpoint `ledger` publishes, from `policy`'s
    witnesses. ``attach`` before the ledger starts, ``start`` once it is ready."""

    def __init__(self, policy: WitnessPolicy) -> None:
        self.policy = policy
        self._workers = [_Worker(w) for w in policy.witnesses]
        self._cond = threading.Condition()
        self._stopping = False
        self._ledger: Checkpoints | None = None

    def attach(self, ledger: Checkpoints) -> None:
        """Listen to `ledger`'s publications (call before it starts publishing)."""
        self._ledger = ledger
        ledger.on_checkpoint_published(self.submit)

    def start(self) -> None:
        """Catch up on the newest checkpoint already published, then follow new ones."""
        assert self._ledger is not None, "attach() first"
        published = list(self._ledger.checkpoints())
        for worker in self._workers:
            mine = [cp for cp in published if self._cosigned_by(cp, worker.endpoint)]
            worker.known_size = mine[-1].size if mine else 0
            worker.status = replace(worker.status, cosigned_size=worker.known_size)
            if published and published[-1].size > worker.known_size:
                with self._cond:
                    worker.pending.appendleft(published[-1])
            worker.thread = threading.Thread(
                target=self._run,
                args=(worker,),
                name=f"witness-{worker.endpoint.label}",
                daemon=True,
            )
            worker.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            if worker.thread is not None:
                # A request in flight ends by its own timeout (the threads are daemons).
                worker.thread.join(max(0.0, deadline - time.monotonic()))

    def submit(self, cp: _Published) -> None:
        """Queue `cp` for every witness; returns at once (the writer's listener)."""
        with self._cond:
            for worker in self._workers:
                worker.pending.append(cp)
            self._cond.notify_all()

    def status(self) -> list[WitnessStatus]:
        with self._cond:
            return [w.status for w in self._workers]

    def witnessed(self, cp: _Published) -> int:
        """How many of the configured witnesses' cosignatures `cp` carries."""
        return sum(1 for w in self.policy.witnesses if self._cosigned_by(cp, w))

    @staticmethod
    def _cosigned_by(cp: _Published, endpoint: WitnessEndpoint) -> bool:
        """Whether `cp` carries a line by `endpoint`'s key (each was verified on receipt)."""
        prefix = f"\u2014 {endpoint.key.name} "
        for line in cp.cosignatures:
            if line.startswith(prefix):
                try:
                    raw = base64.b64decode(line[len(prefix) :], validate=True)
                except binascii.Error:
                    continue
                if raw[:4] == endpoint.key.key_id:
                    return True
        return False

    # -- one witness's thread --------------------------------------------------------------

    def _run(self, worker: _Worker) -> None:
        failures = 0
        while True:
            with self._cond:
                while not worker.pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                if failures:
                    # Failing: only the newest checkpoint is worth a retry.
                    while len(worker.pending) > 1:
                        worker.pending.popleft()
                cp = worker.pending[0]
            done = False
            try:
                done = self._submit_one(worker, cp)
                failures = 0 if done else failures + 1
            except Exception as exc:
                failures += 1
                self._failed(worker, cp, f"{type(exc).__name__}: {exc}")
            with self._cond:
                if done and worker.pending and worker.pending[0] is cp:
                    worker.pending.popleft()
                if failures:
                    delay = min(
                        self.policy.max_backoff_s, self.policy.backoff_s * 2 ** (failures - 1)
                    )
                    self._cond.wait_for(lambda: self._stopping, timeout=delay)

    def _submit_one(self, worker: _Worker, cp: _Published) -> bool:
        """One checkpoint to one witness, following 409s. True when the checkpoint is done
        with (cosigned, or refused for good); False to retry it later."""
        assert self._ledger is not None
        endpoint = worker.endpoint
        if worker.known_size > cp.size or (
            worker.known_size == cp.size
            and self._cosigned_by(self._ledger.checkpoint(cp.size), endpoint)
        ):
            return True  # queued twice (at start and by the listener), or overtaken
        for _ in range(3):
            if worker.known_size > cp.size:
                return True  # it has cosigned a larger tree of ours already
            proof = (
                self._ledger.consistency_proof(worker.known_size, cp.size).proof
                if 0 < worker.known_size < cp.size
                else ()
            )
            body = f"old {worker.known_size}\n" + "".join(b64(h) + "\n" for h in proof)
            answer = self._post(endpoint, body + "\n" + cp.note)
            if answer.status == 200:
                self._cosigned(worker, cp, answer.body, len(proof))
                return True
            if answer.status == 409:
                size = answer.body.strip()
                if not DECIMAL.match(size):
                    self._failed(worker, cp, f"409 without a size: {answer.body[:80]!r}")
                    return False
                self._update(worker, conflicts=worker.status.conflicts + 1)
                log.info(
                    "witness_conflict witness=%s size=%d old=%d witness_size=%s",
                    endpoint.label,
                    cp.size,
                    worker.known_size,
                    size,
                )
                if int(size) > cp.size:
                    self._refused(
                        worker, cp, f"it has cosigned a tree of size {size}, larger than ours"
                    )
                    return True
                worker.known_size = int(size)
                continue
            if answer.status == 422:
                self._refused(worker, cp, f"422 {answer.body.strip()[:200]}")
                return True
            what = {403: "it does not trust this log's key", 404: "it does not know this log"}
            reason = what.get(answer.status, "")
            self._failed(
                worker,
                cp,
                f"{answer.status} {answer.body.strip()[:200]}" + (f" ({reason})" if reason else ""),
            )
            return False
        self._failed(worker, cp, "its size kept changing (409 three times)")
        return False

    def _post(self, endpoint: WitnessEndpoint, body: str) -> _Answer:
        request = urllib.request.Request(
            f"{endpoint.url}/{ADD_CHECKPOINT}",
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.policy.timeout_s) as response:
                text = response.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
                return _Answer(response.status, text, response.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as exc:
            text = exc.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
            return _Answer(exc.code, text, exc.headers.get("Content-Type", ""))

    def _cosigned(self, worker: _Worker, cp: _Published, answer: str, proof: int) -> None:
        assert self._ledger is not None
        endpoint = worker.endpoint
        text, _ = split_note(cp.note)
        try:
            cosigs = verify_cosignatures(cosignature_lines(answer), text, [endpoint.key])
        except (MalformedError, VerificationError) as exc:
            raise VerificationError(f"its answer does not verify: {exc}") from None
        if not cosigs:
            raise VerificationError(
                f"its answer holds no cosignature by the configured key {endpoint.key.vkey}"
            )
        updated = self._ledger.add_cosignatures(cp.size, [c.line for c in cosigs])
        old, worker.known_size = worker.known_size, cp.size
        self._update(
            worker,
            cosigned_size=cp.size,
            cosignatures=worker.status.cosignatures + 1,
            last_error="",
        )
        count = self.witnessed(updated)
        log.info(
            "witness_cosigned witness=%s size=%d old=%d proof=%d timestamp=%d cosignatures=%d/%d",
            endpoint.label,
            cp.size,
            old,
            proof,
            cosigs[0].timestamp,
            count,
            self.policy.required,
        )
        if count == self.policy.required:
            log.info("checkpoint_witnessed size=%d cosignatures=%d", cp.size, count)

    def _refused(self, worker: _Worker, cp: _Published, why: str) -> None:
        self._update(worker, refusals=worker.status.refusals + 1, last_error=why)
        log.error(
            "witness_refused witness=%s size=%d old=%d reason=%s: the witness has seen another "
            "history of this log (a split view, or this store was forked or rolled back)",
            worker.endpoint.label,
            cp.size,
            worker.known_size,
            why,
        )

    def _failed(self, worker: _Worker, cp: _Published, why: str) -> None:
        self._update(worker, failures=worker.status.failures + 1, last_error=why)
        log.warning(
            "witness_failed witness=%s url=%s size=%d error=%s",
            worker.endpoint.label,
            worker.endpoint.url,
            cp.size,
            why,
        )

    def _update(self, worker: _Worker, **changes: object) -> None:
        with self._cond:
            worker.status = replace(worker.status, **changes)  # type: ignore[arg-type]
