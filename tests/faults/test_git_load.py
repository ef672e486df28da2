"""Git work never starves the API, and never outlives it: a real `ahop serve` under a flood of syncs, SIGTERM and
SIGKILL while its `git fetch` hangs, and a client that leaves while its sync waits.

A remote that stops answering mid-fetch is made for real: the server's `git fetch` process is stopped with SIGSTOP
as soon as it appears (the repository is large enough, a few megabytes of incompressible data, for the fetch to be
caught running). A stopped fetch holds whatever the server gave it, exactly as a hung network fetch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from app.db.models import Role
from app.git.mirrorlock import MirrorLock
from app.settings import AppSettings
from tests.support.fleet import alive
from tests.support.metrics_text import parse_samples, value
from tests.support.repositories import commit_all
from tests.support.served import Served, serve
from tests.support.templates import bare_body
from tests.support.tenants import Caller, make_tenant
from tests.support.waiting import until

BIG_BYTES = 16 << 20
"""Incompressible data in the large repository: its fetch runs long enough to be caught."""
REQUEST_BOUND = 120.0
"""Seconds any request of these tests may take: only catches a hang."""


def _ping_template(repository_id: int) -> dict[str, Any]:
    """The import request of the repository's `scripts/ping`."""
    return bare_body(repository_id, name="Ping", code="ping", entry_file="ping.sh", original_path="scripts/ping")


@pytest.fixture
def big_origin(tmp_path: Path) -> Path:
    """A repository holding a small script and a large file of random bytes."""
    repo = tmp_path / "big-origin"
    (repo / "scripts" / "report").mkdir(parents=True)
    (repo / "scripts" / "report" / "report.sh").write_text("#!/bin/bash\n# Name: Report\necho ok\n")
    (repo / "data.bin").write_bytes(os.urandom(BIG_BYTES))
    commit_all(repo, message="large")
    return repo


@pytest.fixture
def small_origin(tmp_path: Path) -> Path:
    repo = tmp_path / "small-origin"
    (repo / "scripts" / "ping").mkdir(parents=True)
    (repo / "scripts" / "ping" / "ping.sh").write_text(f"#!/bin/bash\n# Name: Ping\necho {os.getpid()} {time.time()}\n")
    commit_all(repo, message="small")
    return repo


def _gits_of(server: int, tenant_id: str, what: str = "fetch") -> list[psutil.Process]:
    """The server's `git <what>` children that work on a mirror of `tenant_id` (named on their command line, or
    their working directory: GitPython's `cat-file` runs inside the mirror)."""
    found = []
    for child in psutil.Process(server).children():
        try:
            command, where = child.cmdline(), child.cwd()
        except psutil.Error:
            continue
        mirror = f"/mirrors/{tenant_id}/"
        if what in command and (mirror in where or any(mirror in part for part in command)):
            found.append(child)
    return found


def _git_processes(server: int) -> list[psutil.Process]:
    """Every git process below the server (its fetch and the helpers git started)."""
    found = []
    for process in psutil.Process(server).children(recursive=True):
        try:
            if process.name().startswith("git"):
                found.append(process)
        except psutil.Error:
            continue
    return found


class Hang:
    """Stops every `git fetch` of a tenant's mirrors that the server starts, from `start` until `release`."""

    def __init__(self, server: int, tenant_id: str) -> None:
        self.server = server
        self.tenant_id = tenant_id
        self.stopped: dict[int, psutil.Process] = {}
        self._stopping: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stopping = asyncio.create_task(self._stop_fetches())

    async def _stop_fetches(self) -> None:
        while True:
            for fetch in _gits_of(self.server, self.tenant_id):
                if fetch.pid not in self.stopped:
                    try:
                        fetch.suspend()
                    except psutil.Error:
                        continue  # finished before it could be stopped
                    self.stopped[fetch.pid] = fetch
            await asyncio.sleep(0.01)

    async def hung(self) -> int:
        return sum(1 for fetch in self.stopped.values() if alive(fetch))

    def stop_watching(self) -> None:
        """Stop no more fetches; those stopped stay stopped."""
        if self._stopping is not None:
            self._stopping.cancel()

    def release(self) -> None:
        """Stop no more fetches, and let those stopped go on."""
        self.stop_watching()
        for fetch in self.stopped.values():
            with contextlib.suppress(psutil.Error):
                fetch.resume()


@asynccontextmanager
async def hanging(server: int, tenant_id: str) -> AsyncIterator[Hang]:
    hang = Hang(server, tenant_id)
    hang.start()
    try:
        yield hang
    finally:
        hang.release()  # whatever the test found, nothing it stopped is left stopped


