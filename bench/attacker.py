"""One hostile client of a ledger server, in a process of its own (issue #14, attack 1).

It opens idle AppendStreams, idle following Reads, and keeps streams of garbage batches going
(a refused or ended stream is opened again at once). bench.killswitch starts it as
``python -m bench.attacker`` so that its ~600 threads do not share the measuring client's
interpreter; with ``--nice`` or ``--sched-idle`` it lowers its own CPU priority first, standing
for an attacker on a machine of its own. When told to leave (SIGTERM or SIGINT) it writes what the server answered
its streams, as JSON, to ``--out`` (or stdout), then closes everything and exits 0.

Run: python -m bench.attacker --target HOST:PORT [--ca F --cert F --key F] [--idle-streams N]
[--followers N] [--garbage-streams N] [--nice N] [--sched-idle] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from steward.v1 import ledger_pb2, ledger_pb2_grpc


def channel(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, credentials)


class Attacker:
    def __init__(
        self,
        target: str,
        *,
        idle_streams: int,
        followers: int,
        garbage_streams: int,
        events_per_batch: int = 256,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.target = target
        self.stop = threading.Event()
        self.channels = [channel(target, credentials) for _ in range(4)]
        self.calls: list[Any] = []
        self.outcomes: Counter[str] = Counter()
        self.garbage_batches = 0
        self._lock = threading.Lock()
        self._plan = (idle_streams, followers, garbage_streams, events_per_batch)

    def _stub(self, i: int) -> ledger_pb2_grpc.LedgerServiceStub:
        return ledger_pb2_grpc.LedgerServiceStub(self.channels[i % len(self.channels)])

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.outcomes[outcome] += 1

    def _drain(self, call: Any) -> None:
        try:
            for _ in call:
                pass
            self._count("OK")
        except grpc.RpcError as err:
            self._count(err.code().name)

    def _idle(self) -> Iterator[ledger_pb2.AppendBatch]:
        self.stop.wait()
        return
        yield

    def _garbage(self) -> Iterator[ledger_pb2.AppendBatch]:
        batch_id = 0
        while not self.stop.is_set():
            batch_id += 1
            with self._lock:
                self.garbage_batches += 1
            yield ledger_pb2.AppendBatch(
                batch_id=batch_id, signed_events=[os.urandom(96) for _ in range(self._plan[3])]
            )

    def _flood(self, i: int) -> None:
        while not self.stop.is_set():
            call = self._stub(i).AppendStream(self._garbage())
            self.calls.append(call)
            self._drain(call)
            time.sleep(0.01)

    def start(self) -> Attacker:
        idle, followers, garbage, _ = self._plan
        # The garbage streams first, so that they hold stream slots and keep the server
        # decoding, rather than being refused behind the idle ones.
        for i in range(garbage):
            threading.Thread(target=self._flood, args=(i,), daemon=True).start()
        time.sleep(0.5)
        for i in range(idle):
            call = self._stub(i).AppendStream(self._idle())
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        for i in range(followers):
            call = self._stub(i).Read(ledger_pb2.ReadRequest(start_seq=0, follow=True))
            self.calls.append(call)
            threading.Thread(target=self._drain, args=(call,), daemon=True).start()
        return self

    def leave(self) -> None:
        self.stop.set()
        for call in list(self.calls):
            call.cancel()
        for channel in self.channels:
            channel.close()

    def outcome(self) -> dict[str, Any]:
        """What the server did with this attacker's streams so far, for the JSON report."""
        with self._lock:
            return {
                "outcomes": dict(self.outcomes),
                "garbage_batches": self.garbage_batches,
                "streams_opened": len(self.calls),
            }


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    if args.ca is None:
        return None
    return grpc.ssl_channel_credentials(
        args.ca.read_bytes(),
        args.key.read_bytes() if args.key else None,
        args.cert.read_bytes() if args.cert else None,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--target", required=True, help="the ledger server, HOST:PORT")
    p.add_argument("--ca", type=Path, help="CA certificate (PEM): TLS; without it, plaintext")
    p.add_argument("--cert", type=Path, help="this client's certificate (PEM), for mutual TLS")
    p.add_argument("--key", type=Path, help="this client's private key (PEM), for mutual TLS")
    p.add_argument("--idle-streams", type=int, default=500)
    p.add_argument("--followers", type=int, default=100)
    p.add_argument("--garbage-streams", type=int, default=8)
    p.add_argument("--events-per-batch", type=int, default=256)
    p.add_argument(
        "--nice", type=int, default=0, help="add this to the process's niceness first (os.nice)"
    )
    p.add_argument(
        "--sched-idle",
        action="store_true",
        help="run under SCHED_IDLE (only on CPU time nothing else wants): closer than any "
        "niceness to an attacker on a machine of its own",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=2.0,
        help="seconds between opening the streams and saying the attack is on",
    )
    p.add_argument("--out", type=Path, help="write the JSON outcome here instead of stdout")
    args = p.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        p.error("--cert and --key go together")

    leave = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: leave.set())
    if args.nice:
        os.nice(args.nice)
    if args.sched_idle:
        # Before any thread starts: Linux threads inherit the policy of the one creating them.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    attacker = Attacker(
        args.target,
        idle_streams=args.idle_streams,
        followers=args.followers,
        garbage_streams=args.garbage_streams,
        events_per_batch=args.events_per_batch,
        credentials=_credentials(args),
    ).start()
    leave.wait(args.settle)  # every stream has reached the server: held, or refused
    # The line the bench waits for before its trials.
    policy = "SCHED_IDLE" if os.sched_getscheduler(0) == os.SCHED_IDLE else "SCHED_OTHER"
    print(
        f"attack on: {policy}, niceness {os.nice(0)}, {attacker.outcome()}",
        file=sys.stderr,
        flush=True,
    )
    while not leave.wait(0.5):  # a short wait, so that the signal handler runs promptly
        pass
    # Counted before leaving: the cancellations leave() causes are not the server's answers.
    report = json.dumps(attacker.outcome())
    if args.out is None:
        print(report, flush=True)
    else:
        args.out.write_text(report + "\n")
    attacker.leave()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
