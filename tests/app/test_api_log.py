"""What a real `ahop serve` writes to its log: one access line per ordinary 4xx, a traceback only for a real 5xx."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.db.models import Role
from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.app.conftest import Caller, server_env
from tests.waiting import until

ACCESS_LINE = re.compile(r'^INFO: +127\.0\.0\.1:\d+ - "(?P<request>[A-Z]+ \S+) HTTP/1\.1" (?P<status>\d{3})')


@dataclass(frozen=True)
class Served:
    url: str
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def mark(self, client: httpx.AsyncClient, name: str) -> int:
        """Send a request the log will show, wait for its line, and answer where the log ends after it."""
        await client.get(f"{self.url}/health/live?mark={name}")

        async def logged() -> bool:
            return f"mark={name}" in self.text()

        await until(logged, f"the access line of mark {name}")
        return len(self.text())


def _closed_port() -> int:
    (port,) = free_ports(1)
    return port


@contextmanager
def serve(settings: AppSettings, tmp_path: Path, **overrides: str) -> Iterator[Served]:
    """A real `ahop serve` process on the test's services (as `overrides` change them), stopped by its pid."""
    (port,) = free_ports(1)
    env = {
        **server_env(settings, tmp_path),
        "AHOP_CONTROL_LOOP": "false",  # only the requests of the test write to the log
        **overrides,
    }
    log_path = tmp_path / f"api-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ahop", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    served = Served(f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in served.text():
            assert process.poll() is None, served.text()
            assert time.monotonic() < deadline, f"ahop serve did not come up:\n{served.text()}"
            time.sleep(0.1)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


async def test_ordinary_4xx_answers_write_one_access_line_each_and_no_traceback(
    app_settings: AppSettings, tmp_path: Path, alice: Caller, origin: Path
) -> None:
    # Redis is down: what needs it answers 503, which is one WARNING line, not a traceback per request.
    with serve(app_settings, tmp_path, AHOP_REDIS_URL=f"redis://127.0.0.1:{_closed_port()}/0") as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            start = await served.mark(client, "start")
            repository = {"name": "ops", "url": str(origin)}
            answers = [
                await client.get("/api/v1/tasks"),
                await client.get("/api/v1/task-templates/987654321", headers=alice[Role.VIEWER]),
                await client.post("/api/v1/git-repositories", json=repository, headers=alice[Role.VIEWER]),
                await client.post("/api/v1/git-repositories", json=repository, headers=alice[Role.ADMIN]),
                await client.post("/api/v1/git-repositories", json=repository, headers=alice[Role.ADMIN]),
                await client.post("/api/v1/tasks", json={"template_id": "one"}, headers=alice[Role.OPERATOR]),
                await client.get("/api/v1/workers", headers=alice[Role.VIEWER]),
            ]
            end = await served.mark(client, "end")
    assert [answer.status_code for answer in answers] == [401, 404, 403, 201, 409, 422, 503]

    lines = served.text()[start:end].splitlines()
    access = [match for line in lines if (match := ACCESS_LINE.match(line))]
    others = [line for line in lines if not ACCESS_LINE.match(line)]
    assert [int(match["status"]) for match in access] == [401, 404, 403, 201, 409, 422, 503, 200], lines
    assert len(others) == 1, lines  # the 503's warning; nothing at all for the 4xx
    assert "WARNING" in others[0]
    assert "GET /api/v1/workers answered 503" in others[0]
    assert "Redis is unavailable" in others[0]
    assert "Traceback" not in served.text()


async def test_a_5xx_from_the_database_logs_its_traceback_at_error(app_settings: AppSettings, tmp_path: Path) -> None:
    dead_database = f"postgresql://nobody@127.0.0.1:{_closed_port()}/none"
    with serve(app_settings, tmp_path, AHOP_DATABASE_URL=dead_database) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
            answer = await client.get("/api/v1/tasks", headers={"Authorization": "Bearer some-token"})
            await served.mark(client, "end")
    assert answer.status_code == 503
    text = served.text()
    assert re.search(r"ERROR.*GET /api/v1/tasks answered 503", text), text
    assert "Traceback (most recent call last)" in text
    assert "ConnectionRefusedError" in text
