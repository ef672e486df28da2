"""Real worker processes for end-to-end tests: `ahop worker` started with the worker's environment only."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil
from redis import Redis

from app.devstack.processes import ManagedProcess, tail
from app.devstack.redis import RedisServer
from worker.protocol import WORKERS_KEY
from worker.runner import DEFAULT_PATH

VENV_BIN = Path(sys.executable).parent
FAST = {
    "AHOP_WORKER_HEARTBEAT_INTERVAL": "0.2",
    "AHOP_WORKER_KILL_GRACE": "1",
    "AHOP_WORKER_CANCEL_POLL": "0.1",
    "AHOP_WORKER_SHUTDOWN_GRACE": "5",
    "AHOP_WORKER_POLL_DELAY": "0.02",
}


@dataclass
class Fleet:
    """Starts workers sharing the test's worker environment and stops exactly those it started."""

    env: dict[str, str]
    logs: Path
    started: dict[str, ManagedProcess] = field(default_factory=dict)

    def start(self, name: str, **settings: str) -> ManagedProcess:
        """Start worker `name` and wait for its first heartbeat."""
        process = self.launch(name, **settings)
        process.wait_ready(lambda: self.heartbeat(name) is not None, where=f"worker {name}", timeout=60)
        return process

    def launch(self, name: str, **settings: str) -> ManagedProcess:
        """Start worker `name` without waiting for it to be ready."""
        # ansible-playbook comes with the test tools; the system's interpreters stay first on the scripts' PATH.
        # Metrics are off unless a test asks for a port: workers side by side cannot share one.
        env = {
            **self.env,
            **FAST,
            "AHOP_WORKER_ID": name,
            "AHOP_WORKER_SCRIPT_PATH": f"{DEFAULT_PATH}:{VENV_BIN}",
            "AHOP_WORKER_METRICS_PORT": "0",
            **settings,
        }
        process = ManagedProcess.start(
            name,
            [sys.executable, "-m", "ahop", "worker"],
            log_path=self.logs / f"{name}.log",
            pid_file=self.logs / f"{name}.pid",
            env=env,
        )
        self.started[name] = process
        return process

    def heartbeat(self, name: str) -> dict[str, Any] | None:
        client = Redis.from_url(self.env["AHOP_REDIS_URL"])
        try:
            raw = cast(bytes | None, client.hget(WORKERS_KEY, name))
        finally:
            client.close()
        return json.loads(raw) if raw else None

    def wait_heartbeat(self, name: str, check: Any, *, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until `check(heartbeat)` holds; the bound only catches hangs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            beat = self.heartbeat(name)
            if beat is not None and check(beat):
                return beat
            time.sleep(0.1)
        raise AssertionError(f"worker {name}: {what} not seen within {timeout}s; log:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return tail(self.logs / f"{name}.log", 40)

    def stop_all(self) -> None:
        for process in self.started.values():
            process.stop()
        self.started.clear()


def alive(process: psutil.Process) -> bool:
    """Whether the process still runs (a zombie does not; a reused pid is another process)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextmanager
def fleet_on_own_redis(env: dict[str, str], directory: Path, *, durable: bool) -> Iterator[tuple[RedisServer, Fleet]]:
    """Workers on a Redis of the test's own, which the test may kill and restart; both stopped at the end."""
    server = RedisServer.start(directory / "own-redis", durable=durable)
    fleet = Fleet({**env, "AHOP_REDIS_URL": server.url()}, directory / "own-logs")
    try:
        yield server, fleet
    finally:
        fleet.stop_all()
        server.stop()
