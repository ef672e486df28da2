"""Bare mirrors of tenants' repositories on the server's disk, fetched with a time limit and no ambient config.

Each fetch runs `git` with only what we give it: no system or global config, no terminal prompts, only the
allowed protocols, a timeout, and credentials passed through the environment (never on the command line, where
`ps` would show them). SSH checks host keys against the configured known-hosts file; unknown hosts are refused.
A local (`file`) remote is fetched only from under the configured roots and never from under the server's data
directory (another tenant's mirror); git is handed the checked, symlink-resolved path, never the url as given.

Fetches and removals of one mirror take its lock (`<id>.lock`). A fetch for the API re-reads what to fetch once it
holds the lock (`fetch_current`), so a repository deleted while the fetch waited is not fetched again; the removal
happens under the same lock, after any fetch in progress. Waiting for the lock holds no thread.

Git work runs in the mirrors' git pool (`app.git.pool`): a bounded number at once, a few per tenant, never on
asyncio's default threads. Every git command is a child that dies with the server (`app.git.processes`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.errors import InvalidInput, Unavailable, Upstream
from app.git.mirrorlock import MirrorLock
from app.git.pool import GitPool, watch_client
from app.git.processes import GitTimedOut, ShuttingDown
from app.git.urls import check_local_path, scheme_of
from app.services.credentials import Credentials

GIT_PROTOCOLS = {"https": "https", "http": "http", "ssh": "ssh", "file": "file", "git": "git"}


@dataclass(frozen=True)
class GitOptions:
    timeout: float = 120.0
    known_hosts: Path | None = None
    allowed_schemes: frozenset[str] = frozenset({"https", "ssh"})
    file_roots: tuple[Path, ...] = ()
    """Where local (`file`) remotes may lie; without roots no local remote is accepted."""
    pool_size: int = 4
    """How many pieces of git work (fetches, scans, packs) run at once."""
    tenant_limit: int = 2
    """How many of them one tenant may run at once; its others wait for a slot."""


@dataclass(frozen=True)
class Remote:
    """What a fetch reads: the repository's url, branch and credentials as recorded."""

    url: str
    branch: str
    credentials: Credentials | None


def check_branch(branch: str) -> str:
    """A branch name git accepts (`git check-ref-format --branch`), else `InvalidInput`."""
    result = subprocess.run(["git", "check-ref-format", f"refs/heads/{branch}"], capture_output=True, check=False)
    if not branch or branch.startswith("-") or result.returncode != 0:
        raise InvalidInput(f"branch {branch!r} is not a valid branch name", {"branch": "not a valid git branch name"})
    return branch


