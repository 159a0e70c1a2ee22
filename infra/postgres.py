"""A throwaway PostgreSQL server on this machine, from Debian's packages.

``initdb`` into a temporary directory, listen on a free port on 127.0.0.1 only (unix socket in
the same temporary directory), ``fsync=on`` unless asked otherwise, trust authentication (the
server is reachable from this machine only and lives as long as the tests). PostgreSQL refuses
to run as root, so when we are root the server runs as the ``postgres`` user (created if absent).

Python API::

    with PostgresServer() as pg:
        pg.url                         # postgresql+psycopg://steward@127.0.0.1:PORT/postgres
        url = pg.create_database("t1")  # a fresh database, its URL
        pg.drop_database("t1")

CLI: ``python -m infra.postgres bindir | install``. Binaries are found with ``pg_config
--bindir`` or under /usr/lib/postgresql/<version>/bin; ``scripts/install-postgres`` installs
them (``apt-get install -y postgresql``) when missing.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from infra import InfraError
from infra.processes import free_port

SUPERUSER = "steward"
OS_USER = "postgres"  # who runs the server when we are root
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install-postgres"


class PostgresInfraError(InfraError):
    """Installing, starting or stopping the local PostgreSQL failed; the message says why."""


# --------------------------------------------------------------------------- binaries


def _has_server(bindir: Path) -> bool:
    return all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres live, or None when the server is not installed."""
    env = os.environ.get("STEWARD_PG_BINDIR")
    if env and _has_server(Path(env)):
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10
            )
            candidate = Path(out.stdout.strip())
            if out.returncode == 0 and _has_server(candidate):
                return candidate

    # Debian puts the server outside PATH; pg_config may come from libpq-dev alone.
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    found = sorted((p for p in _DEBIAN_ROOT.glob("*/bin") if _has_server(p)), key=version)
    return found[-1] if found else None


