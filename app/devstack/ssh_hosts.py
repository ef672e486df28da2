"""Local OpenSSH servers that stand in for managed hosts: each its own sshd, host keys, login user and address.

Host N listens on 127.0.0.(10+N) at a free port, with host keys of its own and a config file of its own
(`sshd -D -e -f CONFIG`, checked first with `sshd -t`). Its user logs in with the client keys of the layout
(`HostsLayout.client_keys`) and, as root, with a password.

As root, each host gets a login user of its own (`useradd`, a random password set by `chpasswd`), removed with
`userdel -r` at the end after whatever still runs as that user is killed. Those users must reach their homes and
the authorized keys, and the layout's directory may be private to root (pytest's temporary directories are): they
live in a directory of their own under the system's temporary directory (mode 0711), removed at the end; the rest
(configs, host keys, logs, client keys) stays under the layout's directory.

Not root, sshd runs as the current user, who is then every host's user (sshd cannot switch users); sshd cannot
check passwords without reading /etc/shadow, so `password` is empty and password logins are refused. Each host's
sessions get the current user's home, or (`HostsLayout.own_homes`) a home of the host's own: sshd_config's
`SetEnv HOME=…` sets $HOME, and so `~`, for every session (sshd still starts a session in the account's home).

Keys that exist already are kept (a second run on the same directory keeps the keys pinned and authorized), and
made side by side when missing. At the end exactly the sshd processes started here (by pid) are stopped, with
everything below them and every process started through them that left their tree (`SshHost.remote_processes`),
then the users are removed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psutil

from app.devstack.errors import StackError
from app.devstack.processes import ManagedProcess, free_ports

AS_ROOT = os.geteuid() == 0
"""Hosts get users of their own and passwords only as root."""
SSHD = Path("/usr/sbin/sshd")
SSHD_PACKAGE = "openssh-server"
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
USERS_DIR_PREFIX = "ahop-ssh-hosts-"
"""The temporary directory, as root, of the hosts' homes and authorized keys: `<tmp>/ahop-ssh-hosts-XXXX`."""
OWNER_FILE = "owner"
"""In that directory: the pid and start time of the process whose hosts these are."""
MAX_HOSTS = 200
"""One 127.0.0.x address each, from 127.0.0.11 on."""
DEFAULT_HOST_KEY_KINDS = ("ed25519", "rsa")
KEYGEN_ARGUMENTS = {
    "ed25519": ["-t", "ed25519"],
    "rsa": ["-t", "rsa", "-b", "2048"],  # ssh-keygen's 3072 bits take seconds on a busy machine
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
}
"""The key kinds a host or client key may be, and how ssh-keygen makes each."""
STOP_WAIT = 15.0
"""Seconds a stopped process gets to exit before SIGKILL (a bound for hangs, not an expectation)."""
READY_WAIT = 60.0


@dataclass(frozen=True)
class KeyFile:
    """A key pair at `path` (private) and `path.pub`, made by ssh-keygen when missing."""

    path: Path
    kind: str
    comment: str
    passphrase: str = ""

    @property
    def public_file(self) -> Path:
        return self.path.with_name(self.path.name + ".pub")

    def exists(self) -> bool:
        return self.path.exists() and self.public_file.exists()


