"""ControllerService: the controller's rollouts over gRPC (get, list, watch).

The servicer never reads the controller's internals. It reads a :class:`RolloutBoard`: the
latest :class:`~controller.view.RolloutView` of every rollout, a version counter bumped for
each view that changes, and a condition variable that wakes watchers. Feeders publish to it:

* inside ``steward-controller``: :func:`register` adds the board as a listener of the
  controller loop (``Controller.add_listener``), so views carry the cluster observation and
  the planner's reason ("holding step 1 for 3.0s more");
* anywhere else (next to a ledger server, in tests): :func:`follow_replayer` publishes the
  views of a :class:`~controller.replay.Replayer`'s folded log, without a cluster.

``WatchRollouts`` sends the current state of every match, then each change: a stream remembers
the board version it has sent up to, so a watcher that was slow gets the latest view of every
rollout that changed meanwhile (intermediate views may be coalesced, never lost as a whole).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import grpc

from controller.view import RolloutView, rollout_views
from ledger.grpc_errors import ServiceError, guarded
from steward.v1 import common_pb2, controller_pb2, controller_pb2_grpc

if TYPE_CHECKING:
    from controller.replay import Replayer
    from controller.runtime import Controller

log = logging.getLogger("steward.controller.service")

SERVICE_NAME = "steward.v1.ControllerService"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
PROPOSAL_NOT_FOUND = "PROPOSAL_NOT_FOUND"
INVALID_FILTER = "INVALID_FILTER"
INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
PHASES = ("PENDING", "STARTED", "ADVANCED", "PAUSED", "PROMOTED", "ROLLED_BACK")


class RolloutBoard:
    """The latest view per rollout and a version counter; thread-safe, many readers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._views: dict[bytes, RolloutView] = {}
        self._changed: dict[bytes, int] = {}  # proposal -> version at which it last changed
        self._order: dict[bytes, int] = {}  # proposal -> first-seen order (views come oldest first)
        self.version = 0
        self.closed = False

    def publish(self, views: Iterable[RolloutView]) -> int:
        """Take a full list of views; returns how many changed. Wakes watchers when any did."""
        changed = 0
        with self._cond:
            for v in views:
                if self._views.get(v.proposal) == v:
                    continue
                self.version += 1
                self._views[v.proposal] = v
                self._changed[v.proposal] = self.version
                self._order.setdefault(v.proposal, len(self._order))
                changed += 1
            if changed:
                self._cond.notify_all()
        return changed

    def close(self) -> None:
        """End every watch (server shutdown)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def get(self, proposal: bytes) -> RolloutView | None:
        with self._cond:
            return self._views.get(proposal)

    def snapshot(self) -> tuple[int, list[RolloutView]]:
        """(version, every view in proposal order)."""
        with self._cond:
            return self.version, sorted(self._views.values(), key=lambda v: self._order[v.proposal])

    def changes(self, since: int, timeout: float) -> tuple[int, list[RolloutView]]:
        """Block until the version passes `since` (or `timeout`); the views changed after it."""
        with self._cond:
            self._cond.wait_for(lambda: self.version > since or self.closed, timeout)
            changed = [self._views[p] for p, ver in self._changed.items() if ver > since]
            changed.sort(key=lambda v: self._changed[v.proposal])
            return self.version, changed


def to_message(v: RolloutView) -> controller_pb2.Rollout:
    return controller_pb2.Rollout(
        proposal=v.proposal,
        namespace=v.namespace,
        deployment=v.deployment,
        phase=v.phase,
        step=v.step,
        weight=v.weight,
        approvals=list(v.approvals),
        approvals_required=v.approvals_required,
        last_seq=v.last_seq,
        candidate_image=v.candidate_image,
        stable_image=v.stable_image,
        message=v.message,
        kill_switch=bool(v.kill_switch),
    )


def _invalid(field: str, message: str, code: str = INVALID_FILTER) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}", violation_code=code, field=field
    )


def _filters(
    namespace: str,
    deployment: str,
    phase: str = "",
    proposal: bytes = b"",
) -> Callable[[RolloutView], bool]:
    if phase and phase not in PHASES:
        raise _invalid("phase", f"{phase[:40]!r} is not one of {', '.join(PHASES)}")
    if proposal and len(proposal) != 32:
        raise _invalid("proposal", f"expected a 32-byte entry hash, got {len(proposal)} bytes")

    def match(v: RolloutView) -> bool:
        return (
            (not namespace or v.namespace == namespace)
            and (not deployment or v.deployment == deployment)
            and (not phase or v.phase == phase)
            and (not proposal or v.proposal == proposal)
        )

    return match


def _page_start(page: common_pb2.PageRequest, filters: list[str]) -> int:
    """Offset into the proposal-ordered list; the token also pins the filters it was made for."""
    if not page.page_token:
        return 0
    try:
        padded = page.page_token + "=" * (-len(page.page_token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        offset, pinned = data["o"], data["f"]
        if not isinstance(offset, int) or offset < 0:
            raise ValueError("bad offset")
    except (ValueError, KeyError, TypeError, UnicodeError, binascii.Error) as exc:
        raise _invalid(
            "page.page_token", "not a page token this service issued", INVALID_PAGE_TOKEN
        ) from exc
    if pinned != filters:
        raise _invalid(
            "page.page_token",
            "issued for other filters; repeat the request with the same filters",
            INVALID_PAGE_TOKEN,
        )
    return offset


def _page_token(offset: int, filters: list[str]) -> str:
    raw = json.dumps({"o": offset, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class ControllerServicer(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, board: RolloutBoard, *, poll_seconds: float = 0.5) -> None:
        self.board = board
        self.poll_seconds = poll_seconds  # how often a watch checks that its client is still there

    @guarded(log)
    def GetRollout(
        self, request: controller_pb2.GetRolloutRequest, context: grpc.ServicerContext
    ) -> controller_pb2.Rollout:
        if len(request.proposal) != 32:
            raise _invalid(
                "proposal", f"expected a 32-byte entry hash, got {len(request.proposal)} bytes"
            )
        v = self.board.get(request.proposal)
        if v is None:
            raise ServiceError(
                grpc.StatusCode.NOT_FOUND,
                f"proposal: no rollout for proposal {request.proposal.hex()} "
                f"(the controller has folded {self.board.version} changes)",
                violation_code=PROPOSAL_NOT_FOUND,
                field="proposal",
            )
        return to_message(v)

    @guarded(log)
    def ListRollouts(
        self, request: controller_pb2.ListRolloutsRequest, context: grpc.ServicerContext
    ) -> controller_pb2.ListRolloutsResponse:
        match = _filters(request.namespace, request.deployment, request.phase)
        filters = [request.namespace, request.deployment, request.phase]
        start = _page_start(request.page, filters)
        size = min(request.page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        _, views = self.board.snapshot()
        # Proposals only ever get added, in log order, so an offset stays a stable cursor.
        matching = [v for v in views if match(v)]
        chunk = matching[start : start + size]
        more = start + size < len(matching)
        token = _page_token(start + size, filters) if more else ""
        return controller_pb2.ListRolloutsResponse(
            rollouts=[to_message(v) for v in chunk],
            page=common_pb2.PageResponse(next_page_token=token),
        )

    @guarded(log)
    def WatchRollouts(
        self, request: controller_pb2.WatchRolloutsRequest, context: grpc.ServicerContext
    ) -> Iterator[controller_pb2.Rollout]:
        match = _filters(request.namespace, request.deployment, proposal=request.proposal)
        version, views = self.board.snapshot()
        for v in views:
            if match(v):
                yield to_message(v)
        while context.is_active() and not self.board.closed:
            version, changed = self.board.changes(version, self.poll_seconds)
            for v in changed:
                if match(v):
                    yield to_message(v)


def add_controller_service(server: grpc.Server, board: RolloutBoard) -> str:
    """Register ControllerService on `server`, answering from `board`; returns the service name."""
    controller_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerServicer(board), server)
    return SERVICE_NAME


def register(server: grpc.Server, controller: Controller) -> RolloutBoard:
    """The hook ``steward-controller --listen`` calls: serve the controller loop's views."""
    board = RolloutBoard()
    board.publish(controller.views)

    def listener(views: list[RolloutView]) -> None:
        board.publish(views)

    controller.add_listener(listener)
    add_controller_service(server, board)
    return board


def follow_replayer(
    replayer: Replayer, board: RolloutBoard, stop: threading.Event, *, interval: float = 0.2
) -> threading.Thread:
    """Publish the views of `replayer`'s folded log (no cluster observation) as it grows.

    Starts a thread that follows the replayer's store until `stop` is set. For a
    ControllerService next to a ledger server, or in tests; the controller itself uses
    :func:`register`.
    """

    def views() -> list[RolloutView]:
        with replayer.lock:
            return rollout_views(replayer.state, {})

    changed = threading.Event()

    def run() -> None:
        follower = threading.Thread(
            target=replayer.run, args=(stop, changed.set), name="service-replay", daemon=True
        )
        follower.start()
        board.publish(views())
        while not stop.is_set():
            if changed.wait(interval):
                changed.clear()
                board.publish(views())
        follower.join(timeout=3)
        board.close()

    thread = threading.Thread(target=run, name="service-feed", daemon=True)
    thread.start()
    return thread
