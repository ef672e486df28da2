"""`ahop dev --demo-hosts N` as a newcomer runs it: N SSH hosts in the inventory, each its own home, gone at the end."""

from __future__ import annotations

import asyncio
import json
import pwd
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import psutil
import pytest

from tests.support.dev_runs import clean_env, remove_root_database, running_dev, stopped
from tests.support.ssh_hosts import AS_ROOT, needs_root

DEMO = ("--demo-hosts", "2")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    yield state
    remove_root_database(state)


def _api(env: dict[str, str], path: str) -> Any:
    answer = httpx.get(env["AHOP_API_URL"] + path, headers={"Authorization": f"Bearer {env['AHOP_TOKEN']}"})
    answer.raise_for_status()
    return answer.json()


def _demo_hosts(env: dict[str, str]) -> list[dict[str, Any]]:
    return sorted(_api(env, "/api/v1/hosts?label=demo")["items"], key=lambda host: str(host["name"]))


def _printed(state_dir: Path) -> str:
    """What the latest `ahop dev` on `state_dir` printed."""
    return sorted(state_dir.parent.glob("ahop-dev-*.out"))[-1].read_text()


def _sshd_pids(state_dir: Path) -> list[int]:
    pid_files = sorted((state_dir / "demo-hosts").glob("demo-*/sshd.pid"))
    return [int(json.loads(pid_file.read_text())["pid"]) for pid_file in pid_files]


def _key_lines(pub_files: list[Path]) -> set[str]:
    return {" ".join(pub.read_text().split()[:2]) for pub in pub_files}


async def _home_of(host: dict[str, Any], client_key: Path) -> str:
    """`~` of a login to `host` with `client_key`, trusting only the host keys the inventory pins for it."""
    pinned = "".join(f"[{host['address']}]:{host['port']} {key['public']}\n" for key in host["host_keys"])
    async with asyncssh.connect(
        host["address"],
        host["port"],
        username=host["user"],
        known_hosts=asyncssh.import_known_hosts(pinned),
        client_keys=[str(client_key)],
        config=None,
        agent_path=None,
    ) as connection:
        result = await connection.run("echo ~", check=True)
        assert isinstance(result.stdout, str)
        return result.stdout.strip()


def _homes(hosts: list[dict[str, Any]], client_key: Path) -> list[str]:
    async def all_homes() -> list[str]:
        return [await _home_of(host, client_key) for host in hosts]

    return asyncio.run(all_homes())


def test_demo_hosts_are_in_the_inventory_with_pinned_keys_and_each_has_its_own_home(state_dir: Path) -> None:
    demo = state_dir.resolve() / "demo-hosts"
    client_key = demo / "client" / "id_ed25519"
    with running_dev(state_dir, clean_env(), options=DEMO) as (process, env):
        hosts = _demo_hosts(env)
        assert [host["name"] for host in hosts] == ["demo-1", "demo-2"]
        assert [host["address"] for host in hosts] == ["127.0.0.11", "127.0.0.12"]
        assert [(host["credential"], host["labels"]) for host in hosts] == [("demo-hosts", ["demo"])] * 2
        for host in hosts:
            pinned = {key["public"] for key in host["host_keys"]}
            assert pinned == _key_lines(sorted((demo / host["name"]).glob("ssh_host_*_key.pub")))
            assert len(pinned) == 2  # ed25519 and RSA
        (credential,) = _api(env, "/api/v1/credentials?name=demo-hosts")["items"]
        assert credential["public_key"] == " ".join(Path(f"{client_key}.pub").read_text().split()[:2])

        homes = _homes(hosts, client_key)
        assert len(set(homes)) == 2, homes
        printed = _printed(state_dir)
        for host, home in zip(hosts, homes, strict=True):
            assert f"{host['name']}  {host['user']}@{host['address']}:{host['port']}  home {home}" in printed
        assert "ahop host list --label demo" in printed
        listed = subprocess.run(
            [sys.executable, "-m", "ahop", "host", "list", "--label", "demo"],
            env={**clean_env(), **env},
            capture_output=True,
            text=True,
            check=True,
        )
        assert [line.split("\t")[1] for line in listed.stdout.splitlines()[1:]] == ["demo-1", "demo-2"]

        sshd_pids = _sshd_pids(state_dir)
        assert len(sshd_pids) == 2
        assert all(psutil.pid_exists(pid) for pid in sshd_pids)
        users = [host["user"] for host in hosts]
        assert stopped(process, state_dir, signal.SIGTERM) == 0
    assert [pid for pid in sshd_pids if psutil.pid_exists(pid)] == []
    if AS_ROOT:
        assert users == ["ahop-demo-1", "ahop-demo-2"]
        for user in users:
            with pytest.raises(KeyError):
                pwd.getpwnam(user)
    assert [home for home in homes if Path(home).exists()] == []


def test_a_second_run_on_the_same_state_dir_updates_the_demo_hosts_and_keeps_their_keys(state_dir: Path) -> None:
    with running_dev(state_dir, clean_env(), options=DEMO) as (process, env):
        first = _demo_hosts(env)
        assert stopped(process, state_dir) == 0
    with running_dev(state_dir, clean_env(), options=DEMO) as (process, env):
        again = _demo_hosts(env)
        assert [host["id"] for host in again] == [host["id"] for host in first]
        assert [host["host_keys"] for host in again] == [host["host_keys"] for host in first]
        assert _api(env, "/api/v1/credentials?name=demo-hosts")["total"] == 1
        assert len(set(_homes(again, state_dir.resolve() / "demo-hosts" / "client" / "id_ed25519"))) == 2
        assert stopped(process, state_dir) == 0


@needs_root  # only root makes a mount namespace in which /usr/sbin is empty
def test_demo_hosts_without_sshd_fail_at_once_naming_the_package(state_dir: Path) -> None:
    port = "8123"  # never bound: it fails before anything starts
    dev = [sys.executable, "-m", "ahop", "dev", "--state-dir", str(state_dir), "--port", port, *DEMO]
    without_sbin = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /usr/sbin && exec "$@"', "sh", *dev]
    result = subprocess.run(without_sbin, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert "--demo-hosts: /usr/sbin/sshd is missing: install it with `apt-get install -y openssh-server`" in (
        result.stderr
    )
    assert not state_dir.exists()
