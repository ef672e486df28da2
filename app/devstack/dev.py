"""`ahop dev`: the whole system on one machine — services, migrations, bucket, tenant, API and one worker."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.db import migrate
from app.db.engine import create_engine, create_session_factory
from app.devstack import demo_hosts
from app.devstack.errors import StackError
from app.devstack.postgres import stop_leftover as stop_leftover_postgres
from app.devstack.processes import ManagedProcess, clear_stale
from app.devstack.stack import LocalStack
from app.devstack.supervisor import Supervisor
from app.services.tokens import ensure_admin_token
from worker.protocol import DEFAULT_POOL, PING_JOB, deserialize, queue_name, serialize

DEFAULT_TENANT = "default"
API_HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
WORKER_SETTINGS = ("AHOP_REDIS_", "AHOP_S3_", "AHOP_WORKER_")
# Pid files under <state dir>/run, in the order a shutdown stops them; Postgres takes SIGINT ("fast" shutdown).
LEFTOVER_ORDER = (
    ("worker", signal.SIGTERM),
    ("api", signal.SIGTERM),
    ("s3", signal.SIGTERM),
    ("redis", signal.SIGTERM),
    ("postgres", signal.SIGINT),
)


@dataclass(frozen=True)
class DevOptions:
    state_dir: Path
    port: int
    durable: bool = True
    demo_hosts: int = 0
    """How many local SSH hosts to start and add to the default tenant's inventory (`app.devstack.demo_hosts`)."""


@contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """One `ahop dev` per state directory: a second one would start servers on the same data."""
    lock_file = open(state_dir / "dev.lock", "a+")  # noqa: SIM115  (held for the whole run)
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.close()
        raise StackError(f"another `ahop dev` is already running on {state_dir}") from None
    try:
        yield
    finally:
        lock_file.close()


def _stop_leftovers(state_dir: Path) -> list[str]:
    """Stop what an earlier launcher on this state directory left running (we hold its lock, so nothing is live).

    Our servers die with their launcher; this is for those of an older version, or left by any other means. Only
    processes whose pid file still matches their start time, and a PostgreSQL server whose postmaster.pid names a
    server on our data directory, are stopped; returns their names.
    """
    stopped = []
    for name, stop_signal in LEFTOVER_ORDER:
        if clear_stale(state_dir / "run" / f"{name}.pid", stop_signal) is not None:
            stopped.append(name)
    if stop_leftover_postgres(state_dir) is not None and "postgres" not in stopped:
        stopped.append("postgres")
    return stopped


def check_port_free(port: int) -> None:
    """Refuse a port another process listens on. SO_REUSEADDR as the API server itself binds: connections of an
    earlier run that wait out TIME-WAIT on the port do not keep a new run from starting."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((API_HOST, port))
        except OSError as exc:
            raise StackError(f"API: port {port} on {API_HOST} is in use ({exc.strerror}); pass --port") from exc


@contextmanager
def _database_step(url: str, what: str) -> Iterator[None]:
    """A start-up step on the database: any failure of it (refused, timed out, refused credentials, an SQL error)
    becomes one clear `StackError` naming the server, without its password, instead of a traceback."""
    try:
        yield
    except (OSError, SQLAlchemyError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise StackError(f"PostgreSQL at {shown}: could not {what} ({type(exc).__name__}: {exc})") from exc


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds secrets), replacing it atomically."""
    staging = path.with_name(path.name + ".tmp")
    descriptor = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    os.chmod(staging, 0o600)
    staging.replace(path)


