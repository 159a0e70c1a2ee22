"""The project's own native library: native/ed25519 (Rust), the strict Ed25519 verifier the
ledger server, the controller and the auditor call through steward_ed25519.

``python -m infra.native build`` (scripts/setup runs it) builds the crate with cargo from the
crates in its Cargo.lock into the cache outside the repository, keyed by the hash of its
sources, the compiler's version and this CPU's features (it is built for this CPU:
``-C target-cpu=native`` lets curve25519-dalek use AVX-512 IFMA where the CPU has it, 25.5 µs
a signature against 43-47 µs with AVX2 alone, 2026-12-07), then installs the
library where steward_ed25519 looks for it: ``<sys.prefix>/lib/steward-native/``.
A build appears whole or not at all (it ends with a rename), so a killed build is redone.

Without cargo everything still works, through libsodium; ``build`` then says so and exits 1,
and ``status`` says which path this environment takes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from infra import InfraError, steward_cache

CRATE = Path(__file__).resolve().parent.parent / "native" / "ed25519"
LIBRARY_NAME = "libsteward_ed25519.so"


class NativeBuildError(InfraError):
    """The native library could not be built; the message says why (cargo's output's tail)."""


def log(msg: str) -> None:
    print(f"[native] {msg}", file=sys.stderr, flush=True)


def install_path(prefix: Path | None = None) -> Path:
    """Where steward_ed25519 finds the library for the interpreter at ``prefix``."""
    return (prefix or Path(sys.prefix)) / "lib" / "steward-native" / LIBRARY_NAME


def _cargo() -> str:
    for candidate in (shutil.which("cargo"), str(Path.home() / ".cargo" / "bin" / "cargo")):
        if candidate and Path(candidate).is_file():
            return candidate
    raise NativeBuildError(
        "cargo is not on PATH (nor in ~/.cargo/bin); it is needed to build native/ed25519. "
        "steward-audit still works without it, verifying through libsodium"
    )


def _cpu_features() -> bytes:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.encode()
    except OSError:
        pass
    return b"unknown"


def build_key(cargo: str) -> str:
    """Sources, compiler and CPU: a change of any of them is a new build."""
    h = hashlib.sha256()
    for path in sorted(p for p in CRATE.rglob("*") if p.is_file() and "target" not in p.parts):
        h.update(str(path.relative_to(CRATE)).encode() + b"\0" + path.read_bytes() + b"\0")
    rustc = Path(cargo).with_name("rustc")
    version = subprocess.run(
        [str(rustc) if rustc.is_file() else "rustc", "-vV"],
        capture_output=True,
        check=False,
    ).stdout
    h.update(version + b"\0" + _cpu_features())
    return h.hexdigest()[:16]


def build() -> Path:
    """The built library in the cache (building it if needed); its path."""
    cargo = _cargo()
    out_dir = steward_cache("native", f"ed25519-{build_key(cargo)}")
    built = out_dir / LIBRARY_NAME
    if built.is_file():
        return built
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = str(steward_cache("native", "target"))
    env["RUSTFLAGS"] = (env.get("RUSTFLAGS", "") + " -C target-cpu=native").strip()
    t0 = time.monotonic()
    log(f"building {CRATE.name} with {cargo}")
    proc = subprocess.run(
        [cargo, "build", "--release", "--locked", "--manifest-path", str(CRATE / "Cargo.toml")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise NativeBuildError(f"cargo build failed (exit {proc.returncode}):\n{tail}")
    produced = Path(env["CARGO_TARGET_DIR"]) / "release" / LIBRARY_NAME
    tmp = out_dir / f".{LIBRARY_NAME}.tmp"
    shutil.copyfile(produced, tmp)
    tmp.rename(built)
    log(f"built in {time.monotonic() - t0:.0f}s: {built}")
    return built


def install(prefix: Path | None = None) -> Path:
    """Build if needed, then put the library where the auditor looks; its installed path."""
    built = build()
    target = install_path(prefix)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{LIBRARY_NAME}.{os.getpid()}.tmp")
    shutil.copyfile(built, tmp)
    tmp.rename(target)  # a process that loaded the old one keeps its mapping
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.native",
        description=(
            "Build and install the native strict Ed25519 verifier (native/ed25519, Rust) that "
            "the ledger server, the controller and steward-audit use. Without it they verify "
            "through libsodium: same verdicts, slower."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (unless cached) and install into this environment")
    sub.add_parser("status", help="say which verifier this environment uses, and why")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            log(f"installed: {install()}")
        except NativeBuildError as exc:
            print(f"native: {exc}", file=sys.stderr)
            return 1
        return 0
    import steward_ed25519

    path = steward_ed25519.library_path()
    if steward_ed25519.LIBRARY is not None:
        print(f"native (native/ed25519, curve25519-dalek): {path}")
    else:
        why = "turned off ($STEWARD_ED25519_LIB is empty)" if path is None else f"none at {path}"
        print(f"libsodium: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
