"""Admission limits of the ledger's gRPC server: stream slots, append rates and a read budget.

What a client can take from everyone else, bounded here:

- **Stream slots.** A gRPC stream (``AppendStream``, a following ``Read``, a health ``Watch``)
  holds one worker thread of the server for as long as it is open, idle or not. Streams get at
  most ``max_streams`` workers in all and ``max_streams_per_peer`` per peer; the server's pool
  has ``unary_workers`` more, which streams can never take, so a unary ``Append`` (a kill switch)
  and ``Health/Check`` always find a worker (docs/security/network.md).
- **Append rates.** Token buckets per peer (every submitted event, garbage included, before it
  is decoded when it comes in a stream) and per signing principal (events whose signature
  verified); ``KillSwitchEngaged`` sent with a unary ``Append`` is charged to its own bucket per
  peer instead, so a peer that flooded proposals can still stop a rollout.

- **The penalty box.** A peer whose appends are refused for a rate limit ``strikes`` times
  within ``window`` seconds has its ``AppendStream``s held a second in their slot and refused at
  the gate, before a thread or a batch is spent on them, and its unary ``Append``s other than a
  ``KillSwitchEngaged`` refused before they are checked, for ``cooldown`` seconds (started
  again while it goes on at that pace). A flood of streams that the rate limit refused one by
  one, each after the server had started it and read its first batch, thus becomes about one
  cheap refusal per second per stream the client runs (docs/security/network.md, "The penalty
  box").

- **Reads of history.** A proof or a single entry is read back from the store (tiles and
  entries on disk, since the tree is kept as tiles: 0.2-0.7 ms of a core for a cold proof at
  10M entries), outside the writer's lock, so a flood of them never delays an append, but it
  can keep a core busy. ``Get``, ``GetInclusionProof`` and ``GetConsistencyProof`` take a token
  per call from a bucket per peer (:class:`ReadBudget`); a client that needs the whole log reads
  it with ``Read``, the tiles or an export.

Every refusal is a :class:`ledger.grpc_errors.ServiceError` with ``RESOURCE_EXHAUSTED``, the
violation code ``STREAM_LIMIT``, ``RATE_LIMITED`` or ``PENALTY_BOX`` and the limit's name as
the field.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from ledger.grpc_errors import ServiceError

STREAM_LIMIT_CODE = "STREAM_LIMIT"
RATE_LIMITED_CODE = "RATE_LIMITED"
PENALTY_BOX_CODE = "PENALTY_BOX"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` events per second on average, up to `burst` at once."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(
                f"a rate limit needs rate > 0 and burst >= 1, got {self.rate}/s, burst {self.burst}"
            )

    def describe(self) -> str:
        return f"{self.rate:g}/s, burst {self.burst}"


class _Buckets:
    """One token bucket per key (a peer, a principal), created full on first use."""

    # A bucket that has been full for this long is forgotten, so one attacker cycling through
    # peer addresses cannot grow the table without bound.
    _FORGET_AFTER_S = 60.0
    _SWEEP_EVERY = 4096

    def __init__(
        self, limit: RateLimit, name: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._calls = 0

    def take(self, key: str, n: int = 1) -> bool:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.limit.burst), now))
            tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.rate)
            granted = tokens >= max(n, 1)  # n == 0 asks whether a token is left
            if granted:
                tokens -= n
            self._buckets[key] = (tokens, now)
            self._calls += 1
            if self._calls % self._SWEEP_EVERY == 0:
                self._sweep(now)
            return granted

    def give(self, key: str, n: int) -> None:
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.limit.burst), self._clock()))
            self._buckets[key] = (min(float(self.limit.burst), tokens + n), at)

    def _sweep(self, now: float) -> None:
        full_after = self.limit.burst / self.limit.rate + self._FORGET_AFTER_S
        for key, (_tokens, at) in list(self._buckets.items()):
            if now - at > full_after:
                del self._buckets[key]

    def refuse(self, who: str, n: int) -> ServiceError:
        return ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit {self.name} ({self.limit.describe()}) exceeded by {who} "
            f"({n} event{'s' if n != 1 else ''} refused, nothing appended); retry later"
            if n
            else f"rate limit {self.name} ({self.limit.describe()}) used up by {who}; "
            "no stream is opened until its bucket refills",
            violation_code=RATE_LIMITED_CODE,
            field=self.name,
        )


class AppendLimits:
    """The append rate limits of one server; a limit left None is not enforced."""

    def __init__(
        self,
        per_peer: RateLimit | None = None,
        per_principal: RateLimit | None = None,
        kill_switch_per_peer: RateLimit | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peer = _Buckets(per_peer, "append_rate_per_peer", clock) if per_peer else None
        self._principal = (
            _Buckets(per_principal, "append_rate_per_principal", clock) if per_principal else None
        )
        self._kill = (
            _Buckets(kill_switch_per_peer, "kill_switch_rate_per_peer", clock)
            if kill_switch_per_peer
            else None
        )

    @property
    def enabled(self) -> bool:
        return any(b is not None for b in (self._peer, self._principal, self._kill))

    def charge_peer(self, peer: str, n: int) -> None:
        if self._peer is not None and not self._peer.take(peer, n):
            raise self._peer.refuse(f"peer {peer}", n)

    def check_peer(self, peer: str) -> None:
        """Refuse at once when the peer has no token left (charges nothing): a stream opened
        again and again by a peer over its rate then costs the server no threads."""
        if self._peer is not None and not self._peer.take(peer, 0):
            raise self._peer.refuse(f"peer {peer}", 0)

    def charge_kill_switch(self, peer: str) -> None:
        if self._kill is not None and not self._kill.take(peer):
            raise self._kill.refuse(f"peer {peer}", 1)

    def charge_principals(self, principals: Counter[str]) -> None:
        """Charge each principal for its events; all or nothing, so a refusal costs none."""
        if self._principal is None:
            return
        taken: list[tuple[str, int]] = []
        for principal, n in sorted(principals.items()):
            if not self._principal.take(principal, n):
                for done, m in taken:  # give back what this call took before the refusal
                    self._principal.give(done, m)
                raise self._principal.refuse(f"principal {principal}", n)
            taken.append((principal, n))


class ReadBudget:
    """Calls that read history back from the store, per peer (see the module's docstring)."""

    NAME = "read_rate_per_peer"

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = _Buckets(limit, self.NAME, clock)

    def charge(self, peer: str, method: str) -> None:
        if not self._buckets.take(peer):
            limit = self._buckets.limit
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{method}: rate limit {self.NAME} ({limit.describe()}) used up by peer "
                f"{peer}; retry later, or read many entries with Read, the tiles or an export",
                violation_code=RATE_LIMITED_CODE,
                field=self.NAME,
            )


