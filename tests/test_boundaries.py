"""The package boundaries of DESIGN §1 hold, statically and in a running worker process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from arq import create_pool
from arq.connections import RedisSettings

from worker.protocol import DEFAULT_POOL, PING_JOB, deserialize, queue_name, serialize

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_WORKER = ("app", "litestar", "sqlalchemy", "asyncpg", "alembic")


def test_import_contracts_hold() -> None:
    """import-linter checks the contracts in pyproject.toml (storage core, worker without app or a db driver)."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower().replace("0 broken", "")


def _imported_top_level_modules(importtime_log: str) -> set[str]:
    """Top-level package names from `python -X importtime` output ("import time: … | … | <indent>name")."""
    names = set()
    for line in importtime_log.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if match:
            names.add(match.group(1).split(".")[0])
    return names


async def _ping(redis_url: str) -> dict[str, object]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=serialize, job_deserializer=deserialize)
    try:
        job = await pool.enqueue_job(PING_JOB, _queue_name=queue_name(DEFAULT_POOL))
        assert job is not None
        result = await job.result(timeout=30, poll_delay=0.05)
        assert isinstance(result, dict)
        return result
    finally:
        await pool.aclose()


def test_worker_process_serves_jobs_without_loading_app_or_a_database_driver(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    assert not any(key == "AHOP_DATABASE_URL" for key in worker_env)
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "ahop", "worker"],
            env=worker_env,
            stdout=out,
            stderr=out,
        )
    try:
        result = asyncio.run(_ping(worker_env["AHOP_REDIS_URL"]))
        assert result["pool"] == DEFAULT_POOL
        assert result["worker"] == f"{os.uname().nodename}:{process.pid}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, log.read_text()[-2000:]
    loaded = _imported_top_level_modules(log.read_text())
    assert {"arq", "storage", "worker"} <= loaded  # the parse works: the worker's own imports are seen
    assert loaded.isdisjoint(FORBIDDEN_IN_WORKER), sorted(loaded & set(FORBIDDEN_IN_WORKER))


def test_worker_without_s3_exits_3_naming_s3(worker_env: dict[str, str]) -> None:
    env = {**worker_env, "AHOP_S3_ENDPOINT_URL": "http://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "ahop", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "S3 unavailable" in result.stderr
    assert "127.0.0.1:1" in result.stderr
