"""Small Go programs the tests run against Steward: third-party tools at pinned versions, and
the project's own Go checkers, each built once into a cache outside the repository.

Third-party tools (``TOOLS``) are built with ``go install module/cmd@version`` from the Go module
proxy, like the Kubernetes binaries (infra/kube_build.py). A project Go program (a directory with
a go.mod, e.g. a client written against someone else's library) is built by ``build_local``,
keyed by the hash of its sources, so an edit rebuilds it and an unchanged tree never does.

``python -m infra.go_tools build`` builds every pinned tool (scripts/setup calls it);
``python -m infra.go_tools path NAME`` prints where one is.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra import InfraError, steward_cache
from infra.go_build import go_env, run_go


class GoToolError(InfraError):
    """A Go tool could not be built; the message names it and ends with the build log's tail."""


@dataclass(frozen=True)
class GoTool:
    """A main package from the Go module proxy, pinned: ``go install {package}@{version}``."""

    name: str
    package: str
    version: str


# torchwood v0.6.1: the newest that this machine's Go (1.26) builds; later ones need Go 1.27.
TORCHWOOD_VERSION = "v0.6.1"
TOOLS: dict[str, GoTool] = {
    tool.name: tool
    for tool in (
        GoTool("litewitness", "filippo.io/torchwood/cmd/litewitness", TORCHWOOD_VERSION),
        GoTool("witnessctl", "filippo.io/torchwood/cmd/witnessctl", TORCHWOOD_VERSION),
    )
}


def go_log(msg: str) -> None:
    print(f"[go-tools] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return steward_cache("go-tools")


def tool_path(name: str) -> Path:
    """Where the pinned tool ``name`` is (or will be) built; it may not exist yet."""
    tool = _tool(name)
    return cache_root() / f"{tool.name}@{tool.version}" / tool.name


def install(name: str) -> Path:
    """Build the pinned tool ``name`` unless it is already in the cache; return its path."""
    tool = _tool(name)

    def build(target: Path) -> None:
        work = target.parent / "build"
        env = go_env()
        env["GOBIN"] = str(work / "bin")
        run_go(
            ["go", "install", "-trimpath", "-ldflags", "-s -w", f"{tool.package}@{tool.version}"],
            work,
            tool.name,
            log=go_log,
            error=GoToolError,
            env=env,
        )
        (work / "bin" / tool.name).rename(target)

    return _build_once(tool_path(name), f"{tool.package}@{tool.version}", build)


def build_local(source: Path, name: str) -> Path:
    """Build the Go program in ``source`` (a directory with go.mod and go.sum) into the cache,
    keyed by the hash of its files; return the binary's path."""
    digest = _tree_hash(source)

    def build(target: Path) -> None:
        tmp = target.parent / f".{name}.tmp"
        build_dir = target.parent / "build"
        # Built from a copy, so a build never writes into the checkout (go.sum updates, logs).
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.copytree(source, build_dir)
        run_go(
            ["go", "build", "-mod=mod", "-trimpath", "-o", str(tmp), "."],
            build_dir,
            name,
            log=go_log,
            error=GoToolError,
        )
        tmp.rename(target)

    return _build_once(cache_root() / "local" / f"{name}-{digest[:16]}" / name, source.name, build)


def _build_once(target: Path, what: str, build: Callable[[Path], None]) -> Path:
    """``target`` if it is there, else ``build(target)`` under the directory's lock. Builds end
    with a rename into ``target``, so a tool appears whole or not at all (a build killed
    half-way leaves nothing that looks done)."""
    if target.is_file():
        return target
    _need_go()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent):
        if target.is_file():
            return target
        t0 = time.monotonic()
        go_log(f"{target.name}: building {what}")
        build(target)
        go_log(f"{target.name}: done in {time.monotonic() - t0:.0f}s")
    return target


def _tool(name: str) -> GoTool:
    try:
        return TOOLS[name]
    except KeyError:
        raise GoToolError(f"no Go tool named {name!r}; known: {', '.join(sorted(TOOLS))}") from None


def _need_go() -> None:
    if shutil.which("go") is None:
        raise GoToolError("the go toolchain is not on PATH; it is needed to build the Go tools")


class _locked:
    """Holds an exclusive lock on ``directory``: two builds at once (two test sessions) would
    race on the same output; the second waits, then finds the first one's binary."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / ".build.lock"

    def __enter__(self) -> None:
        self._file = self._path.open("w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            go_log(f"another build in {self._path.parent.name} is running; waiting for it")
            fcntl.flock(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _tree_hash(source: Path) -> str:
    if not (source / "go.mod").is_file():
        raise GoToolError(f"{source}: not a Go module (no go.mod)")
    h = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if path.suffix in {".go", ".mod", ".sum"}:
            h.update(str(path.relative_to(source)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.go_tools",
        description="Build the pinned third-party Go tools the tests run (litewitness, witnessctl).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build every pinned tool into the cache (skips what is there)")
    path = sub.add_parser("path", help="print the path of one tool, building it if needed")
    path.add_argument("name", choices=sorted(TOOLS))
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name in TOOLS:
                go_log(f"{name}: {install(name)}")
        else:
            print(install(args.name))
    except GoToolError as exc:
        print(f"go-tools: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
