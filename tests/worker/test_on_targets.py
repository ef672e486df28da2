"""A real worker running `targets` jobs on real OpenSSH hosts: the template's whole tree delivered by digest to each
host's cache and reused, a tampered cache replaced, pinned host keys, key and password logins, sudo, hosts that are
gone or stop answering, the task's verdict over its hosts, timeout and cancel leaving nothing running, and secrets
in no argv, no Redis key and no output line."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import signal
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from app.devstack.processes import free_ports
from storage.snapshot import snapshot_directory
from tests.support import waiting
from tests.support.fleet import Fleet
from tests.support.jobs import Publish, a_job, enqueue, events_of, log_of
from tests.support.metrics_text import Samples, parse_samples, value
from tests.support.seal import WORKER_SECRET_KEYS
from tests.support.ssh_hosts import TargetHost, needs_root
from tests.support.ssh_keys import ssh_keygen_fingerprint
from tests.support.ssh_sudo import sudo_rules
from worker.job_secrets import JobSecrets, LoginSecret, WorkerSeal
from worker.protocol import BlobRef, Event, JobHost, TargetPlan, TaskJob, cancel_key

HANG = 120.0
"""Bound of a whole task in these tests: it only catches hangs."""
OWN = "own-host"
"""The name of the test's own host (`ssh_host`) in a job beside the shared ones, whose first is also host-1."""
WORKER = {"AHOP_WORKER_CONNECT_TIMEOUT": "60"}
"""A login bound far above what a login takes here: a host that stops answering is cut off by the test."""


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def template(tmp_path: Path, publish: Publish) -> BlobRef:
    """A shell template with a library and a config file beside its entry, as ops teams write them."""
    directory = tmp_path / "template"
    (directory / "lib").mkdir(parents=True)
    (directory / "config").mkdir()
    (directory / "run.sh").write_text(
        "#!/bin/bash\n"
        ". ./lib/greet.sh\n"
        'greet "$AHOP_HOST_NAME"\n'
        'echo "config: $(cat config/app.conf)"\n'
        'echo "args: $*"\n'
        'echo "who: $AHOP_PARAM_WHO task: $AHOP_TASK_ID/$AHOP_TASK_ATTEMPT"\n'
        'echo "params: $(cat "$AHOP_PARAMS_FILE")"\n'
    )
    (directory / "lib" / "greet.sh").write_text('greet() { echo "hello from $1"; }\n')
    (directory / "config" / "app.conf").write_text(f"colour=blue {secrets.token_hex(8)}\n")
    return publish(directory)


def gated_blob(tmp_path: Path, publish: Publish, script: str) -> BlobRef:
    directory = tmp_path / f"gated-{secrets.token_hex(4)}"
    directory.mkdir()
    (directory / "run.sh").write_text(f"# {secrets.token_hex(8)}\n{script}")
    return publish(directory)


def job_host(
    host: TargetHost, *, login: str = "key", host_keys: list[str] | None = None, name: str | None = None
) -> JobHost:
    """The host as a job's snapshot names it (by `name`, when the test's own host would share another's name)."""
    return JobHost(
        host_id=host.port,
        name=name or host.name,
        address=host.address,
        port=host.port,
        username=host.user,
        host_keys=host_keys if host_keys is not None else list(host.host_keys),
        login=login,
    )


def key_login(host: TargetHost, **fields: Any) -> LoginSecret:
    return LoginSecret(private_key=host.client_key.read_text(), **fields)


def targets_job(
    blob: BlobRef,
    hosts: list[JobHost],
    logins: dict[str, LoginSecret],
    *,
    params: dict[str, Any] | None = None,
    secret_params: dict[str, str] | None = None,
    forks: int = 5,
    max_fail_percentage: int = 0,
    require_sudo: bool = False,
    **fields: Any,
) -> TaskJob:
    """A job of `blob` on `hosts`, its logins (and password parameters) sealed as the server seals them."""
    hidden = secret_params or {}
    sealed = WorkerSeal.from_setting(WORKER_SECRET_KEYS).seal(JobSecrets(params=hidden, logins=logins))
    return a_job(
        blob,
        params={**(params if params is not None else {"who": "ops"}), **dict.fromkeys(hidden, "********")},
        secret_params=list(hidden),
        sealed=sealed,
        execution="targets",
        targets=TargetPlan(hosts, forks=forks, max_fail_percentage=max_fail_percentage, require_sudo=require_sudo),
        **fields,
    )


