"""Tasks of templates that run on targets, as the server sees them: the inventory snapshot recorded at creation,
the job on Redis with its plan and its secrets sealed, the 422s of a request that names no usable host, and a
credential gone by dispatch time."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from arq.constants import job_key_prefix
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client
from tests.support.database import sql
from tests.support.inventory import BECOME_PASSWORD, PASSWORD, make_inventory
from tests.support.seal import WORKER_SECRET_KEYS
from tests.support.task_fixtures import fast_api_settings, redis_client  # noqa: F401  (fixtures)
from tests.support.tasks import create_task, queued_job, show, task_in
from tests.support.templates import import_template
from tests.support.tenants import Caller
from tests.support.workers import send
from worker.job_secrets import LoginSecret, WorkerSeal
from worker.protocol import job_id

TOKEN = "tok-of-the-task-3"


async def _targets_template(client: Client, caller: Caller, origin: Path, **fields: Any) -> dict[str, Any]:
    return await import_template(client, caller, origin, code="fanout", execution="targets", **fields)


async def _task_count(database_url: str, caller: Caller) -> int:
    (row,) = await sql(
        database_url, "SELECT count(*) AS n FROM tasks WHERE tenant_id = $1", uuid.UUID(caller.tenant_id)
    )
    return int(row["n"])


async def test_a_targets_task_records_its_snapshot_and_its_job_carries_the_plan_with_the_logins_sealed(
    client: Client, alice: Caller, origin: Path, redis: Redis, tmp_path: Path
) -> None:
    inventory = await make_inventory(client, alice, tmp_path)
    template = await _targets_template(client, alice, origin, require_sudo=True, forks=2, max_fail_percentage=50)
    task = await create_task(
        client, alice, template["id"], hosts=["db-01"], labels=["web"], params={"days": 1, "token": TOKEN}
    )
    assert (task["execution"], task["require_sudo"], task["forks"], task["max_fail_percentage"]) == (
        "targets",
        True,
        2,
        50,
    )
    assert [target["name"] for target in task["targets"]] == ["db-01", "web-01", "web-02"]
    db = task["targets"][0]
    assert {key: db[key] for key in ("host_id", "address", "port", "user", "labels", "variables")} == {
        "host_id": inventory.hosts["db-01"]["id"],
        "address": "db-01.example.org",
        "port": 22,
        "user": "ops",
        "labels": ["db"],
        "variables": {"pg": 15},
    }
    assert db["fingerprints"] == [inventory.host_key.fingerprint]
    assert "credential" not in str(task["targets"]), "an answer names no credential"

    job = await queued_job(redis, task["id"])
    assert job is not None
    assert job.execution == "targets"
    assert job.targets is not None
    assert (job.targets.forks, job.targets.max_fail_percentage, job.targets.require_sudo) == (2, 50, True)
    by_name = {host.name: host for host in job.targets.hosts}
    web_02 = by_name["web-02"]
    assert (web_02.address, web_02.port, web_02.username, web_02.host_keys) == (
        "web-02.example.org",
        2222,
        "root",
        [inventory.host_key.public],
    )
    key_login, password_login = str(inventory.credentials["key"]["id"]), str(inventory.credentials["password"]["id"])
    assert {name: host.login for name, host in by_name.items()} == {
        "db-01": key_login,
        "web-01": key_login,
        "web-02": password_login,
    }
    assert by_name["db-01"].variables == {"pg": 15}

    assert job.sealed is not None
    opened = WorkerSeal.from_setting(WORKER_SECRET_KEYS).open(job.sealed)
    assert opened.params == {"token": TOKEN}
    assert opened.logins == {
        key_login: LoginSecret(private_key=inventory.login_key.private, become_password=BECOME_PASSWORD),
        password_login: LoginSecret(password=PASSWORD),
    }
    raw = await redis.get(job_key_prefix + job_id(task["id"], 1))
    for secret in [*inventory.secrets(), TOKEN]:
        assert secret.encode() not in raw, "Redis holds no plaintext secret"
        for answer in (task, await show(client, alice, task["id"])):
            assert secret not in str(answer)

    runs = (await client.get(f"/api/v1/tasks/{task['id']}/hosts", headers=alice[Role.VIEWER])).json()
    assert [(run["host"], run["status"], run["attempt"]) for run in runs] == [
        ("db-01", "pending", 1),
        ("web-01", "pending", 1),
        ("web-02", "pending", 1),
    ]
    assert runs[2]["address"] == "web-02.example.org"

    # The snapshot is what the inventory was: a host changed later changes nothing of the task.
    changed = await client.put(
        f"/api/v1/hosts/{inventory.hosts['db-01']['id']}", json={"address": "10.9.9.9"}, headers=alice[Role.ADMIN]
    )
    assert changed.status_code == 200, changed.text
    assert (await show(client, alice, task["id"]))["targets"][0]["address"] == "db-01.example.org"


async def test_the_original_body_shape_runs_on_the_hosts_it_names(
    client: Client, alice: Caller, origin: Path, redis: Redis, tmp_path: Path
) -> None:
    inventory = await make_inventory(client, alice, tmp_path)
    template = await _targets_template(client, alice, origin)
    answer = await client.post(
        "/api/v1/tasks",
        json={
            "template_id": template["id"],
            "hosts": [inventory.hosts["web-01"]["id"], "web-02"],
            "variables": {"days": 3},
        },
        headers=alice[Role.OPERATOR],
    )
    assert answer.status_code == 201, answer.text
    task = answer.json()
    assert [target["name"] for target in task["targets"]] == ["web-01", "web-02"]
    assert task["params"]["days"] == 3
    job = await queued_job(redis, task["id"])
    assert job is not None
    assert job.targets is not None
    assert [host.name for host in job.targets.hosts] == ["web-01", "web-02"]


async def test_a_request_without_usable_targets_is_refused_naming_each_problem_and_records_nothing(
    client: Client, alice: Caller, origin: Path, tmp_path: Path, database_url: str
) -> None:
    await make_inventory(client, alice, tmp_path)
    targets = await _targets_template(client, alice, origin)
    local = await import_template(client, alice, origin, code="local")
    cases: list[tuple[int, dict[str, Any], dict[str, str]]] = [
        (targets["id"], {}, {"hosts": "at least one host or label"}),
        (targets["id"], {"hosts": ["nope", 10**12]}, {"hosts": "no host 1000000000000, 'nope' in the inventory"}),
        (targets["id"], {"labels": ["web", "gone"]}, {"labels": "no host has the label 'gone'"}),
        (targets["id"], {"hosts": ["new-01"]}, {"hosts": "host 'new-01' has no pinned host keys"}),
        (local["id"], {"hosts": ["web-01"]}, {"hosts": "not for a template that runs on the worker"}),
        (local["id"], {"labels": ["web"]}, {"labels": "not for a template that runs on the worker"}),
    ]
    for template_id, fields, expected in cases:
        answer = await client.post(
            "/api/v1/tasks",
            json={"template_id": template_id, "params": {"days": 1}, **fields},
            headers=alice[Role.OPERATOR],
        )
        assert answer.status_code == 422, (fields, answer.text)
        named = {error["field"]: error["message"] for error in answer.json()["extra"]["errors"]}
        assert named.keys() == expected.keys(), (fields, named)
        for field, words in expected.items():
            assert words in named[field], (fields, named)
    assert await _task_count(database_url, alice) == 0


async def test_without_the_workers_seal_a_targets_task_is_refused_naming_it(
    api_settings: AppSettings, alice: Caller, origin: Path, tmp_path: Path, database_url: str
) -> None:
    unsealed = api_settings.model_copy(update={"worker_secret_keys": None})
    async with AsyncTestClient(create_app(unsealed)) as client:
        await make_inventory(client, alice, tmp_path)
        template = await _targets_template(client, alice, origin)
        answer = await client.post(
            "/api/v1/tasks",
            json={"template_id": template["id"], "params": {"days": 1}, "hosts": ["web-01"]},
            headers=alice[Role.OPERATOR],
        )
    assert answer.status_code == 422, answer.text
    assert "AHOP_WORKER_SECRET_KEYS" in answer.json()["detail"]
    assert await _task_count(database_url, alice) == 0


async def test_a_credential_gone_by_the_next_attempt_fails_the_task_naming_the_host_and_credential(
    client: Client, alice: Caller, origin: Path, redis: Redis, tmp_path: Path
) -> None:
    inventory = await make_inventory(client, alice, tmp_path)
    template = await _targets_template(client, alice, origin, max_attempts=2, retry_on=["failed"])
    task = await create_task(client, alice, template["id"], hosts=["web-02"], params={"days": 1})
    gone = inventory.credentials["password"]["id"]
    moved = await client.put(
        f"/api/v1/hosts/{inventory.hosts['web-02']['id']}", json={"credential": "key"}, headers=alice[Role.ADMIN]
    )
    assert moved.status_code == 200, moved.text
    deleted = await client.delete(f"/api/v1/credentials/{gone}", headers=alice[Role.ADMIN])
    assert deleted.status_code == 204, deleted.text

    await send(redis, "started", task)
    await send(redis, "finished", task, status="failed", error="2 of 3 hosts did not succeed")
    failed = await task_in(client, alice, task["id"], "failed", attempt=2)
    assert "host 'web-02'" in failed["error"]
    assert f"credential {gone}" in failed["error"]
    assert await queued_job(redis, task["id"], attempt=2) is None, "nothing was sent"
