"""Deliver :class:`~controller.notices.Notice` values: CloudEvents to webhooks, Kubernetes Events.

Each outlet (one webhook URL, or the Kubernetes Events recorder) has its own worker thread and
queue, so a slow or failing sink delays only itself, and nothing here ever runs on the planner's
or the executor's thread: the replayer hands notices over with a non-blocking ``put``, so the
kill-switch path never waits for a webhook.

Delivery is at-least-once, in ledger order per outlet, and idempotent for receivers: the
CloudEvent ``id`` is the ledger entry's hash, the Kubernetes Event name is derived from it.
Each outlet's position (the seq and store position of the last notice it delivered or gave up
on) is kept in a small JSON file (``--notify-state``), rewritten atomically after every
delivery. A restart re-reads the log from the lowest position (entries a snapshot already
folded included) and re-offers what each outlet had not finished; a crash between a POST and
the position write repeats that one event, with the same id.

A failed delivery is retried with exponential backoff (5xx, 408, 429, timeouts, connection
errors; another 4xx, or a redirect, which is never followed, is final at once); after the last attempt the event goes to the dead-letter
log (``--notify-dead-letter``, JSON lines) and the outlet moves on. Only the leader delivers;
a standby keeps its queues and positions and delivers them if it takes over.

Webhook URLs often carry credentials (user info, a token in the query or the path): they are
never logged or written; logs and dead letters name a sink by :func:`redact`, e.g.
``https://hooks.example.com/… (sink 3f2a9c1d)``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from controller.errors import ControllerError
from controller.notices import ROLLOUT_TYPES, STEP_TYPE, Notice

log = logging.getLogger("steward.controller.notify")

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# 4xx answers worth another try (the CloudEvents webhook spec: everything else 4xx is final).
RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})
MAX_SINKS = 64  # global + every policy's; more means a misconfiguration, not a need


class DeliveryError(ControllerError):
    """A notice an outlet could not deliver; `final` when retrying cannot help."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final  # no retry can help (e.g. 400, 404)


class Outlet(Protocol):
    key: str  # stable name in the position file (never the URL itself)
    label: str  # safe to log

    def deliver(self, notice: Notice) -> None:
        """Deliver once; raise DeliveryError on failure."""
        ...


# --------------------------------------------------------------------------------------------
# Pure parts


def sink_key(url: str) -> str:
    """A sink's name in the position file and the logs: a hash, so the URL is never stored."""
    return "sink-" + hashlib.sha256(url.encode()).hexdigest()[:8]


def redact(url: str) -> str:
    """A URL safe to log: scheme, host and port only (user info, path and query can be secrets)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"<unparseable URL> ({sink_key(url)})"
    more = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{more} ({sink_key(url)})"


def check_sink_url(url: str) -> str:
    """The URL if it is an http(s) URL with a host; ValueError naming what is wrong otherwise."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"notify URL {redact(url)}: scheme must be http or https")
    if not parts.hostname:
        raise ValueError(f"notify URL {redact(url)}: no host")
    if len(url) > 2048:
        raise ValueError(f"notify URL {redact(url)}: longer than 2048 characters")
    return url


