"""Running one task's script: parameters in, output out, timeout, cancel, a private run copy, no leaked credentials.

No services: a temporary directory stands in for the store entry. These tests run as root, so the run-as tests use
the `nobody` user.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import worker.hardening
from targets.output_lines import MAX_LINE_BYTES
from worker.hardening import root_without_run_as_warning
from worker.output import DRAIN_SECONDS, MASK
from worker.runner import DEFAULT_PATH, RunOutcome, RunRequest, run_script

HANG = 60.0
"""Bound of every wait here: long enough never to fail a slow machine, short enough to catch a hang."""
SCRIPT_SETTLES = 5.0
"""Seconds within which a just-started script has run its first lines (a trap, an echo), however loaded the machine:
a timeout that must strike a script already running is this long."""
REPO = Path(worker.hardening.__file__).resolve().parents[1]
NOBODY = pwd.getpwnam("nobody")
NOBODY_HOME = NOBODY.pw_dir if Path(NOBODY.pw_dir).is_dir() else None
HOSTILE = "$(touch {marker}); rm -rf {victim} `touch {marker}` && touch {marker}"


@dataclass
class Run:
    outcome: RunOutcome
    lines: list[tuple[str, str]] = field(default_factory=list)

    def stdout(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stdout"]

    def stderr(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stderr"]

    def values(self, prefix: str) -> list[str]:
        return [line.removeprefix(prefix) for line in self.stdout() if line.startswith(prefix)]


async def run(request: RunRequest, cancel_after_first_line: bool = False) -> Run:
    result = Run(RunOutcome("failed", None, "did not finish"))
    first_line = asyncio.Event()

    async def on_line(stream: str, line: str) -> None:
        result.lines.append((stream, line))
        first_line.set()

    async def cancelled() -> bool:
        return cancel_after_first_line and first_line.is_set()

    result.outcome = await asyncio.wait_for(run_script(request, on_line, cancelled), HANG)
    return result


def write_tree(root: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> Path:
    """A read-only template tree, as the store holds it."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for path in sorted(root.rglob("*"), reverse=True):
        if not path.is_symlink():
            executable_bits = path.is_dir() or path.relative_to(root).as_posix() in executable
            path.chmod(0o555 if executable_bits else 0o444)
    root.chmod(0o555)
    return root


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        path.relative_to(root).as_posix(): (
            path.lstat().st_mode,
            os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b"",
        )
        for path in root.rglob("*")
    }


