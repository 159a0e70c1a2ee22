"""Leader election with a ``coordination.k8s.io/v1`` Lease: exactly one controller acts.

The algorithm of client-go's leaderelection, reduced to what Steward needs:

* the holder renews ``renewTime`` every ``renew_seconds`` (an optimistic-concurrency replace,
  so two candidates can never both win one round);
* a candidate takes the Lease only after it has seen the same (holder, renewTime) unchanged for
  ``lease_seconds`` of its *own* monotonic clock — no comparison of clocks between machines;
* a leader that has not renewed successfully for ``renew_deadline_seconds`` (< lease) stops
  acting before anyone else may take over, so two leaders never act at once;
* on clean shutdown the leader empties ``holderIdentity`` so a standby takes over at once.

Acting twice would still be safe (event ids are deterministic and the ledger re-checks every
step), but only the leader writes, so the log tells one story.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger("steward.controller.leader")


def _now() -> dt.datetime:
    # Lease times are MicroTime ("...05.000000Z07:00"); isoformat() drops a zero fraction,
    # which the API server would refuse, so never send microsecond 0.
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=max(now.microsecond, 1))


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        name: str = "steward-controller",
        lease_seconds: int = 5,
        renew_seconds: float = 1.5,
        renew_deadline_seconds: float = 4.0,
        on_change: Callable[[bool], None] = lambda _leader: None,
    ) -> None:
        if renew_deadline_seconds >= lease_seconds:
            raise ValueError("the renew deadline must be shorter than the lease duration")
        self.coord = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.renew_deadline = renew_deadline_seconds
        self.on_change = on_change
        self._leader = False
        self._last_renew = 0.0  # monotonic time of our last successful acquire/renew
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self.transitions = 0
        self._announced = False

    @property
    def is_leader(self) -> bool:
        # Checked at every use: a leader that could not renew in time stops acting by itself.
        return self._leader and time.monotonic() - self._last_renew < self.renew_deadline

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as exc:  # the API server unreachable: keep trying, maybe step down
                log.warning("lease round failed identity=%s error=%s", self.identity, exc)
            self._set_leader(self.is_leader)
            stop.wait(self.renew_seconds if self._leader else min(1.0, self.renew_seconds))
        self.release()

    def _set_leader(self, leader: bool) -> None:
        self._leader = leader
        if leader != self._announced:
            self._announced = leader
            log.info("leadership identity=%s leader=%s", self.identity, leader)
            self.on_change(leader)

    def try_acquire_or_renew(self) -> bool:
        now = _now()
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=self.identity,
                    lease_duration_seconds=self.lease_seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self.coord.create_namespaced_lease(self.namespace, body)
            except ApiException as exc2:
                if exc2.status == 409:
                    return False  # someone else created it first
                raise
            return self._won()
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or ""
        seen = (holder, str(spec.renew_time))
        if seen != self._observed:
            self._observed, self._observed_at = seen, time.monotonic()
        duration = spec.lease_duration_seconds or self.lease_seconds
        expired = time.monotonic() - self._observed_at >= duration
        if holder and holder != self.identity and not expired:
            self._leader = False
            return False
        taking_over = holder != self.identity
        spec.holder_identity = self.identity
        spec.lease_duration_seconds = self.lease_seconds
        spec.renew_time = now
        if taking_over:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        lease.spec = spec
        try:
            # replace carries the resourceVersion we read: a concurrent writer makes this 409.
            self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        if taking_over:
            self.transitions += 1
            log.info("lease acquired identity=%s previous=%s", self.identity, holder or "-")
        return self._won()

    def _won(self) -> bool:
        self._last_renew = time.monotonic()
        self._leader = True
        return True

    def release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over without waiting."""
        if not self._leader:
            return
        self._leader = False
        try:
            lease = self.coord.read_namespaced_lease(self.name, self.namespace)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = _now() - dt.timedelta(seconds=self.lease_seconds)
                self.coord.replace_namespaced_lease(self.name, self.namespace, lease)
                log.info("lease released identity=%s", self.identity)
        except ApiException as exc:
            log.warning("lease release failed identity=%s status=%s", self.identity, exc.status)