@dataclass
class SshHost:
    """One running sshd and the user that logs in to it."""

    name: str
    address: str
    port: int
    user: str
    home: Path
    password: str
    """The user's login password; empty when not root (see the module docstring)."""
    client_keys: tuple[KeyFile, ...]
    """The key pairs authorized for `user`; the first has no passphrase."""
    host_keys: list[str]
    """The sshd's host public keys, OpenSSH lines `TYPE BASE64` (no comment), in the order of the kinds asked for."""
    host_key_files: list[Path]
    """The `.pub` files of those keys, for tools such as `ssh-keygen -lf`."""
    log: Path
    config: Path
    _server: ManagedProcess | None = field(default=None, repr=False)
    _paused: list[psutil.Process] = field(default_factory=list, repr=False)

    @property
    def client_key(self) -> Path:
        """The private key authorized for `user` that needs no passphrase."""
        return self.client_keys[0].path

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid while it runs."""
        return self._server.pid if self._server is not None and self._server.running() else None

    def start(self) -> None:
        """Start the listening sshd (again, after `stop`) and wait until it answers with its SSH version."""
        if self.pid is not None:
            return
        argv = [str(SSHD), "-D", "-e", "-f", str(self.config)]
        pid_file = self.config.with_name("sshd.pid")
        if self._server is None:
            self._server = ManagedProcess.start(self.name, argv, log_path=self.log, pid_file=pid_file)
        else:
            self._server.respawn()
        self._server.wait_ready(self._answers, where=f"{self.address}:{self.port}", timeout=READY_WAIT)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.address, self.port), timeout=5) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def session_processes(self) -> list[psutil.Process]:
        """What runs below this host's listening sshd: its connections' sshd processes and what they started."""
        if self._server is None:
            return []
        try:
            return psutil.Process(self._server.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def remote_processes(self) -> list[psutil.Process]:
        """Every process started through this host's sshd that still runs, below it or not: OpenSSH leaves a
        command running when its session closes (without a terminal nothing signals it), and a command may leave
        with setsid. Each carries SSH_CONNECTION naming this host's address and port in its environment."""
        mark = f" {self.address} {self.port}"
        found = []
        for process in psutil.process_iter():
            try:
                if process.environ().get("SSH_CONNECTION", "").endswith(mark):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def _everything(self) -> list[psutil.Process]:
        """What runs below the sshd and what left it, once each."""
        below = self.session_processes()
        pids = {process.pid for process in below}
        return below + [process for process in self.remote_processes() if process.pid not in pids]

    def pause(self) -> None:
        """SIGSTOP the listening sshd, its sessions and what they started: a host that stops answering (TCP still
        connects)."""
        if self._server is None or not self._server.running():
            return
        listener = psutil.Process(self._server.pid)
        listener.suspend()  # first, so that it forks no new session while those below it are stopped
        self._paused.append(listener)
        seen = {listener.pid}
        while fresh := [process for process in self._everything() if process.pid not in seen]:
            for process in fresh:  # a process may have forked before it was stopped: look again until none is new
                seen.add(process.pid)
                try:
                    process.suspend()
                except psutil.NoSuchProcess:
                    continue
                self._paused.append(process)
        _wait_until(self._paused, stopped=True)

    def resume(self) -> None:
        """SIGCONT what `pause` stopped."""
        for process in self._paused:
            with suppress(psutil.NoSuchProcess):
                process.resume()
        _wait_until(self._paused, stopped=False)
        self._paused.clear()

    def stop(self) -> None:
        """The host is gone: the listening sshd, its sessions and what they started are stopped (connections are
        refused)."""
        if self._server is None:
            return
        doomed = self._everything()
        self.resume()  # a stopped sshd would act on SIGTERM only once continued
        self._server.stop(STOP_WAIT)
        terminate(doomed)


def _wait_until(processes: list[psutil.Process], *, stopped: bool) -> None:
    """Wait until each of `processes` is stopped (or continued), or has exited: a signal takes effect a moment after
    it is sent."""
    deadline = time.monotonic() + STOP_WAIT
    for process in processes:
        while True:
            try:
                status = process.status()
            except psutil.NoSuchProcess:
                break
            if status == psutil.STATUS_ZOMBIE or (status == psutil.STATUS_STOPPED) == stopped:
                break
            if time.monotonic() > deadline:
                raise StackError(f"{process} did not {'stop' if stopped else 'continue'} within {STOP_WAIT:g}s")
            time.sleep(0.01)


def exited(process: psutil.Process) -> bool:
    """Whether `process` has ended: gone, or a zombie that its parent has not reaped yet (an orphan waits for
    init, which in a container may reap only every second or two)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_exited(processes: list[psutil.Process], bound: float) -> list[psutil.Process]:
    """Those of `processes` that have not ended within `bound` seconds."""
    deadline = time.monotonic() + bound
    while (alive := [process for process in processes if not exited(process)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


def terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM (and SIGCONT, for stopped ones) each process, then SIGKILL what has not exited in time."""
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
            process.resume()
    for process in _wait_exited(processes, STOP_WAIT):
        with suppress(psutil.NoSuchProcess):
            process.kill()
    if alive := _wait_exited(processes, STOP_WAIT):
        raise StackError(f"still running after SIGKILL: {alive}")


