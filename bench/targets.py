"""A shell template on many SSH hosts: ours against Ansible's `ansible all -m script` and a plain ssh fan-out.

    python -m bench.targets                       # 20 hosts, forks 20, 5 cold and 10 warm runs of each side
    python -m bench.targets --hosts 10 --runs 3

Hosts are real OpenSSH servers on this machine (`app.devstack.ssh_hosts`, 127.0.0.11 …, each with its own host
keys, login user and home), in one tenant's inventory with their keys pinned. The template is a small tree: an
entry `run.sh` that sources `lib/common.sh` and reads `config/app.conf`.

- ours: the API in-process (its control loop in a thread of this process) and one real `ahop worker` process. A
  task with `labels: [bench]`; the time is the task's own, from the worker's `started` to its `finished`
  (`finished_at - started_at`: connect, check or send the content, private copy, run, clean up on every host),
  and, apart, from just before the POST to the final status seen by a GET every 5 ms. Cold: every host's content
  cache (`~/.cache/ahop`) removed before the run (outside the timed region), so the tree is sent to each; warm:
  the content is there and checked with the host's `sha256sum`.
- the limit: `ssh -F /dev/null -i KEY -o UserKnownHostsFile=PINNED -o StrictHostKeyChecking=yes -p PORT USER@HOST
  sh -s < run.sh`, all hosts at once, waiting for all: a login and one script, with nothing delivered, checked or
  cleaned (the script gets its lib and config inline, so it does the same work).
- Ansible: `ansible all -i INVENTORY -f FORKS -m script -a run.sh`, with the same pinned known_hosts and key: the
  peer an operator would use, which copies the script to each host, runs it and removes it.

Sides interleave (ours, limit, Ansible, …) after one untimed warm-up of each; medians. Targets: warm ≤ 1.3 x the
plain fan-out and ≤ 0.5 x Ansible; cold ≤ 1.5 x the plain fan-out. Per-host overhead = (ours - plain) x forks /
hosts: what each host's run costs beyond the login and the script.

Needs root (one login user per host) or runs every host as the current user with a home per host. Prints Markdown
tables and writes every raw timing and the machine facts to `bench-results/targets-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from app.devstack.ssh_hosts import AS_ROOT, HostsLayout, KeyFile, SshHost, running_ssh_hosts
from app.devstack.stack import LocalStack
from app.main import create_app
from app.settings import AppSettings
from bench import machine
from bench.harness import RESULTS, code_under_test, fmt, progress, write_results
from bench.services import app_settings, fresh_database_and_bucket, tenant_token
from bench.tasks import Client, answer, final_task, start_worker
from targets.host_keys import known_hosts_line, parse_host_keys

LABEL = "bench"
COMMON_SH = """greet() { printf '%s on %s: %s\\n' "$APP_NAME" "$(hostname)" "$1"; }
"""
APP_CONF = """APP_NAME=bench-app
"""
RUN_SH = """#!/bin/bash
set -eu
here=$(dirname "$0")
. "$here/lib/common.sh"
. "$here/config/app.conf"
greet "$(uname -s) $(date +%s)"
"""
INLINE_SH = COMMON_SH + APP_CONF + 'greet "$(uname -s) $(date +%s)"\n'
"""The same work for the sides that send one script: the library and the config inline."""
ANSIBLE_SSH_ARGS = "-C -o ControlMaster=auto -o ControlPersist=60s"
"""Ansible's own default ssh_args (its connection reuse between runs included), so it runs as an operator's would."""


def tree_repo(parent: Path) -> Path:
    """A Git repository with the template's small tree: run.sh, lib/common.sh, config/app.conf."""
    repo = parent / "bench-targets-repo"
    files = {"fanout/run.sh": RUN_SH, "fanout/lib/common.sh": COMMON_SH, "fanout/config/app.conf": APP_CONF}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    (repo / "fanout/run.sh").chmod(0o755)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "fanout"], check=True)
    return repo


def known_hosts(hosts: list[SshHost], path: Path) -> Path:
    """Exactly the hosts' pinned keys, as the plain fan-out and Ansible check them."""
    path.write_text(
        "".join(known_hosts_line(host.address, host.port, parse_host_keys("\n".join(host.host_keys))) for host in hosts)
    )
    return path