class Mirrors:
    """The mirrors under `<data dir>/mirrors/<tenant id>/<repository id>.git`."""

    def __init__(self, data_dir: Path, options: GitOptions) -> None:
        self.root = data_dir / "mirrors"
        self.options = options
        self.pool = GitPool(options.pool_size, options.tenant_limit)
        """Where this server's git work runs; `close` it when the server shuts down."""

    def close(self) -> list[int]:
        """On shutdown: kill the git commands still running (answering their pids) and start no more."""
        return self.pool.close()

    def path(self, tenant_id: object, repository_id: int) -> Path:
        return self.root / str(tenant_id) / f"{repository_id}.git"

    def on_disk(self) -> list[tuple[str, int]]:
        """(tenant id, repository id) of every mirror on disk."""
        return [(mirror.parent.name, int(mirror.stem)) for mirror in self.root.glob("*/*.git") if mirror.stem.isdigit()]

    def lock(self, tenant_id: object, repository_id: int) -> MirrorLock:
        """The lock that fetches and the removal of this mirror take."""
        return MirrorLock(self.path(tenant_id, repository_id).with_suffix(".lock"))

    async def remove(self, tenant_id: object, repository_id: int) -> None:
        """Remove the mirror of a deleted repository, after any fetch of it in progress, and its lock file."""
        lock = self.lock(tenant_id, repository_id)
        with self.pool.load.waiting_for_lock():
            await lock.acquire_async()

        def remove_releasing() -> None:
            try:
                shutil.rmtree(self.path(tenant_id, repository_id), ignore_errors=True)
                # Whoever still waits for the lock opens the path again and may create a new lock file; it then
                # re-reads the repository, finds it gone and fetches nothing (a stray lock file is all it leaves).
                lock.path.unlink(missing_ok=True)
            finally:
                lock.release()

        # Not for the caller only: the repository is gone, its mirror must go even if the client has.
        await self.pool.run(tenant_id, remove_releasing, for_caller=False, not_started=lock.release)

    async def fetch(self, tenant_id: object, repository_id: int, remote: Remote) -> str:
        """Fetch `remote`'s branch into the mirror; return the commit id it points at."""

        async def same() -> Remote:
            return remote

        return await self.fetch_current(tenant_id, repository_id, same)

    async def fetch_current(
        self, tenant_id: object, repository_id: int, read_remote: Callable[[], Awaitable[Remote]]
    ) -> str:
        """Fetch what `read_remote` says, read once this holds the mirror's lock; return the branch's commit id.

        `read_remote` raises when the repository no longer exists (it was deleted while this waited for the
        lock): then nothing is fetched and the mirror is not created again.
        """
        lock = self.lock(tenant_id, repository_id)
        watch_client()  # a client that leaves while this waits gets no fetch (`GitPool.run` looks)
        with self.pool.load.waiting_for_lock():
            await lock.acquire_async()
        try:
            remote = await read_remote()
        except BaseException:
            lock.release()
            raise
        return await self.pool.run(
            tenant_id, self._fetch_releasing, lock, tenant_id, repository_id, remote, not_started=lock.release
        )

    def _fetch_releasing(self, lock: MirrorLock, tenant_id: object, repository_id: int, remote: Remote) -> str:
        # Once the fetch runs, the lock is given up by its thread, so a cancelled request cannot free it mid-fetch.
        try:
            return self._fetch_locked(tenant_id, repository_id, remote)
        finally:
            lock.release()

    def _fetch_locked(self, tenant_id: object, repository_id: int, remote: Remote) -> str:
        source = self._source(remote.url)
        mirror = self.path(tenant_id, repository_id)
        mirror.parent.mkdir(parents=True, exist_ok=True)
        if not (mirror / "HEAD").exists():
            self._git(["init", "--quiet", "--bare", str(mirror)], secret=None)
        branch = remote.branch
        refspec = f"+refs/heads/{branch}:refs/heads/{branch}"
        with self._auth_env(remote.credentials) as (env, secret):
            self._git(
                ["--git-dir", str(mirror), "fetch", "--quiet", "--no-tags", "--prune", "--", source, refspec],
                secret=secret,
                env=env,
                what=f"fetching {branch!r} from {remote.url}",
            )
        head = self._git(
            ["--git-dir", str(mirror), "rev-parse", "--verify", f"refs/heads/{branch}^{{commit}}"], secret=None
        )
        return head.strip()

    def _source(self, url: str) -> str:
        """What git is given for `url`: a local remote as its checked, resolved path (`InvalidInput` if refused)."""
        if scheme_of(url) != "file":
            return url
        return str(check_local_path(url, self.options.file_roots, self.root.parent))

    async def check_remote(
        self, tenant_id: object, url: str, branch: str | None, credentials: Credentials | None
    ) -> str:
        """`_check_remote` in the git pool, as `tenant_id`'s work."""
        return await self.pool.run(tenant_id, self._check_remote, url, branch, credentials)

    def _check_remote(self, url: str, branch: str | None, credentials: Credentials | None) -> str:
        """Ask the remote (`git ls-remote --symref`) whether it is a repository that has `branch`; return the branch,
        or without one the remote's default branch (where its HEAD points). `InvalidInput` names the problem: not a
        repository or not reachable (with git's message), no such branch, or no default branch to use."""
        source = self._source(url)
        probe = self._probe_dir()
        patterns = ["HEAD", *([f"refs/heads/{branch}"] if branch else [])]
        with self._auth_env(credentials) as (env, secret):
            try:
                listing = self._git(
                    ["--git-dir", str(probe), "ls-remote", "--symref", "--", source, *patterns],
                    secret=secret,
                    env=env,
                    what="git ls-remote",
                )
            except Upstream as exc:
                said = str(exc).removeprefix("git ls-remote: ")
                first = said.splitlines()[0].removeprefix("fatal: ") if said else "no answer"
                raise InvalidInput(
                    f"repository url {url!r} is not a Git repository or cannot be reached: {' '.join(said.split())}",
                    {"url": f"not a Git repository, or not reachable ({first})"},
                ) from exc
        refs, default = _parse_listing(listing)
        if branch is not None:
            if f"refs/heads/{branch}" not in refs:
                hint = f" (its default branch is {default!r})" if default else ""
                raise InvalidInput(
                    f"the repository at {url} has no branch {branch!r}{hint}",
                    {"branch": f"no branch {branch!r} at the remote{hint}"},
                )
            return branch
        if default is None or "HEAD" not in refs:
            raise InvalidInput(
                f"the repository at {url} has no default branch to use (it is empty or its HEAD is detached); "
                "give the branch",
                {"branch": "required: the remote has no default branch"},
            )
        return default

    def _probe_dir(self) -> Path:
        """An empty bare repository to run `ls-remote` in: no ambient repository's config applies to it."""
        probe = self.root / "probe.git"
        if not (probe / "HEAD").exists():
            probe.parent.mkdir(parents=True, exist_ok=True)
            self._git(["init", "--quiet", "--bare", str(probe)], secret=None)  # idempotent, so a race is harmless
        return probe

    def _base_env(self) -> dict[str, str]:
        allowed = sorted(GIT_PROTOCOLS[s] for s in self.options.allowed_schemes if s in GIT_PROTOCOLS)
        config = [("protocol.allow", "never"), *((f"protocol.{name}.allow", "always") for name in allowed)]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            "LANG": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ASKPASS": "/bin/false",
            "SSH_ASKPASS": "/bin/false",
            "GIT_PROTOCOL_FROM_USER": "0",
        }
        known_hosts = str(self.options.known_hosts) if self.options.known_hosts else os.devnull
        env["GIT_SSH_COMMAND"] = (
            f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts} "
            "-o GlobalKnownHostsFile=/dev/null"
        )
        return _with_config(env, config)

    @contextmanager
    def _auth_env(self, credentials: Credentials | None) -> Iterator[tuple[dict[str, str], str | None]]:
        env = self._base_env()
        if credentials is None:
            yield env, None
        elif credentials.kind == "https_token":
            import base64

            user = credentials.username or "x-access-token"
            basic = base64.b64encode(f"{user}:{credentials.secret}".encode()).decode()
            yield _with_config(env, [("http.extraHeader", f"Authorization: Basic {basic}")]), credentials.secret
        else:
            with tempfile.TemporaryDirectory(prefix="ahop-ssh-") as directory:
                key = Path(directory) / "key"
                descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(descriptor, "w") as out:
                    out.write(credentials.secret.rstrip("\n") + "\n")
                env["GIT_SSH_COMMAND"] += f" -o IdentitiesOnly=yes -i {key}"
                yield env, credentials.secret

    def _git(self, args: list[str], *, secret: str | None, env: dict[str, str] | None = None, what: str = "git") -> str:
        try:
            result = self.pool.processes.run(["git", *args], env or self._base_env(), self.options.timeout)
        except GitTimedOut as exc:
            raise Upstream(f"{what}: {exc}") from None
        except ShuttingDown as exc:
            raise Unavailable(f"{what}: {exc}") from None
        if result.returncode != 0:
            message = result.stderr.strip() or result.stdout.strip()
            if secret:
                message = message.replace(secret, "***")
            raise Upstream(f"{what}: {message}")
        return result.stdout


def _with_config(env: dict[str, str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Add git config through GIT_CONFIG_COUNT/KEY/VALUE: nothing on the command line, nothing on disk."""
    merged = dict(env)
    start = int(merged.get("GIT_CONFIG_COUNT", "0"))
    for offset, (key, value) in enumerate(pairs):
        merged[f"GIT_CONFIG_KEY_{start + offset}"] = key
        merged[f"GIT_CONFIG_VALUE_{start + offset}"] = value
    merged["GIT_CONFIG_COUNT"] = str(start + len(pairs))
    return merged


def _parse_listing(listing: str) -> tuple[set[str], str | None]:
    """The ref names of a `git ls-remote --symref` listing, and the branch its HEAD points at (if it says)."""
    refs: set[str] = set()
    default = None
    for line in listing.splitlines():
        target, _, name = line.partition("\t")
        if target.startswith("ref: refs/heads/") and name == "HEAD":
            default = target.removeprefix("ref: refs/heads/")
        elif name:
            refs.add(name)
    return refs, default


__all__ = ["GitOptions", "Mirrors", "Remote", "check_branch", "scheme_of"]