def rfc3339_ms(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def cloudevent(notice: Notice, source: str, ledger: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode JSON of a notice."""
    refs = notice.rollouts
    one = refs[0] if refs and notice.type in ROLLOUT_TYPES else None
    data: dict[str, Any] = {
        "ledger": ledger,
        "seq": notice.seq,
        "entry": notice.entry_hash.hex(),
        "reason": notice.message,
        "proposal": one.proposal.hex() if one else None,
        "namespace": one.namespace if one else None,
        "deployment": one.deployment if one else None,
        "modelRollout": one.object_name if one else None,
    }
    if notice.type == STEP_TYPE:
        data.update(step=notice.step, weight=notice.weight, phase=notice.phase)
    elif one is None:
        data.update(
            scope=notice.scope,
            rollouts=[
                {
                    "proposal": r.proposal.hex(),
                    "namespace": r.namespace,
                    "deployment": r.deployment,
                    "modelRollout": r.object_name,
                }
                for r in refs
            ],
        )
    return {
        "specversion": "1.0",
        "id": notice.entry_hash.hex(),
        "source": source,
        "type": notice.type,
        "subject": notice.subject,
        "time": rfc3339_ms(notice.time_ms),
        "datacontenttype": "application/json",
        "data": data,
    }


def backoff_delays(attempts: int, first: float, cap: float = 30.0) -> list[float]:
    """Seconds to wait before attempts 2..n: first, 2·first, 4·first... capped."""
    return [min(cap, first * 2**i) for i in range(max(0, attempts - 1))]


# --------------------------------------------------------------------------------------------
# Outlets


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A sink that redirects is answered with an error, never followed: following would let
    whoever controls the sink point the controller's POSTs at any address it can reach."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class WebhookOutlet:
    """POST each notice as a structured CloudEvent to one URL."""

    def __init__(self, url: str, source: Callable[[], tuple[str, str]], timeout: float) -> None:
        self.url = check_sink_url(url)
        self.key = sink_key(url)
        self.label = redact(url)
        self.source = source  # () -> (CloudEvents source, ledger name)
        self.timeout = timeout
        # urllib does not turn user info into credentials: send it as HTTP Basic auth.
        parts = urllib.parse.urlsplit(url)
        self.authorization = ""
        self.endpoint = url
        if parts.username is not None:
            userinfo = f"{urllib.parse.unquote(parts.username)}:"
            userinfo += urllib.parse.unquote(parts.password or "")
            self.authorization = "Basic " + base64.b64encode(userinfo.encode()).decode()
            host = parts.hostname or ""
            netloc = (f"[{host}]" if ":" in host else host) + (
                f":{parts.port}" if parts.port else ""
            )
            self.endpoint = urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    def event(self, notice: Notice) -> dict[str, Any]:
        return cloudevent(notice, *self.source())

    def deliver(self, notice: Notice) -> None:
        body = json.dumps(self.event(notice), separators=(",", ":")).encode()
        headers = {"Content-Type": CLOUDEVENTS_CONTENT_TYPE, "User-Agent": "steward-controller"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        request = urllib.request.Request(self.endpoint, data=body, method="POST", headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                answer.read(1024)  # the answer's body means nothing here; never read it all
        except urllib.error.HTTPError as exc:
            # A redirect (not followed) or a client error no retry can fix.
            final = 300 <= exc.code < 500 and exc.code not in RETRYABLE_CLIENT_ERRORS
            # str(exc) would carry the URL: say the status only.
            raise DeliveryError(f"HTTP {exc.code}", final=final) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"{type(exc).__name__}: {reason}") from None


# --------------------------------------------------------------------------------------------
# Positions


@dataclass(frozen=True)
class Position:
    seq: int  # the last notice's ledger seq handled (delivered or dead-lettered)
    position: int  # its store position (where a restart re-reads from)


class PositionFile:
    """Outlet positions in one JSON file, written atomically (temp file, fsync, rename)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.positions: dict[str, Position] = {}
        self.start: Position | None = None  # where delivery began the very first time
        if path is not None and path.exists():
            raw = json.loads(path.read_text())
            self.positions = {
                k: Position(int(v["seq"]), int(v["position"]))
                for k, v in (raw.get("outlets") or {}).items()
            }
            if raw.get("start"):
                self.start = Position(int(raw["start"]["seq"]), int(raw["start"]["position"]))

    def get(self, key: str) -> Position | None:
        with self.lock:
            return self.positions.get(key, self.start)

    def set_start(self, start: Position) -> None:
        with self.lock:
            self.start = start
            self._write()

    def advance(self, key: str, to: Position) -> None:
        with self.lock:
            old = self.positions.get(key)
            if old is None or to.seq > old.seq:
                self.positions[key] = to
                self._write()

    def prune(self, keep: Iterable[str]) -> None:
        """Forget outlets no longer configured (they would pin the re-read position)."""
        wanted = set(keep)
        with self.lock:
            for k in [k for k in self.positions if k not in wanted]:
                del self.positions[k]
            self._write()

    def low(self, keys: Iterable[str]) -> Position | None:
        """The lowest position among `keys` (the start for one never delivered)."""
        with self.lock:
            found = [self.positions.get(k, self.start) for k in keys]
        known = [p for p in found if p is not None]
        return min(known, key=lambda p: p.seq) if known else None

    def _write(self) -> None:
        if self.path is None:
            return
        doc = {
            "version": 1,
            "start": vars(self.start) if self.start else None,
            "outlets": {k: vars(v) for k, v in sorted(self.positions.items())},
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------------
# Workers


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    first_backoff: float = 0.5
    max_backoff: float = 30.0


class DeadLetters:
    """The JSON-lines log of notices an outlet gave up on (None: the error log only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, outlet: Outlet, notice: Notice, attempts: int, error: str) -> None:
        event = outlet.event(notice) if isinstance(outlet, WebhookOutlet) else None
        line = {
            "time": rfc3339_ms(int(time.time() * 1000)),
            "sink": outlet.label,
            "sink_key": outlet.key,
            "attempts": attempts,
            "error": error,
            "id": notice.entry_hash.hex(),
            "seq": notice.seq,
            "event": event,
        }
        log.error(
            "notification dead-lettered sink=%s id=%s seq=%d attempts=%d error=%s",
            outlet.key,
            notice.entry_hash.hex(),
            notice.seq,
            attempts,
            error,
        )
        if self.path is None:
            return
        with self.lock, open(self.path, "a") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()


class OutletWorker:
    """One outlet's queue and thread: in order, retried, then dead-lettered."""

    def __init__(
        self,
        outlet: Outlet,
        positions: PositionFile,
        dead: DeadLetters,
        retry: RetryPolicy,
        active: Callable[[], bool],
        stop: threading.Event,
    ) -> None:
        self.outlet = outlet
        self.positions = positions
        self.dead = dead
        self.retry = retry
        self.active = active
        self.stop = stop
        self.queue: queue.Queue[tuple[Notice, int]] = queue.Queue()
        self.delivered = 0
        self.dead_lettered = 0
        self.thread = threading.Thread(target=self._run, name=f"notify-{outlet.key}", daemon=True)

    def offer(self, notice: Notice, position: int) -> None:
        done = self.positions.get(self.outlet.key)
        if done is not None and notice.seq <= done.seq:
            return  # delivered before a restart
        self.queue.put((notice, position))

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                notice, position = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            while not self.active():  # only the leader speaks
                if self.stop.wait(0.2):
                    return
            if self._deliver(notice):
                self.positions.advance(self.outlet.key, Position(notice.seq, position))

    def _deliver(self, notice: Notice) -> bool:
        """True when handled (delivered or dead-lettered); False only when stopping."""
        delays = backoff_delays(
            self.retry.attempts, self.retry.first_backoff, self.retry.max_backoff
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                self.outlet.deliver(notice)
            except DeliveryError as exc:
                if exc.final or attempt > len(delays):
                    self.dead.write(self.outlet, notice, attempt, str(exc))
                    self.dead_lettered += 1
                    return True
                log.warning(
                    "notification failed sink=%s seq=%d attempt=%d error=%s retry_in=%.1fs",
                    self.outlet.key,
                    notice.seq,
                    attempt,
                    exc,
                    delays[attempt - 1],
                )
                if self.stop.wait(delays[attempt - 1]):
                    return False
                continue
            except Exception as exc:  # a bug in an outlet must not kill its thread silently
                log.exception("notification outlet failed sink=%s", self.outlet.key)
                if attempt > len(delays):
                    self.dead.write(self.outlet, notice, attempt, f"{type(exc).__name__}: {exc}")
                    self.dead_lettered += 1
                    return True
                if self.stop.wait(delays[attempt - 1]):
                    return False
                continue
            self.delivered += 1
            log.info(
                "notification delivered sink=%s seq=%d type=%s attempts=%d",
                self.outlet.key,
                notice.seq,
                notice.type,
                attempt,
            )
            return True


@dataclass(frozen=True)
class OutletStats:
    key: str
    delivered: int
    dead_lettered: int
    pending: int


class Notifier:
    """Fans notices out to outlets: the fixed ones (global webhooks, Kubernetes Events) and
    each policy's webhooks (`policy_sinks(notice)`, resolved when the notice is offered)."""

    def __init__(
        self,
        fixed: Sequence[Outlet],
        positions: PositionFile,
        dead: DeadLetters,
        *,
        policy_sinks: Callable[[Notice], Sequence[str]] = lambda n: (),
        webhook: Callable[[str], Outlet] | None = None,
        retry: RetryPolicy = RetryPolicy(),
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.positions = positions
        self.dead = dead
        self.policy_sinks = policy_sinks
        self.webhook = webhook
        self.retry = retry
        self.active = active
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.workers: dict[str, OutletWorker] = {}
        self.fixed = tuple(o.key for o in fixed)
        for o in fixed:
            self._worker(o)
        # Before arm(): offers are dropped on a first start (no positions yet), so a fresh
        # controller does not replay the whole history to the sinks.
        self.armed = positions.start is not None

    def _worker(self, outlet: Outlet) -> OutletWorker:
        w = self.workers.get(outlet.key)
        if w is None:
            w = OutletWorker(outlet, self.positions, self.dead, self.retry, self.active, self.stop)
            self.workers[outlet.key] = w
            w.thread.start()
        return w

    def outlets_for(self, notice: Notice) -> list[OutletWorker]:
        with self.lock:
            out = [self.workers[k] for k in self.fixed]
            if self.webhook is not None:
                for url in self.policy_sinks(notice):
                    key = sink_key(url)
                    if key in self.workers:
                        if self.workers[key] not in out:
                            out.append(self.workers[key])
                    elif len(self.workers) < MAX_SINKS:
                        try:
                            out.append(self._worker(self.webhook(url)))
                        except ValueError as exc:
                            log.warning("policy notify sink refused: %s", exc)
            return out

    def offer(self, notice: Notice, position: int) -> None:
        """Queue a notice for its outlets; never blocks."""
        if not self.armed:
            return
        for w in self.outlets_for(notice):
            w.offer(notice, position)

    def arm(self, start: Position) -> None:
        """Begin delivering from after `start` (a first start: the log's end when caught up)."""
        if not self.armed:
            self.positions.set_start(start)
            self.armed = True

    def close(self, timeout: float = 3.0) -> None:
        """Stop the workers; one in the middle of a POST gets `timeout` seconds in all."""
        self.stop.set()
        deadline = time.monotonic() + timeout
        for w in list(self.workers.values()):
            w.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def pending(self) -> int:
        return sum(w.queue.qsize() for w in self.workers.values())

    def stats(self) -> list[OutletStats]:
        with self.lock:
            workers = sorted(self.workers.items())
        return [OutletStats(k, w.delivered, w.dead_lettered, w.queue.qsize()) for k, w in workers]