def ssh_argv(host: SshHost, pinned: Path) -> list[str]:
    return [
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        str(host.client_key),
        "-o",
        f"UserKnownHostsFile={pinned}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-p",
        str(host.port),
        f"{host.user}@{host.address}",
        "sh",
        "-s",
    ]


async def plain_fanout(hosts: list[SshHost], pinned: Path, script: str) -> float:
    """Seconds for one `ssh host sh -s < script` per host, all at once, until the last has ended (each must succeed)."""

    async def one(host: SshHost) -> None:
        process = await asyncio.create_subprocess_exec(
            *ssh_argv(host, pinned),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await process.communicate(script.encode())
        if process.returncode != 0 or b"bench-app on" not in out:
            raise SystemExit(f"FAIL: plain ssh to {host.name} ended {process.returncode}: {err.decode()[-500:]}")

    start = time.perf_counter()
    await asyncio.gather(*(one(host) for host in hosts))
    return time.perf_counter() - start


def write_inventory(hosts: list[SshHost], path: Path) -> Path:
    lines = ["[all]"] + [
        f"{host.name} ansible_host={host.address} ansible_port={host.port} ansible_user={host.user} "
        f"ansible_ssh_private_key_file={host.client_key}"
        for host in hosts
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def ansible_env(work: Path, pinned: Path) -> dict[str, str]:
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("AHOP_")},
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": ANSIBLE_SSH_ARGS,
        "ANSIBLE_SSH_COMMON_ARGS": f"-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={pinned} "
        "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "ansible-cp"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
    }


def ansible_script(inventory: Path, script: Path, forks: int, env: dict[str, str]) -> float:
    """Seconds of `ansible all -m script` on every host (each must succeed)."""
    ansible = Path(sys.executable).with_name("ansible")
    argv = [str(ansible), "all", "-i", str(inventory), "-f", str(forks), "-m", "script", "-a", str(script)]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"FAIL: ansible ended {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    return elapsed


def stop_ansible_masters(control_dir: Path) -> None:
    """End the connections Ansible keeps open (ControlPersist), so that none of its ssh processes outlives us."""
    for socket in control_dir.glob("*") if control_dir.exists() else []:
        subprocess.run(
            ["ssh", "-F", "/dev/null", "-o", f"ControlPath={socket}", "-O", "exit", "ignored"],
            capture_output=True,
            check=False,
        )


def clear_host_caches(hosts: list[SshHost]) -> None:
    """Remove every host's content cache, so that the next task sends the tree to each (outside the timing)."""
    for host in hosts:
        shutil.rmtree(host.home / ".cache" / "ahop", ignore_errors=True)


def _seconds_between(start: str, end: str) -> float:
    return (
        datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
    ).total_seconds()


class Ours:
    """Tasks of the fan-out template on every bench host, through the API and one real worker."""

    def __init__(self, client: Client, headers: dict[str, str], template_id: int, hosts: int) -> None:
        self.client, self.headers, self.template_id, self.hosts = client, headers, template_id, hosts

    async def run(self) -> tuple[float, float]:
        """(the task's own seconds from started to finished, seconds from just before the POST to final)."""
        t0 = time.perf_counter()
        body = {"template_id": self.template_id, "labels": [LABEL]}
        created = answer(await self.client.post("/api/v1/tasks", json=body, headers=self.headers), 201, "a task")
        done = await final_task(self.client, self.headers, created["id"], bound=300)
        wall = time.perf_counter() - t0
        if done["status"] != "success":
            raise SystemExit(f"FAIL: task {created['id']} ended {done['status']}: {done.get('error')}")
        listed = await self.client.get(f"/api/v1/tasks/{created['id']}/hosts", headers=self.headers)
        runs = listed.json()
        if len(runs) != self.hosts or any(run["status"] != "success" for run in runs):
            raise SystemExit(f"FAIL: task {created['id']}: host runs {runs}")
        return _seconds_between(done["started_at"], done["finished_at"]), wall


