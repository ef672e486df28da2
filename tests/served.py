"""A real `ahop serve` process on the test's services, with its log, stopped by its pid when the test ends."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.app.conftest import server_env
from tests.waiting import until


@dataclass(frozen=True)
class Served:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def mark(self, client: httpx.AsyncClient, name: str) -> int:
        """Send a request the log will show, wait for its line, and answer where the log ends after it."""
        await client.get(f"{self.url}/health/live?mark={name}")

        async def logged() -> bool:
            return f"mark={name}" in self.text()

        await until(logged, f"the access line of mark {name}")
        return len(self.text())


@contextmanager
def serve(settings: AppSettings, tmp_path: Path, **overrides: str) -> Iterator[Served]:
    """`ahop serve` on the test's services (as `overrides` change them), without the control loop, so that only the
    test's requests write to the log. Stopped with SIGTERM at the end, and SIGKILL if that does not end it."""
    (port,) = free_ports(1)
    env = {**server_env(settings, tmp_path), "AHOP_CONTROL_LOOP": "false", **overrides}
    log_path = tmp_path / f"api-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ahop", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    served = Served(f"http://127.0.0.1:{port}", log_path, process)
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in served.text():
            assert process.poll() is None, served.text()
            assert time.monotonic() < deadline, f"ahop serve did not come up:\n{served.text()}"
            time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