async def _admin_token(database_url: str, known: str | None) -> str:
    """The default tenant's admin token: `known` while it is still valid, else a new one."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            issued = await ensure_admin_token(session, DEFAULT_TENANT, known)
    finally:
        await engine.dispose()
    return issued.secret


def _secret_key(key_file: Path) -> str:
    """The key that encrypts repository credentials on this local stack: made once, kept in the state dir."""
    if not key_file.exists():
        from cryptography.fernet import Fernet

        _write_private(key_file, Fernet.generate_key().decode() + "\n")
    return key_file.read_text().strip()


def _api_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=2) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _worker_answers(redis_url: str, wait: float) -> bool:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize)
    try:
        job = await pool.enqueue_job(PING_JOB, _queue_name=queue_name(DEFAULT_POOL))
        if job is None:
            return False
        result = await job.result(timeout=wait, poll_delay=0.05)
        return isinstance(result, dict) and result.get("pool") == DEFAULT_POOL
    finally:
        await pool.aclose()


DEV_ENV_KEYS = (
    "AHOP_DATABASE_URL",
    "AHOP_REDIS_URL",
    "AHOP_S3_ENDPOINT_URL",
    "AHOP_S3_BUCKET",
    "AHOP_S3_ACCESS_KEY_ID",
    "AHOP_S3_SECRET_ACCESS_KEY",
    "AHOP_S3_REGION",
    "AHOP_DATA_DIR",
    "AHOP_WORKER_ROOT",
    "AHOP_SECRET_KEYS",
    "AHOP_GIT_ALLOWED_SCHEMES",
    "AHOP_GIT_FILE_ROOTS",
)
"""What `ahop` commands run beside the stack need: `verify --repair` reads the server's mirrors (AHOP_DATA_DIR) and
opens repository credentials (AHOP_SECRET_KEYS); `worker verify` checks the local worker's store."""
AWS_CLI_KEYS = {
    "AWS_ENDPOINT_URL": "AHOP_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID": "AHOP_S3_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AHOP_S3_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION": "AHOP_S3_REGION",
}
"""The same S3 server and keys for the AWS CLI, so a blob can be checked by hand (`aws s3 cp … - | zstd -dc`)."""


def _aws_cli_config(state_dir: Path) -> Path:
    """An AWS CLI config for the local S3 server: path-style addressing, as our own client uses."""
    config = state_dir / "aws-config"
    config.write_text("[default]\ns3 =\n    addressing_style = path\n")
    return config


