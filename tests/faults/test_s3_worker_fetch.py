"""S3 stopped (SIGSTOP) or killed (SIGKILL) while a real `ahop worker` downloads a template: the task fails saying
the template could not be fetched (the script never ran), the worker's store keeps no partial entry, the worker
keeps serving, and once S3 is back a new task of the same template runs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from app.db.models import Role
from app.main import create_app
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.faults.s3_faults import BIG_BYTES, S3_TIMEOUTS, PrivateS3, big_body, inject, recover, socket_buffers
from tests.support import waiting
from tests.support.api import Client
from tests.support.fleet import Fleet
from tests.support.repositories import add_repository
from tests.support.tasks import wait_task
from tests.support.tenants import Caller

OUTCOME_BOUND = 45.0
"""The bound on a task's end once its download stalls: with the worker's 5 s read timeout it ends within seconds;
one that waits out a fixed 60 s of silence (as it did when the timeout was no setting) counts as hung."""


@pytest.fixture
async def server(faults_settings: AppSettings) -> AsyncIterator[Client]:
    settings = faults_settings.model_copy(update={"control_interval": 0.2})
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def fetching_fleet(worker_env: dict[str, str], private_s3: PrivateS3, tmp_path: Path) -> Iterator[Fleet]:
    """Workers that fetch from the private S3, with its short timeouts."""
    settings = private_s3.settings()
    env = {
        **worker_env,
        "AHOP_S3_ENDPOINT_URL": settings["s3_endpoint_url"],
        "AHOP_S3_BUCKET": settings["s3_bucket"],
        "AHOP_S3_ACCESS_KEY_ID": settings["s3_access_key_id"],
        "AHOP_S3_SECRET_ACCESS_KEY": settings["s3_secret_access_key"].get_secret_value(),
        **{f"AHOP_{name.upper()}": str(value) for name, value in S3_TIMEOUTS.items()},
    }
    workers = Fleet(env, tmp_path / "worker-logs")
    yield workers
    workers.stop_all()


async def run_task(client: Client, caller: Caller, template_id: int) -> str:
    response = await client.post(
        "/api/v1/tasks", json={"template_id": template_id, "params": {}}, headers=caller[Role.OPERATOR]
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def download_started(worker_root: Path, hold: Callable[[], None]) -> Path:
    """The blob file of a download in progress under the worker's tmp/, once it holds some bytes; `hold` (which
    stops the worker) is called the moment it is seen, so that a fast machine has no time to download more."""

    async def growing() -> Path | None:
        for path in (worker_root / "tmp").glob("*/blob.tar.zst"):
            try:
                if path.stat().st_size > 0:
                    hold()
                    return path
            except FileNotFoundError:
                continue
        return None

    found: Path = await waiting.until(growing, "the worker's download to start", 120)
    return found


@pytest.mark.parametrize("fault", ["stopped", "killed"])
async def test_s3_failing_during_a_workers_download_fails_the_task_clearly_and_leaves_no_partial_entry(
    fault: str,
    server: Client,
    carol: Caller,
    big_origin: Path,
    private_s3: PrivateS3,
    fetching_fleet: Fleet,
    worker_env: dict[str, str],
) -> None:
    repository_id = await add_repository(server, carol, big_origin, name="big")
    imported = await server.post("/api/v1/task-templates", json=big_body(repository_id), headers=carol[Role.ADMIN])
    assert imported.status_code == 201, imported.text
    template_id, digest = int(imported.json()["id"]), Digest.parse(imported.json()["artifact"]["digest"])
    worker = fetching_fleet.start("fetcher")
    worker_root = Path(worker_env["AHOP_WORKER_ROOT"])

    task_id = await run_task(server, carol, template_id)
    # Hold the worker still while S3 fails, so that the fault lands in the middle of this very download.
    blob_file = await download_started(worker_root, lambda: worker.popen.send_signal(signal.SIGSTOP))
    try:
        # What it has plus what the sockets may hold is not all of it: the download cannot finish on its own.
        reach = blob_file.stat().st_size + socket_buffers()
        assert reach < BIG_BYTES, f"the worker has or may get {reach} bytes already: the download may finish"
        inject(private_s3, fault)
    finally:
        worker.popen.send_signal(signal.SIGCONT)

    task = await wait_task(server, carol, task_id, bound=OUTCOME_BOUND)
    assert task["status"] == "failed", task
    assert f"template {digest} could not be used, so the script did not run" in task["error"], task
    assert "S3 endpoint" in task["error"], task
    assert not (worker_root / "store" / "sha256" / digest.hex).exists()
    assert list((worker_root / "tmp").iterdir()) == []
    assert worker.running()

    recover(private_s3, fault)
    await asyncio.to_thread(private_s3.wait_serving, blob_key(digest))
    again = await run_task(server, carol, template_id)
    task = await wait_task(server, carol, again, bound=120)
    assert (task["status"], task["worker"]) == ("success", "fetcher"), task
    logs = await server.get(f"/api/v1/tasks/{again}/logs", headers=carol[Role.VIEWER])
    assert [item["line"] for item in logs.json()["items"]] == [f"payload: {BIG_BYTES} bytes"]
    assert (worker_root / "store" / "sha256" / digest.hex).is_dir()
