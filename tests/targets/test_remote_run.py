"""A template's entry run on a real OpenSSH host: its exit code and output, its environment and files (secrets in no
process's argv and in no output), timeout and cancel stopping every process it started, sudo with and without a
become password, and a connection that dies under a run."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import asyncssh
import psutil
import pytest

from targets.remote_run import CommandRefused, RemoteCommand, RemoteEnding, run_remote
from tests.support.ssh_hosts import TargetHost, exited, needs_root
from tests.support.ssh_sudo import sudo_rules
from tests.support.waiting import until

HANG = 180.0
"""Bound of a whole run in these tests: it only catches hangs."""

LEAVES_A_TREE = {
    "run.sh": '#!/bin/sh\necho "session $$"\necho "files $AHOP_FILES_DIR"\n./child.sh &\nwait\n',
    # The child and its own child both ignore SIGTERM: only SIGKILL ends them.
    "child.sh": "#!/bin/sh\ntrap '' TERM\nsleep 1000 &\necho \"grandchild $!\"\nwait\n",
}
"""An entry that ends on SIGTERM, with a child and a grandchild that do not."""
IGNORES_SIGTERM = {
    "run.sh": '#!/bin/sh\ntrap \'\' TERM\necho "session $$"\nsleep 1000 &\necho "grandchild $!"\nwait\n',
}
"""An entry that ignores SIGTERM, as its child does (ignored signals are inherited)."""


@asynccontextmanager
async def connected(host: TargetHost, **options: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    known_hosts = asyncssh.import_known_hosts("".join(f"[{host.address}]:{host.port} {k}\n" for k in host.host_keys))
    async with asyncssh.connect(
        host.address,
        port=host.port,
        username=host.user,
        client_keys=[str(host.client_key)],
        known_hosts=known_hosts,
        config=None,
        agent_path=None,
        **options,
    ) as connection:
        yield connection


async def template(connection: asyncssh.SSHClientConnection, files: dict[str, str]) -> str:
    """A directory of executable files on the host, as a template's files are there; its absolute path."""
    made = await connection.run(
        f'd="$HOME/template-{secrets.token_hex(4)}" && mkdir "$d" && printf %s "$d"', check=True
    )
    directory = str(made.stdout)
    for name, text in files.items():
        await connection.run(f"cat > {directory}/{name} && chmod 755 {directory}/{name}", input=text, check=True)
    return directory


class Output:
    """The lines of a run as `on_line` got them; may set `cancelled` when a line starts with `cancel_at`."""

    def __init__(self, cancel_at: str | None = None) -> None:
        self.lines: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()
        self._cancel_at = cancel_at

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        if self._cancel_at is not None and line.startswith(self._cancel_at):
            self.cancelled.set()

    def of(self, stream: str) -> list[str]:
        return [line for got, line in self.lines if got == stream]

    def value(self, prefix: str) -> int:
        """The number after `prefix ` on the first stdout line that starts with it."""
        return next(int(line.split()[1]) for line in self.of("stdout") if line.startswith(prefix + " "))

    def text(self, prefix: str) -> str:
        """What follows `prefix ` on the first stdout line that starts with it."""
        return next(line.split(" ", 1)[1] for line in self.of("stdout") if line.startswith(prefix + " "))

    async def saw(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for _, line in self.lines)


async def run(
    connection: asyncssh.SSHClientConnection,
    command: RemoteCommand,
    output: Output,
    *,
    run_timeout: float = 600,
    kill_grace: float = 5.0,
) -> RemoteEnding:
    async with asyncio.timeout(HANG):
        return await run_remote(
            connection, command, timeout=run_timeout, cancelled=output.cancelled, on_line=output, kill_grace=kill_grace
        )


