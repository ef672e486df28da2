"""The tasks API: create (validated, recorded, then queued), list, read, cancel; tenants, roles, Redis outages."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from arq.constants import job_key_prefix
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from app.db.models import Role, TaskStatus
from app.main import create_app
from app.settings import AppSettings
from tests.support.api import Client, errors
from tests.support.database import sql
from tests.support.task_fixtures import fast_api_settings, redis_client  # noqa: F401  (fixtures)
from tests.support.tasks import create_task, queued_job, sealed_params, show, task_in
from tests.support.templates import import_template
from tests.support.tenants import Caller
from tests.support.waiting import until
from tests.support.workers import beat
from worker.protocol import TASK_STATUSES, WORKERS_KEY, cancel_key, job_id


async def test_a_task_is_queued_with_coerced_parameters_and_its_password_only_in_the_job(
    client: Client, alice: Caller, origin: Path, redis: Redis, database_url: str
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": " 7 ", "token": "hunter2"})
    assert str(uuid.UUID(task["id"])) == task["id"]
    assert task["status"] == "queued"
    assert task["params"] == {"days": 7, "mode": "safe", "token": "********", "verbose": False}
    assert (task["template_id"], task["template_code"], task["version"]) == (template["id"], "disk_cleanup", 1)
    assert task["digest"] == template["artifact"]["digest"]
    assert (task["attempt"], task["max_attempts"], task["timeout"], task["pool"]) == (1, 1, 600, "default")
    assert task["created_at"].endswith("Z")
    assert task["queued_at"].endswith("Z")
    assert (task["started_at"], task["finished_at"], task["exit_code"], task["worker"]) == (None, None, None, None)

    job = await queued_job(redis, task["id"])
    assert job is not None
    # The password travels sealed for the workers: Redis holds no plaintext of it, a worker's seal opens it.
    assert job.params == {"days": 7, "mode": "safe", "token": "********", "verbose": False}
    assert job.secret_params == ["token"]
    assert job.sealed is not None
    assert sealed_params(job) == {"token": "hunter2"}
    assert b"hunter2" not in await redis.get(job_key_prefix + job_id(task["id"], 1))
    assert (job.entry_file, job.script_type, job.timeout, job.attempt) == ("cleanup.sh", "shell", 600, 1)
    assert (job.tenant_id, job.template_code) == (alice.tenant_id, "disk_cleanup")
    assert str(job.blob.digest) == template["artifact"]["digest"]
    assert job.blob.zst_size == template["artifact"]["zst_size"]

    (row,) = await sql(database_url, "SELECT params, sealed_params FROM tasks WHERE id = $1", uuid.UUID(task["id"]))
    assert "hunter2" not in row["params"]
    assert b"hunter2" not in row["sealed_params"]
    assert "hunter2" not in (await client.get(f"/api/v1/tasks/{task['id']}", headers=alice[Role.VIEWER])).text
    assert "hunter2" not in (await client.get("/api/v1/tasks", headers=alice[Role.VIEWER])).text

    named = await create_task(client, alice, template["id"], variables={"days": 1}, timeout=30, name="nightly")
    assert (named["params"]["days"], named["timeout"], named["name"]) == (1, 30, "nightly")
    assert "token" not in named["params"]
    assert (await queued_job(redis, named["id"])).secret_params == []  # type: ignore[union-attr]


async def test_bad_input_answers_422_naming_every_field_and_writes_nothing(
    client: Client, alice: Caller, origin: Path
) -> None:
    template = await import_template(client, alice, origin)
    bad = await client.post(
        "/api/v1/tasks",
        json={"template_id": template["id"], "params": {"days": "soon", "mode": "turbo", "x": 1}},
        headers=alice[Role.OPERATOR],
    )
    problems = errors(bad)
    assert set(problems) == {"params.days", "params.mode", "params.x"}
    assert "not an integer" in problems["params.days"]
    assert "fast, safe" in problems["params.mode"]
    assert "unknown parameter" in problems["params.x"]
    missing = errors(
        await client.post("/api/v1/tasks", json={"template_id": template["id"]}, headers=alice[Role.OPERATOR])
    )
    assert "required" in missing["params.days"]
    wrong = {"template_id": "one", "timeout": 0, "version": 0, "params": []}
    shape = errors(await client.post("/api/v1/tasks", json=wrong, headers=alice[Role.OPERATOR]))
    assert {"template_id", "timeout", "version", "params"} <= {field.split(".")[-1] for field in shape}
    listed = await client.get("/api/v1/tasks", headers=alice[Role.VIEWER])
    assert listed.json()["total"] == 0


async def test_hosts_for_a_template_that_runs_on_the_worker_are_refused_not_dropped(
    client: Client, alice: Caller, origin: Path
) -> None:
    """The original system's body (`template_id`, `hosts`, `variables`) named targets: they are never ignored."""
    template = await import_template(client, alice, origin)
    await client.post("/api/v1/hosts", json={"name": "web-01", "address": "10.0.0.1"}, headers=alice[Role.ADMIN])
    original = {"template_id": template["id"], "hosts": ["web-01"], "variables": {"days": 1}}
    refused = errors(await client.post("/api/v1/tasks", json=original, headers=alice[Role.OPERATOR]))
    assert list(refused) == ["hosts"], refused
    by_label = {"template_id": template["id"], "labels": ["web"], "params": {"days": 1}}
    assert list(errors(await client.post("/api/v1/tasks", json=by_label, headers=alice[Role.OPERATOR]))) == ["labels"]
    assert (await client.get("/api/v1/tasks", headers=alice[Role.VIEWER])).json()["total"] == 0