def of_hosts(events: list[Event]) -> dict[str, Event]:
    """Each host's `host_finished` event."""
    return {event.host: event for event in events if event.type == "host_finished" and event.host}


def assert_order(events: list[Event], hosts: int) -> None:
    """`started` first, `finished` last, one `host_finished` per host between them after that host's start."""
    assert events[0].type == "started"
    assert events[-1].type == "finished"
    assert [event.type for event in events].count("finished") == 1
    finished = [event.host for event in events if event.type == "host_finished"]
    assert len(finished) == len(set(finished)) == hosts
    for index, event in enumerate(events):
        if event.type == "host_started":
            later = events[index + 1 :]
            assert any(other.type == "host_finished" and other.host == event.host for other in later)


def cached_tar(host: TargetHost, blob: BlobRef) -> Path:
    return host.home / ".cache" / "ahop" / "sha256" / blob.digest.hex


async def scrape(port: int) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200, response.text
    return parse_samples(response.text)


def metrics_on(port: int) -> dict[str, str]:
    return {"AHOP_WORKER_METRICS_PORT": str(port), "AHOP_WORKER_METRICS_HOST": "127.0.0.1"}


async def run_to_end(queue: ArqRedis, redis: Redis, job: TaskJob) -> list[Event]:
    await enqueue(queue, job)
    return await events_of(redis, job.task_id, bound=HANG)


async def nothing_left_on(hosts: list[TargetHost]) -> None:
    async def gone() -> bool:
        return all(not host.remote_processes() for host in hosts)

    await waiting.until(gone, "no process of the run left on any host", HANG)


@pytest.fixture
def gate() -> Iterator[Path]:
    """A file a script waits for; the hosts are users of this machine, who may look into the system's tmp."""
    path = Path(tempfile.gettempdir()) / f"ahop-gate-{secrets.token_hex(6)}"
    yield path
    path.unlink(missing_ok=True)


async def test_a_template_with_its_lib_and_config_runs_on_three_hosts_each_holding_its_digest(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef, ssh_hosts: list[TargetHost], tmp_path: Path
) -> None:
    fleet.start("w1", **WORKER)
    job = targets_job(template, [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])})
    events = await run_to_end(queue, redis, job)

    assert_order(events, 3)
    assert {event.host for event in events if event.type == "host_started"} == {host.name for host in ssh_hosts}
    finished = events[-1]
    assert (finished.status, finished.exit_code, finished.error) == ("success", None, None)
    for host in ssh_hosts:
        ran = of_hosts(events)[host.name]
        assert (ran.status, ran.exit_code, ran.error, ran.digest) == ("success", 0, None, template.digest.hex)
    lines = await log_of(redis, job.task_id)
    for host in ssh_hosts:
        mine = [line.line for line in lines if line.host == host.name]
        assert mine[0] == f"hello from {host.name}"
        assert mine[1].startswith("config: colour=blue ")
        assert mine[2:4] == ["args: --who ops", f"who: ops task: {job.task_id}/1"]
        assert mine[4] == 'params: {"who": "ops"}'
    assert {line.host for line in lines} == {host.name for host in ssh_hosts}
    assert [line.seq for line in lines] == list(range(1, len(lines) + 1))

    for host in ssh_hosts:
        tar = cached_tar(host, template)
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == template.digest.hex
        tree = tmp_path / f"from-{host.name}"
        with tarfile.open(tar) as archive:
            archive.extractall(tree, filter="data")
        assert snapshot_directory(tree, None).digest == template.digest
        assert list((host.home / ".cache" / "ahop" / "runs").iterdir()) == []  # the run's copy is gone


