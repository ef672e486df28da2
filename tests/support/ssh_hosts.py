"""Real OpenSSH servers as the hosts an operator manages: each its own sshd, host keys, login user and address.

Host N listens on 127.0.0.(10+N) at a free port, with an ed25519 and an RSA host key of its own and a config file of
its own (`sshd -D -e -f CONFIG`, checked first with `sshd -t`). Its user may log in with the client key (no
passphrase), with the protected client key and its passphrase, or with a password.

As root, each host gets a login user of its own (`useradd`, a random password set by `chpasswd`), removed with
`userdel -r` at the end after whatever still runs as that user is killed. Those users must reach their homes and
the authorized keys: pytest's temporary directories are private to root, so these live in a directory of their
own under the system's temporary directory (mode 0711), removed at the end; the rest (configs, host keys, logs,
client keys) stays under the test's directory.

Not root, sshd runs as the current user, who is then every host's user (sshd cannot switch users), with the
current user's home; sshd cannot check passwords without reading /etc/shadow, so `password` is empty and password
logins are refused.

At the end exactly the sshd processes started here (by pid) are stopped, with everything below them and every
process started through them that left their tree (`TargetHost.remote_processes`), then the users are removed.
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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from app.devstack.processes import ManagedProcess, free_ports

AS_ROOT = os.geteuid() == 0
"""Hosts get users of their own, passwords and sudo rules only as root (as `make test` runs in CI)."""
needs_root = pytest.mark.skipif(
    not AS_ROOT,
    reason="needs root (sshd checks passwords only as root, and only root makes users and sudo rules): "
    "run make test as root, as CI does",
)

SSHD = Path("/usr/sbin/sshd")
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
DEFAULT_HOST_KEY_KINDS = ("ed25519", "rsa")
"""The host keys each host has unless a test asks for others."""
KEYGEN_ARGUMENTS = {
    "ed25519": ["-t", "ed25519"],
    "rsa": ["-t", "rsa", "-b", "2048"],  # ssh-keygen's 3072 bits take seconds on a busy machine
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
}
"""The host key kinds a test may ask for, and how ssh-keygen makes each."""
STOP_WAIT = 15.0
"""Seconds a stopped process gets to exit before SIGKILL (a bound for hangs, not an expectation)."""
READY_WAIT = 60.0


@dataclass(frozen=True)
class ClientKeys:
    """The key pairs a test connects with: both authorized for every host's user."""

    plain: Path
    """Private key without a passphrase (ed25519)."""
    protected: Path
    """Private key that needs `passphrase` (ed25519)."""
    passphrase: str


@dataclass
class TargetHost:
    """One running sshd and the user that logs in to it."""

    name: str
    address: str
    port: int
    user: str
    home: Path
    password: str
    """The user's login password; empty when not root (see the module docstring)."""
    client_key: Path
    """Private key authorized for `user`, without a passphrase."""
    protected_client_key: Path
    """Private key authorized for `user` that needs `client_key_passphrase`."""
    client_key_passphrase: str
    host_keys: list[str]
    """The sshd's host public keys, OpenSSH lines `TYPE BASE64` (no comment), in the order of the kinds asked for."""
    host_key_files: list[Path]
    """The `.pub` files of those keys, for tools such as `ssh-keygen -lf`."""
    log: Path
    config: Path
    _server: ManagedProcess | None = field(default=None, repr=False)
    _paused: list[psutil.Process] = field(default_factory=list, repr=False)

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
        _terminate(doomed)


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
                raise RuntimeError(f"{process} did not {'stop' if stopped else 'continue'} within {STOP_WAIT:g}s")
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


def _terminate(processes: list[psutil.Process]) -> None:
    """SIGTERM (and SIGCONT, for stopped ones) each process, then SIGKILL what has not exited in time."""
    for process in processes:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
            process.resume()
    for process in _wait_exited(processes, STOP_WAIT):
        with suppress(psutil.NoSuchProcess):
            process.kill()
    if alive := _wait_exited(processes, STOP_WAIT):
        raise RuntimeError(f"still running after SIGKILL: {alive}")


def _run(argv: list[str], *, what: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' '.join(argv)}\n{result.stderr.strip()}")
    return result.stdout


def _system_program(name: str) -> str:
    """`name` from /usr/sbin or /usr/bin by path: a non-root PATH often lacks /usr/sbin."""
    for directory in ("/usr/sbin", "/usr/bin"):
        if (Path(directory) / name).exists():
            return str(Path(directory) / name)
    return name


@dataclass(frozen=True)
class _KeyToMake:
    path: Path
    kind: str
    comment: str
    passphrase: str = ""


def _generate_keys(keys: list[_KeyToMake]) -> None:
    """Run one ssh-keygen per key, side by side (RSA keys take a while, one after another all the more)."""
    running = []
    for key in keys:
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
        raise RuntimeError("\n".join(failures))


def _public_line(pub_file: Path) -> str:
    """A .pub file's `TYPE BASE64`, without its comment."""
    key_type, data, *_ = pub_file.read_text().split()
    return f"{key_type} {data}"


def _sshd_config(host: TargetHost, host_key_paths: list[Path], authorized_keys: Path) -> str:
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
    return "\n".join(lines) + "\n"