def _dev_env_text(env: Mapping[str, str], api_url: str, token: str, aws_config: Path) -> str:
    lines = [f"AHOP_API_URL={api_url}", f"AHOP_TOKEN={token}"]
    lines += [f"{key}={env[key]}" for key in DEV_ENV_KEYS if key in env]
    lines += [f"{aws}={env[ahop]}" for aws, ahop in AWS_CLI_KEYS.items() if env.get(ahop)]
    lines.append(f"AWS_CONFIG_FILE={aws_config}")
    return "\n".join(lines) + "\n"


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_dev(options: DevOptions, environ: Mapping[str, str], out: TextIO) -> int:
    """Bring the system up, report where it is, and run until SIGINT/SIGTERM; then stop what we started.

    Once up, an API or worker that exits is started again with backoff (`app.devstack.supervisor`); only an
    interrupt stops the stack."""
    if options.demo_hosts:
        demo_hosts.check_demo_hosts_possible()
    state_dir = options.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # SIGINT too: a background job of a non-interactive shell (a CI script, `make run &`) starts with SIGINT
    # ignored, and Python then installs no handler of its own; "Press Ctrl-C to stop" must hold however we started.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with _exclusive(state_dir):
        leftovers = _stop_leftovers(state_dir)
        if leftovers:
            out.write(f"stopped what an earlier run left behind: {', '.join(leftovers)}\n")
        check_port_free(options.port)
        dev_env_file = state_dir / "dev.env"
        dev_env_file.unlink(missing_ok=True)
        children: list[ManagedProcess] = []
        stack: LocalStack | None = None
        demo = ExitStack()
        try:
            stack = LocalStack.start(state_dir, environ, durable=options.durable)
            env = dict(stack.env)
            env.setdefault("AHOP_DATA_DIR", str(state_dir / "data"))
            env.setdefault("AHOP_WORKER_ROOT", str(state_dir / "worker"))
            env.setdefault("AHOP_WORKER_METRICS_HOST", "127.0.0.1")  # the local worker's /metrics stays local
            env.setdefault("AHOP_S3_REGION", "us-east-1")
            env.setdefault("AHOP_GIT_ALLOWED_SCHEMES", "https,ssh,file")  # local repositories by path, for trying it
            # ...but only from the user's own directories: never another tenant's mirror under the data dir.
            env.setdefault("AHOP_GIT_FILE_ROOTS", f"{Path.home()},{Path.cwd()}")
            env.setdefault("AHOP_SECRET_KEYS", _secret_key(state_dir / "secret-key"))
            # The key the server seals a job's secrets with for the workers (AHOP_WORKER_*: the worker gets it too).
            env.setdefault("AHOP_WORKER_SECRET_KEYS", _secret_key(state_dir / "worker-secret-key"))
            with _database_step(env["AHOP_DATABASE_URL"], "apply the migrations"):
                migrate.upgrade(env["AHOP_DATABASE_URL"])
            stack.ensure_bucket()
            token_file = state_dir / "admin-token"
            known = token_file.read_text().strip() if token_file.exists() else None
            with _database_step(env["AHOP_DATABASE_URL"], "issue the admin token"):
                token = asyncio.run(_admin_token(env["AHOP_DATABASE_URL"], known))
            if token != known:
                _write_private(token_file, token + "\n")
            api_url = f"http://{API_HOST}:{options.port}"
            base_env = {key: value for key, value in environ.items() if not key.startswith("AHOP_")}
            logs, run = state_dir / "logs", state_dir / "run"
            api = ManagedProcess.start(
                "API",
                [sys.executable, "-m", "ahop", "serve", "--host", API_HOST, "--port", str(options.port)],
                log_path=logs / "api.log",
                pid_file=run / "api.pid",
                env={**base_env, **env},
            )
            children.append(api)
            # The worker gets Redis, S3 and its own settings only: no database URL, no server secrets.
            worker_env = {key: value for key, value in env.items() if key.startswith(WORKER_SETTINGS)}
            worker = ManagedProcess.start(
                "worker",
                [sys.executable, "-m", "ahop", "worker"],
                log_path=logs / "worker.log",
                pid_file=run / "worker.pid",
                env={**base_env, **worker_env},
            )
            children.append(worker)
            api.wait_ready(lambda: _api_ready(api_url), where=api_url, timeout=READY_TIMEOUT)
            worker.wait_ready(
                lambda: asyncio.run(_worker_answers(env["AHOP_REDIS_URL"], 2.0)),
                where=f"pool {DEFAULT_POOL!r}",
                timeout=READY_TIMEOUT,
            )
            hosts = demo.enter_context(demo_hosts.demo_hosts(state_dir, options.demo_hosts))
            demo_hosts.register(api_url, token, hosts)
            _write_private(dev_env_file, _dev_env_text(env, api_url, token, _aws_cli_config(state_dir)))
            out.write(
                f"\nahop is running.\n"
                f"  API:      {api_url}\n"
                f"  Docs:     {api_url}/schema  (Swagger UI: {api_url}/schema/swagger)\n"
                f"  Token:    {token}   (tenant {DEFAULT_TENANT!r}, role admin)\n"
                f"  Env file: {dev_env_file}   (set -a; . {dev_env_file}; set +a)\n"
                f"  Logs:     {logs}/\n"
                f"{demo_hosts.banner(hosts)}"
                f"Press Ctrl-C to stop.\n"
            )
            out.flush()
            supervisor = Supervisor(children, out)  # the API or worker exiting is not a reason to stop the stack
            while True:
                supervisor.check()
                time.sleep(0.5)
        except KeyboardInterrupt:
            out.write("\nstopping…\n")
            return 0
        finally:
            # A second Ctrl-C must not cut the shutdown short and leave servers behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            dev_env_file.unlink(missing_ok=True)
            try:
                demo.close()
            finally:  # the servers stop even when a demo host's cleanup fails
                for child in reversed(children):
                    child.stop(timeout=20)
                if stack is not None:
                    stack.stop()
                _stop_leftovers(state_dir)  # anything an interrupt caught between its start and our books
