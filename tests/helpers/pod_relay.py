"""The network between simulated pods: byte relays between TCP ports and Unix sockets.

Each pod the manifest harness runs (tests/helpers/pod_runner.py) has a network namespace of its
own, as a real pod does, so two replicas can listen on the same port. Nothing connects the
namespaces but files: a pod's relay exposes each of its container ports as a Unix socket in the
pod's directory, and listens on every Service's cluster IP and port inside the namespace (a
small kube-proxy), forwarding to a socket named, at connection time, by the routes file the
harness rewrites as pods come and go (the endpoints). On the host, the same relay stands for
``kubectl port-forward`` and for the path from a pod to the API server.

``python -m tests.helpers.pod_relay SPEC.json``: SPEC is ``{"listen": [[LISTEN, CONNECT], ...],
"routes": PATH}``, each LISTEN ``tcp:HOST:PORT`` or ``unix:PATH``, each CONNECT the same or
``route:KEY`` (the first socket of KEY in the routes file that accepts). It exits with its
parent (the pod's container process).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _open(
    target: str, routes: Path | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, _, rest = target.partition(":")
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return await asyncio.open_connection(host, int(port))
    if kind == "unix":
        return await asyncio.open_unix_connection(rest)
    if kind == "route" and routes is not None:
        try:
            candidates = json.loads(routes.read_text()).get(rest, [])
        except (OSError, ValueError):
            candidates = []
        for path in candidates:
            with contextlib.suppress(OSError):
                return await asyncio.open_unix_connection(path)
        raise ConnectionRefusedError(f"no endpoint of {rest} accepts")
    raise ValueError(f"bad relay target {target!r}")


def _handler(target: str, routes: Path | None):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await _open(target, routes)
        except (OSError, ValueError):
            writer.close()  # as a Service with no ready endpoint: the connection is refused
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    return handle


async def serve(pairs: list[tuple[str, str]], routes: Path | None) -> None:
    servers = []
    for listen, target in pairs:
        kind, _, rest = listen.partition(":")
        if kind == "tcp":
            host, _, port = rest.rpartition(":")
            servers.append(await asyncio.start_server(_handler(target, routes), host, int(port)))
        else:
            Path(rest).unlink(missing_ok=True)
            servers.append(await asyncio.start_unix_server(_handler(target, routes), rest))
    print("relay ready", flush=True)
    await _until_orphaned()


async def _until_orphaned() -> None:
    """Return once the process that started this relay has ended (the relay is then a child
    of another process). The parent-death signal set in `main` is not enough: the container
    drops to its manifest's user before it execs, and a process of that user may not signal
    this one, which runs as root, so the kernel's signal is refused when the container ends
    (about ten relays outlived their pods in each run of the suite)."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(0.2)


def main(argv: list[str]) -> int:
    # Die with the process that started this relay: a pod's network goes with its container
    # (where the container runs as root; otherwise `_until_orphaned` ends the relay).
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    spec = json.loads(Path(argv[0]).read_text())
    routes = Path(spec["routes"]) if spec.get("routes") else None
    asyncio.run(serve([(a, b) for a, b in spec["listen"]], routes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
