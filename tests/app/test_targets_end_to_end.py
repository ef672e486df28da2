"""Templates run on target hosts, end to end: the API, a real worker, real SSH servers and the inventory."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support import waiting
from tests.support.api import Client
from tests.support.fleet import Fleet
from tests.support.repositories import add_repository, commit_all
from tests.support.ssh_hosts import TargetHost
from tests.support.tasks import log_lines, wait_task
from tests.support.tenants import Caller

RUN_SH = """#!/bin/bash
set -eu
here=$(dirname "$0")
. "$here/lib/common.sh"
. "$here/config/app.conf"
if [ "$AHOP_TASK_ATTEMPT" = 1 ] && [ -n "${AHOP_PARAM_HANG_ON_FIRST:-}" ]; then echo hanging; sleep 300; fi
greet "$AHOP_PARAM_WHO"
"""
COMMON_SH = """greet() { echo "$APP_NAME says hello to $1 on $AHOP_HOST_NAME"; }
"""
APP_CONF = "APP_NAME=fleet-app\n"
PARAMETERS = [
    {"name": "who", "type": "text", "required": True},
    {"name": "hang_on_first", "type": "text"},
]


@pytest.fixture
async def server(api_settings: AppSettings, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    settings = api_settings.model_copy(update={"control_interval": 0.2, **getattr(request, "param", {})})
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


async def posted(client: Client, caller: Caller, path: str, body: dict[str, Any], role: Role = Role.ADMIN) -> Any:
    answer = await client.post(path, json=body, headers=caller[role])
    assert answer.status_code == 201, answer.text
    return answer.json()


async def fleet_template(client: Client, caller: Caller, tmp_path: Path, hosts: list[TargetHost], **fields: Any) -> int:
    """The inventory of `hosts` (label fleet, keys pinned, the key credential) and a shell template with lib/ and
    config/ that runs on targets; the template's id."""
    repo = tmp_path / "fleet-origin"
    for name, text in {
        "fleet/run.sh": RUN_SH,
        "fleet/lib/common.sh": COMMON_SH,
        "fleet/config/app.conf": APP_CONF,
    }.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / "fleet" / "NOTES.md").write_text(f"{uuid.uuid4()}\n")  # content of this test's own
    commit_all(repo, message="fleet")
    key = hosts[0].client_key.read_text()
    await posted(client, caller, "/api/v1/credentials", {"name": "fleet-key", "kind": "ssh_key", "secret": key})
    for host in hosts:
        body = {
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "user": host.user,
            "labels": ["fleet"],
            "credential": "fleet-key",
            "host_keys": host.host_keys,
        }
        await posted(client, caller, "/api/v1/hosts", body)
    repository_id = await add_repository(client, caller, repo, name="fleet")
    template = {
        "name": "fleet",
        "code": "fleet",
        "script_type": "shell",
        "entry_file": "run.sh",
        "repository_id": repository_id,
        "original_path": "fleet",
        "parameters": PARAMETERS,
        "timeout": 600,
        "execution": "targets",
        **fields,
    }
    return int((await posted(client, caller, "/api/v1/task-templates", template))["id"])


async def host_runs(client: Client, caller: Caller, task_id: str) -> dict[str, dict[str, Any]]:
    answer = await client.get(f"/api/v1/tasks/{task_id}/hosts", headers=caller[Role.VIEWER])
    assert answer.status_code == 200, answer.text
    return {run["host"]: run for run in answer.json()}


