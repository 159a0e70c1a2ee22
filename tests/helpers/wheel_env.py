"""Steward as a platform team installs it: the project's built wheel in a fresh virtual
environment outside the checkout, the same file set k8s/Dockerfile puts in the image.

``installed_wheel()`` builds the wheel (``pip wheel --no-deps`` from a copy of the sources, its
build dependencies and the runtime ones taken offline from ``$STEWARD_CACHE/wheels``), installs
it into a virtual environment under ``$STEWARD_CACHE/wheel-envs/<content hash>`` and returns
where both are. The environment is kept per hash of the sources, so a second run (or a second
test) costs nothing; a lock file keeps two sessions from building the same one at once.
``wheel_problems`` names what a wheel lacks that the programs need at run time.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from infra import steward_cache

REPO = Path(__file__).resolve().parents[2]
BUILD_FILES = ("pyproject.toml", "README.md")


def _packages() -> tuple[str, ...]:
    """What pyproject.toml packages: the top-level packages its `packages.find` include names.

    Read from it, not listed here: a list of its own missed `monitor` and `steward_ed25519`,
    and the wheel's controller then failed at its first import."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        include = tomllib.load(fh)["tool"]["setuptools"]["packages"]["find"]["include"]
    return tuple(
        sorted(
            p.name
            for p in REPO.iterdir()
            if (p / "__init__.py").is_file() and any(fnmatch(p.name, pat) for pat in include)
        )
    )


PACKAGES = _packages()


@dataclass(frozen=True)
class WheelEnvironment:
    """A built wheel and the virtual environment it is installed in."""

    wheel: Path
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def program(self, name: str) -> Path:
        return self.bin / name

    def env(self) -> dict[str, str]:
        """This process's environment without anything that would import the checkout."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env


def console_scripts() -> dict[str, str]:
    """The `[project.scripts]` of pyproject.toml: every program the wheel must install."""
    with (REPO / "pyproject.toml").open("rb") as fh:
        scripts: dict[str, str] = tomllib.load(fh)["project"]["scripts"]
    return scripts


def source_files() -> list[Path]:
    """The files the wheel is built from, relative to the repository, in a stable order."""
    files = [Path(name) for name in BUILD_FILES]
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.append(path.relative_to(REPO))
    return files


def content_hash(files: list[Path]) -> str:
    digest = hashlib.sha256(sys.version.encode())
    for rel in files:
        digest.update(str(rel).encode() + b"\0" + (REPO / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def wheels_dir() -> Path:
    """The wheels scripts/setup keeps (pip's downloads), used offline as the package index."""
    return steward_cache("wheels")


def _run(argv: list[str], what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=900, env=_clean_env()
    )
    if out.returncode != 0:
        raise RuntimeError(
            f"{what} failed ({out.returncode}): {' '.join(argv)}\n{out.stdout[-3000:]}\n"
            f"{out.stderr[-3000:]}"
        )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build_wheel(files: list[Path], out_dir: Path) -> Path:
    """`pip wheel --no-deps` from a copy of the sources (the build writes build/ and *.egg-info
    next to them, which must not land in the checkout), offline."""
    with tempfile.TemporaryDirectory(prefix="steward-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        for rel in files:
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-index",
                "--find-links",
                str(wheels_dir()),
                "--wheel-dir",
                str(out_dir),
                str(src),
            ],
            "building the wheel",
        )
    (wheel,) = out_dir.glob("steward-*.whl")
    return wheel


def wheel_problems(wheel: Path) -> list[str]:
    """What the wheel lacks: a package pyproject.toml names, the generated gRPC package, the
    schemas, the KWOK stages, every console script; an empty list when it has them all."""
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(
            (zf.read(n).decode() for n in names if n.endswith("entry_points.txt")), ""
        )
    needed = [f"{package}/__init__.py" for package in PACKAGES]
    needed += [str(p.relative_to(REPO)) for p in sorted((REPO / "steward").rglob("*.py"))]
    needed += [str(p.relative_to(REPO)) for p in sorted((REPO / "ledger" / "schemas").glob("*"))]
    needed += [str(p.relative_to(REPO)) for p in sorted((REPO / "infra" / "kube_stages").glob("*"))]
    problems = [f"missing {name}" for name in needed if name not in names]
    for script, target in console_scripts().items():
        if f"{script} = {target}" not in entry_points:
            problems.append(f"no console script {script} = {target}")
    return problems


def installed_wheel() -> WheelEnvironment:
    """The wheel of the current sources, installed in its own virtual environment (cached)."""
    files = source_files()
    root = steward_cache("wheel-envs", content_hash(files))
    root.parent.mkdir(parents=True, exist_ok=True)
    venv, stamp = root / "venv", root / "installed"
    with (root.parent / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            shutil.rmtree(root, ignore_errors=True)
            (root / "dist").mkdir(parents=True)
            wheel = build_wheel(files, root / "dist")
            # The machine's interpreter, not the one running the tests (which may be a venv's).
            base = getattr(sys, "_base_executable", sys.executable)
            _run([base, "-m", "venv", str(venv)], "creating the virtual environment")
            _run(
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--no-index",
                    "--find-links",
                    str(wheels_dir()),
                    str(wheel),
                ],
                "installing the wheel",
            )
            stamp.write_text(wheel.name + "\n")
        wheel = root / "dist" / stamp.read_text().strip()
    _prune(root.parent, keep=root)
    return WheelEnvironment(wheel, venv)


def _prune(parent: Path, keep: Path, newest: int = 3) -> None:
    """Remove environments of older sources (300 MB each), all but the ``newest`` few and the one
    in use; one another session holds (its lock) is left alone."""
    envs = sorted(
        (p for p in parent.iterdir() if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in envs[newest - 1 :]:
        with (parent / f"{old.name}.lock").open("w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(old, ignore_errors=True)