def session_of(pid: int) -> int | None:
    """The session id of process `pid` (field 6 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[3])


def alive_in_session(session: int) -> list[psutil.Process]:
    """Every process of this machine in `session` that has not ended, whoever it runs as."""
    return [process for process in psutil.process_iter() if session_of(process.pid) == session and not exited(process)]


def ended(pid: int) -> bool:
    """Whether process `pid` has ended (gone, or a zombie waiting to be reaped)."""
    try:
        return exited(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return True


def argv_holding(secret: str) -> list[str]:
    """The command line of each process of this machine whose argv contains `secret`."""
    found = []
    for process in psutil.process_iter():
        try:
            command_line = process.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if any(secret in argument for argument in command_line):
            found.append(" ".join(command_line))
    return found


@pytest.fixture(scope="module")
def sudo_hosts(ssh_hosts: list[TargetHost]) -> Iterator[tuple[TargetHost, TargetHost]]:
    """The second host's user may sudo without a password, the third's only with their own password (root only:
    the tests that take it are marked `needs_root`)."""
    nopasswd, with_password = ssh_hosts[1], ssh_hosts[2]
    with sudo_rules({nopasswd.user: "nopasswd", with_password.user: "password"}):
        yield nopasswd, with_password


async def test_the_exit_code_and_each_line_of_both_streams_come_back(ssh_hosts: list[TargetHost]) -> None:
    script = (
        "#!/bin/sh\necho 'to stdout'\necho 'to stderr' >&2\nprintf 'héllo wörld ✓ 日本\\r\\n'\necho\n"
        "printf 'a partial last line'\nexit 3\n"
    )
    async with connected(ssh_hosts[0]) as connection:
        workdir = await template(connection, {"run.sh": script, "ok.sh": "#!/bin/sh\necho fine\n"})
        output = Output()
        failed = await run(connection, RemoteCommand(workdir, ["./run.sh"]), output)
        fine = Output()
        succeeded = await run(connection, RemoteCommand(workdir, ["sh", "ok.sh"]), fine)

    assert (failed.status, failed.exit_code, failed.error) == ("failed", 3, None)
    assert output.of("stdout") == ["to stdout", "héllo wörld ✓ 日本", "", "a partial last line"]
    assert output.of("stderr") == ["to stderr"]
    assert (succeeded.status, succeeded.exit_code, succeeded.error) == ("success", 0, None)
    assert fine.lines == [("stdout", "fine")]
    assert failed.started_at.tzinfo == UTC
    assert failed.started_at <= failed.finished_at <= succeeded.started_at


async def test_five_megabytes_on_each_stream_arrive_whole(ssh_hosts: list[TargetHost]) -> None:
    line = "0123456789abcdefghijklmnopqrstuvwxyz"
    count = 150_000  # 37 bytes a line: 5.5 MB on each stream, written at the same time
    script = f"#!/bin/sh\nyes {line} | head -n {count} >&2 &\nyes {line} | head -n {count}\nwait\n"
    async with connected(ssh_hosts[0]) as connection:
        workdir = await template(connection, {"loud.sh": script})
        output = Output()
        ending = await run(connection, RemoteCommand(workdir, ["./loud.sh"]), output)

    assert (ending.status, ending.exit_code) == ("success", 0)
    assert output.of("stdout") == [line] * count
    assert output.of("stderr") == [line] * count


async def test_environment_and_files_reach_the_entry_and_the_files_are_removed(ssh_hosts: list[TargetHost]) -> None:
    secret = secrets.token_urlsafe(16)
    tricky = 'it\'s "quoted" $HOME `date`\nand a second line'
    script = (
        "#!/bin/sh\n"
        'printf "greeting=%s|\\n" "$GREETING"\n'
        'echo "files=$AHOP_FILES_DIR"\n'
        'cat "$AHOP_FILES_DIR/params.json"; echo\n'
        'stat -c "%n %a" "$AHOP_FILES_DIR" "$AHOP_FILES_DIR/params.json" "$AHOP_FILES_DIR/token.txt"\n'
        '[ "$API_TOKEN" = "$(cat "$AHOP_FILES_DIR/token.txt")" ] && echo "the token file holds the token"\n'
    )
    async with connected(ssh_hosts[0]) as connection:
        workdir = await template(connection, {"env.sh": script})
        command = RemoteCommand(
            workdir,
            ["./env.sh"],
            environment={"GREETING": tricky, "API_TOKEN": secret},
            files={"params.json": b'{"days": 3}', "token.txt": secret.encode()},
        )
        output = Output()
        ending = await run(connection, command, output)
        files_dir = next(line.split("=", 1)[1] for line in output.of("stdout") if line.startswith("files="))
        left = await connection.run(f"test -e {files_dir}/.. && echo still-there || echo gone", check=True)

    assert (ending.status, ending.exit_code) == ("success", 0), output.lines
    stdout = output.of("stdout")
    assert stdout[:2] == ['greeting=it\'s "quoted" $HOME `date`', "and a second line|"]
    assert '{"days": 3}' in stdout
    assert f"{files_dir} 700" in stdout
    assert f"{files_dir}/params.json 600" in stdout
    assert f"{files_dir}/token.txt 600" in stdout
    assert "the token file holds the token" in stdout
    assert not any(secret in line for _, line in output.lines)
    assert str(left.stdout).strip() == "gone"
    assert secret not in repr(command)
    assert '{"days": 3}' not in repr(command)


async def test_a_secret_is_in_no_process_argv_while_the_entry_runs(ssh_hosts: list[TargetHost]) -> None:
    host = ssh_hosts[0]
    secret, file_secret = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    script = '#!/bin/sh\necho "session $$"\nexec sleep 1000\n'
    async with connected(host) as connection:
        workdir = await template(connection, {"wait.sh": script})
        command = RemoteCommand(
            workdir, ["./wait.sh"], environment={"API_TOKEN": secret}, files={"key.pem": file_secret.encode()}
        )
        output = Output()
        running = asyncio.create_task(run(connection, command, output))
        await until(lambda: output.saw("session "), "the entry's first line")
        session = output.value("session")
        entry = psutil.Process(session)
        assert entry.cmdline() == ["sleep", "1000"]
        assert entry.environ()["API_TOKEN"] == secret  # the secret is there, to be looked for in every argv
        assert entry in host.remote_processes()
        holding = argv_holding(secret) + argv_holding(file_secret)
        output.cancelled.set()
        ending = await running

    assert holding == []
    assert ending.status == "cancelled"
    assert not any(secret in line or file_secret in line for _, line in output.lines)


async def test_a_timeout_stops_the_entry_and_a_grandchild_that_ignores_sigterm(ssh_hosts: list[TargetHost]) -> None:
    async with connected(ssh_hosts[0]) as connection:
        workdir = await template(connection, IGNORES_SIGTERM)
        output = Output()
        ending = await run(connection, RemoteCommand(workdir, ["./run.sh"]), output, run_timeout=15, kill_grace=1)

    assert ending.status == "timeout"
    assert ending.exit_code == 128 + 9  # SIGTERM did not end the entry: SIGKILL did
    assert ending.error is not None
    assert "timeout of 15 s" in ending.error
    session, grandchild = output.value("session"), output.value("grandchild")
    assert alive_in_session(session) == []
    assert ended(grandchild)


async def test_a_cancel_stops_every_process_of_the_run(ssh_hosts: list[TargetHost]) -> None:
    async with connected(ssh_hosts[0]) as connection:
        workdir = await template(connection, LEAVES_A_TREE)
        output = Output(cancel_at="grandchild ")
        ending = await run(connection, RemoteCommand(workdir, ["./run.sh"]), output, kill_grace=1)

    assert ending.status == "cancelled"
    assert ending.exit_code == 128 + 15
    assert output.of("stderr") == []  # nothing but the entry's own output, not how its shell saw it end
    session, grandchild = output.value("session"), output.value("grandchild")
    assert alive_in_session(session) == []
    assert ended(grandchild)


@needs_root
async def test_sudo_without_a_password_runs_the_entry_as_root(sudo_hosts: tuple[TargetHost, TargetHost]) -> None:
    host, _ = sudo_hosts
    async with connected(host) as connection:
        workdir = await template(connection, {"who.sh": "#!/bin/sh\nid -u\npwd\n"})
        output = Output()
        ending = await run(connection, RemoteCommand(workdir, ["./who.sh"], sudo=True), output)

    assert (ending.status, ending.exit_code) == ("success", 0), ending.error
    assert output.of("stdout") == ["0", workdir]


@needs_root
async def test_a_cancel_under_sudo_stops_the_roots_processes(sudo_hosts: tuple[TargetHost, TargetHost]) -> None:
    host, _ = sudo_hosts
    async with connected(host) as connection:
        workdir = await template(connection, LEAVES_A_TREE)
        output = Output()
        running = asyncio.create_task(run(connection, RemoteCommand(workdir, ["./run.sh"], sudo=True), output))
        await until(lambda: output.saw("grandchild "), "the entry's grandchild")
        grandchild = output.value("grandchild")
        grandchild_uid = psutil.Process(grandchild).uids().real
        output.cancelled.set()
        ending = await running

    assert grandchild_uid == 0
    assert ending.status == "cancelled"
    assert alive_in_session(output.value("session")) == []
    assert ended(grandchild)


@needs_root
async def test_the_become_password_lets_sudo_run_and_never_shows(sudo_hosts: tuple[TargetHost, TargetHost]) -> None:
    _, host = sudo_hosts
    script = '#!/bin/sh\nid -u\necho "session $$"\nexec sleep 1000\n'
    async with connected(host) as connection:
        workdir = await template(connection, {"root.sh": script})
        command = RemoteCommand(workdir, ["./root.sh"], sudo=True, become_password=host.password)
        output = Output()
        running = asyncio.create_task(run(connection, command, output, kill_grace=1))
        await until(lambda: output.saw("session "), "the entry's first line")
        entry_uid = psutil.Process(output.value("session")).uids().real
        holding = argv_holding(host.password)
        output.cancelled.set()
        ending = await running

    assert entry_uid == 0
    assert output.of("stdout")[0] == "0"
    assert holding == []
    assert ending.status == "cancelled"
    assert not any(host.password in line for _, line in output.lines)
    assert host.password not in repr(command)


@needs_root
async def test_sudo_that_needs_a_password_it_was_not_given_fails_clearly(
    sudo_hosts: tuple[TargetHost, TargetHost],
) -> None:
    _, host = sudo_hosts
    async with connected(host) as connection:
        workdir = await template(connection, {"root.sh": "#!/bin/sh\necho ran\n"})
        output = Output()
        ending = await run(connection, RemoteCommand(workdir, ["./root.sh"], sudo=True), output)
        wrong = Output()
        refused = await run(
            connection, RemoteCommand(workdir, ["./root.sh"], sudo=True, become_password="not-the-password"), wrong
        )

    assert (ending.status, ending.exit_code) == ("failed", None)
    assert ending.error is not None
    assert f"{host.address}:{host.port}" in ending.error
    assert "needs a password" in ending.error
    assert "become_password" in ending.error
    assert (refused.status, refused.exit_code) == ("failed", None)
    assert refused.error is not None
    assert "refused the become password" in refused.error
    assert ("stdout", "ran") not in output.lines + wrong.lines
    assert not any("not-the-password" in line for _, line in wrong.lines)


async def test_a_missing_working_directory_fails_naming_it(ssh_hosts: list[TargetHost]) -> None:
    async with connected(ssh_hosts[0]) as connection:
        output = Output()
        ending = await run(connection, RemoteCommand("/nonexistent/template", ["./run.sh"]), output)

    assert (ending.status, ending.exit_code) == ("failed", None)
    assert ending.error is not None
    assert "/nonexistent/template" in ending.error
    assert output.lines == []


async def test_a_host_that_stops_mid_run_ends_it_unreachable(ssh_host: TargetHost) -> None:
    async with connected(ssh_host) as connection:
        workdir = await template(connection, LEAVES_A_TREE)
        output = Output()
        running = asyncio.create_task(run(connection, RemoteCommand(workdir, ["./run.sh"]), output, kill_grace=1))
        await until(lambda: output.saw("grandchild "), "the entry's grandchild")
        ssh_host.stop()  # SIGTERM to every process of the host's sessions, then SIGKILL to what is left
        ending = await running

    assert (ending.status, ending.exit_code) == ("unreachable", None)
    assert ending.error is not None
    assert f"{ssh_host.address}:{ssh_host.port}" in ending.error
    # The wrapper, signalled with the rest, stopped its run and removed the run's secrets on its way out.
    assert not Path(output.text("files")).parent.exists()


async def test_a_host_that_stops_answering_ends_it_unreachable_and_the_run_stops_there(ssh_host: TargetHost) -> None:
    async with connected(ssh_host, keepalive_interval=1, keepalive_count_max=3) as connection:
        workdir = await template(connection, LEAVES_A_TREE)
        output = Output()
        running = asyncio.create_task(run(connection, RemoteCommand(workdir, ["./run.sh"]), output, kill_grace=1))
        await until(lambda: output.saw("grandchild "), "the entry's grandchild")
        session, private = output.value("session"), Path(output.text("files")).parent
        ssh_host.pause()
        try:
            ending = await running
            left_running = alive_in_session(session)  # stopped with the host: nothing but the host can end it now
        finally:
            ssh_host.resume()

    assert (ending.status, ending.exit_code) == ("unreachable", None)
    assert left_running != []

    # Once its sshd runs again it sees the connection gone and ends the run's stdin: the wrapper stops the run
    # (the grandchild ignores SIGTERM) and removes the run's private directory.
    async def run_stopped_and_removed() -> bool:
        return alive_in_session(session) == [] and not private.exists()

    await until(run_stopped_and_removed, "the run to stop on the host after its connection died", bound=60)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"workdir": "relative/dir", "argv": ["./run.sh"]}, "absolute path"),
        ({"workdir": "/srv/t", "argv": []}, "non-empty list"),
        ({"workdir": "/srv/t", "argv": ["./run.sh"], "environment": {"NOT-A-NAME": "x"}}, "'NOT-A-NAME'"),
        ({"workdir": "/srv/t", "argv": ["./run.sh"], "environment": {"AHOP_FILES_DIR": "/x"}}, "AHOP_FILES_DIR"),
        ({"workdir": "/srv/t", "argv": ["./run.sh"], "files": {"../escape": b""}}, "'../escape'"),
        ({"workdir": "/srv/t", "argv": ["./run.sh"], "become_password": "two\nlines"}, "newline"),
    ],
)
def test_a_command_that_cannot_run_is_refused_naming_what_is_wrong(arguments: dict[str, Any], named: str) -> None:
    with pytest.raises(CommandRefused, match=named) as refused:
        RemoteCommand(**arguments)
    assert isinstance(refused.value, ValueError)


async def test_a_timeout_not_above_zero_is_refused_before_anything_runs(ssh_hosts: list[TargetHost]) -> None:
    async with connected(ssh_hosts[0]) as connection:
        before = str((await connection.run("ls -d ${TMPDIR:-/tmp}/ahop-run.* 2>/dev/null | wc -l")).stdout)
        with pytest.raises(CommandRefused, match="timeout"):
            await run_remote(
                connection, RemoteCommand("/", ["true"]), timeout=0, cancelled=asyncio.Event(), on_line=Output()
            )
        after = str((await connection.run("ls -d ${TMPDIR:-/tmp}/ahop-run.* 2>/dev/null | wc -l")).stdout)
    assert after == before


async def test_what_a_login_script_prints_comes_before_the_entrys_lines(ssh_host: TargetHost) -> None:
    async with connected(ssh_host) as connection:
        workdir = await template(connection, {"run.sh": "#!/bin/sh\necho from the entry\n"})
        # bash reads ~/.bashrc for a command sshd runs; this one prints a last line without a newline.
        await connection.run("cat > ~/.bashrc", input="printf 'welcome to this host'\n", check=True)
        output = Output()
        ending = await run(connection, RemoteCommand(workdir, ["./run.sh"]), output)

    assert (ending.status, ending.exit_code) == ("success", 0), ending.error
    assert output.lines == [("stdout", "welcome to this host"), ("stdout", "from the entry")]