def _run(argv: list[str], *, what: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{result.stderr.strip()}")
    return result.stdout


def _system_program(name: str) -> str:
    """`name` from /usr/sbin or /usr/bin by path: a non-root PATH often lacks /usr/sbin."""
    for directory in ("/usr/sbin", "/usr/bin"):
        if (Path(directory) / name).exists():
            return str(Path(directory) / name)
    return name


def generate_keys(keys: list[KeyFile]) -> None:
    """Make those of `keys` that are missing, one ssh-keygen each, side by side (RSA keys take a while, one after
    another all the more)."""
    running = []
    for key in keys:
        if key.exists():
            continue
        key.path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (key.path, key.public_file):  # half a pair, from an interrupted run: ssh-keygen would ask
            stale.unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-N", key.passphrase, *KEYGEN_ARGUMENTS[key.kind], "-C", key.comment]
        argv += ["-f", str(key.path)]
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        running.append((key, process))
    failures = []
    for key, process in running:
        _, errors = process.communicate()
        if process.returncode != 0:
            failures.append(f"ssh-keygen for the {key.kind} key {key.path} failed: {errors.strip()}")
    if failures:
        raise StackError("\n".join(failures))


def public_line(pub_file: Path) -> str:
    """A .pub file's `TYPE BASE64`, without its comment."""
    key_type, data, *_ = pub_file.read_text().split()
    return f"{key_type} {data}"


def _sshd_config(host: SshHost, host_key_paths: list[Path], authorized_keys: Path, own_home: bool) -> str:
    lines = [
        f"ListenAddress {host.address}:{host.port}",
        *(f"HostKey {path}" for path in host_key_paths),
        "PidFile none",
        "StrictModes no",
        "UsePAM no",
        "PasswordAuthentication yes",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile {authorized_keys}",
        f"AllowUsers {host.user}",
        "PermitRootLogin no",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
    ]
    if own_home:
        lines.append(f"SetEnv HOME={host.home}")
    return "\n".join(lines) + "\n"


def _create_user(name: str, home: Path, password: str) -> None:
    _remove_leftover_user(name)
    _run(
        [_system_program("useradd"), "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", name],
        what=f"creating user {name}",
    )
    _run([_system_program("chpasswd")], stdin=f"{name}:{password}\n", what=f"setting the password of {name}")


def _remove_leftover_user(name: str) -> None:
    """A user of `name` whose home lay in a users directory of ours is left by a run that was killed: remove it.
    Any other user of that name is someone's own, and stops the start."""
    try:
        home = Path(pwd.getpwnam(name).pw_dir)
    except KeyError:
        return
    if len(home.parents) < 3 or not home.parents[1].name.startswith(USERS_DIR_PREFIX):
        raise StackError(f"a user {name!r} exists already (home {home}) that was not made for an SSH host here")
    owner = _owner(home.parents[1])
    if owner is not None:
        raise StackError(f"user {name!r} belongs to the SSH hosts of process {owner}, which still runs")
    remove_user(name)


def _claim(users_dir: Path) -> None:
    """Record which process made `users_dir` (pid and start time), so that another can tell a leftover."""
    me = psutil.Process()
    (users_dir / OWNER_FILE).write_text(f"{me.pid} {me.create_time()}\n")


def _owner(users_dir: Path) -> int | None:
    """The pid of the process that made `users_dir`, while it still runs."""
    try:
        pid, started = (users_dir / OWNER_FILE).read_text().split()
        alive = abs(psutil.Process(int(pid)).create_time() - float(started)) < 0.5
    except (OSError, ValueError, psutil.Error):
        return None
    return int(pid) if alive else None


def remove_user(name: str) -> None:
    """Kill what runs as `name` (by pid, only that user's processes), then `userdel -r`."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    terminate([process for process in psutil.process_iter(["uids"]) if process.info["uids"].real == uid])
    _run([_system_program("userdel"), "--remove", name], what=f"removing user {name}")


def require_sshd() -> None:
    """Fail at once, naming the package to install, when OpenSSH's server or ssh-keygen is missing."""
    if not SSHD.exists():
        raise StackError(f"{SSHD} is missing: install it with `apt-get install -y {SSHD_PACKAGE}`")
    if shutil.which("ssh-keygen") is None:
        raise StackError("ssh-keygen is missing: install it with `apt-get install -y openssh-client`")


@dataclass(frozen=True)
class HostsLayout:
    """Which hosts to run and where their files live: `<directory>/<name>/` holds each host's config, host keys and
    log."""

    directory: Path
    names: list[str]
    """Host N (from 1) is `names[N-1]`, on 127.0.0.(10+N)."""
    client_keys: list[KeyFile]
    """The key pairs authorized for every host's user; the first must have no passphrase."""
    user_name: Callable[[int], str]
    """As root, the login user of host N."""
    own_homes: bool = False
    """Not root: give each host a home of its own instead of the current user's."""
    host_key_kinds: tuple[str, ...] = DEFAULT_HOST_KEY_KINDS

    def check(self) -> None:
        if not 1 <= len(self.names) <= MAX_HOSTS:
            raise StackError(f"the number of SSH hosts must be between 1 and {MAX_HOSTS}, not {len(self.names)}")
        kinds = {*self.host_key_kinds, *(key.kind for key in self.client_keys)}
        if not self.host_key_kinds or not kinds <= KEYGEN_ARGUMENTS.keys():
            raise StackError(f"key kinds must be some of {', '.join(KEYGEN_ARGUMENTS)}, not {sorted(kinds)}")
        if not self.client_keys or self.client_keys[0].passphrase:
            raise StackError("the first client key of SSH hosts must have no passphrase")

    def host_key_files(self, index: int) -> list[KeyFile]:
        name = self.names[index - 1]
        directory = self.directory / name
        return [KeyFile(directory / f"ssh_host_{kind}_key", kind, f"{name}-host-key") for kind in self.host_key_kinds]


Host = TypeVar("Host", bound=SshHost)


def _prepare_host(
    layout: HostsLayout, index: int, port: int, users_dir: Path, host_type: type[Host], cleanup: ExitStack
) -> Host:
    name = layout.names[index - 1]
    directory = layout.directory / name
    reachable = users_dir / name
    reachable.mkdir(mode=0o711, parents=True, exist_ok=True)
    reachable.chmod(0o711)
    if AS_ROOT:
        user, home, password = layout.user_name(index), reachable / "home", secrets.token_urlsafe(12)
        _create_user(user, home, password)
        cleanup.callback(remove_user, user)
    else:
        account = pwd.getpwuid(os.geteuid())
        user, password = account.pw_name, ""
        home = reachable / "home" if layout.own_homes else Path(account.pw_dir)
        if layout.own_homes:
            home.mkdir(mode=0o700, exist_ok=True)
            cleanup.callback(shutil.rmtree, home, ignore_errors=True)

    authorized_keys = reachable / "authorized_keys"
    authorized_keys.write_text("".join(f"{public_line(key.public_file)}\n" for key in layout.client_keys))
    authorized_keys.chmod(0o644)

    host_keys = layout.host_key_files(index)
    host = host_type(
        name=name,
        address=f"127.0.0.{10 + index}",
        port=port,
        user=user,
        home=home,
        password=password,
        client_keys=tuple(layout.client_keys),
        host_keys=[public_line(key.public_file) for key in host_keys],
        host_key_files=[key.public_file for key in host_keys],
        log=directory / "sshd.log",
        config=directory / "sshd_config",
    )
    own_home = layout.own_homes and not AS_ROOT
    host.config.write_text(_sshd_config(host, [key.path for key in host_keys], authorized_keys, own_home))
    check = subprocess.run([str(SSHD), "-t", "-f", str(host.config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise StackError(f"sshd refuses the config of {name} ({host.config}): {check.stderr.strip()}")
    return host


@contextmanager
def running_ssh_hosts(layout: HostsLayout, host_type: type[Host]) -> Iterator[list[Host]]:
    """The layout's hosts, running (as `host_type`, SshHost or a subclass adding no fields); all stopped, and
    their users and homes removed, at the end."""
    layout.check()
    require_sshd()
    if AS_ROOT:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation chroot
    with ExitStack() as cleanup:
        if AS_ROOT:
            users_dir = Path(tempfile.mkdtemp(prefix=USERS_DIR_PREFIX))
            users_dir.chmod(0o711)
            _claim(users_dir)
            cleanup.callback(shutil.rmtree, users_dir, ignore_errors=True)
        else:
            users_dir = layout.directory
        count = len(layout.names)
        host_keys = [key for index in range(1, count + 1) for key in layout.host_key_files(index)]
        generate_keys(layout.client_keys + host_keys)
        hosts = []
        for index, port in enumerate(free_ports(count), start=1):
            host = _prepare_host(layout, index, port, users_dir, host_type, cleanup)
            cleanup.callback(host.stop)  # before the user is removed: callbacks run last first
            hosts.append(host)
        for host in hosts:
            host.start()
        yield hosts