async def test_a_version_is_picked_by_number_and_an_unknown_one_is_refused(
    client: Client, alice: Caller, origin: Path
) -> None:
    template = await import_template(client, alice, origin)
    url = f"/api/v1/task-templates/{template['id']}"
    changed = await client.put(
        url, json={"parameters": [{"name": "hours", "type": "integer", "default": 3}]}, headers=alice[Role.ADMIN]
    )
    assert changed.json()["version"] == 2, changed.text

    current = await create_task(client, alice, template["id"])
    assert (current["version"], current["params"]) == (2, {"hours": 3})
    first = await create_task(client, alice, template["id"], version=1, params={"days": 2})
    assert (first["version"], first["params"]["days"]) == (1, 2)
    unknown = errors(
        await client.post(
            "/api/v1/tasks", json={"template_id": template["id"], "version": 9}, headers=alice[Role.OPERATOR]
        )
    )
    assert "versions 1 to 2" in unknown["version"]


async def test_password_values_need_server_keys(api_settings: AppSettings, alice: Caller, origin: Path) -> None:
    keyless = api_settings.model_copy(update={"secret_keys": None, "control_loop": False})
    async with AsyncTestClient(create_app(keyless)) as client:
        template = await import_template(client, alice, origin)
        secret = {"template_id": template["id"], "params": {"days": 1, "token": "s3cret"}}
        refused = await client.post("/api/v1/tasks", json=secret, headers=alice[Role.OPERATOR])
        assert "AHOP_SECRET_KEYS" in errors(refused)["params.token"]
        assert "s3cret" not in refused.text
        accepted = await create_task(client, alice, template["id"], params={"days": 1})
        assert accepted["status"] == "queued"
    unsealed = api_settings.model_copy(update={"worker_secret_keys": None, "control_loop": False})
    async with AsyncTestClient(create_app(unsealed)) as client:
        refused = await client.post("/api/v1/tasks", json=secret, headers=alice[Role.OPERATOR])
        assert refused.status_code == 422, refused.text
        assert "AHOP_WORKER_SECRET_KEYS" in errors(refused)["params.token"]
        assert "s3cret" not in refused.text