class StreamSlots:
    """Counts open streams, in all and per peer; refuses one past either limit."""

    def __init__(self, max_streams: int, max_per_peer: int) -> None:
        if max_streams < 1 or max_per_peer < 1:
            raise ValueError("stream limits must be at least 1")
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self._lock = threading.Lock()
        self._total = 0
        self._by_peer: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return self._total

    def acquire(self, peer: str, method: str) -> None:
        with self._lock:
            if self._by_peer[peer] >= self.max_per_peer:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method}: peer {peer} already has {self._by_peer[peer]} open streams, the "
                    f"limit max_streams_per_peer is {self.max_per_peer}; close one first",
                    violation_code=STREAM_LIMIT_CODE,
                    field="max_streams_per_peer",
                )
            if self._total >= self.max_streams:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{method}: the server has {self._total} open streams, the limit "
                    f"max_streams is {self.max_streams}; retry later",
                    violation_code=STREAM_LIMIT_CODE,
                    field="max_streams",
                )
            self._total += 1
            self._by_peer[peer] += 1

    def release(self, peer: str) -> None:
        with self._lock:
            self._total -= 1
            self._by_peer[peer] -= 1
            if self._by_peer[peer] <= 0:
                del self._by_peer[peer]


@dataclass(frozen=True)
class PenaltyRule:
    """`strikes` rate-limit refusals of one peer within `window_s` seconds box its appends for
    `cooldown_s` seconds; as many attempts while boxed start the cool-down again."""

    strikes: int
    window_s: float
    cooldown_s: float

    def __post_init__(self) -> None:
        if self.strikes < 1 or self.window_s <= 0 or self.cooldown_s <= 0:
            raise ValueError(
                "a penalty box needs strikes >= 1, window > 0 and cooldown > 0, got "
                f"{self.strikes} strikes in {self.window_s:g} s, cooldown {self.cooldown_s:g} s"
            )

    def describe(self) -> str:
        return (
            f"{self.strikes} rate-limit refusals within {self.window_s:g} s: appends refused "
            f"for {self.cooldown_s:g} s"
        )


