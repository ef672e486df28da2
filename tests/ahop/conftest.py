"""Fixtures of the CLI tests: a real `ahop serve` process for the commands to talk to."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.support.served import server_env


@pytest.fixture
def api_url(app_settings: AppSettings, tmp_path: Path) -> Iterator[str]:
    """The URL of `ahop serve` on the test's services, with its control loop; stopped with SIGTERM at the end."""
    (port,) = free_ports(1)
    env = server_env(app_settings, tmp_path)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115  (closed below, after the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "ahop", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health/live", timeout=2):  # noqa: S310
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "ahop serve did not come up"
                time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