async def test_tenants_and_roles(client: Client, alice: Caller, bob: Caller, origin: Path) -> None:
    template = await import_template(client, alice, origin)
    viewer = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"days": 1}}, headers=alice[Role.VIEWER]
    )
    assert viewer.status_code == 403, viewer.text
    stranger = await client.post(
        "/api/v1/tasks", json={"template_id": template["id"], "params": {"days": 1}}, headers=bob[Role.ADMIN]
    )
    assert stranger.status_code == 404, stranger.text

    task = await create_task(client, alice, template["id"], params={"days": 1})
    for method, path in (("GET", ""), ("GET", "/logs"), ("POST", "/cancel")):
        answer = await client.request(method, f"/api/v1/tasks/{task['id']}{path}", headers=bob[Role.ADMIN])
        assert answer.status_code == 404, (path, answer.text)
    assert (await client.get("/api/v1/tasks", headers=bob[Role.VIEWER])).json()["total"] == 0
    refused = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.VIEWER])
    assert refused.status_code == 403
    assert (await show(client, alice, task["id"]))["status"] == "queued"
    assert (await client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=alice[Role.VIEWER])).status_code == 404


async def test_list_filters_pages_newest_first(client: Client, alice: Caller, origin: Path) -> None:
    cleanup = await import_template(client, alice, origin)
    other = await import_template(client, alice, origin, code="other", parameters=[])
    first = await create_task(client, alice, cleanup["id"], params={"days": 1})
    second = await create_task(client, alice, other["id"])
    third = await create_task(client, alice, cleanup["id"], params={"days": 3})
    cancelled = await client.post(f"/api/v1/tasks/{second['id']}/cancel", headers=alice[Role.OPERATOR])
    assert cancelled.status_code == 200, cancelled.text

    async def ids(query: str) -> tuple[list[str], int]:
        answer = await client.get(f"/api/v1/tasks?{query}", headers=alice[Role.VIEWER])
        assert answer.status_code == 200, answer.text
        return [item["id"] for item in answer.json()["items"]], answer.json()["total"]

    assert await ids("page_size=2") == ([third["id"], second["id"]], 3)
    assert await ids("page_size=2&page=2") == ([first["id"]], 3)
    assert await ids(f"template_id={cleanup['id']}") == ([third["id"], first["id"]], 2)
    assert await ids("status=cancelled") == ([second["id"]], 1)
    assert await ids(f"status=queued&template_id={other['id']}") == ([], 0)
    assert "status" in errors(await client.get("/api/v1/tasks?status=exploded", headers=alice[Role.VIEWER]))


def test_the_statuses_the_server_stores_are_the_ones_the_api_and_the_command_line_name() -> None:
    assert tuple(TaskStatus) == TASK_STATUSES


async def test_cancel_before_start_and_after_the_end(client: Client, alice: Caller, origin: Path, redis: Redis) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    assert await queued_job(redis, task["id"]) is not None
    response = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.OPERATOR])
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert (cancelled["status"], cancelled["cancel_requested"]) == ("cancelled", True)
    assert cancelled["finished_at"].endswith("Z")
    assert await redis.exists(cancel_key(task["id"])) == 1
    assert 0 < await redis.ttl(cancel_key(task["id"])) <= 86_400
    assert await queued_job(redis, task["id"]) is None  # off the queue: no worker even looks at it

    again = await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.OPERATOR])
    assert again.status_code == 409, again.text
    assert "cancelled" in again.json()["detail"]


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


