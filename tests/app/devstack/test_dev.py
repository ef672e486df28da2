"""`ahop dev` as a newcomer runs it: up, reachable through dev.env, stopped without leftovers, restartable."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from app.devstack.dev import API_HOST, check_port_free
from app.devstack.errors import StackError
from app.devstack.processes import free_ports
from app.devstack.stack import LocalStack
from tests.support.dev_runs import UP_TIMEOUT, clean_env, remove_root_database, running_dev, stopped


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    return {pid_file.stem: json.loads(pid_file.read_text())["pid"] for pid_file in (state_dir / "run").glob("*.pid")}


def _get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  (http to our own server)
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    remove_root_database(state)


def test_dev_starts_its_own_services_stops_them_all_and_restarts_on_the_same_data(state_dir: Path) -> None:
    with running_dev(state_dir, clean_env()) as (process, env):
        assert stat.S_IMODE((state_dir / "dev.env").stat().st_mode) == 0o600
        assert set(env) >= {
            "AHOP_API_URL",
            "AHOP_TOKEN",
            "AHOP_DATABASE_URL",
            "AHOP_REDIS_URL",
            "AHOP_S3_ENDPOINT_URL",
            "AHOP_S3_BUCKET",
            "AHOP_S3_ACCESS_KEY_ID",
            "AHOP_S3_SECRET_ACCESS_KEY",
            "AHOP_DATA_DIR",
            "AHOP_WORKER_ROOT",
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
        }
        assert env["AHOP_WORKER_ROOT"] == str(state_dir.resolve() / "worker")  # the worker `make run` started
        assert _get(env["AHOP_API_URL"] + "/health/ready") == (
            200,
            {"database": "ok", "redis": "ok", "s3": "ok"},
        )
        pids = _recorded_pids(state_dir)
        assert set(pids) == {"postgres", "redis", "s3", "api", "worker"}
        assert stopped(process, state_dir) == 0
    assert [name for name, pid in pids.items() if psutil.pid_exists(pid)] == []
    assert not (state_dir / "dev.env").exists()

    with running_dev(state_dir, clean_env()) as (_, again):
        assert again["AHOP_TOKEN"] == env["AHOP_TOKEN"]  # the same tenant and token: the same database
        assert again["AHOP_S3_ACCESS_KEY_ID"] == env["AHOP_S3_ACCESS_KEY_ID"]
        assert _get(again["AHOP_API_URL"] + "/health/ready")[0] == 200


def test_dev_with_given_services_starts_none_of_its_own(
    state_dir: Path, stack: LocalStack, database_url: str, bucket: str
) -> None:
    given = {
        **clean_env(),
        "AHOP_DATABASE_URL": database_url,
        "AHOP_REDIS_URL": stack.env["AHOP_REDIS_URL"],
        "AHOP_S3_ENDPOINT_URL": stack.env["AHOP_S3_ENDPOINT_URL"],
        "AHOP_S3_ACCESS_KEY_ID": stack.env["AHOP_S3_ACCESS_KEY_ID"],
        "AHOP_S3_SECRET_ACCESS_KEY": stack.env["AHOP_S3_SECRET_ACCESS_KEY"],
        "AHOP_S3_BUCKET": bucket,
    }
    with running_dev(state_dir, given) as (process, env):
        assert set(_recorded_pids(state_dir)) == {"api", "worker"}
        worker_environ = Path(f"/proc/{_recorded_pids(state_dir)['worker']}/environ").read_bytes().split(b"\0")
        worker_keys = {item.split(b"=", 1)[0].decode() for item in worker_environ if item.startswith(b"AHOP_")}
        assert worker_keys.isdisjoint({"AHOP_DATABASE_URL", "AHOP_SECRET_KEYS"}), worker_keys
        assert {"AHOP_REDIS_URL", "AHOP_S3_ENDPOINT_URL"} <= worker_keys
        for key in ("AHOP_DATABASE_URL", "AHOP_REDIS_URL", "AHOP_S3_ENDPOINT_URL", "AHOP_S3_BUCKET"):
            assert env[key] == given[key]
        assert _get(env["AHOP_API_URL"] + "/health/ready")[0] == 200
        assert stopped(process, state_dir, signal.SIGTERM) == 0


def test_dev_started_with_sigint_ignored_still_stops_on_sigint(state_dir: Path) -> None:
    """A background job of a non-interactive shell (a CI script, `make run &`) inherits SIGINT ignored."""
    with running_dev(state_dir, clean_env(), sigint_ignored=True) as (process, _):
        assert stopped(process, state_dir) == 0


def test_dev_interrupted_while_starting_leaves_nothing_running(tmp_path: Path, state_dir: Path) -> None:
    (port,) = free_ports(1)
    with open(tmp_path / "out", "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ahop", "dev", "--state-dir", str(state_dir), "--port", str(port)],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while not (state_dir / "run" / "s3.pid").exists():  # the servers are booting
            assert process.poll() is None, (tmp_path / "out").read_text()
            assert time.monotonic() < deadline, "ahop dev never started its servers"
            time.sleep(0.02)
        seen = _recorded_pids(state_dir)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=UP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert seen
    assert [name for name, pid in seen.items() if psutil.pid_exists(pid)] == []
    mentioning_state = [
        p.pid for p in psutil.process_iter(["cmdline"]) if str(state_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert mentioning_state == []


def test_a_port_left_in_time_wait_by_an_earlier_run_is_free_again() -> None:
    """`make run`, Ctrl-C, `make run` at once: the earlier API's closed connections wait out TIME-WAIT on the port."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((API_HOST, 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection((API_HOST, port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server closes first: its end of the connection waits in TIME-WAIT
            client.recv(1)
    states = {c.status for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
    assert psutil.CONN_TIME_WAIT in states
    check_port_free(port)  # no error: nothing listens there any more


def test_a_port_another_process_listens_on_is_refused_naming_it() -> None:
    with socket.socket() as listener:
        listener.bind((API_HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(StackError, match=f"API: port {port} on {API_HOST} is in use"):
            check_port_free(port)


def test_a_database_that_does_not_answer_ends_the_start_with_one_line_and_exit_3(state_dir: Path) -> None:
    (closed,) = free_ports(1)
    env = {**clean_env(), "AHOP_DATABASE_URL": f"postgresql://postgres:sekrit@127.0.0.1:{closed}/ahop"}
    (port,) = free_ports(1)
    started = subprocess.run(
        [sys.executable, "-m", "ahop", "dev", "--state-dir", str(state_dir), "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT,
    )
    assert started.returncode == 3, started.stderr
    assert started.stderr.splitlines() == [
        f"ahop: PostgreSQL at postgresql://postgres:***@127.0.0.1:{closed}/ahop: could not apply the migrations "
        f"(ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', {closed}))"
    ]
    assert "sekrit" not in started.stdout + started.stderr
    assert (state_dir / "run" / "redis.pid").exists() or (state_dir / "redis").exists()  # it had started Redis...
    mentioning_state = [
        p.pid for p in psutil.process_iter(["cmdline"]) if str(state_dir) in " ".join(p.info["cmdline"] or [])
    ]
    assert mentioning_state == []  # ...and stopped it, and S3, again