def install() -> Path:
    """Install the server with scripts/install-postgres when missing; return its bindir."""
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    if not _INSTALL_SCRIPT.is_file():
        raise PostgresInfraError(
            f"PostgreSQL is not installed and {_INSTALL_SCRIPT.name} is missing"
        )
    result = subprocess.run([str(_INSTALL_SCRIPT)], capture_output=True, text=True)
    bindir = find_bindir()
    if result.returncode != 0 or bindir is None:
        raise PostgresInfraError(
            f"scripts/install-postgres exited {result.returncode} and the server binaries are "
            f"{'still missing' if bindir is None else 'present'}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return bindir


# --------------------------------------------------------------------------- helpers


def _is_root() -> bool:
    return os.geteuid() == 0


def _ensure_os_user() -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                OS_USER,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(OS_USER)
    return entry.pw_uid, entry.pw_gid


def _as_server_user(argv: list[str]) -> list[str]:
    if not _is_root():
        return argv
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", OS_USER, "--", *argv]
    # `su -c` takes one shell string.
    return ["su", OS_USER, "-s", "/bin/sh", "-c", " ".join(_shell_quote(a) for a in argv)]


def _shell_quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# --------------------------------------------------------------------------- the server


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; a context manager."""

    def __init__(
        self,
        *,
        fsync: bool = True,
        base_dir: Path | str | None = None,
        port: int | None = None,
        bindir: Path | None = None,
    ) -> None:
        self.fsync = fsync
        self._base_dir_arg = Path(base_dir) if base_dir is not None else None
        self.port = port or 0
        self._bindir = bindir
        self.base_dir: Path | None = None
        self._owns_base = False
        self._running = False

    # -- locations

    @property
    def data_dir(self) -> Path:
        return self._base() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._base() / "sock"

    @property
    def log_file(self) -> Path:
        return self._base() / "server.log"

    def _base(self) -> Path:
        if self.base_dir is None:
            raise PostgresInfraError("the server was not started")
        return self.base_dir

    # -- URLs

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_for("postgres")

    # -- lifecycle

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> PostgresServer:
        if self._running:
            return self
        bindir = self._bindir or find_bindir()
        if bindir is None:
            raise PostgresInfraError(
                "PostgreSQL server binaries not found (pg_config --bindir, /usr/lib/postgresql/*/bin); "
                "run scripts/install-postgres"
            )
        self._bindir = bindir
        self._prepare_dirs()
        if not self.port:
            self.port = free_port()
        try:
            self._run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                    "--locale",
                    "C",
                    "--no-instructions",
                ],
                "initdb",
                timeout=120,
            )
        except BaseException:
            self._remove_base()
            raise
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-c fsync={'on' if self.fsync else 'off'}",
                f"-c synchronous_commit={'on' if self.fsync else 'off'}",
                f"-c full_page_writes={'on' if self.fsync else 'off'}",
                "-c max_connections=200",
            ]
        )
        self._running = True  # from here on stop() has something to clean up
        atexit.register(self.stop)
        try:
            self._run(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                "pg_ctl start",
                timeout=timeout + 10,
            )
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if not self._running:
            return
        self._running = False
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        assert self._bindir is not None
        stopped = False
        if (self.data_dir / "postmaster.pid").exists():
            try:
                self._run(
                    [
                        str(self._bindir / "pg_ctl"),
                        "-D",
                        str(self.data_dir),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        str(int(timeout)),
                        "stop",
                    ],
                    "pg_ctl stop",
                    timeout=timeout + 10,
                )
                stopped = True
            except PostgresInfraError:
                stopped = False
            if not stopped:
                self._kill_postmaster()
        self._remove_base()

    def _remove_base(self) -> None:
        if self._owns_base and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    # -- databases

    def create_database(self, name: str) -> str:
        self._check_name(name)
        self._admin(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        self._check_name(name)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME_RE.match(name):
            raise PostgresInfraError(f"database name {name!r} must match {_NAME_RE.pattern}")

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(sql.encode())  # names are checked above

    def _prepare_dirs(self) -> None:
        if self._base_dir_arg is not None:
            self.base_dir = self._base_dir_arg
            self.base_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.base_dir = Path(tempfile.mkdtemp(prefix="steward-pg-"))
            self._owns_base = True
        self.socket_dir.mkdir(exist_ok=True)
        if _is_root():
            uid, gid = _ensure_os_user()
            for path in (self.base_dir, self.socket_dir):
                os.chown(path, uid, gid)
            # The server user must reach the directory through every parent.
            probe = subprocess.run(
                _as_server_user(["test", "-w", str(self.base_dir)]), capture_output=True
            )
            if probe.returncode != 0:
                raise PostgresInfraError(
                    f"user {OS_USER} cannot write {self.base_dir}: a parent directory is closed to it; "
                    "pass base_dir= (or set TMPDIR) to a directory every user can traverse"
                )

    def _run(self, argv: list[str], what: str, *, timeout: float) -> None:
        try:
            result = subprocess.run(
                _as_server_user(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self._base(),
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresInfraError(
                f"{what} did not finish in {timeout:.0f} s\n{_tail(self.log_file)}"
            ) from exc
        if result.returncode != 0:
            raise PostgresInfraError(
                f"{what} exited {result.returncode}:\n{result.stdout[-1500:]}{result.stderr[-1500:]}\n"
                f"server log:\n{_tail(self.log_file)}"
            )

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=self.port,
                    user=SUPERUSER,
                    dbname="postgres",
                    connect_timeout=5,
                ) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise PostgresInfraError(
            f"PostgreSQL on port {self.port} not ready: {last}\n{_tail(self.log_file)}"
        )

    def _kill_postmaster(self) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown; children follow the postmaster
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.postgres")
    parser.add_argument("command", choices=["bindir", "install"])
    args = parser.parse_args(argv)
    try:
        bindir = install() if args.command == "install" else find_bindir()
    except PostgresInfraError as exc:
        print(exc, file=sys.stderr)
        return 1
    if bindir is None:
        print("PostgreSQL server binaries not found", file=sys.stderr)
        return 1
    print(bindir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
