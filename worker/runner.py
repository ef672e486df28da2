"""Plans and executes one task's script: interpreter and arguments, parameters in, timeout, cancel, process group.

The run copy and the run-as user are `worker.rundir`'s, the output lines `worker.output`'s.

What a script gets (DESIGN §4):
- its working directory `runs_dir/<task_id>`: a writable copy of the read-only store entry, removed when the task
  ends, whatever happened;
- its parameters three ways: a JSON file named by `AHOP_PARAMS_FILE` (beside the copy, mode 0600),
  `AHOP_PARAM_<NAME>` environment variables, and `--name value` arguments (shell, python) or `-e @<file>` (ansible);
  always as argument vectors, never through a shell command line. A parameter whose value is null is left out of
  the arguments and the environment (the file keeps it);
- an environment built from scratch (PATH, HOME, LANG, USER, LOGNAME, the parameters, the caller's extras): nothing
  of the worker's own environment, which holds its S3 and Redis credentials;
- its own session and process group, so a timeout or a cancel stops it and everything it started: SIGTERM to the
  group, a grace period, SIGKILL. Whatever is left of the group when the script exits is killed too;
- a supervisor (`worker.supervisor`) between the worker and the script, so the script and everything it started,
  even what left the group, die when the worker dies, and when the script exits;
- optionally another user (`run_as`; the worker must be root), who then owns the copy and the parameters file.

`RunOutcome.exit_code` is the return code as the OS reports it: the exit status (0-255) when the script exited, the
negative signal number when a signal ended it (-9 after SIGKILL, -15 after SIGTERM), None when it never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from targets.output_lines import MAX_LINE_BYTES
from worker import supervisor
from worker.output import DRAIN_SECONDS, LineCallback, line_emitter, read_lines, secret_pattern
from worker.protocol import FinalStatus
from worker.rundir import (
    NotRunnable,
    RunAsUser,
    check_reachable,
    prepare_run_copy,
    remove_run_copy,
    run_as_user,
    user_name,
)

log = logging.getLogger("ahop.worker")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INTERPRETERS = {"shell": "bash", "python": "python3", "ansible": "ansible-playbook"}
OWN_BIN = str(Path(sys.executable).parent)
"""Where an interpreter not on the script PATH is looked for next: beside the worker's own Python, where installing
ansible-core into the worker's environment puts `ansible-playbook`. The script PATH comes first, so `bash` and
`python3` are the system's, and scripts' own PATH stays the script PATH."""
SUPERVISOR = str(Path(__file__).with_name("supervisor.py"))
"""Run as a program of its own (see `worker.supervisor`); the worker imports it only for its signal numbers."""
KILL_ALL_SECONDS = 5.0
"""Most seconds the supervisor may take to kill everything on `STOP_ALL` before SIGKILL ends its group."""
CANCEL_GRACE = 0.5
"""Most seconds between SIGTERM and SIGKILL on a cancel, so a cancelled script is gone within about a second."""

_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_NOT_ENV_NAME = re.compile(r"[^A-Z0-9_]")

CancelCheck = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class RunRequest:
    """One script to run, with everything the runner needs to know about it."""

    task_id: str
    source: Path
    """The read-only store entry (the unpacked template)."""
    runs_dir: Path
    """`<worker root>/runs`: the run copy goes to `runs_dir/<task_id>`, the parameters file beside it."""
    entry_file: str
    """Relative path of the script (or playbook) inside the template."""
    script_type: str
    """`shell`, `python` or `ansible`."""
    params: Mapping[str, Any]
    """Validated values: text, numbers, booleans, lists of text (multiselect) or null."""
    secret_params: Sequence[str] = ()
    """Names of parameters whose values are masked in the output."""
    timeout: float = 3600
    kill_grace: float = 5.0
    """Seconds between SIGTERM and SIGKILL when the timeout strikes."""
    cancel_poll: float = 0.2
    """Seconds between calls of the `cancelled` check."""
    run_as: str | None = None
    """User the script runs as (the worker must be root); None runs it as the worker's user."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()
    """More options for ansible-playbook, after the parameters' `-e` (an Ansible template only; never secrets)."""
    search_path: str = DEFAULT_PATH
    """PATH of the script, and where its interpreter is looked up."""
    own_bin: str | None = OWN_BIN
    """Where an interpreter not on `search_path` is looked up next (None: nowhere)."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: exit 0 is `success`, any other exit (or a request that cannot run) `failed`."""

    status: FinalStatus
    exit_code: int | None
    """See the module docstring; None when the script never started."""
    error: str | None