async def register(client: Client, headers: dict[str, str], hosts: list[SshHost], repo: Path, forks: int) -> int:
    """The credential, the hosts (label bench, keys pinned), the repository and the template; the template's id."""
    key = hosts[0].client_key.read_text()
    credential = {"name": "bench", "kind": "ssh_key", "secret": key}
    answer(await client.post("/api/v1/credentials", json=credential, headers=headers), 201, "add the credential")
    for host in hosts:
        body = {
            "name": host.name,
            "address": host.address,
            "port": host.port,
            "user": host.user,
            "labels": [LABEL],
            "credential": "bench",
            "host_keys": host.host_keys,
        }
        answer(await client.post("/api/v1/hosts", json=body, headers=headers), 201, f"add host {host.name}")
    added = await client.post("/api/v1/git-repositories", json={"name": "fan", "url": str(repo)}, headers=headers)
    repository = answer(added, 201, "add the repository")
    template = {
        "name": "fanout",
        "code": "fanout",
        "script_type": "shell",
        "entry_file": "run.sh",
        "repository_id": repository["id"],
        "original_path": "fanout",
        "timeout": 300,
        "execution": "targets",
        "forks": forks,
    }
    return int(
        answer(await client.post("/api/v1/task-templates", json=template, headers=headers), 201, "template")["id"]
    )


