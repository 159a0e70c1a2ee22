"""The local control plane's binaries: their versions, their cache, and building them from Go modules.

``build()`` compiles etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and
KWOK from the Go module proxy into a cache outside the repository (``bin_dir``), skipped when a
stamp says they are all there. infra/kube_cluster.py runs them; ``python -m infra.kube build`` is
the command line.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from infra import InfraError, steward_cache
from infra.go_build import go_env, run_go

KUBE_VERSION = os.environ.get("STEWARD_KUBE_VERSION", "v1.35.4")
ETCD_VERSION = os.environ.get("STEWARD_ETCD_VERSION", "v3.6.16")
KWOK_VERSION = os.environ.get("STEWARD_KWOK_VERSION", "v0.8.0")

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ALL_BINARIES = (*KUBE_COMPONENTS, "etcd", "kwok")


class KubeInfraError(InfraError):
    """The local control plane could not be built or started; the message says which part."""


def kube_log(msg: str) -> None:
    """A progress line of the local control plane (build, start, stop) on stderr."""
    print(f"[kube] {msg}", file=sys.stderr, flush=True)


def cache_root() -> Path:
    return steward_cache("kube")


def bin_dir(version: str = KUBE_VERSION) -> Path:
    return cache_root() / version / "bin"


def _stamp(version: str) -> Path:
    return bin_dir(version) / ".complete.json"


def binaries_present(version: str = KUBE_VERSION) -> bool:
    bd = bin_dir(version)
    return _stamp(version).is_file() and all((bd / b).is_file() for b in ALL_BINARIES)


def _run_go(args: Sequence[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    return run_go(args, cwd, what, log=kube_log, error=KubeInfraError, env=env)


def _download_json(module: str, cwd: Path) -> dict[str, str]:
    cwd.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=cwd,
        env=go_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        info: dict[str, str] = json.loads(out.stdout)
    except json.JSONDecodeError as exc:
        raise KubeInfraError(f"go mod download {module} failed: {out.stderr.strip()}") from exc
    if info.get("Error") or out.returncode != 0:
        raise KubeInfraError(f"go mod download {module} failed: {info.get('Error') or out.stderr}")
    return info


def _parse_gomod(text: str) -> tuple[str | None, str | None, list[tuple[str, str]]]:
    """Return (go line, godebug line, [(module, local path)]) for local-path replaces."""
    go_line = godebug = None
    local: list[tuple[str, str]] = []
    in_replace = False
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if line.startswith("go ") and go_line is None:
            go_line = line
        elif line.startswith("godebug ") and godebug is None:
            godebug = line
        if line == "replace (":
            in_replace = True
            continue
        if in_replace and line == ")":
            in_replace = False
            continue
        if in_replace or line.startswith("replace "):
            spec = line.removeprefix("replace ").strip()
            if "=>" not in spec:
                continue
            left, right = (s.strip() for s in spec.split("=>", 1))
            mod = left.split()[0]
            target = right.split()
            if target and target[0].startswith("."):
                local.append((mod, target[0]))
    return go_line, godebug, local


def _write_wrapper(
    work: Path,
    name: str,
    require: str,
    version: str,
    replaces: list[str],
    go_line: str | None,
    godebug: str | None,
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module steward.build/{name}", "", go_line or "go 1.25", ""]
    if godebug:
        lines += [godebug, ""]
    lines += [f"require {require} {version}", "", "replace ("]
    lines += [f"\t{r}" for r in replaces]
    lines += [")", ""]
    (work / "go.mod").write_text("\n".join(lines))


def _build_kube(version: str, work: Path, bd: Path, parallel: str) -> None:
    info = _download_json(f"k8s.io/kubernetes@{version}", work.parent)
    go_line, godebug, local = _parse_gomod(Path(info["GoMod"]).read_text())
    major, minor, patch = version.lstrip("v").split(".")[:3]
    staging_version = f"v0.{minor}.{patch}"
    replaces = [
        f"{mod} => {mod} {staging_version}" for mod, path in local if path.startswith("./staging/")
    ]
    if not replaces:
        raise KubeInfraError(
            f"k8s.io/kubernetes@{version}: no staging replaces found in its go.mod"
        )
    _write_wrapper(work, "kube", "k8s.io/kubernetes", version, replaces, go_line, godebug)
    kube_log(
        f"wrapper for k8s.io/kubernetes {version}: {len(replaces)} staging modules "
        f"pinned to {staging_version}" + (f", {godebug}" if godebug else "")
    )
    build_date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ldflags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        ldflags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={build_date}",
        ]
    ldflags.append("-s -w")
    for comp in KUBE_COMPONENTS:
        if (bd / comp).is_file():
            kube_log(f"{comp}: already built, skipping")
            continue
        t0 = time.monotonic()
        kube_log(f"{comp}: building")
        tmp = bd / f".{comp}.tmp"
        _run_go(
            [
                "go",
                "build",
                "-mod=mod",
                "-p",
                parallel,
                "-trimpath",
                "-ldflags",
                " ".join(ldflags),
                "-o",
                str(tmp),
                f"k8s.io/kubernetes/cmd/{comp}",
            ],
            work,
            comp,
        )
        tmp.rename(bd / comp)
        kube_log(f"{comp}: done in {time.monotonic() - t0:.0f}s")


def _build_etcd(version: str, work: Path, bd: Path, parallel: str) -> None:
    if (bd / "etcd").is_file():
        kube_log("etcd: already built, skipping")
        return
    t0 = time.monotonic()
    kube_log(f"etcd {version}: building")
    info = _download_json(f"go.etcd.io/etcd/server/v3@{version}", work.parent)
    go_line, godebug, local = _parse_gomod(Path(info["GoMod"]).read_text())
    # The server's go.mod points its sibling modules (api, client, pkg, ...) at ../; pin each
    # to the same published release instead.
    # Its other local replaces (go.etcd.io/etcd, tests => ./FORBIDDEN_DEPENDENCY) are guards
    # against importing those modules, not real dependencies: leave them out.
    replaces = [f"{mod} => {mod} {version}" for mod, path in local if path.startswith("../")]
    _write_wrapper(work, "etcd", "go.etcd.io/etcd/server/v3", version, replaces, go_line, godebug)
    tmp = bd / ".etcd.tmp"
    _run_go(
        [
            "go",
            "build",
            "-mod=mod",
            "-p",
            parallel,
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(tmp),
            "go.etcd.io/etcd/server/v3",
        ],
        work,
        "etcd",
    )
    tmp.rename(bd / "etcd")
    kube_log(f"etcd: done in {time.monotonic() - t0:.0f}s")


def _build_kwok(version: str, work: Path, bd: Path, parallel: str) -> None:
    if (bd / "kwok").is_file():
        kube_log("kwok: already built, skipping")
        return
    t0 = time.monotonic()
    kube_log(f"kwok {version}: building")
    work.mkdir(parents=True, exist_ok=True)
    env = go_env()
    env["GOBIN"] = str(bd)
    _run_go(
        [
            "go",
            "install",
            "-p",
            parallel,
            "-trimpath",
            "-ldflags",
            "-s -w",
            f"sigs.k8s.io/kwok/cmd/kwok@{version}",
        ],
        work,
        "kwok",
        env,
    )
    kube_log(f"kwok: done in {time.monotonic() - t0:.0f}s")


def build(version: str = KUBE_VERSION, parallel: int | None = None) -> Path:
    """Build every binary into the cache unless the stamp says it is complete; return bin dir."""
    bd = bin_dir(version)
    if binaries_present(version):
        kube_log(f"binaries for {version} present in {bd} (stamp found), nothing to build")
        return bd
    if shutil.which("go") is None:
        raise KubeInfraError(
            "the go toolchain is not on PATH; it is needed to build the control plane"
        )
    bd.mkdir(parents=True, exist_ok=True)
    # Two builds at once (two test sessions, CI and a person) would race on the same outputs:
    # the second waits for the first, then finds the stamp.
    with (cache_root() / version / ".build.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            kube_log("another build of these binaries is running; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if binaries_present(version):
            kube_log(f"binaries for {version} present in {bd} (built meanwhile)")
            return bd
        _build_all(version, bd, str(parallel or int(os.environ.get("STEWARD_GO_BUILD_P", "2"))))
    return bd


def _build_all(version: str, bd: Path, p: str) -> None:
    work = cache_root() / version / "build"
    t0 = time.monotonic()
    kube_log(
        f"building Kubernetes {version}, etcd {ETCD_VERSION}, kwok {KWOK_VERSION} "
        f"into {bd} (go build -p {p})"
    )
    _build_kube(version, work / "kube", bd, p)
    _build_etcd(ETCD_VERSION, work / "etcd", bd, p)
    _build_kwok(KWOK_VERSION, work / "kwok", bd, p)
    total = time.monotonic() - t0
    _stamp(version).write_text(
        json.dumps(
            {
                "kubernetes": version,
                "etcd": ETCD_VERSION,
                "kwok": KWOK_VERSION,
                "seconds": round(total),
                "built_at": dt.datetime.now(dt.UTC).isoformat(),
            },
            indent=2,
        )
        + "\n"
    )
    kube_log(f"all binaries built in {total:.0f}s ({total / 60:.1f} min)")