async def test_a_second_task_sends_nothing_and_a_tampered_cache_is_replaced(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef, ssh_hosts: list[TargetHost]
) -> None:
    (port,) = free_ports(1)
    fleet.start("w1", **WORKER, **metrics_on(port))
    hosts, logins = [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])}
    first = await run_to_end(queue, redis, targets_job(template, hosts, logins))
    assert first[-1].status == "success"
    cold = await scrape(port)
    assert value(cold, "ahop_worker_host_content_total", result="sent") == 3
    sent_bytes = value(cold, "ahop_worker_host_content_bytes_total")
    assert sent_bytes == 3 * template.tar_size
    written = {host.name: cached_tar(host, template).stat().st_mtime_ns for host in ssh_hosts}

    second = await run_to_end(queue, redis, targets_job(template, hosts, logins))
    assert second[-1].status == "success"
    warm = await scrape(port)
    assert value(warm, "ahop_worker_host_content_total", result="reused") == 3
    assert value(warm, "ahop_worker_host_content_total", result="sent") == 3  # none more
    assert value(warm, "ahop_worker_host_content_bytes_total") == sent_bytes
    assert {host.name: cached_tar(host, template).stat().st_mtime_ns for host in ssh_hosts} == written
    assert value(warm, "ahop_worker_host_runs_total", status="success") == 6

    tampered = cached_tar(ssh_hosts[1], template)
    tampered.chmod(0o600)
    tampered.write_bytes(tampered.read_bytes().replace(b"hello from", b"HELLO FROM"))
    third_job = targets_job(template, hosts, logins)
    third = await run_to_end(queue, redis, third_job)
    assert third[-1].status == "success"
    assert of_hosts(third)[ssh_hosts[1].name].digest == template.digest.hex
    repaired = await scrape(port)
    assert value(repaired, "ahop_worker_host_content_total", result="replaced") == 1
    assert value(repaired, "ahop_worker_host_content_total", result="reused") == 5
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() == template.digest.hex
    lines = [line.line for line in await log_of(redis, third_job.task_id) if line.host == ssh_hosts[1].name]
    assert lines[0] == f"hello from {ssh_hosts[1].name}"


async def test_a_host_showing_a_key_not_pinned_is_unreachable_naming_both_and_max_fail_percentage_decides(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    impostor, other = ssh_hosts[1], ssh_hosts[2]
    hosts = [job_host(ssh_hosts[0]), job_host(impostor, host_keys=list(other.host_keys)), job_host(other)]
    logins = {"key": key_login(ssh_hosts[0])}

    strict = await run_to_end(queue, redis, targets_job(template, hosts, logins))
    refused = of_hosts(strict)[impostor.name]
    assert (refused.status, refused.exit_code, refused.digest) == ("unreachable", None, None)
    assert refused.error is not None
    shown = [ssh_keygen_fingerprint(path) for path in impostor.host_key_files]
    pinned = [ssh_keygen_fingerprint(path) for path in other.host_key_files]
    assert any(fingerprint in refused.error for fingerprint in shown)
    assert all(fingerprint in refused.error for fingerprint in pinned)
    assert [of_hosts(strict)[host.name].status for host in (ssh_hosts[0], other)] == ["success", "success"]
    assert (strict[-1].status, strict[-1].exit_code) == ("failed", None)
    assert strict[-1].error == (
        f"1 of 3 hosts did not succeed ({impostor.name}: unreachable); over max_fail_percentage 0"
    )

    lenient = await run_to_end(queue, redis, targets_job(template, hosts, logins, max_fail_percentage=50))
    assert of_hosts(lenient)[impostor.name].status == "unreachable"
    assert lenient[-1].status == "success"
    assert lenient[-1].error == (
        f"1 of 3 hosts did not succeed ({impostor.name}: unreachable); within max_fail_percentage 50"
    )


async def test_failed_hosts_over_the_threshold_stop_the_hosts_not_started_yet(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    blob = gated_blob(tmp_path, publish, 'echo "on $AHOP_HOST_NAME"\nexit 3\n')
    job = targets_job(blob, [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])}, forks=1)
    events = await run_to_end(queue, redis, job)
    first, *rest = ssh_hosts
    assert (of_hosts(events)[first.name].status, of_hosts(events)[first.name].exit_code) == ("failed", 3)
    for host in rest:
        skipped = of_hosts(events)[host.name]
        assert (skipped.status, skipped.digest) == ("cancelled", None)
        assert skipped.error == "not started: 1 of 3 hosts failed, over max_fail_percentage 0"
    assert [event.host for event in events if event.type == "host_started"] == [first.name]
    assert events[-1].status == "failed"
    assert events[-1].error == (
        f"3 of 3 hosts did not succeed ({first.name}: exit 3, {rest[0].name}: cancelled, {rest[1].name}: cancelled); "
        "over max_fail_percentage 0"
    )