@dataclass(frozen=True)
class _Plan:
    run_dir: Path
    params_file: Path
    argv: list[str]
    env: dict[str, str]
    user: RunAsUser | None
    """Who the script runs as when that is not the worker's own user."""
    secrets: re.Pattern[str] | None


async def run_script(request: RunRequest, on_line: LineCallback, cancelled: CancelCheck) -> RunOutcome:
    """Run the request's script to its end, passing each output line to `on_line(stream, line)`.

    `stream` is `stdout` or `stderr`; secret values in a line are replaced by `MASK`. `cancelled` is asked every
    `cancel_poll` seconds; when it answers True the script is stopped. A request that cannot run (no interpreter,
    no entry file, an unknown run-as user) ends `failed` with exit code None and an error saying why. When this
    coroutine is itself cancelled, it kills the script's process group and removes the run copy before it returns.
    """
    try:
        plan = await asyncio.to_thread(_plan, request)
    except NotRunnable as exc:
        return RunOutcome("failed", None, str(exc))
    try:
        try:
            await asyncio.to_thread(
                prepare_run_copy, request.source, plan.run_dir, plan.params_file, request.params, plan.user
            )
        except NotRunnable as exc:
            return RunOutcome("failed", None, str(exc))
        return await _execute(request, plan, on_line, cancelled)
    finally:
        await asyncio.to_thread(remove_run_copy, plan.run_dir, plan.params_file, plan.user)


def _plan(request: RunRequest) -> _Plan:
    """Check everything that can be checked before touching the disk, and decide the command and environment."""
    name = INTERPRETERS.get(request.script_type)
    if name is None:
        raise NotRunnable(f"unknown script type {request.script_type!r}; expected one of {', '.join(INTERPRETERS)}")
    interpreter = shutil.which(name, path=request.search_path)
    if interpreter is None and request.own_bin is not None:
        interpreter = shutil.which(name, path=request.own_bin)
    if interpreter is None:
        looked = request.search_path + (f" and {request.own_bin}" if request.own_bin is not None else "")
        raise NotRunnable(
            f"{name} is not installed on this worker (needed for {request.script_type} templates); looked in {looked}"
        )
    if not _TASK_ID.fullmatch(request.task_id):
        raise NotRunnable(f"task id {request.task_id!r} cannot name a run directory; expected letters, digits, . _ -")
    entry = entry_argument(request.source, request.entry_file)
    user = run_as_user(request.run_as)
    try:
        request.runs_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise NotRunnable(f"could not create the runs directory {request.runs_dir}: {exc}") from exc
    runs_dir = request.runs_dir.resolve()
    if user is not None:
        check_reachable(runs_dir, user)
    run_dir = runs_dir / request.task_id
    params_file = runs_dir / f"{request.task_id}.params.json"

    texts = param_texts(request.params)
    ansible = request.script_type == "ansible"
    arguments = ["-e", f"@{params_file}", *request.extra_args, entry] if ansible else script_arguments(entry, texts)
    worker_user = user_name(os.geteuid()) if user is None else user.name
    env = {
        "PATH": request.search_path,
        "HOME": str(user.home if user is not None and user.home is not None else run_dir),
        "LANG": "C.UTF-8",
        "USER": worker_user,
        "LOGNAME": worker_user,
        **request.extra_env,
    }
    env.update(param_environment(texts))
    env["AHOP_PARAMS_FILE"] = str(params_file)

    secrets = secret_pattern(texts.get(name, "") for name in request.secret_params)
    return _Plan(run_dir, params_file, [interpreter, *arguments], env, user, secrets)