async def _add(client: httpx.AsyncClient, caller: Caller, url: Path, name: str) -> int:
    answer = await client.post(
        "/api/v1/git-repositories", json={"name": name, "url": str(url)}, headers=caller[Role.ADMIN]
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def test_a_tenant_flooding_syncs_leaves_the_api_to_other_tenants(
    app_settings: AppSettings, tmp_path: Path, database_url: str, big_origin: Path, small_origin: Path
) -> None:
    flooder, other = await make_tenant(database_url), await make_tenant(database_url)
    overrides = {"AHOP_GIT_POOL_SIZE": "4", "AHOP_GIT_TENANT_LIMIT": "2"}
    with serve(app_settings, tmp_path, **overrides) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as client:
            repositories = [await _add(client, flooder, big_origin, f"big-{n}") for n in range(6)]
            theirs = await _add(client, other, small_origin, "small")
            async with hanging(served.process.pid, flooder.tenant_id) as hang:
                sync = f"{served.url}/api/v1/git-repositories/{{}}/sync"
                syncs = [
                    asyncio.create_task(client.post(sync.format(repository), headers=flooder[Role.OPERATOR]))
                    for repository in repositories * 2
                ]
                # The flooder's fetches hang at its limit: 2 of them hold their slots, its 10 other syncs wait.
                await until(lambda: _at_least(hang.hung, 2), "two of the flooder's fetches to hang", bound=60)

                ready = [await client.get("/health/ready") for _ in range(3)]
                listed = await client.get("/api/v1/git-repositories", headers=other[Role.VIEWER])
                imported = await client.post(
                    "/api/v1/task-templates",
                    headers=other[Role.ADMIN],
                    json=_ping_template(theirs),
                )
                templates = await client.get("/api/v1/task-templates", headers=other[Role.VIEWER])
                ready.append(await client.get("/health/ready"))
                hang.release()
                synced = await asyncio.gather(*syncs)
    assert [answer.status_code for answer in ready] == [200] * 4, [answer.text for answer in ready]
    assert listed.status_code == 200, listed.text
    assert [row["name"] for row in listed.json()["items"]] == ["small"]
    assert imported.status_code == 201, imported.text
    assert templates.status_code == 200, templates.text
    assert [row["code"] for row in templates.json()["items"]] == ["ping"]
    assert [answer.status_code for answer in synced] == [201] * len(syncs), [answer.text for answer in synced]


async def _at_least(count: Callable[[], Awaitable[int]], least: int) -> bool:
    return bool(await count() >= least)


async def _hung_fetch(
    served: Served, client: httpx.AsyncClient, caller: Caller, origin: Path
) -> tuple[asyncio.Task[httpx.Response], list[psutil.Process]]:
    """A sync whose fetch hangs, and the git processes below the server at that moment."""
    repository = await _add(client, caller, origin, "big")
    hang = Hang(served.process.pid, caller.tenant_id)
    hang.start()
    sync = asyncio.create_task(
        client.post(f"/api/v1/git-repositories/{repository}/sync", headers=caller[Role.OPERATOR])
    )
    try:
        await until(lambda: _at_least(hang.hung, 1), "the fetch to hang", bound=60)
    finally:
        hang.stop_watching()
    return sync, _git_processes(served.process.pid)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_no_git_process_outlives_the_api(
    app_settings: AppSettings, tmp_path: Path, alice: Caller, big_origin: Path, how: str
) -> None:
    shutdown_timeout = 2
    with serve(app_settings, tmp_path, AHOP_SHUTDOWN_TIMEOUT=str(shutdown_timeout)) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as client:
            sync, gits = await _hung_fetch(served, client, alice, big_origin)
            await _stops_leaving_no_git(served, sync, gits, how, shutdown_timeout)


HANGING_CAT_FILE = """#!/bin/sh
# git as GitPython runs it, but a `git cat-file` stops itself before it reads anything: a read of the mirror that hangs.
case "$1" in cat-file) kill -STOP $$ ;; esac
exec git "$@"
"""


async def test_a_hung_git_of_an_import_does_not_keep_the_api_from_stopping(
    app_settings: AppSettings, tmp_path: Path, alice: Caller, small_origin: Path
) -> None:
    """Reading the mirror (GitPython's `cat-file`, for the resolve, the scan and the pack) hangs, not the fetch."""
    hanging_git = tmp_path / "hanging" / "git"
    hanging_git.parent.mkdir()
    hanging_git.write_text(HANGING_CAT_FILE)
    hanging_git.chmod(0o755)
    shutdown_timeout = 2
    overrides = {"AHOP_SHUTDOWN_TIMEOUT": str(shutdown_timeout), "GIT_PYTHON_GIT_EXECUTABLE": str(hanging_git)}
    with serve(app_settings, tmp_path, **overrides) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as client:
            repository = await _add(client, alice, small_origin, "small")
            imported = asyncio.create_task(
                client.post("/api/v1/task-templates", headers=alice[Role.ADMIN], json=_ping_template(repository))
            )

            async def hung() -> bool:
                return any(
                    process.status() == psutil.STATUS_STOPPED
                    for process in _gits_of(served.process.pid, alice.tenant_id, "cat-file")
                    if alive(process)
                )

            await until(hung, "a git cat-file of the import to hang", bound=60)
            await _stops_leaving_no_git(
                served, imported, _git_processes(served.process.pid), "SIGTERM", shutdown_timeout
            )


async def _stops_leaving_no_git(
    served: Served, request: asyncio.Task[httpx.Response], gits: list[psutil.Process], how: str, shutdown_timeout: float
) -> None:
    """Signal the server with `how`: it exits within a bound well above its shutdown timeout (only a server that
    does not stop fails this), and none of `gits` is left."""
    try:
        served.process.send_signal(getattr(signal, how))
        exited = await asyncio.to_thread(_exit_within, served, 10 * shutdown_timeout + 10)
        assert exited, f"ahop serve still runs {10 * shutdown_timeout + 10}s after {how}:\n{served.text()}"

        async def none_left() -> bool:
            return not [process.pid for process in gits if alive(process)]

        await until(none_left, f"the git processes of the API to end after its {how}", bound=30)
    finally:
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)  # the server went away under it
        for process in gits:  # never leave a stopped git behind, whatever happened
            if alive(process):
                process.kill()