async def compare(
    settings: AppSettings, token: str, hosts: list[SshHost], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Interleaved runs of the three sides, cold then warm; every raw timing."""
    headers = {"Authorization": f"Bearer {token}"}
    pinned = known_hosts(hosts, work / "pinned_known_hosts")
    script = work / "inline.sh"
    script.write_text(INLINE_SH)
    inventory = write_inventory(hosts, work / "inventory.ini")
    env = ansible_env(work, pinned)
    timings: dict[str, list[float]] = {
        name: [] for name in ("ours_cold", "ours_cold_wall", "ours_warm", "ours_warm_wall", "plain", "ansible")
    }
    try:
        async with AsyncTestClient(create_app(settings), timeout=300) as client:
            ours = Ours(
                client, headers, await register(client, headers, hosts, tree_repo(work), args.forks), len(hosts)
            )
            # Untimed warm-ups: the worker fetches the blob, Ansible finds the interpreter, ssh warms its caches.
            await ours.run()
            await plain_fanout(hosts, pinned, INLINE_SH)
            await asyncio.to_thread(ansible_script, inventory, script, args.forks, env)
            for kind, runs in (("cold", args.cold_runs), ("warm", args.warm_runs)):
                for n in range(runs):
                    if kind == "cold":
                        clear_host_caches(hosts)
                    task, wall = await ours.run()
                    timings[f"ours_{kind}"].append(task)
                    timings[f"ours_{kind}_wall"].append(wall)
                    timings["plain"].append(await plain_fanout(hosts, pinned, INLINE_SH))
                    ansible = await asyncio.to_thread(ansible_script, inventory, script, args.forks, env)
                    timings["ansible"].append(ansible)
                    plain_ms = timings["plain"][-1] * 1000
                    progress(f"  {kind} run {n + 1}: ours {task * 1000:.0f} ms, plain {plain_ms:.0f} ms")
    finally:
        stop_ansible_masters(work / "ansible-cp")
    return timings


def figures(timings: dict[str, list[float]], hosts: int, forks: int) -> dict[str, float]:
    median = {name: statistics.median(values) for name, values in timings.items() if values}
    plain, ansible = median["plain"], median["ansible"]
    return {
        **{f"{name}_median_s": value for name, value in median.items()},
        "warm_over_plain": median["ours_warm"] / plain,
        "warm_over_ansible": median["ours_warm"] / ansible,
        "cold_over_plain": median["ours_cold"] / plain,
        "warm_overhead_per_host_ms": (median["ours_warm"] - plain) * 1000 * min(forks, hosts) / hosts,
        "cold_overhead_per_host_ms": (median["ours_cold"] - plain) * 1000 * min(forks, hosts) / hosts,
    }


def verdict(value: float, target: float) -> str:
    return f"≤ {target:g} {'met' if value <= target else 'NOT met'}"


def table(result: dict[str, float], hosts: int, forks: int) -> str:
    ms = {name.removesuffix("_median_s"): value * 1000 for name, value in result.items() if name.endswith("_median_s")}
    rows = [
        "| side | median ms | ÷ plain fan-out | ÷ Ansible | per-host overhead ms | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| ours, warm (task started → finished) | {ms['ours_warm']:.0f} | {fmt(result['warm_over_plain'], 2)} | "
        f"{fmt(result['warm_over_ansible'], 2)} | {result['warm_overhead_per_host_ms']:.1f} | "
        f"÷ plain {verdict(result['warm_over_plain'], 1.3)}; ÷ Ansible {verdict(result['warm_over_ansible'], 0.5)} |",
        f"| ours, cold (tree sent to every host) | {ms['ours_cold']:.0f} | {fmt(result['cold_over_plain'], 2)} | "
        f"{fmt(ms['ours_cold'] / ms['ansible'], 2)} | {result['cold_overhead_per_host_ms']:.1f} | "
        f"÷ plain {verdict(result['cold_over_plain'], 1.5)} |",
        f"| ours, warm, POST → final seen | {ms['ours_warm_wall']:.0f} | {fmt(ms['ours_warm_wall'] / ms['plain'], 2)} "
        f"| {fmt(ms['ours_warm_wall'] / ms['ansible'], 2)} | | |",
        f"| plain `ssh host sh -s` fan-out | {ms['plain']:.0f} | 1 | {fmt(ms['plain'] / ms['ansible'], 2)} | | |",
        f"| `ansible all -m script -f {forks}` | {ms['ansible']:.0f} | {fmt(ms['ansible'] / ms['plain'], 2)} | 1 | | |",
    ]
    return f"### A small tree on {hosts} hosts, forks {forks}\n\n" + "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.targets", description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=20, help="SSH hosts on this machine (default 20)")
    parser.add_argument("--forks", type=int, default=20, help="hosts at once, every side (default 20)")
    parser.add_argument("--cold-runs", type=int, default=5, help="timed cold runs of each side (default 5)")
    parser.add_argument("--warm-runs", type=int, default=10, help="timed warm runs of each side (default 10)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 200 or args.forks < 1 or min(args.cold_runs, args.warm_runs) < 1:
        parser.error("--hosts 1 to 200, --forks ≥ 1, --cold-runs and --warm-runs ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    if missing := [tool for tool in ("ssh", "git") if shutil.which(tool) is None]:
        print(f"bench.targets: missing command-line tools {', '.join(missing)}; install them and run again.")
        return 2
    report: dict[str, Any] = {"code": code_under_test(), "args": vars(args) | {"results": str(args.results)}}
    report["loadavg_start"] = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ahop-bench-targets-") as work_dir:
        work = Path(work_dir)
        layout = HostsLayout(
            directory=work / "hosts",
            names=[f"bench-{index}" for index in range(1, args.hosts + 1)],
            client_keys=[KeyFile(work / "client" / "id_ed25519", "ed25519", "bench-client")],
            user_name=lambda index: f"ahop-bench-{index}",
            own_homes=True,
        )
        stack = LocalStack.scratch(work / "stack")
        try:
            database_url, bucket = fresh_database_and_bucket(stack)
            settings = app_settings(stack, database_url, bucket, work / "server")
            token = asyncio.run(tenant_token(database_url))
            worker = start_worker(stack, bucket, work / "worker", work / "logs")
            try:
                with running_ssh_hosts(layout, SshHost) as hosts:
                    progress(f"bench.targets: {len(hosts)} hosts up ({'a user each' if AS_ROOT else 'one user'})")
                    timings = asyncio.run(compare(settings, token, hosts, work, args))
            finally:
                worker.stop()
        finally:
            stack.stop()
        report["machine"] = machine.describe({"work": work})
    result = figures(timings, args.hosts, args.forks)
    report.update(timings=timings, figures=result, loadavg_end=os.getloadavg())
    print(table(result, args.hosts, args.forks))
    out = write_results(args.results, "targets", report)
    print(f"\nraw timings and machine facts: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