async def test_the_original_body_shape_runs_the_whole_tree_on_every_named_host(
    server: Client, alice: Caller, ssh_hosts: list[TargetHost], fleet: Fleet, tmp_path: Path
) -> None:
    fleet.start("w1")
    template_id = await fleet_template(server, alice, tmp_path, ssh_hosts)
    names = [host.name for host in ssh_hosts]
    # The original system's request: template_id, hosts, variables.
    body = {"template_id": template_id, "hosts": names, "variables": {"who": "ops"}}
    task = await posted(server, alice, "/api/v1/tasks", body, Role.OPERATOR)
    done = await wait_task(server, alice, task["id"])
    assert (done["status"], done["exit_code"]) == ("success", None), done
    template = (await server.get(f"/api/v1/task-templates/{template_id}", headers=alice[Role.VIEWER])).json()
    digest = template["artifact"]["digest"]

    runs = await host_runs(server, alice, task["id"])
    assert sorted(runs) == sorted(names)
    for host in ssh_hosts:
        run = runs[host.name]
        assert (run["status"], run["exit_code"], run["digest"], run["address"]) == (
            "success",
            0,
            digest,
            host.address,
        ), run
        cached = host.home / ".cache" / "ahop" / "sha256" / digest.removeprefix("sha256:")
        assert await asyncio.to_thread(cached.is_file)  # the host holds the canonical tar of what ran
        lines = (
            await server.get(f"/api/v1/tasks/{task['id']}/logs?host={host.name}", headers=alice[Role.VIEWER])
        ).json()["items"]
        assert [line["line"] for line in lines] == [f"fleet-app says hello to ops on {host.name}"]
        assert {line["host"] for line in lines} == {host.name}
    everything = output_by_host(await log_lines(server, alice, task["id"]))
    assert set(everything) == set(names)


def output_by_host(lines: list[dict[str, Any]]) -> dict[str, list[str]]:
    shown: dict[str, list[str]] = {}
    for line in lines:
        shown.setdefault(line["host"], []).append(line["line"])
    return shown


LOST_SOON = {"heartbeat_timeout": 2.0, "lost_grace": 1.0}


@pytest.mark.parametrize("server", [LOST_SOON], indirect=True)
async def test_a_task_retried_after_lost_runs_on_its_snapshot_not_the_changed_inventory(
    server: Client, alice: Caller, ssh_hosts: list[TargetHost], fleet: Fleet, tmp_path: Path
) -> None:
    host = ssh_hosts[0]
    template_id = await fleet_template(server, alice, tmp_path, [host], max_attempts=2, retry_on=["lost"])
    worker = fleet.start("w1")
    body = {"template_id": template_id, "labels": ["fleet"], "params": {"who": "again", "hang_on_first": "yes"}}
    task = await posted(server, alice, "/api/v1/tasks", body, Role.OPERATOR)

    async def hanging() -> bool:
        return "hanging" in [line["line"] for line in await log_lines(server, alice, task["id"])]

    await waiting.until(hanging, "the first attempt hanging on the host", 120)
    os.kill(worker.pid, signal.SIGKILL)
    # The inventory changes while the task waits: its retry must still go where the snapshot says.
    listed = (await server.get("/api/v1/hosts?name=" + host.name, headers=alice[Role.VIEWER])).json()["items"]
    moved = await server.put(
        f"/api/v1/hosts/{listed[0]['id']}", json={"address": "127.0.0.254", "port": 1}, headers=alice[Role.ADMIN]
    )
    assert moved.status_code == 200, moved.text
    fleet.start("w2")
    done = await wait_task(server, alice, task["id"], bound=180)
    assert (done["status"], done["attempt"]) == ("success", 2), done
    first = (await server.get(f"/api/v1/tasks/{task['id']}/hosts?attempt=1", headers=alice[Role.VIEWER])).json()
    assert [run["status"] for run in first] == ["lost"]
    (second,) = (await host_runs(server, alice, task["id"])).values()
    assert (second["status"], second["address"]) == ("success", host.address)
    assert "fleet-app says hello to again on " + host.name in [
        line["line"] for line in await log_lines(server, alice, task["id"])
    ]

    async def nothing_left() -> bool:
        return not await asyncio.to_thread(host.remote_processes)

    await waiting.until(nothing_left, "no process of the killed worker's run left on the host", 120)
