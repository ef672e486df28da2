"""What a real `ahop serve` writes to its log: one access line per ordinary 4xx, a traceback only for a real 5xx."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from app.db.models import Role
from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.support.served import serve
from tests.support.tenants import Caller

ACCESS_LINE = re.compile(r'^INFO: +127\.0\.0\.1:\d+ - "(?P<request>[A-Z]+ \S+) HTTP/1\.1" (?P<status>\d{3})')


def _closed_port() -> int:
    (port,) = free_ports(1)
    return port


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