@needs_root
async def test_key_with_passphrase_password_and_plain_key_logins_and_a_password_parameter_masked(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    blob = gated_blob(tmp_path, publish, 'echo "$(id -un) token=$AHOP_PARAM_TOKEN args: $*"\n')
    protected, by_password, plain = ssh_hosts
    logins = {
        "protected": LoginSecret(
            private_key=protected.protected_client_key.read_text(), passphrase=protected.client_key_passphrase
        ),
        "password": LoginSecret(password=by_password.password),
        "key": key_login(plain),
    }
    hosts = [job_host(protected, login="protected"), job_host(by_password, login="password"), job_host(plain)]
    token = secrets.token_urlsafe(16)
    job = targets_job(blob, hosts, logins, params={}, secret_params={"token": token})
    events = await run_to_end(queue, redis, job)
    assert events[-1].status == "success", events
    lines = {line.host: line.line for line in await log_of(redis, job.task_id)}
    assert lines == {host.name: f"{host.user} token=******** args: " for host in ssh_hosts}


@needs_root
async def test_sudo_runs_the_entry_as_root_without_a_password_and_with_the_become_password(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    blob = gated_blob(tmp_path, publish, 'echo "uid $(id -u)"\n')
    nopasswd, with_password, without_rule = ssh_hosts
    logins = {
        "key": key_login(nopasswd),
        "become": key_login(with_password, become_password=with_password.password),
    }
    hosts = [job_host(nopasswd), job_host(with_password, login="become"), job_host(without_rule)]
    with sudo_rules({nopasswd.user: "nopasswd", with_password.user: "password"}):
        job = targets_job(blob, hosts, logins, require_sudo=True, max_fail_percentage=34)
        events = await run_to_end(queue, redis, job)
    assert [of_hosts(events)[host.name].status for host in ssh_hosts] == ["success", "success", "failed"]
    lines = {line.host: line.line for line in await log_of(redis, job.task_id)}
    assert (lines[nopasswd.name], lines[with_password.name]) == ("uid 0", "uid 0")
    refused = of_hosts(events)[without_rule.name].error
    assert "sudo" in str(refused)
    assert with_password.password not in str(events) + str(lines)
    assert events[-1].status == "success"


async def test_a_host_that_is_gone_is_unreachable_and_the_others_succeed(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef, ssh_hosts: list[TargetHost], ssh_host: TargetHost
) -> None:
    fleet.start("w1", **WORKER)
    ssh_host.stop()
    hosts = [job_host(ssh_hosts[0]), job_host(ssh_host, login="own", name=OWN), job_host(ssh_hosts[1])]
    logins = {"key": key_login(ssh_hosts[0]), "own": key_login(ssh_host)}
    events = await run_to_end(queue, redis, targets_job(template, hosts, logins))
    gone = of_hosts(events)[OWN]
    assert gone.status == "unreachable"
    assert f"{ssh_host.address}:{ssh_host.port}): connection refused" in str(gone.error)
    assert [of_hosts(events)[host.name].status for host in ssh_hosts[:2]] == ["success", "success"]
    assert events[-1].status == "failed"


async def test_a_host_that_stops_answering_holds_up_no_other_host(
    fleet: Fleet, queue: ArqRedis, redis: Redis, template: BlobRef, ssh_hosts: list[TargetHost], ssh_host: TargetHost
) -> None:
    # A login bound that the answering hosts' whole runs stay far within, and that cuts the silent one off.
    fleet.start("w1", AHOP_WORKER_CONNECT_TIMEOUT="20")
    ssh_host.pause()
    hosts = [job_host(ssh_host, login="own", name=OWN), *(job_host(host) for host in ssh_hosts)]
    job = targets_job(template, hosts, {"key": key_login(ssh_hosts[0]), "own": key_login(ssh_host)})
    await enqueue(queue, job)

    async def others_done() -> list[Event] | None:
        events = await events_of(redis, job.task_id, until="started")
        done = of_hosts(events)
        return events if all(host.name in done for host in ssh_hosts) else None

    events = await waiting.until(others_done, "the answering hosts to finish", HANG)
    assert OWN not in of_hosts(events)  # still waiting for the host that does not answer
    assert [of_hosts(events)[host.name].status for host in ssh_hosts] == ["success"] * 3
    events = await events_of(redis, job.task_id, bound=HANG)
    silent = of_hosts(events)[OWN]
    assert silent.status == "unreachable"
    assert str(silent.error).endswith("timed out after 20 s connecting and logging in")
    assert events[-1].status == "failed"


async def test_a_timeout_stops_the_runs_on_every_host_and_leaves_no_process(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    blob = gated_blob(tmp_path, publish, "trap '' TERM\necho started\nsleep 1000 &\nwait\n")
    job = targets_job(blob, [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])}, timeout=3)
    events = await run_to_end(queue, redis, job)
    for host in ssh_hosts:
        stopped = of_hosts(events)[host.name]
        assert stopped.status == "timeout"
        assert str(stopped.error).startswith("the task's timeout of 3 s struck")
    assert (events[-1].status, events[-1].exit_code) == ("timeout", None)
    await nothing_left_on(ssh_hosts)


async def test_a_cancel_stops_the_runs_on_every_host_and_leaves_no_process(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    blob = gated_blob(tmp_path, publish, "echo started\nsleep 1000 &\nwait\n")
    job = targets_job(blob, [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])})
    await enqueue(queue, job)

    async def all_started() -> bool:
        return len([line for line in await log_of(redis, job.task_id) if line.line == "started"]) == 3

    await waiting.until(all_started, "the run to start on every host", HANG)
    await redis.set(cancel_key(job.task_id), "1")
    events = await events_of(redis, job.task_id, bound=HANG)
    assert [of_hosts(events)[host.name].status for host in ssh_hosts] == ["cancelled"] * 3
    assert (events[-1].status, events[-1].error) == (
        "cancelled",
        "the task was cancelled; "
        + ("3 of 3 hosts did not succeed (host-1: cancelled, host-2: cancelled, host-3: cancelled)"),
    )
    await nothing_left_on(ssh_hosts)


