"""An Ansible template on target hosts: real ansible-playbook, real sshd hosts, the generated inventory.

No Redis: `run_playbook_on_targets` is called as the worker calls it, on a template tree in the test's directory
named by a digest as the worker's store names its entries.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.ssh_hosts import TargetHost, exited, needs_root
from tests.support.ssh_sudo import sudo_rules
from tests.support.waiting import until
from worker.ansible_targets import run_playbook_on_targets
from worker.job_secrets import JobSecrets, LoginSecret
from worker.output import MASK
from worker.protocol import JobHost, TargetPlan
from worker.runner import RunOutcome, RunRequest

HANG = 240.0
"""Bound of a whole playbook run here: only catches a hang."""

PLAY_FOR_ALL = """\
- hosts: all
  gather_facts: false
  tasks:
"""
"""The start of every playbook here: one play for all hosts of the inventory, without gathering facts."""
WHO_AM_I = """\
    - ansible.builtin.command: id -u
      register: who
"""


def play(*tasks: str) -> str:
    """A playbook of the play for all hosts with `tasks` (each YAML lines of the play's task list)."""
    return PLAY_FOR_ALL + "".join(tasks)


WRITE_MARK = play(
    """\
    - name: leave a mark
      ansible.builtin.copy:
        dest: "{{ mark_dir }}/{{ mark_name }}"
        content: "{{ inventory_hostname }} {{ greeting }}\\n"
"""
)


@dataclass
class Run:
    outcome: RunOutcome = field(default_factory=lambda: RunOutcome("failed", None, "did not finish"))
    lines: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def finished(self) -> dict[str, dict[str, Any]]:
        return {event["host"]: event for event in self.events if event["type"] == "host_finished"}


def template(tmp_path: Path, playbook: str) -> Path:
    """A read-only template tree named by its digest, as the worker's store holds it."""
    root = tmp_path / "store" / hashlib.sha256(playbook.encode()).hexdigest()
    root.mkdir(parents=True)
    (root / "site.yml").write_text(playbook)
    (root / "site.yml").chmod(0o444)
    root.chmod(0o555)
    return root


def job_host(host: TargetHost, login: str, **variables: Any) -> JobHost:
    return JobHost(
        host_id=int(host.address.rsplit(".", 1)[1]),
        name=host.name,
        address=host.address,
        port=host.port,
        username=host.user,
        host_keys=list(host.host_keys),
        login=login,
        variables={"mark_dir": str(host.home), **variables},
    )


def key_login(host: TargetHost, **extra: str) -> LoginSecret:
    return LoginSecret(private_key=host.client_key.read_text(), **extra)


async def run(
    tmp_path: Path,
    playbook: str,
    plan: TargetPlan,
    job_secrets: JobSecrets,
    params: dict[str, Any] | None = None,
    on_line: Callable[[str, str], Awaitable[None]] | None = None,
    cancelled: Callable[[], Awaitable[bool]] | None = None,
    task_timeout: float = HANG,
) -> Run:
    result = Run()
    request = RunRequest(
        task_id="task-1",
        source=template(tmp_path, playbook),
        runs_dir=tmp_path / "runs",
        entry_file="site.yml",
        script_type="ansible",
        params=params or {},
        timeout=task_timeout,
    )

    async def record_line(stream: str, line: str) -> None:
        result.lines.append(line)
        if on_line is not None:
            await on_line(stream, line)

    async def report_host(**event: Any) -> None:
        result.events.append(event)

    async def not_cancelled() -> bool:
        return False

    result.outcome = await asyncio.wait_for(
        run_playbook_on_targets(request, plan, job_secrets, record_line, cancelled or not_cancelled, report_host),
        HANG,
    )
    assert sorted(os.listdir(tmp_path / "runs")) == [], "the run copy and the private directory are removed"
    return result


def shared_key(hosts: list[TargetHost], mark: str, **plan_options: Any) -> tuple[TargetPlan, JobSecrets]:
    """A plan of `hosts` that all log in with the one client key (login `deploy`), and that key."""
    plan = TargetPlan([job_host(host, "deploy", mark_name=mark) for host in hosts], **plan_options)
    return plan, JobSecrets(logins={"deploy": key_login(hosts[0])})


def mark_of(host: TargetHost, name: str) -> str:
    return (host.home / name).read_text()


async def test_a_playbook_for_all_hosts_changes_a_file_on_each_host(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    mark = f"mark-{secrets.token_hex(4)}"
    plan, logins = shared_key(ssh_hosts, mark)

    result = await run(tmp_path, WRITE_MARK, plan, logins, params={"greeting": "hello"})

    assert result.outcome == RunOutcome("success", None, None), result.lines
    for host in ssh_hosts:
        assert mark_of(host, mark) == f"{host.name} hello\n"
        assert (host.home / mark).stat().st_uid == host.home.stat().st_uid, "written by the host's login user"
    started = [event["host"] for event in result.events if event["type"] == "host_started"]
    assert started == [host.name for host in ssh_hosts]
    assert result.events[: len(ssh_hosts)] == [{"host": host.name, "type": "host_started"} for host in ssh_hosts]
    digest = hashlib.sha256(WRITE_MARK.encode()).hexdigest()
    assert result.finished() == {
        host.name: {
            "host": host.name,
            "type": "host_finished",
            "status": "success",
            "exit_code": None,
            "error": None,
            "digest": digest,
        }
        for host in ssh_hosts
    }


async def test_a_host_showing_another_key_than_pinned_is_unreachable_and_the_others_succeed(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    first, impostor, third = ssh_hosts
    mark = f"mark-{secrets.token_hex(4)}"
    hosts = [job_host(host, "deploy", mark_name=mark) for host in ssh_hosts]
    hosts[1] = JobHost(**{**hosts[1].__dict__, "host_keys": list(first.host_keys)})
    logins = JobSecrets(logins={"deploy": key_login(first)})

    result = await run(tmp_path, WRITE_MARK, TargetPlan(hosts), logins, params={"greeting": "hi"})

    finished = result.finished()
    assert finished[impostor.name]["status"] == "unreachable", (finished, result.lines)
    assert "host key" in finished[impostor.name]["error"].lower(), finished[impostor.name]["error"]
    assert finished[impostor.name]["digest"] is None, "the host never got to run anything"
    assert not (impostor.home / mark).exists()
    for host in (first, third):
        assert finished[host.name]["status"] == "success"
        assert mark_of(host, mark) == f"{host.name} hi\n"
    assert result.outcome == RunOutcome(
        "failed", None, f"1 of 3 hosts did not succeed ({impostor.name}: unreachable); over max_fail_percentage 0"
    )


@needs_root
async def test_a_host_with_a_password_login_showing_another_key_than_pinned_is_unreachable(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    first, impostor = ssh_hosts[:2]
    hosts = [
        job_host(first, "key"),
        JobHost(**{**job_host(impostor, "password").__dict__, "host_keys": first.host_keys}),
    ]
    logins = {"key": key_login(first), "password": LoginSecret(password=impostor.password)}

    result = await run(tmp_path, play(WHO_AM_I), TargetPlan(hosts), JobSecrets(logins=logins))

    finished = result.finished()
    assert finished[first.name]["status"] == "success"
    assert finished[impostor.name]["status"] == "unreachable", finished[impostor.name]
    assert "Host Key checking is enabled" in finished[impostor.name]["error"]
    assert impostor.password not in finished[impostor.name]["error"]


async def test_max_fail_percentage_lets_a_task_succeed_with_a_failed_host(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    playbook = play(
        """\
    - name: fail on one host
      ansible.builtin.fail:
        msg: "{{ inventory_hostname }} refuses"
      when: inventory_hostname == "host-2"
"""
    )
    plan, logins = shared_key(ssh_hosts, "unused", max_fail_percentage=34)

    result = await run(tmp_path, playbook, plan, logins)

    finished = result.finished()
    assert finished["host-2"]["status"] == "failed"
    assert finished["host-2"]["error"] == "task 'fail on one host': host-2 refuses"
    assert [finished[name]["status"] for name in ("host-1", "host-3")] == ["success", "success"]
    assert result.outcome == RunOutcome(
        "success", None, "1 of 3 hosts did not succeed (host-2: failed); within max_fail_percentage 34"
    )


@needs_root
async def test_require_sudo_runs_the_tasks_as_root_with_the_become_password(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    playbook = play(
        WHO_AM_I,
        """\
    - ansible.builtin.copy:
        dest: "{{ mark_dir }}/{{ mark_name }}"
        content: "{{ who.stdout }}\\n"
""",
    )
    mark = f"mark-{secrets.token_hex(4)}"
    plan = TargetPlan([job_host(host, host.name, mark_name=mark) for host in ssh_hosts], require_sudo=True)
    logins = JobSecrets(logins={host.name: key_login(host, become_password=host.password) for host in ssh_hosts})

    with sudo_rules({host.user: "password" for host in ssh_hosts}):
        result = await run(tmp_path, playbook, plan, logins)

    assert result.outcome.status == "success", result.lines
    for host in ssh_hosts:
        assert mark_of(host, mark) == "0\n"
        assert (host.home / mark).stat().st_uid == 0


@needs_root
async def test_logins_stay_secret_and_private_while_the_playbook_runs_and_are_gone_after(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    """A protected key with its passphrase, a password and a plain key; become passwords for all three."""
    playbook = play(
        """\
    - name: show what a careless playbook would show
      ansible.builtin.debug:
        msg: "become with {{ ansible_become_password }}"
""",
        WHO_AM_I,
        """\
    - ansible.builtin.debug:
        msg: "uid {{ who.stdout }}"
""",
    )
    with_passphrase, with_password, with_key = ssh_hosts
    logins = {
        "protected": LoginSecret(
            private_key=with_passphrase.protected_client_key.read_text(),
            passphrase=with_passphrase.client_key_passphrase,
            become_password=with_passphrase.password,
        ),
        "password": LoginSecret(password=with_password.password, become_password=with_password.password),
        "key": key_login(with_key, become_password=with_key.password),
    }
    plan = TargetPlan(
        [job_host(with_passphrase, "protected"), job_host(with_password, "password"), job_host(with_key, "key")],
        require_sudo=True,
    )
    secret_texts = [host.password for host in ssh_hosts] + [with_passphrase.client_key_passphrase]
    key_bodies = [line for login in logins.values() if login.private_key for line in login.private_key.splitlines()]
    key_bodies = [line for line in key_bodies if "PRIVATE KEY" not in line]
    private = tmp_path / "runs" / "task-1.targets"
    commands: list[str] = []
    modes: dict[str, int] = {}

    async def look_while_running(stream: str, line: str) -> None:
        for process in psutil.process_iter():
            try:
                argv = process.cmdline()
                if any("ansible" in part or part.endswith("ssh") for part in argv):
                    commands.append(" ".join(argv))
                    commands.extend(f"{name}={value}" for name, value in process.environ().items())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for path in [private, *(private / name for name in ("host_vars", "keys"))]:
            for entry in [path, *path.iterdir()]:
                modes[entry.relative_to(private).as_posix()] = stat.S_IMODE(entry.stat().st_mode)

    with sudo_rules({host.user: "password" for host in ssh_hosts}):
        result = await run(tmp_path, playbook, plan, JobSecrets(logins=logins), on_line=look_while_running)

    assert result.outcome.status == "success", result.lines
    assert [line for line in result.lines if "uid 0" in line], "every host ran as root"
    assert any(f"become with {MASK}" in line for line in result.lines), "a printed become password is masked"
    assert any("ansible-playbook" in command for command in commands), "the playbook was seen running"
    for text in secret_texts + key_bodies:
        assert not [command for command in commands if text in command], "a secret in an argv or environment"
        assert not [line for line in result.lines if text in line], "a secret in the output"
    assert modes["."] == 0o700
    assert modes["host_vars"] == 0o700
    assert modes["host_vars/host-1.yml"] == modes["host_vars/host-2.yml"] == modes["host_vars/host-3.yml"] == 0o600
    assert modes["keys/1"] == modes["keys/2"] == 0o600
    assert {"inventory.json", "known_hosts"} <= modes.keys()
    assert not private.exists()


SLEEP_ON_EACH_HOST = play(
    """\
    - ansible.builtin.shell: 'echo running > "{{ mark_dir }}/{{ mark_name }}"; exec sleep 3600'
"""
)


async def no_process_left(hosts: list[TargetHost]) -> None:
    for host in hosts:

        async def nothing_left(host: TargetHost = host) -> bool:
            return all(exited(process) for process in host.remote_processes())

        await until(nothing_left, f"the playbook's processes on {host.name} to end")


async def test_a_cancel_stops_the_playbook_and_leaves_no_process_on_any_host(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    mark = f"mark-{secrets.token_hex(4)}"
    plan, logins = shared_key(ssh_hosts, mark)

    async def once_running_everywhere() -> bool:
        return all((host.home / mark).exists() for host in ssh_hosts)

    result = await run(tmp_path, SLEEP_ON_EACH_HOST, plan, logins, cancelled=once_running_everywhere)

    assert result.outcome.status == "cancelled"
    assert {name: event["status"] for name, event in result.finished().items()} == {
        host.name: "cancelled" for host in ssh_hosts
    }
    await no_process_left(ssh_hosts)


async def test_the_task_timeout_stops_the_playbook_and_its_unfinished_hosts_end_timeout(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    mark = f"mark-{secrets.token_hex(4)}"
    plan, logins = shared_key(ssh_hosts, mark)

    result = await run(tmp_path, SLEEP_ON_EACH_HOST, plan, logins, task_timeout=20)

    finished = result.finished()
    assert {name: event["status"] for name, event in finished.items()} == {host.name: "timeout" for host in ssh_hosts}
    assert finished["host-1"]["error"].startswith("the playbook was stopped before it finished on this host: ")
    assert result.outcome.status == "timeout"
    assert result.outcome.error == (
        "3 of 3 hosts did not succeed (host-1: timeout, host-2: timeout, host-3: timeout); over max_fail_percentage 0"
    )
    await no_process_left(ssh_hosts)


async def test_a_login_missing_from_the_secrets_fails_that_host_only(
    tmp_path: Path, ssh_hosts: list[TargetHost]
) -> None:
    mark = f"mark-{secrets.token_hex(4)}"
    hosts = [job_host(host, "deploy", mark_name=mark) for host in ssh_hosts]
    hosts[2] = JobHost(**{**hosts[2].__dict__, "login": "gone"})
    logins = JobSecrets(logins={"deploy": key_login(ssh_hosts[0])})

    result = await run(tmp_path, WRITE_MARK, TargetPlan(hosts, max_fail_percentage=50), logins, {"greeting": "x"})

    finished = result.finished()
    assert finished["host-3"]["status"] == "failed"
    assert finished["host-3"]["error"] == "host host-3: its login 'gone' is not among the job's secrets"
    assert not (ssh_hosts[2].home / mark).exists()
    assert [finished[name]["status"] for name in ("host-1", "host-2")] == ["success", "success"]
    assert result.outcome.status == "success"


@pytest.mark.parametrize("passphrase", [None, "not-the-passphrase"])
async def test_a_protected_key_without_its_passphrase_fails_the_host_saying_so(
    tmp_path: Path, ssh_hosts: list[TargetHost], passphrase: str | None
) -> None:
    host = ssh_hosts[0]
    login = LoginSecret(private_key=host.protected_client_key.read_text(), passphrase=passphrase)

    result = await run(tmp_path, WRITE_MARK, TargetPlan([job_host(host, "p")]), JobSecrets(logins={"p": login}))

    error = result.finished()[host.name]["error"]
    assert result.finished()[host.name]["status"] == "failed"
    assert error.startswith("host host-1: the private key of login 'p' cannot be read"), error
    assert ("wrong passphrase" if passphrase else "needs its passphrase") in error
    assert result.outcome.status == "failed"