def _create_user(name: str, home: Path, password: str) -> None:
    _run(
        [_system_program("useradd"), "--create-home", "--home-dir", str(home), "--shell", "/bin/bash", name],
        what=f"creating user {name}",
    )
    _run([_system_program("chpasswd")], stdin=f"{name}:{password}\n", what=f"setting the password of {name}")


def _remove_user(name: str) -> None:
    """Kill what runs as `name` (by pid, only that user's processes), then `userdel -r`."""
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return
    _terminate([process for process in psutil.process_iter(["uids"]) if process.info["uids"].real == uid])
    _run([_system_program("userdel"), "--remove", name], what=f"removing user {name}")


def _client_keys(directory: Path) -> tuple[ClientKeys, list[_KeyToMake]]:
    """The client keys, and what makes them."""
    directory.mkdir(parents=True)
    plain, protected = directory / "id_ed25519", directory / "id_ed25519_protected"
    passphrase = secrets.token_urlsafe(12)
    making = [
        _KeyToMake(plain, "ed25519", "ahop-test-client"),
        _KeyToMake(protected, "ed25519", "ahop-test-client-protected", passphrase),
    ]
    return ClientKeys(plain, protected, passphrase), making


def _host_key_paths(tmp_path: Path, index: int, kinds: tuple[str, ...]) -> list[_KeyToMake]:
    directory = tmp_path / f"host-{index}"
    directory.mkdir(parents=True)
    return [_KeyToMake(directory / f"ssh_host_{kind}_key", kind, f"host-{index}-host-key") for kind in kinds]


def _prepare_host(
    index: int,
    port: int,
    tmp_path: Path,
    users_dir: Path,
    keys: ClientKeys,
    key_paths: list[Path],
    cleanup: ExitStack,
) -> TargetHost:
    name = f"host-{index}"
    directory = tmp_path / name
    reachable = users_dir / name
    reachable.mkdir(mode=0o711, parents=True, exist_ok=True)
    reachable.chmod(0o711)
    if AS_ROOT:
        user, home, password = f"ahop-h{index}-{secrets.token_hex(3)}", reachable / "home", secrets.token_urlsafe(12)
        _create_user(user, home, password)
        cleanup.callback(_remove_user, user)
    else:
        account = pwd.getpwuid(os.geteuid())
        user, home, password = account.pw_name, Path(account.pw_dir), ""

    pub_files = [path.with_name(path.name + ".pub") for path in key_paths]

    authorized_keys = reachable / "authorized_keys"
    authorized_keys.write_text("".join(f"{_public_line(Path(f'{key}.pub'))}\n" for key in (keys.plain, keys.protected)))
    authorized_keys.chmod(0o644)

    host = TargetHost(
        name=name,
        address=f"127.0.0.{10 + index}",
        port=port,
        user=user,
        home=home,
        password=password,
        client_key=keys.plain,
        protected_client_key=keys.protected,
        client_key_passphrase=keys.passphrase,
        host_keys=[_public_line(path) for path in pub_files],
        host_key_files=pub_files,
        log=directory / "sshd.log",
        config=directory / "sshd_config",
    )
    host.config.write_text(_sshd_config(host, key_paths, authorized_keys))
    check = subprocess.run([str(SSHD), "-t", "-f", str(host.config)], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"sshd refuses the config of {name} ({host.config}): {check.stderr.strip()}")
    return host


def _require_sshd() -> None:
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing: install it with `apt-get install -y openssh-server` (make test does)")
    if shutil.which("ssh-keygen") is None:
        raise RuntimeError("ssh-keygen is missing: install it with `apt-get install -y openssh-client`")
    if AS_ROOT:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation chroot


@contextmanager
def target_hosts(
    tmp_path: Path, count: int, *, host_key_kinds: tuple[str, ...] = DEFAULT_HOST_KEY_KINDS
) -> Iterator[list[TargetHost]]:
    """`count` running hosts (host-1 … host-count), each with host keys of `host_key_kinds` (KEYGEN_ARGUMENTS);
    all stopped, and their users removed, at the end."""
    if not 1 <= count <= 200:
        raise ValueError(f"count must be between 1 and 200 (one 127.0.0.x address each), not {count}")
    if not host_key_kinds or not set(host_key_kinds) <= KEYGEN_ARGUMENTS.keys():
        raise ValueError(f"host key kinds must be some of {', '.join(KEYGEN_ARGUMENTS)}, not {host_key_kinds}")
    _require_sshd()
    with ExitStack() as cleanup:
        if AS_ROOT:
            users_dir = Path(tempfile.mkdtemp(prefix="ahop-ssh-hosts-"))
            users_dir.chmod(0o711)
            cleanup.callback(shutil.rmtree, users_dir, ignore_errors=True)
        else:
            users_dir = tmp_path / "users"
        keys, making = _client_keys(tmp_path / "client")
        host_keys = [_host_key_paths(tmp_path, index, host_key_kinds) for index in range(1, count + 1)]
        _generate_keys(making + [key for keys_of_host in host_keys for key in keys_of_host])
        hosts = []
        for index, port in enumerate(free_ports(count), start=1):
            key_paths = [key.path for key in host_keys[index - 1]]
            host = _prepare_host(index, port, tmp_path, users_dir, keys, key_paths, cleanup)
            cleanup.callback(host.stop)  # before the user is removed: callbacks run last first
            hosts.append(host)
        for host in hosts:
            host.start()
        yield hosts