def argv_holding(*values: str) -> list[str]:
    """The command line of each process of this machine (the hosts' among them) that holds one of `values`."""
    found = []
    for process in psutil.process_iter():
        try:
            command_line = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(value in command_line for value in values):
            found.append(command_line)
    return found


async def redis_holding(redis: Redis, *values: str) -> list[str]:
    """Every Redis key whose value holds one of `values` in plaintext."""
    wanted = [value.encode() for value in values]
    found = []
    async for key in redis.scan_iter():
        kind = (await redis.type(key)).decode()
        if kind == "string":
            parts = [await redis.get(key) or b""]
        elif kind == "hash":
            parts = [item for pair in (await redis.hgetall(key)).items() for item in pair]  # type: ignore[misc]
        elif kind == "list":
            parts = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind in ("set", "zset"):
            parts = list(await redis.smembers(key)) if kind == "set" else await redis.zrange(key, 0, -1)  # type: ignore[misc]
        else:
            parts = [item for _, fields in await redis.xrange(key) for pair in fields.items() for item in pair]
        if any(value in part for part in parts for value in wanted):
            found.append(key.decode())
    return found


@needs_root
async def test_secrets_are_in_no_argv_on_the_hosts_no_redis_key_and_no_output_line(
    fleet: Fleet,
    queue: ArqRedis,
    redis: Redis,
    tmp_path: Path,
    publish: Publish,
    ssh_hosts: list[TargetHost],
    gate: Path,
) -> None:
    fleet.start("w1", **WORKER)
    script = (
        'echo "token $AHOP_PARAM_TOKEN $*"\n'
        'cat "$AHOP_PARAMS_FILE"; echo\n'
        f"while [ ! -e {gate} ]; do sleep 0.05; done\n"
    )
    blob = gated_blob(tmp_path, publish, script)
    by_password, with_become, plain = ssh_hosts
    logins = {
        "password": LoginSecret(password=by_password.password),
        "become": key_login(with_become, become_password=with_become.password),
        "key": key_login(plain),
    }
    hosts = [job_host(by_password, login="password"), job_host(with_become, login="become"), job_host(plain)]
    token = secrets.token_urlsafe(16)
    with sudo_rules({by_password.user: "nopasswd", with_become.user: "password", plain.user: "nopasswd"}):
        job = targets_job(blob, hosts, logins, params={}, secret_params={"token": token}, require_sudo=True)
        await enqueue(queue, job)

        async def all_waiting() -> bool:
            return len([line for line in await log_of(redis, job.task_id) if line.line.startswith("{")]) == 3

        await waiting.until(all_waiting, "the run to wait for the gate on every host", HANG)
        secrets_of_job = (token, by_password.password, with_become.password)
        in_argv = argv_holding(*secrets_of_job)
        in_redis = await redis_holding(redis, *secrets_of_job)
        await asyncio.to_thread(gate.touch)
        events = await events_of(redis, job.task_id, bound=HANG)
    assert in_argv == []
    assert in_redis == []
    assert events[-1].status == "success", events
    lines = [line.line for line in await log_of(redis, job.task_id)]
    assert sorted(lines) == sorted(["token ******** ", '{"token": "********"}'] * 3)
    assert await redis_holding(redis, *secrets_of_job) == []


