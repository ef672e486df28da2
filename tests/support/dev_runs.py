"""`ahop dev` started as a newcomer starts it (`make run`), for tests: up, its dev.env read, always stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from app.devstack.postgres import ROOT_HOME
from app.devstack.processes import free_ports

UP_TIMEOUT = 180.0  # generous: only catches a hang


def stopped(process: subprocess.Popen[str], state_dir: Path, stop_signal: signal.Signals = signal.SIGINT) -> int:
    """Stop `ahop dev` with `stop_signal` and return its exit code. One that does not end within the bound fails
    the test naming what still runs and the last lines of each server's log, so a slow stop shows which server."""
    process.send_signal(stop_signal)
    try:
        return process.wait(timeout=UP_TIMEOUT)
    except subprocess.TimeoutExpired:
        still = [f"{child.pid} {child.name()} {child.status()}" for child in psutil.Process(process.pid).children()]
        logs = {log.name: log.read_text(errors="replace")[-400:] for log in sorted((state_dir / "logs").glob("*.log"))}
        what = f"ahop dev still runs {UP_TIMEOUT:g}s after {stop_signal.name}: {still}; logs: {logs}"
        raise AssertionError(what) from None


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def clean_env() -> dict[str, str]:
    """This process' environment without any AHOP_ setting: what a newcomer's shell has."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}


@contextmanager
def running_dev(
    state_dir: Path, env: dict[str, str], *, sigint_ignored: bool = False, options: tuple[str, ...] = ()
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """Start `ahop dev` (with `options` besides its state dir and port), wait until it has written dev.env, yield
    it; always stop it and wait for it. What it prints goes to `state_dir.parent / "ahop-dev-<n>.out"`.

    `sigint_ignored` starts it as a non-interactive shell starts a background job: with SIGINT ignored."""
    (port,) = free_ports(1)
    output = state_dir.parent / f"ahop-dev-{time.monotonic_ns()}.out"
    argv = [sys.executable, "-m", "ahop", "dev", "--state-dir", str(state_dir), "--port", str(port), *options]
    if sigint_ignored:
        argv = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *argv]
    with open(output, "w") as out:
        process = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while "ahop is running." not in output.read_text():
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "ahop dev did not come up"
            time.sleep(0.2)
        yield process, read_env_file(state_dir / "dev.env")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=UP_TIMEOUT)


def remove_root_database(state_dir: Path) -> None:
    """As root, `ahop dev` keeps its database under ROOT_HOME (linked from the state dir): remove it too."""
    link = state_dir / "postgres"
    if link.is_symlink() and link.resolve().parent.parent == ROOT_HOME:
        shutil.rmtree(link.resolve().parent, ignore_errors=True)  # gone already when it was not durable


def recorded_pid(state_dir: Path, name: str) -> int | None:
    """The pid `ahop dev` recorded for its process `name`, if it has recorded one yet."""
    try:
        return int(json.loads((state_dir / "run" / f"{name}.pid").read_text())["pid"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def answers_ready(api_url: str) -> bool:
    """Whether the API at `api_url` answers its readiness check with a 200."""
    try:
        with urllib.request.urlopen(api_url + "/health/ready", timeout=10) as response:  # noqa: S310  (our own server)
            return bool(response.status == 200)
    except OSError:  # not listening yet
        return False
