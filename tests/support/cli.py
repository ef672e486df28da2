"""`ahop` run as a subprocess, as its users run it: a client of a real server, or an operator on the server's host."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from app.settings import AppSettings


def ahop(api_url: str, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """`ahop ARGS` as a client of the server at `api_url`, with `token` (if any) and no other AHOP_ setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHOP_")}
    env["AHOP_API_URL"] = api_url
    if token:
        env["AHOP_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "ahop", *args], capture_output=True, text=True, env=env, check=False)


def server_command_env(settings: AppSettings) -> dict[str, str]:
    """The environment of `ahop gc|verify` on a server host: the database, S3 and the server's data directory."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}
    location = settings.s3_location()
    env.update(
        AHOP_DATABASE_URL=settings.database_url,
        AHOP_S3_ENDPOINT_URL=location.endpoint_url or "",
        AHOP_S3_BUCKET=location.bucket,
        AHOP_S3_ACCESS_KEY_ID=location.access_key_id or "",
        AHOP_S3_SECRET_ACCESS_KEY=location.secret_access_key or "",
        AHOP_DATA_DIR=str(settings.data_dir),
        AHOP_GIT_ALLOWED_SCHEMES="https,ssh,file",
        AHOP_GIT_FILE_ROOTS=settings.git_file_roots,
    )
    return env


async def ahop_on_server(settings: AppSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """`ahop ARGS` on the server's host (as `ahop gc|verify` run), without blocking the test's event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ahop", *args],
        capture_output=True,
        text=True,
        env=server_command_env(settings),
        check=False,
    )


def template_import(
    repository_id: int | str, code: str, name: str, *, entry: str = "cleanup.sh", path: str = "scripts/disk_cleanup"
) -> tuple[str, ...]:
    """The arguments of `ahop template import` for a shell template of a directory of the repository."""
    return (
        "template",
        "import",
        "--repo",
        str(repository_id),
        "--path",
        path,
        "--entry",
        entry,
        "--code",
        code,
        "--name",
        name,
        "--type",
        "shell",
    )