async def test_a_worker_runs_an_ansible_template_on_its_target_hosts_through_a_generated_inventory(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    fleet.start("w1", **WORKER)
    directory = tmp_path / "playbook"
    directory.mkdir()
    marker = f"ahop-ansible-{secrets.token_hex(6)}"
    (directory / "site.yml").write_text(
        "- hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.copy:\n"
        f"        dest: \"{{{{ ansible_env.HOME | default('~') }}}}/{marker}\"\n"
        '        content: "{{ inventory_hostname }}\\n"\n'
    )
    blob = publish(directory)
    hosts = [job_host(host) for host in ssh_hosts]
    job = targets_job(
        blob, hosts, {"key": key_login(ssh_hosts[0])}, script_type="ansible", entry_file="site.yml", params={}
    )
    events = await run_to_end(queue, redis, job)
    assert (events[-1].type, events[-1].status) == ("finished", "success"), events[-1]
    finished = of_hosts(events)
    for host in ssh_hosts:
        assert (finished[host.name].status, finished[host.name].digest) == ("success", blob.digest.hex)
        written = host.home / marker
        assert (await asyncio.to_thread(written.read_text)).strip() == host.name  # the playbook changed each host


async def test_a_worker_stopping_past_its_grace_stops_the_runs_and_reports_every_host(
    fleet: Fleet, queue: ArqRedis, redis: Redis, tmp_path: Path, publish: Publish, ssh_hosts: list[TargetHost]
) -> None:
    worker = fleet.start("w1", **WORKER, AHOP_WORKER_SHUTDOWN_GRACE="1")
    blob = gated_blob(tmp_path, publish, "echo started\nsleep 1000 &\nwait\n")
    job = targets_job(blob, [job_host(host) for host in ssh_hosts], {"key": key_login(ssh_hosts[0])}, forks=1)
    await enqueue(queue, job)

    async def first_started() -> bool:
        return any(line.line == "started" for line in await log_of(redis, job.task_id))

    await waiting.until(first_started, "the run to start on the first host", HANG)
    worker.popen.send_signal(signal.SIGTERM)
    events = await events_of(redis, job.task_id, bound=HANG)
    first, *rest = ssh_hosts
    stopped = of_hosts(events)[first.name]
    assert (stopped.status, stopped.error) == (
        "failed",
        "the worker stopped before this host's run finished; the run on the host was stopped",
    )
    assert [(of_hosts(events)[host.name].status, of_hosts(events)[host.name].error) for host in rest] == [
        ("cancelled", "not started: the worker stopped")
    ] * 2
    assert (events[-1].type, events[-1].status) == ("finished", "failed")
    assert events[-1].error == "the worker stopped before the task finished; the runs on its hosts were stopped"
    await nothing_left_on(ssh_hosts)
