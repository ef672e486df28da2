"""A real `ahop serve` process on the test's services, with its log, stopped by its pid when the test ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.support.seal import WORKER_SECRET_KEYS
from tests.support.waiting import until


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


def server_env(settings: AppSettings, tmp_path: Path) -> dict[str, str]:
    """The environment of a real `ahop serve` process on the test's services: no other AHOP_ setting, its own
    data directory and keys, local repositories allowed under the test's directory."""
    location = settings.s3_location()
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("AHOP_")},
        "AHOP_DATABASE_URL": settings.database_url,
        "AHOP_REDIS_URL": settings.redis_url,
        "AHOP_S3_ENDPOINT_URL": location.endpoint_url or "",
        "AHOP_S3_BUCKET": location.bucket,
        "AHOP_S3_ACCESS_KEY_ID": location.access_key_id or "",
        "AHOP_S3_SECRET_ACCESS_KEY": location.secret_access_key or "",
        "AHOP_DATA_DIR": str(tmp_path / "server"),
        "AHOP_GIT_ALLOWED_SCHEMES": "https,ssh,file",
        "AHOP_GIT_FILE_ROOTS": str(tmp_path),
        "AHOP_SECRET_KEYS": Fernet.generate_key().decode(),
        "AHOP_WORKER_SECRET_KEYS": WORKER_SECRET_KEYS,
    }