class PenaltyBox:
    """Peers whose appends were refused for a rate limit too often, refused early for a while.

    Why: a refusal by the per-peer rate comes only after the server has started the stream (a
    slot, two threads) and read its first batch; a client that reopens refused streams at once
    makes hundreds of them a second (docs/PERFORMANCE.md, "Kill switch under attack"). Once a
    peer has shown that it does not back off, its streams are refused at the gate instead, which
    costs a fraction of that. Keyed by peer, like the rate: another peer never shares a box, and
    a boxed peer may still engage a kill switch (its own bucket, ``kill_switch_rate_per_peer``).
    """

    _SWEEP_EVERY = 1024

    def __init__(
        self,
        rule: PenaltyRule,
        clock: Callable[[], float] = time.monotonic,
        hold_s: float = 1.0,
    ) -> None:
        self.rule = rule
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        self._strikes: dict[str, list[float]] = {}  # peer -> times of its recent strikes
        self._until: dict[str, float] = {}  # peer -> end of its cool-down
        self._calls = 0

    def strike(self, peer: str) -> None:
        """One refusal of `peer`'s appends for a rate limit; boxes it on the last allowed one."""
        now = self._clock()
        with self._lock:
            recent = [t for t in self._strikes.get(peer, ()) if now - t < self.rule.window_s]
            recent.append(now)
            if len(recent) >= self.rule.strikes:
                self._until[peer] = now + self.rule.cooldown_s
                recent = []
            self._strikes[peer] = recent
            self._calls += 1
            if self._calls % self._SWEEP_EVERY == 0:
                self._sweep(now)

    def check(self, peer: str) -> None:
        """Refuse when `peer` is in the box.

        A refusal here is a strike too: a boxed peer that goes on at ``strikes`` attempts per
        window stays boxed (the cool-down starts again), so the box does not open every
        cool-down for another round of streams started, read and refused by the rate. A client
        that backs off (fewer attempts per window; a held stream takes a second) is out after
        one cool-down."""
        until = self._until.get(peer)
        if until is None:
            return
        now = self._clock()
        left = until - now
        if left <= 0:
            with self._lock:
                if self._until.get(peer) == until:
                    del self._until[peer]
            return
        with self._lock:
            recent = [t for t in self._strikes.get(peer, ()) if now - t < self.rule.window_s]
            recent.append(now)
            if len(recent) >= self.rule.strikes:
                self._until[peer] = now + self.rule.cooldown_s
                recent = []
            self._strikes[peer] = recent
        raise ServiceError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"penalty_box ({self.rule.describe()}): peer {peer} is refused appends for "
            f"{left:.1f} s more; a KillSwitchEngaged sent with Append is still accepted",
            violation_code=PENALTY_BOX_CODE,
            field="penalty_box",
        )

    def hold(self, peer: str, gone: threading.Event) -> None:
        """Wait up to ``hold_s`` (less when the box ends sooner) before a boxed stream is
        refused, or until `gone` is set (the caller left; the gate sets it from the call's
        termination callback, so a held stream costs one wake-up, not a poll).

        Why: a client that reopens a refused stream as soon as it hears the refusal would
        otherwise hear it within a millisecond and make hundreds of streams a second, each
        still costing the server its HTTP/2 and TLS work. Held, such a client opens one stream
        per ``hold_s`` for each stream it runs. The held stream keeps the slot it took
        (``max_streams_per_peer``), so holding never costs more threads than the peer may hold
        anyway, and a peer that opens streams without waiting gets the stream limit's
        immediate refusal past its slots."""
        left = min(self.hold_s, self._until.get(peer, 0.0) - self._clock())
        if left > 0:
            gone.wait(left)

    def _sweep(self, now: float) -> None:
        for peer, times in list(self._strikes.items()):
            if not times or now - times[-1] >= self.rule.window_s:
                del self._strikes[peer]
        for peer, until in list(self._until.items()):
            if until <= now:
                del self._until[peer]