def entry_argument(source: Path, entry_file: str) -> str:
    """The entry file as the interpreter's argument: relative to the run copy, never mistaken for an option."""
    path = PurePosixPath(entry_file)
    if not entry_file or "\x00" in entry_file or path.is_absolute() or ".." in path.parts:
        raise NotRunnable(f"entry file {entry_file!r} must be a relative path inside the template")
    target = (source / path).resolve()
    if not target.is_relative_to(source.resolve()) or not target.is_file():
        raise NotRunnable(f"entry file {entry_file!r} is not a file of the template")
    return f"./{path.as_posix()}"


def script_arguments(entry: str, texts: Mapping[str, str]) -> list[str]:
    """The arguments of a shell or python entry, as the original system passed them: the entry, then
    `--name value` for each parameter in the template's order."""
    return [entry, *(part for param, text in texts.items() for part in (f"--{param}", text))]


def param_environment(texts: Mapping[str, str]) -> dict[str, str]:
    """`AHOP_PARAM_<NAME>` for each parameter: the name upper-cased, any other character than A-Z, 0-9 and _ as _."""
    return {"AHOP_PARAM_" + _NOT_ENV_NAME.sub("_", param.upper()): text for param, text in texts.items()}


def param_texts(params: Mapping[str, Any]) -> dict[str, str]:
    """Each parameter as scripts see it in arguments and environment: true/false, lists joined with commas."""
    texts: dict[str, str] = {}
    for name, value in params.items():
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str | int | float) for item in items):
            raise NotRunnable(
                f"parameter {name!r} has a value of type {type(value).__name__}; "
                "expected text, a number, true/false or a list of text"
            )
        text = ",".join(("true" if item else "false") if isinstance(item, bool) else str(item) for item in items)
        if "\x00" in text or "\x00" in name:
            raise NotRunnable(f"parameter {name!r} contains a NUL character, which no script can receive")
        texts[name] = text
    return texts


