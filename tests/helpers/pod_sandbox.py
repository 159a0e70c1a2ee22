"""One simulated pod's container, started as its manifest says, in namespaces of its own.

The manifest harness (tests/helpers/pod_runner.py) starts ``unshare --mount --net --uts
--propagation private -- python -m tests.helpers.pod_sandbox SPEC.json``; this module then
does, as root inside those new namespaces and touching nothing outside them, what a kubelet
and container runtime would: brings up loopback with the Services' cluster IPs on it, names
the host after the pod, writes /etc/hosts (the cluster DNS for Service names), mounts each
volume at its mount path (read-only where the manifest says; a mount point that does not
exist is created in an overlay of its parent, so nothing is written to this machine's /etc),
starts the pod's relay (tests/helpers/pod_relay.py), drops to the manifest's user and groups with
``no_new_privs``, and execs the container's command. The image's file system is this machine's
with the wheel's virtual environment first on PATH. Not simulated: ``readOnlyRootFilesystem``
(remounting / read-only fails here while the overlays hold it), seccomp and capabilities
beyond what leaving root drops.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1


def _die_with_the_container() -> None:
    """In the relay, before it execs: SIGKILL when the process that started it ends. That
    process execs the container's command next, so the relay ends with the container; without
    this, every relay outlived its pod (about ten were left after each run of the suite)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _run(*argv: str) -> None:
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pod sandbox: {' '.join(argv)} failed: {out.stderr.strip()}")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class Mounter:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.overlaid: list[str] = []

    def ensure(self, target: str, is_file: bool) -> None:
        """Create the mount point, in an overlay of its nearest existing parent if need be."""
        if os.path.lexists(target):
            return
        parent = os.path.dirname(target)
        while not os.path.isdir(parent):
            parent = os.path.dirname(parent)
        if parent == "/":
            raise SystemExit(f"pod sandbox: will not overlay / for the mount point {target}")
        if not any(_within(parent, done) for done in self.overlaid):
            n = len(self.overlaid)
            upper, work = self.work / f"overlay-{n}" / "upper", self.work / f"overlay-{n}" / "work"
            upper.mkdir(parents=True)
            work.mkdir(parents=True)
            _run(
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={parent},upperdir={upper},workdir={work}",
                parent,
            )
            self.overlaid.append(parent)
        if is_file:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Path(target).touch()
        else:
            os.makedirs(target, exist_ok=True)

    def bind(self, source: str, target: str, read_only: bool) -> None:
        self.ensure(target, os.path.isfile(source))
        _run("mount", "--bind", source, target)
        if read_only:
            _run("mount", "-o", "remount,bind,ro", target)


def expose(paths: list[str], keep_dir: Path) -> None:
    """Let a non-root user reach ``paths`` (the virtual environment, the interpreter) whose
    ancestors it may not traverse (a home directory of mode 0700), as an image would have them:
    each is set aside, a world-traversable tmpfs covers the closed ancestor, and it is bound
    back at its own path."""
    kept = []
    for i, path in enumerate(paths):
        closed = next(
            (
                a
                for a in _ancestors(path)
                if a != "/" and os.path.isdir(a) and not os.stat(a).st_mode & 0o001
            ),
            None,
        )
        if closed is not None:
            aside = keep_dir / f"kept-{i}"
            aside.mkdir(parents=True)
            _run("mount", "--bind", path, str(aside))
            kept.append((closed, path, aside))
    for closed in dict.fromkeys(c for c, _, _ in kept):
        _run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", closed)
    for _, path, aside in kept:
        os.makedirs(path, exist_ok=True)
        _run("mount", "--bind", str(aside), path)


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts
    return [str(Path(*parts[:i])) for i in range(1, len(parts))]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["work"]) / str(os.getpid())  # each start of the container its own
    work.mkdir(parents=True)
    _run("ip", "link", "set", "lo", "up")
    for address in spec["addresses"]:
        _run("ip", "addr", "add", f"{address}/32", "dev", "lo")
    socket.sethostname(spec["hostname"])
    # The relay starts first, as root: it is the pod's network, not part of its container.
    relay_log = work / "relay.log"
    with relay_log.open("wb") as log:
        subprocess.Popen(
            # A mount namespace of its own (a copy of this one, before the volumes): an
            # emptyDir on the container's /tmp must not hide the other pods' sockets from it.
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "tests.helpers.pod_relay",
                spec["relay"],
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PYTHONPATH": spec["repo"], "PATH": os.environ.get("PATH", "")},
            preexec_fn=_die_with_the_container,
        )
    deadline = time.monotonic() + 30
    while b"relay ready" not in relay_log.read_bytes():
        if time.monotonic() > deadline:
            raise SystemExit(f"pod sandbox: the relay did not start:\n{relay_log.read_text()}")
        time.sleep(0.05)

    if spec["user"] not in (None, 0):
        expose(spec["expose"], work / "exposed")
    mounter = Mounter(work)
    hosts = work / "hosts"
    hosts.write_text(spec["hosts"])
    mounts = [(str(hosts), "/etc/hosts", True)] + [
        (m["source"], m["target"], m["readOnly"]) for m in spec["mounts"]
    ]
    # A mount over a directory that holds later sources (an emptyDir on /tmp, where the pod's
    # own files live) goes last, so those sources are still reachable when they are bound.
    sources = [s for s, _, _ in mounts]  # (list.sort empties the list while it sorts)
    mounts.sort(key=lambda m: any(_within(s, m[1]) for s in sources))
    # Every mount point first: an overlay made for one must not cover an earlier bind mount
    # (an overlay of /etc for /etc/steward/keys would hide the /etc/hosts bound before it).
    for source, target, _ in mounts:
        mounter.ensure(target, os.path.isfile(source))
    for source, target, read_only in mounts:
        mounter.bind(source, target, read_only)
    if spec["cwd"]:
        mounter.ensure(spec["cwd"], is_file=False)

    if spec["cwd"]:
        os.chdir(spec["cwd"])
    if spec["groups"] is not None:
        os.setgroups(spec["groups"])
    if spec["group"] is not None:
        os.setgid(spec["group"])
    if spec["user"] is not None:
        os.setuid(spec["user"])
    if spec["noNewPrivs"]:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as exc:  # what a runtime reports as StartError: the command is not there
        raise SystemExit(f"pod sandbox: cannot exec {argv[0]!r}: {exc}") from None


if __name__ == "__main__":
    main(sys.argv[1])