def process_state(pid: int) -> str | None:
    """The state letter of a live process, None when it is gone or only a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if state in ("Z", "X") else state


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def leftovers(runs_dir: Path) -> list[str]:
    """What a finished run left in the runs directory (nothing, when it cleaned up)."""
    return sorted(path.name for path in runs_dir.iterdir()) if runs_dir.exists() else []


async def until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` (a killed process takes a moment to die) up to the hang bound."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANG
    while not condition():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return (tmp_path / "worker" / "runs").resolve()


@pytest.fixture
def shared_runs_dir() -> Iterator[Path]:
    """A runs directory that `nobody` can enter (pytest's own temporary directories are private to root)."""
    top = Path(tempfile.mkdtemp(prefix="ahop-runner-")).resolve()
    top.chmod(0o711)
    yield top / "runs"
    shutil.rmtree(top)


@pytest.fixture
def make_request(tmp_path: Path, runs_dir: Path) -> Callable[..., RunRequest]:
    def make(files: dict[str, str], entry: str = "run.sh", script_type: str = "shell", **options: Any) -> RunRequest:
        source = write_tree(tmp_path / "template", files, executable=(entry,))
        values: dict[str, Any] = {
            "runs_dir": runs_dir,
            "timeout": HANG,
            "kill_grace": 1.0,
            "cancel_poll": 0.05,
            "params": {},
            **options,
        }
        return RunRequest(task_id="task-1", source=source, entry_file=entry, script_type=script_type, **values)

    return make


SHELL_ECHO = """\
for arg in "$@"; do printf 'arg=%s\\n' "$arg"; done
for name in $(compgen -e | grep '^AHOP_PARAM_' | sort); do printf 'env=%s=%s\\n' "$name" "${!name}"; done
printf 'file=%s\\n' "$(cat "$AHOP_PARAMS_FILE")"
printf 'file_mode=%s\\n' "$(stat -c %a "$AHOP_PARAMS_FILE")"
"""
PYTHON_ECHO = """\
import json, os, sys
params = {k: v for k, v in os.environ.items() if k.startswith("AHOP_PARAM_")}
with open(os.environ["AHOP_PARAMS_FILE"]) as f:
    print(json.dumps({"argv": sys.argv[1:], "env": params, "file": json.load(f), "prefix": sys.prefix}))
"""


def typed_params(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    marker, victim = tmp_path / "executed", tmp_path / "victim"
    victim.mkdir()
    params = {
        "host-name": "web 1",
        "count": 3,
        "ratio": 1.5,
        "verbose": True,
        "dry_run": False,
        "regions": ["eu-west", "us-east"],
        "payload": HOSTILE.format(marker=marker, victim=victim),
        "note": None,
    }
    return params, marker, victim


def expected_arguments(params: dict[str, Any]) -> list[str]:
    return [
        "--host-name",
        "web 1",
        "--count",
        "3",
        "--ratio",
        "1.5",
        "--verbose",
        "true",
        "--dry_run",
        "false",
        "--regions",
        "eu-west,us-east",
        "--payload",
        params["payload"],
    ]


def expected_environment(params: dict[str, Any]) -> dict[str, str]:
    return {
        "AHOP_PARAM_HOST_NAME": "web 1",
        "AHOP_PARAM_COUNT": "3",
        "AHOP_PARAM_RATIO": "1.5",
        "AHOP_PARAM_VERBOSE": "true",
        "AHOP_PARAM_DRY_RUN": "false",
        "AHOP_PARAM_REGIONS": "eu-west,us-east",
        "AHOP_PARAM_PAYLOAD": params["payload"],
    }


async def test_shell_script_gets_arguments_environment_and_file(
    make_request: Callable[..., RunRequest], tmp_path: Path, runs_dir: Path
) -> None:
    params, marker, victim = typed_params(tmp_path)
    result = await run(make_request({"run.sh": SHELL_ECHO}, params=params))

    assert result.outcome == RunOutcome("success", 0, None)
    assert result.values("arg=") == expected_arguments(params)
    assert dict(v.split("=", 1) for v in result.values("env=")) == expected_environment(params)
    assert json.loads(result.values("file=")[0]) == params  # null values stay in the file
    assert result.values("file_mode=") == ["600"]
    assert not marker.exists()
    assert victim.is_dir()
    assert leftovers(runs_dir) == []  # the run copy and the parameters file are gone


async def test_python_script_gets_the_same_with_the_system_python(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    params, marker, victim = typed_params(tmp_path)
    result = await run(make_request({"main.py": PYTHON_ECHO}, entry="main.py", script_type="python", params=params))

    assert result.outcome.status == "success", result.lines
    seen = json.loads(result.stdout()[0])
    assert seen["argv"] == expected_arguments(params)
    assert seen["env"] == expected_environment(params)
    assert seen["file"] == params
    assert seen["prefix"] != sys.prefix  # not the worker's virtualenv
    assert not marker.exists()
    assert victim.is_dir()


async def test_a_missing_interpreter_fails_clearly_and_nothing_runs(
    make_request: Callable[..., RunRequest], tmp_path: Path, runs_dir: Path
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    request = make_request({"site.yml": "- hosts: localhost\n"}, entry="site.yml", script_type="ansible")
    result = await run(replace(request, search_path=str(empty), own_bin=None))

    assert result.outcome.status == "failed"
    assert result.outcome.exit_code is None
    assert result.outcome.error is not None
    assert "ansible-playbook is not installed on this worker (needed for ansible templates)" in result.outcome.error
    assert result.lines == []
    assert leftovers(runs_dir) == []


async def test_ansible_gets_the_parameters_file_as_extra_vars(
    make_request: Callable[..., RunRequest], tmp_path: Path, runs_dir: Path
) -> None:
    """A stand-in `ansible-playbook` on the script's PATH shows the exact command line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "ansible-playbook"
    stand_in.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg=$a"; done\necho "file=$(cat "${2#@}")"\n')
    stand_in.chmod(0o755)
    params = {"greeting": "hello world", "regions": ["a", "b"], "port": 8080}
    request = make_request({"site.yml": "- hosts: localhost\n"}, entry="site.yml", script_type="ansible")
    result = await run(replace(request, params=params, search_path=f"{bin_dir}:{DEFAULT_PATH}"))

    assert result.outcome.status == "success", result.lines
    params_file = runs_dir / "task-1.params.json"
    assert result.values("arg=") == ["-e", f"@{params_file}", "./site.yml"]
    assert json.loads(result.values("file=")[0]) == params


async def test_ansible_playbook_beside_the_workers_python_runs_without_a_setting(
    make_request: Callable[..., RunRequest],
) -> None:
    """The system's script PATH (the default) has no ansible-playbook here; the one installed beside the worker's
    own Python (ansible-core in its virtual environment) runs the playbook."""
    playbook = (
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        "  tasks:\n    - debug:\n        msg: 'greeting={{ greeting }}'\n"
    )
    request = make_request({"site.yml": playbook}, entry="site.yml", script_type="ansible")
    result = await run(replace(request, params={"greeting": "hello"}, search_path=DEFAULT_PATH))

    assert result.outcome.status == "success", (result.outcome, result.lines)
    assert any("greeting=hello" in line for line in result.stdout())


async def test_a_non_zero_exit_fails_with_its_code(make_request: Callable[..., RunRequest]) -> None:
    result = await run(make_request({"run.sh": "echo before\nexit 3\n"}))

    assert result.outcome == RunOutcome("failed", 3, None)
    assert result.stdout() == ["before"]


async def test_output_keeps_order_and_streams_and_masks_secrets(make_request: Callable[..., RunRequest]) -> None:
    script = (
        "echo 'out 1'\necho 'err 1' >&2\n"
        'echo "login with $AHOP_PARAM_PASSWORD and $AHOP_PARAM_TOKEN"\n'
        "printf 'crlf\\r\\n'\necho 'err 2' >&2\necho 'out 3'\nprintf 'no newline at the end'\n"
    )
    params = {"password": "hunter2", "token": "hunter2-and-more", "user": "hunter"}
    result = await run(make_request({"run.sh": script}, params=params, secret_params=["password", "token"]))

    assert result.outcome.status == "success"
    assert result.stdout() == ["out 1", f"login with {MASK} and {MASK}", "crlf", "out 3", "no newline at the end"]
    assert result.stderr() == ["err 1", "err 2"]


async def test_a_line_without_end_arrives_in_bounded_pieces(make_request: Callable[..., RunRequest]) -> None:
    size = 3 * MAX_LINE_BYTES + 1000
    result = await run(make_request({"run.sh": f"head -c {size} /dev/zero | tr '\\0' a\necho\necho é\n"}))

    pieces = result.stdout()
    assert [len(piece) for piece in pieces[:4]] == [MAX_LINE_BYTES] * 3 + [1000]
    assert "".join(pieces[:4]) == "a" * size
    assert pieces[4:] == ["é"]


async def test_a_slow_consumer_gets_every_line_after_the_script_exits(
    make_request: Callable[..., RunRequest],
) -> None:
    """The script is long gone while its output is still being consumed: nothing of it may be dropped."""
    pause = 0.005
    count = int(4 * DRAIN_SECONDS / pause)
    lines: list[str] = []

    async def slow(stream: str, line: str) -> None:
        await asyncio.sleep(pause)
        lines.append(line)

    async def never() -> bool:
        return False

    request = make_request({"run.sh": f"seq 1 {count}\n"})
    outcome = await asyncio.wait_for(run_script(request, slow, never), HANG)

    assert outcome.status == "success"
    assert lines == [str(n) for n in range(1, count + 1)]


async def test_a_process_that_left_the_group_neither_hangs_the_runner_nor_outlives_the_script(
    make_request: Callable[..., RunRequest],
) -> None:
    script = (
        "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' &\n"
        "until [ -s escaped.pid ]; do sleep 0.01; done\ncat escaped.pid\necho done\n"
    )
    result = await run(make_request({"run.sh": script}))
    escaped = [int(line) for line in result.stdout() if line.isdigit()]
    try:
        assert result.outcome == RunOutcome("success", 0, None)
        assert "done" in result.stdout()
        assert len(escaped) == 1
        assert await until(lambda: process_state(escaped[0]) is None)
    finally:
        for pid in escaped:  # should it have survived, stop exactly it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_timeout_kills_a_script_that_ignores_sigterm(make_request: Callable[..., RunRequest]) -> None:
    script = "trap '' TERM\necho $$\nwhile :; do sleep 0.05; done\n"
    # The timeout must strike after bash has set its trap: generous, since a loaded machine starts bash slowly.
    result = await run(make_request({"run.sh": script}, timeout=SCRIPT_SETTLES, kill_grace=0.2))

    assert result.outcome.status == "timeout"
    assert result.outcome.exit_code == -signal.SIGKILL
    assert f"timeout of {SCRIPT_SETTLES:g} s" in (result.outcome.error or "")
    group = int(result.stdout()[0])
    assert await until(lambda: not group_members(group))


@pytest.mark.parametrize("redirect", ["", ">/dev/null 2>&1"], ids=["holding-the-pipe", "detached-output"])
async def test_background_children_do_not_outlive_the_script(
    make_request: Callable[..., RunRequest], runs_dir: Path, redirect: str
) -> None:
    result = await run(make_request({"run.sh": f"sleep 1000 {redirect} &\necho $!\nexit 0\n"}))

    assert result.outcome == RunOutcome("success", 0, None)
    grandchild = int(result.stdout()[0])
    assert await until(lambda: process_state(grandchild) is None)
    assert leftovers(runs_dir) == []


async def test_cancel_stops_the_script_without_waiting_the_full_grace(
    make_request: Callable[..., RunRequest], runs_dir: Path
) -> None:
    script = "trap '' TERM\necho $$\nsleep 1000 &\nwhile :; do sleep 0.05; done\n"
    # A grace this long would outlast the hang bound: the cancel must use its own short one.
    request = make_request({"run.sh": script}, kill_grace=10 * HANG)
    result = await run(request, cancel_after_first_line=True)

    assert result.outcome.status == "cancelled"
    assert result.outcome.exit_code == -signal.SIGKILL
    group = int(result.stdout()[0])
    assert await until(lambda: not group_members(group))
    assert leftovers(runs_dir) == []


async def test_cancelling_the_runner_kills_the_script_and_cleans_up(
    make_request: Callable[..., RunRequest], runs_dir: Path
) -> None:
    started: asyncio.Queue[str] = asyncio.Queue()

    async def on_line(stream: str, line: str) -> None:
        await started.put(line)

    async def never() -> bool:
        return False

    script = "trap '' TERM\nsleep 1000 &\necho $$\nwhile :; do sleep 0.05; done\n"
    request = make_request({"run.sh": script})
    task = asyncio.create_task(run_script(request, on_line, never))
    group = int(await asyncio.wait_for(started.get(), HANG))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, HANG)

    assert await until(lambda: not group_members(group))
    assert leftovers(runs_dir) == []


async def test_the_script_works_in_a_private_writable_copy_that_is_removed(
    make_request: Callable[..., RunRequest], runs_dir: Path
) -> None:
    script = (
        'echo "cwd=$PWD"\necho "mode=$(stat -c %a .)"\necho "link=$(readlink link)"\necho "via-link=$(cat link)"\n'
        "echo changed > lib/data.txt && echo 'wrote=yes'\nrm run.sh && echo 'removed=yes'\n"
        "mkdir locked && chmod 000 locked\n"
    )
    request = make_request({"run.sh": script, "lib/data.txt": "original"})
    (request.source / "link").parent.chmod(0o755)
    (request.source / "link").symlink_to("lib/data.txt")
    request.source.chmod(0o555)
    before = snapshot(request.source)
    result = await run(request)

    assert result.outcome.status == "success", result.lines
    assert result.values("cwd=") == [str(runs_dir / "task-1")]
    assert result.values("mode=") == ["700"]
    assert result.values("link=") == ["lib/data.txt"]
    assert result.values("via-link=") == ["original"]
    assert result.values("wrote=") == ["yes"]
    assert result.values("removed=") == ["yes"]
    assert snapshot(request.source) == before
    assert leftovers(runs_dir) == []


async def test_the_script_sees_none_of_the_workers_environment(
    make_request: Callable[..., RunRequest], runs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AHOP_S3_SECRET_ACCESS_KEY", "sekrit")
    monkeypatch.setenv("AHOP_REDIS_URL", "redis://:sekrit@redis:6379/0")
    request = make_request({"run.sh": "env\n"}, params={"zone": "a"}, extra_env={"AHOP_TASK_ID": "task-1"})
    result = await run(request)

    assert result.outcome.status == "success"
    assert not any("sekrit" in line for _, line in result.lines)
    seen = dict(line.split("=", 1) for line in result.stdout())
    shell_own = {"PWD", "SHLVL", "_"}
    assert set(seen) - shell_own == {
        "PATH",
        "HOME",
        "LANG",
        "USER",
        "LOGNAME",
        "AHOP_TASK_ID",
        "AHOP_PARAM_ZONE",
        "AHOP_PARAMS_FILE",
    }
    assert seen["PATH"] == DEFAULT_PATH
    assert seen["HOME"] == str(runs_dir / "task-1")
    assert seen["LANG"] == "C.UTF-8"


async def test_a_run_as_user_runs_the_script_and_owns_its_files(
    make_request: Callable[..., RunRequest], shared_runs_dir: Path
) -> None:
    script = (
        'echo "uid=$(id -u)"\necho "groups=$(id -G)"\necho "owner=$(stat -c %U .)"\n'
        'touch made-here && echo "wrote=yes"\necho "file=$(cat "$AHOP_PARAMS_FILE")"\necho "home=$HOME"\n'
        'echo "owners=$(stat -c %U lib lib/data.txt | sort -u)"\necho more >> lib/data.txt && echo "wrote-sub=yes"\n'
    )
    files = {"run.sh": script, "lib/data.txt": "data"}
    request = make_request(files, params={"secret": "s3cr3t"}, run_as="nobody", runs_dir=shared_runs_dir)
    result = await run(request)

    assert result.outcome.status == "success", result.lines
    assert result.values("uid=") == [str(NOBODY.pw_uid)]
    assert result.values("groups=") == [str(NOBODY.pw_gid)]  # none of the worker's groups
    assert result.values("owner=") == ["nobody"]
    assert result.values("wrote=") == ["yes"]
    assert result.values("owners=") == ["nobody"]
    assert result.values("wrote-sub=") == ["yes"]
    assert json.loads(result.values("file=")[0]) == {"secret": "s3cr3t"}
    run_dir = shared_runs_dir / "task-1"
    assert result.values("home=") == [NOBODY_HOME or str(run_dir)]
    assert leftovers(shared_runs_dir) == []


async def test_a_run_as_user_that_cannot_reach_the_runs_directory_is_refused(
    make_request: Callable[..., RunRequest], tmp_path: Path
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    result = await run(make_request({"run.sh": "echo hi\n"}, run_as="nobody", runs_dir=private / "runs"))

    assert result.outcome.status == "failed"
    assert result.outcome.exit_code is None
    assert "'nobody' cannot enter" in (result.outcome.error or "")
    assert result.lines == []


async def test_an_unknown_run_as_user_is_refused(make_request: Callable[..., RunRequest]) -> None:
    result = await run(make_request({"run.sh": "echo hi\n"}, run_as="no-such-user-ahop"))

    assert result.outcome == RunOutcome("failed", None, "run-as user 'no-such-user-ahop' does not exist on this worker")
    assert result.lines == []


@pytest.mark.parametrize("entry", ["missing.sh", "../outside.sh", "/etc/passwd", "link-out.sh"])
async def test_an_entry_file_outside_the_template_is_refused(
    make_request: Callable[..., RunRequest], tmp_path: Path, entry: str
) -> None:
    (tmp_path / "outside.sh").write_text("echo escaped\n")
    request = make_request({"run.sh": "echo hi\n"})
    request.source.chmod(0o755)
    (request.source / "link-out.sh").symlink_to(tmp_path / "outside.sh")
    result = await run(replace(request, entry_file=entry))

    assert result.outcome.status == "failed"
    assert result.outcome.exit_code is None
    assert repr(entry) in (result.outcome.error or "")
    assert result.lines == []


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"options": {"a": 1}}, "parameter 'options' has a value of type dict"),
        ({"hosts": ["a", ["b"]]}, "parameter 'hosts' has a value of type list"),
        ({"name": "a\x00b"}, "parameter 'name' contains a NUL character"),
    ],
    ids=["object", "nested-list", "nul"],
)
async def test_a_parameter_no_script_can_receive_is_refused(
    make_request: Callable[..., RunRequest], params: dict[str, Any], problem: str
) -> None:
    result = await run(make_request({"run.sh": "echo started\n"}, params=params))

    assert result.outcome.status == "failed"
    assert result.outcome.exit_code is None
    assert problem in (result.outcome.error or "")
    assert result.lines == []


@pytest.mark.parametrize("hardened", [True, False], ids=["non-dumpable", "dumpable"])
async def test_a_script_of_the_same_user_cannot_read_a_non_dumpable_workers_environment(
    make_request: Callable[..., RunRequest], shared_runs_dir: Path, hardened: bool
) -> None:
    """A stand-in worker process runs as `nobody` with a credential in its environment; so does the script."""
    secret = "credential-1f2e3d"
    code = (
        "import sys\nfrom worker.hardening import make_non_dumpable\n"
        "if sys.argv[1] == '1':\n    make_non_dumpable()\nprint('ready', flush=True)\nsys.stdin.read()\n"
    )
    holder = await asyncio.create_subprocess_exec(
        "/usr/bin/python3",
        "-B",
        "-c",
        code,
        "1" if hardened else "0",
        env={"PYTHONPATH": str(REPO), "AHOP_S3_SECRET_ACCESS_KEY": secret},
        user="nobody",
        group=NOBODY.pw_gid,
        extra_groups=[],
        cwd="/",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await asyncio.wait_for(holder.stdout.readline(), HANG) == b"ready\n"
        script = 'tr "\\0" "\\n" < "/proc/$AHOP_PARAM_PID/environ"\necho "exit=$?"\n'
        params = {"pid": holder.pid}
        result = await run(make_request({"run.sh": script}, params=params, run_as="nobody", runs_dir=shared_runs_dir))
    finally:
        holder.stdin.close()  # the holder exits when its stdin ends
        try:
            await asyncio.wait_for(holder.wait(), HANG)
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()

    output = [line for _, line in result.lines]
    if hardened:
        assert not any(secret in line for line in output)
        assert result.values("exit=") == ["1"]
    else:  # the same script reads it from a dumpable process: the protection above is what stops it
        assert f"AHOP_S3_SECRET_ACCESS_KEY={secret}" in output


def test_a_root_worker_without_run_as_user_is_warned_about() -> None:
    warning = root_without_run_as_warning(None, euid=0)
    assert warning is not None
    assert "S3 and Redis credentials" in warning
    assert root_without_run_as_warning("nobody", euid=0) is None
    assert root_without_run_as_warning(None, euid=1000) is None


ESCAPING = (
    "trap '' TERM\nsleep 1000 &\necho \"child=$!\"\n"
    "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' &\n"
    'until [ -s escaped.pid ]; do sleep 0.01; done\necho "escaped=$(cat escaped.pid)"\n'
    'echo "script=$$"\nwhile :; do sleep 0.05; done\n'
)
"""Starts a child in its group and one that leaves for a session of its own, then runs until it is stopped."""
STAND_IN_WORKER = """
import asyncio, pickle, sys
from worker.runner import run_script

request = pickle.load(sys.stdin.buffer)

async def on_line(stream, line):
    print(line, flush=True)

async def never():
    return False

asyncio.run(run_script(request, on_line, never))
"""
"""Runs one request as a worker does: in its event loop's thread, printing the script's lines."""


def kill_survivors(pids: list[int]) -> None:
    for pid in pids:  # should any have survived, stop exactly it
        if process_state(pid) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("run_as", [None, "nobody"])
async def test_the_script_and_all_it_started_die_with_the_worker_process(
    make_request: Callable[..., RunRequest], runs_dir: Path, shared_runs_dir: Path, run_as: str | None
) -> None:
    """SIGKILL to the process that runs the script: the script, its child and the one that left its session go."""
    request = make_request({"run.sh": ESCAPING}, run_as=run_as, runs_dir=shared_runs_dir if run_as else runs_dir)
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-c", STAND_IN_WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert worker.stdin is not None
    assert worker.stdout is not None
    pids: dict[str, int] = {}
    try:
        worker.stdin.write(pickle.dumps(request))
        worker.stdin.close()
        while "script" not in pids:
            line = (await asyncio.wait_for(worker.stdout.readline(), HANG)).decode()
            assert line, "the stand-in worker ended before the script printed its pids"
            name, _, pid = line.strip().partition("=")
            pids[name] = int(pid)
        assert all(process_state(pid) is not None for pid in pids.values())
        worker.kill()
        await asyncio.wait_for(worker.wait(), HANG)

        assert await until(lambda: all(process_state(pid) is None for pid in pids.values())), pids
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()
        kill_survivors(list(pids.values()))


@pytest.mark.parametrize("how", ["cancel", "runner-cancelled"])
async def test_stopping_a_script_also_kills_what_left_its_group(
    make_request: Callable[..., RunRequest], how: str
) -> None:
    request = make_request({"run.sh": ESCAPING})
    lines: asyncio.Queue[str] = asyncio.Queue()
    stop = asyncio.Event()

    async def on_line(stream: str, line: str) -> None:
        await lines.put(line)
        if line.startswith("script="):
            stop.set()

    async def cancelled() -> bool:
        return how == "cancel" and stop.is_set()

    task = asyncio.create_task(run_script(request, on_line, cancelled))
    pids: list[int] = []
    try:
        while len(pids) < 3:
            pids.append(int((await asyncio.wait_for(lines.get(), HANG)).partition("=")[2]))
        if how == "cancel":
            outcome = await asyncio.wait_for(task, HANG)
            assert (outcome.status, outcome.exit_code) == ("cancelled", -signal.SIGKILL)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, HANG)

        assert await until(lambda: all(process_state(pid) is None for pid in pids)), pids
    finally:
        task.cancel()
        kill_survivors(pids)