async def test_with_redis_down_a_task_stays_pending_until_the_reconciler_queues_it(
    api_settings: AppSettings, alice: Caller, origin: Path, redis: Redis, database_url: str
) -> None:
    down = api_settings.model_copy(update={"redis_url": closed_port_url()})
    async with AsyncTestClient(create_app(down)) as cut_off:
        template = await import_template(cut_off, alice, origin)
        waiting = await create_task(cut_off, alice, template["id"], params={"days": 1, "token": "pw"})
        dropped = await create_task(cut_off, alice, template["id"], params={"days": 2})
        assert (waiting["status"], waiting["queued_at"], dropped["status"]) == ("pending", None, "pending")
        cancel = await cut_off.post(f"/api/v1/tasks/{dropped['id']}/cancel", headers=alice[Role.OPERATOR])
        assert cancel.status_code == 200, cancel.text
        assert cancel.json()["status"] == "cancelled"
    rows = await sql(database_url, "SELECT status FROM tasks WHERE id = $1", uuid.UUID(waiting["id"]))
    assert [row["status"] for row in rows] == ["pending"]

    async with AsyncTestClient(create_app(api_settings)) as client:  # Redis is back: the reconciler sends it
        queued = await task_in(client, alice, waiting["id"], "queued")
        assert queued["queued_at"] is not None
        job = await queued_job(redis, waiting["id"])
        assert job is not None
        assert (job.params["token"], sealed_params(job)) == ("********", {"token": "pw"})
        assert await queued_job(redis, dropped["id"]) is None
        assert (await show(client, alice, dropped["id"]))["status"] == "cancelled"


async def test_a_queued_task_whose_job_vanished_is_queued_again(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    assert await queued_job(redis, task["id"]) is not None
    await redis.flushdb()  # Redis restarted without its data
    job = await until(lambda: queued_job(redis, task["id"]), "the job to be enqueued again")
    assert job.task_id == task["id"]
    assert (await show(client, alice, task["id"]))["status"] == "queued"


async def test_a_template_with_unfinished_tasks_cannot_be_deleted(client: Client, alice: Caller, origin: Path) -> None:
    template = await import_template(client, alice, origin)
    task = await create_task(client, alice, template["id"], params={"days": 1})
    url = f"/api/v1/task-templates/{template['id']}"
    refused = await client.delete(url, headers=alice[Role.ADMIN])
    assert refused.status_code == 409, refused.text
    assert "1 unfinished task" in refused.json()["detail"]
    await client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=alice[Role.OPERATOR])
    deleted = await client.delete(url, headers=alice[Role.ADMIN])
    assert deleted.status_code == 204, deleted.text
    kept = await show(client, alice, task["id"])
    assert (kept["template_id"], kept["template_code"], kept["status"]) == (None, "disk_cleanup", "cancelled")


async def test_a_task_for_a_pool_no_live_worker_serves_is_accepted_with_a_warning(
    client: Client, alice: Caller, origin: Path, redis: Redis
) -> None:
    template = await import_template(client, alice, origin, pool="ansible")
    await beat(redis, "w-default", pools=("default",))  # live, but another pool's
    await beat(redis, "w-ansible-old", pools=("ansible",), age=3 * 600)  # the pool's, but its heartbeat is stale
    try:
        unserved = await create_task(client, alice, template["id"], params={"days": 1})
        assert unserved["status"] == "queued"  # accepted and queued all the same
        assert unserved["warnings"] == [
            "no live worker serves pool ansible; the task waits in its queue until a worker of the pool starts"
        ]
        assert await queued_job(redis, unserved["id"], pool="ansible") is not None
        assert "warnings" not in await show(client, alice, unserved["id"])  # an answer to the creation only

        await beat(redis, "w-ansible", pools=("default", "ansible"))
        served = await create_task(client, alice, template["id"], params={"days": 2})
        assert (served["status"], served["warnings"]) == ("queued", [])
    finally:
        await redis.delete(WORKERS_KEY)


async def test_with_redis_down_the_answer_says_the_workers_could_not_be_checked(
    api_settings: AppSettings, alice: Caller, origin: Path
) -> None:
    async with AsyncTestClient(create_app(api_settings.model_copy(update={"redis_url": closed_port_url()}))) as cut_off:
        template = await import_template(cut_off, alice, origin)
        task = await create_task(cut_off, alice, template["id"], params={"days": 1})
    assert task["status"] == "pending"
    [warning] = task["warnings"]
    assert warning.startswith("whether a live worker serves pool default is unknown: Redis is unavailable")
