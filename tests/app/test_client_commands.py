"""`ahop repo …` and `ahop template …` against a real `ahop serve` process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.db.models import Role
from app.devstack.processes import free_ports
from app.settings import AppSettings
from tests.app.conftest import Caller, server_env


@pytest.fixture
def api_url(app_settings: AppSettings, tmp_path: Path) -> Iterator[str]:
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


def ahop(api_url: str, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AHOP_")}
    env["AHOP_API_URL"] = api_url
    if token:
        env["AHOP_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "ahop", *args], capture_output=True, text=True, env=env, check=False)


def test_repo_and_template_commands(api_url: str, alice: Caller, origin: Path) -> None:
    token = alice[Role.ADMIN]["Authorization"].removeprefix("Bearer ")
    added = ahop(api_url, token, "repo", "add", "ops", str(origin), "--json")
    assert added.returncode == 0, added.stderr
    repository_id = json.loads(added.stdout)["id"]
    assert "ops" in ahop(api_url, token, "repo", "list").stdout

    imported = ahop(
        api_url,
        token,
        "template",
        "import",
        "--repo",
        str(repository_id),
        "--path",
        "scripts/disk_cleanup",
        "--entry",
        "cleanup.sh",
        "--code",
        "cleanup",
        "--name",
        "Cleanup",
        "--type",
        "shell",
        "--json",
    )
    assert imported.returncode == 0, imported.stderr
    template = json.loads(imported.stdout)
    assert template["artifact"]["digest"].startswith("sha256:")

    table = ahop(api_url, token, "template", "list", "--search", "clean")
    assert table.returncode == 0
    assert "cleanup" in table.stdout
    synced = ahop(api_url, token, "template", "sync", str(template["id"]), "--json")
    assert (json.loads(synced.stdout)["changed"], json.loads(synced.stdout)["version"]) == (False, None)

    again = ahop(
        api_url,
        token,
        "template",
        "import",
        "--repo",
        str(repository_id),
        "--path",
        "scripts/disk_cleanup",
        "--entry",
        "missing.sh",
        "--code",
        "other",
        "--name",
        "Other",
        "--type",
        "shell",
    )
    assert again.returncode == 2
    assert "entry_file" in again.stderr


def test_client_without_a_token_or_api(api_url: str) -> None:
    assert ahop(api_url, None, "repo", "list").returncode == 2
    unreachable = ahop("http://127.0.0.1:1", "ahop_x", "repo", "list")
    assert unreachable.returncode == 3
    assert "did not answer" in unreachable.stderr
    unauthorized = ahop(api_url, "ahop_wrong", "repo", "list")
    assert (unauthorized.returncode, "401" in unauthorized.stderr) == (2, True)