class _ScriptProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Stream readers for stdout and stderr, plus a future that is done when the script's own process exits.

    asyncio's `Process.wait()` (3.11) also waits for the pipes to close, which a background child can hold open
    for ever; the runner needs the moment of the exit itself.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=MAX_LINE_BYTES, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _execute(request: RunRequest, plan: _Plan, on_line: LineCallback, cancelled: CancelCheck) -> RunOutcome:
    if await cancelled():  # asked while the template was fetched or copied: the script never starts
        return RunOutcome("cancelled", None, "cancelled before the script started")
    loop = asyncio.get_running_loop()
    # Started from the event loop's thread, which lives as long as the worker: the supervisor's parent-death
    # signal follows the thread that forked it.
    uid, gid = (str(plan.user.uid), str(plan.user.gid)) if plan.user is not None else ("-", "-")
    supervised = [sys.executable, "-I", "-S", SUPERVISOR, str(os.getpid()), uid, gid, "--", *plan.argv]
    try:
        transport, protocol = await loop.subprocess_exec(
            lambda: _ScriptProtocol(loop),
            *supervised,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=plan.run_dir,
            env=plan.env,
            start_new_session=True,
        )
    except OSError as exc:
        return RunOutcome("failed", None, f"the script could not be started: {exc}")
    group = transport.get_pid()  # the supervisor leads the script's session, so its pid is the group id
    assert protocol.stdout is not None
    assert protocol.stderr is not None
    group_ended = asyncio.Event()
    readers = [
        asyncio.create_task(read_lines(protocol.stdout, line_emitter("stdout", on_line, plan.secrets), group_ended)),
        asyncio.create_task(read_lines(protocol.stderr, line_emitter("stderr", on_line, plan.secrets), group_ended)),
    ]
    watcher = asyncio.create_task(_wait_for_cancel(cancelled, request.cancel_poll))
    stop: Literal["timeout", "cancelled"] | None = None
    try:
        done, _ = await asyncio.wait(
            [protocol.exited, watcher], timeout=request.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not protocol.exited.done():
            if watcher in done:
                watcher.result()  # a failing check raises here; `finally` kills the group
                stop = "cancelled"
                await _stop_group(group, protocol.exited, min(request.kill_grace, CANCEL_GRACE))
            else:
                stop = "timeout"
                await _stop_group(group, protocol.exited, request.kill_grace)
        await _finish_output(group, readers, group_ended)
    finally:
        watcher.cancel()
        if watcher.done() and not watcher.cancelled() and (problem := watcher.exception()) and stop is None:
            log.warning("the cancel check of task %s failed: %s", request.task_id, problem)
        try:
            if not protocol.exited.done():  # we are being cancelled: the script must not outlive the task
                await _kill_all(group, protocol.exited)
        finally:
            for reader in readers:
                reader.cancel()
            transport.close()
    return _outcome(request, stop, transport.get_returncode())


def _outcome(request: RunRequest, stop: Literal["timeout", "cancelled"] | None, code: int | None) -> RunOutcome:
    if stop == "timeout":
        error = f"the script ran longer than its timeout of {request.timeout:g} s and was stopped"
        return RunOutcome("timeout", code, error)
    if stop == "cancelled":
        return RunOutcome("cancelled", code, "the task was cancelled while its script ran; the script was stopped")
    if code == 0:
        return RunOutcome("success", 0, None)
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return RunOutcome("failed", code, f"the script was killed by signal {name}")
    return RunOutcome("failed", code, None)


async def _wait_for_cancel(cancelled: CancelCheck, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        if await cancelled():
            return


async def _stop_group(group: int, exited: asyncio.Future[None], grace: float) -> None:
    """SIGTERM to the whole group, up to `grace` seconds for the script to exit, then SIGKILL to everything."""
    _signal_group(group, signal.SIGTERM)
    await asyncio.wait([exited], timeout=grace)
    if not exited.done():
        await _kill_all(group, exited)
    await exited


async def _kill_all(group: int, exited: asyncio.Future[None]) -> None:
    """SIGKILL the script and everything it started, even what left its group.

    The supervisor does it (`STOP_ALL`) and then ends as the script did, by SIGKILL. Once it has exited, or after
    `KILL_ALL_SECONDS`, or at once should this coroutine be cancelled, SIGKILL to the group follows, so nothing of
    the group survives a supervisor that could not do its part.
    """
    try:
        with contextlib.suppress(ProcessLookupError):  # the supervisor's pid stays ours until it is reaped
            os.kill(group, supervisor.STOP_ALL)
        await asyncio.wait([exited], timeout=KILL_ALL_SECONDS)
    finally:
        _signal_group(group, signal.SIGKILL)


async def _finish_output(group: int, readers: list[asyncio.Task[None]], group_ended: asyncio.Event) -> None:
    """Read what the script wrote, and end its group so that no background child outlives the task."""
    await asyncio.wait(readers, timeout=DRAIN_SECONDS)
    # The script's pid stays reserved while any member of its group lives, so this cannot reach a stranger
    # unless the group is already empty and the pid was taken again within the drain time.
    _signal_group(group, signal.SIGKILL)
    group_ended.set()
    await asyncio.wait(readers)  # each ends at its pipe's end, or as `read_lines` says
    for reader in readers:
        if (failure := reader.exception()) is not None:
            raise failure


def _signal_group(group: int, signum: signal.Signals) -> None:
    # ESRCH: the group is gone. EPERM: no member could be signalled (all became another user, e.g. setuid).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)