def _exit_within(served: Served, bound: float) -> bool:
    deadline = time.monotonic() + bound
    while served.process.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def test_a_sync_whose_client_left_while_it_waited_fetches_nothing(
    app_settings: AppSettings, tmp_path: Path, alice: Caller, small_origin: Path
) -> None:
    with serve(app_settings, tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as client:
            repository = await _add(client, alice, small_origin, "small")
            mirror = tmp_path / "server" / "mirrors" / alice.tenant_id / f"{repository}.git"
            lock = MirrorLock(mirror.with_suffix(".lock"))
            await asyncio.to_thread(lock.acquire)  # as a long fetch of this mirror would hold it

            async def waiting_for_lock() -> bool:
                samples = parse_samples((await client.get("/metrics")).text)
                return value(samples, "ahop_git_work", state="waiting_lock") >= 1

            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as leaving:
                    sync = asyncio.create_task(
                        leaving.post(f"/api/v1/git-repositories/{repository}/sync", headers=alice[Role.OPERATOR])
                    )
                    await until(waiting_for_lock, "the sync to wait for the mirror's lock")
                    sync.cancel()  # the client gives up: its connection closes
                    await asyncio.gather(sync, return_exceptions=True)
                # Answered after the server read the close, which came first on the same event loop.
                assert (await client.get("/health/live")).status_code == 200
            finally:
                lock.release()

            async def refused() -> bool:
                return "the client went away before its git work started" in served.text()

            await until(refused, "the sync to give up once it had the lock")
            assert (await client.get(f"/api/v1/git-repositories/{repository}", headers=alice[Role.VIEWER])).json()[
                "head_commit"
            ] is None
    assert not mirror.exists(), "nothing was fetched for a client that had gone"


async def test_the_api_leaves_no_git_process_running_once_a_request_is_answered(
    app_settings: AppSettings, tmp_path: Path, alice: Caller, small_origin: Path
) -> None:
    """GitPython's `cat-file` processes end with the request's git work, on its git thread. Left to the garbage
    collector, they pile up under the API, and may be ended on the event loop's thread, whose wait for a hung one
    then blocks every request and the shutdown."""
    (small_origin / "scripts" / "ping" / "pong.sh").write_text("#!/bin/bash\necho pong\n")
    commit_all(small_origin, message="a second entry")
    with serve(app_settings, tmp_path) as served:
        async with httpx.AsyncClient(base_url=served.url, timeout=REQUEST_BOUND) as client:
            repository = await _add(client, alice, small_origin, "small")
            imported = await client.post(
                "/api/v1/task-templates", headers=alice[Role.ADMIN], json=_ping_template(repository)
            )
            assert imported.status_code == 201, imported.text
            after = {"import (resolve, scan, pack)": _git_processes(served.process.pid)}
            template = imported.json()["id"]
            changed = await client.put(
                f"/api/v1/task-templates/{template}", headers=alice[Role.ADMIN], json={"entry_file": "pong.sh"}
            )
            assert changed.status_code == 200, changed.text
            after["change of entry_file (checked in the snapshot)"] = _git_processes(served.process.pid)
            synced = await client.post(f"/api/v1/task-templates/{template}/sync", headers=alice[Role.ADMIN])
            assert synced.status_code == 201, synced.text
            after["sync"] = _git_processes(served.process.pid)
    left = {request: [process.cmdline() for process in gits if alive(process)] for request, gits in after.items()}
    assert left == {request: [] for request in after}, left
