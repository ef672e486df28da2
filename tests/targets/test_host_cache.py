"""Template content in the caches of real hosts, by digest: delivered once, checked on every use, replaced when
tampered with, copied privately for runs and removed after them.

What lands on a host is read back independently of `targets.host_cache`: over SFTP and hashed here, or with
`stat` on the host; the commands each call runs are counted in the host's sshd log (`Starting session`).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
import zstandard

from storage.digest import Digest
from storage.errors import InvalidDigest
from storage.snapshot import pack
from storage.trees import DirectoryTree
from targets.connect import Login, Target, connect
from targets.errors import DeliveryFailed, NotCached, Unreachable
from targets.host_cache import Delivery, ensure_content, private_copy, remove_run
from tests.support.ssh_hosts import TargetHost
from tests.support.waiting import until

TIMEOUT = 30.0


@dataclass(frozen=True)
class Template:
    tree: Path
    tar: Path
    digest: Digest


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A template tree (subdirectories, an executable entry, a symlink) packed with storage's pack: its
    canonical tar (the blob decompressed) and digest."""
    base = tmp_path_factory.mktemp("template")
    tree = base / "tree"
    (tree / "lib").mkdir(parents=True)
    (tree / "config").mkdir()
    (tree / "run.sh").write_text('#!/bin/sh\n. "$(dirname "$0")/lib/common.sh"\ngreet "$(cat current.ini)"\n')
    (tree / "run.sh").chmod(0o755)
    (tree / "lib" / "common.sh").write_text('greet() { echo "hello from $1"; }\n')
    (tree / "config" / "settings.ini").write_text("[disk]\nthreshold = 90\n")
    (tree / "current.ini").symlink_to("config/settings.ini")
    blob = io.BytesIO()
    snapshot = pack(DirectoryTree(tree), blob, what=str(tree))
    tar = base / "template.tar"
    tar.write_bytes(zstandard.ZstdDecompressor().decompress(blob.getvalue(), max_output_size=snapshot.tar_size))
    assert hashlib.sha256(tar.read_bytes()).hexdigest() == snapshot.digest.hex
    return Template(tree, tar, snapshot.digest)


@asynccontextmanager
async def connected(host: TargetHost) -> AsyncIterator[asyncssh.SSHClientConnection]:
    target = Target(host.name, host.address, host.port, host.user, tuple(host.host_keys))
    async with await connect(target, Login(private_key=host.client_key.read_text()), timeout=TIMEOUT) as connection:
        yield connection


def fresh_root() -> tuple[str, str]:
    """A cache root of the test's own under the user's home: as given to host_cache, and as SFTP sees it."""
    name = f"cache-{secrets.token_hex(4)}"
    return f"~/{name}", name


async def remote_sha256(connection: asyncssh.SSHClientConnection, path: str) -> str:
    """The sha256 of a host's file, read over SFTP and hashed here."""
    async with connection.start_sftp_client() as sftp, sftp.open(path, "rb") as remote:
        data = await remote.read()
    assert isinstance(data, bytes)
    return hashlib.sha256(data).hexdigest()


async def mode_of(connection: asyncssh.SSHClientConnection, path: str) -> int:
    async with connection.start_sftp_client() as sftp:
        permissions = (await sftp.lstat(path)).permissions
    assert permissions is not None
    return stat.S_IMODE(permissions)


async def names_in(connection: asyncssh.SSHClientConnection, path: str) -> list[str]:
    async with connection.start_sftp_client() as sftp:
        if not await sftp.exists(path):
            return []
        return sorted(name for name in await sftp.listdir(path) if name not in (".", ".."))


async def shell(connection: asyncssh.SSHClientConnection, command: str) -> str:
    result = await connection.run(command, check=True)
    assert isinstance(result.stdout, str)
    return result.stdout.strip()


def commands_run(host: TargetHost) -> int:
    """How many commands (sessions) the host's sshd has started so far."""
    return host.log.read_text().count("Starting session: command")


async def test_content_reaches_three_hosts_at_once_each_copy_its_digest_in_the_default_root(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    async def deliver(host: TargetHost) -> tuple[Delivery, str, list[int], list[str]]:
        async with connected(host) as connection:
            delivery = await ensure_content(connection, str(template.digest), template.tar)
            cached = f".cache/ahop/sha256/{template.digest.hex}"
            modes = [await mode_of(connection, path) for path in (".cache/ahop", ".cache/ahop/sha256", cached)]
            return (
                delivery,
                await remote_sha256(connection, cached),
                modes,
                await names_in(connection, ".cache/ahop/sha256"),
            )

    results = await asyncio.gather(*(deliver(host) for host in ssh_hosts))

    for delivery, sha256, modes, names in results:
        assert delivery == Delivery(sent=True, replaced=False, bytes_sent=template.tar.stat().st_size)
        assert sha256 == template.digest.hex
        assert modes == [0o700, 0o700, 0o400]
        assert names == [template.digest.hex]  # nothing left on its way in


async def test_a_warm_cache_sends_nothing_and_costs_one_command(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    host = ssh_hosts[1]
    root, seen_as = fresh_root()
    cached = f"{seen_as}/sha256/{template.digest.hex}"
    async with connected(host) as connection:
        assert (await ensure_content(connection, template.digest, template.tar, root=root)).sent is True
        before = await shell(connection, f"stat -c '%i %Y %Z' {cached}")
        commands_before = commands_run(host)

        again = await ensure_content(connection, template.digest, template.tar, root=root)

        assert commands_run(host) == commands_before + 1
        assert again == Delivery(sent=False, replaced=False, bytes_sent=0)
        assert await shell(connection, f"stat -c '%i %Y %Z' {cached}") == before


async def test_a_tampered_copy_is_detected_and_replaced(ssh_hosts: list[TargetHost], template: Template) -> None:
    host = ssh_hosts[2]
    root, seen_as = fresh_root()
    cached = f"{seen_as}/sha256/{template.digest.hex}"
    async with connected(host) as connection:
        await ensure_content(connection, template.digest, template.tar, root=root)
        await shell(connection, f"chmod u+w {cached} && printf x >> {cached}")
        assert await remote_sha256(connection, cached) != template.digest.hex

        repaired = await ensure_content(connection, template.digest, template.tar, root=root)

        assert repaired == Delivery(sent=True, replaced=True, bytes_sent=template.tar.stat().st_size)
        assert await remote_sha256(connection, cached) == template.digest.hex
        assert await mode_of(connection, cached) == 0o400
        assert await names_in(connection, f"{seen_as}/sha256") == [template.digest.hex]


async def test_a_private_copy_packs_back_to_the_digest_on_each_host_and_removing_it_leaves_nothing(
    ssh_hosts: list[TargetHost], template: Template, tmp_path: Path
) -> None:
    root, seen_as = fresh_root()

    async def copy_back(host: TargetHost) -> tuple[str, int, Digest, list[str]]:
        async with connected(host) as connection:
            await ensure_content(connection, template.digest, template.tar, root=root)
            run = await private_copy(connection, template.digest, root=root)
            mode = await mode_of(connection, run)
            fetched = tmp_path / host.name
            async with connection.start_sftp_client() as sftp:
                await sftp.get(run, fetched, recurse=True, preserve=True)
            digest = pack(DirectoryTree(fetched), None, what=str(fetched)).digest
            assert (fetched / "current.ini").readlink() == Path("config/settings.ini")
            assert (fetched / "run.sh").stat().st_mode & 0o100
            assert await shell(connection, f"cd {run} && ./run.sh") == "hello from [disk]\nthreshold = 90"
            await remove_run(connection, run, root=root)
            return run, mode, digest, await names_in(connection, f"{seen_as}/runs")

    results = await asyncio.gather(*(copy_back(host) for host in ssh_hosts))

    for host, (run, mode, digest, left) in zip(ssh_hosts, results, strict=True):
        assert run.startswith(f"{host.home}/{seen_as}/runs/")
        assert mode == 0o700
        assert digest == template.digest
        assert left == []


async def test_a_digest_of_the_wrong_form_is_refused_before_any_command(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    host = ssh_hosts[0]
    root, seen_as = fresh_root()
    wrong_forms = [
        template.digest.hex,
        f"sha256:{template.digest.hex.upper()}",
        f"sha256:{template.digest.hex[:63]}",
        f"sha512:{template.digest.hex}",
        "sha256:../../../../etc/passwd",
        f"sha256:{template.digest.hex[:60]}$(x)",
    ]
    async with connected(host) as connection:
        commands_before = commands_run(host)
        for digest in wrong_forms:
            with pytest.raises(InvalidDigest, match=r"sha256:<64 lowercase hex>"):
                await ensure_content(connection, digest, template.tar, root=root)
            with pytest.raises(InvalidDigest):
                await private_copy(connection, digest, root=root)

        assert commands_run(host) == commands_before
        assert await names_in(connection, seen_as) == []


async def test_a_root_that_is_not_absolute_or_under_the_home_is_refused_before_any_command(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    host = ssh_hosts[0]
    async with connected(host) as connection:
        commands_before = commands_run(host)
        for root in ["cache", "~root/cache", "~/cache/../..", "/", "", "./cache"]:
            with pytest.raises(ValueError, match="absolute path or one under the login user's home"):
                await ensure_content(connection, template.digest, template.tar, root=root)

        assert commands_run(host) == commands_before


async def test_roots_with_shell_characters_are_taken_literally(ssh_hosts: list[TargetHost], template: Template) -> None:
    host = ssh_hosts[1]
    odd = f"odd dir {secrets.token_hex(2)}/it's $HOME; `true` *"
    async with connected(host) as connection:
        for root, seen_as in [(f"~/{odd}", odd), (f"{host.home}/{odd} absolute/", f"{odd} absolute")]:
            delivery = await ensure_content(connection, template.digest, template.tar, root=root)
            run = await private_copy(connection, template.digest, root=root)

            assert delivery.sent is True
            assert await remote_sha256(connection, f"{seen_as}/sha256/{template.digest.hex}") == template.digest.hex
            assert run.startswith(f"{host.home}/{seen_as}/runs/")
            await remove_run(connection, run, root=root)
            assert await names_in(connection, f"{seen_as}/runs") == []


async def test_a_local_tar_that_is_not_the_digest_is_named_and_nothing_is_stored(
    ssh_hosts: list[TargetHost], template: Template, tmp_path: Path
) -> None:
    host = ssh_hosts[2]
    root, seen_as = fresh_root()
    wrong = tmp_path / "other.tar"
    wrong.write_bytes(template.tar.read_bytes() + b"\0" * 512)
    async with connected(host) as connection:
        with pytest.raises(DeliveryFailed) as failed:
            await ensure_content(connection, template.digest, wrong, root=root)

        assert f"the local tar {wrong} is not {template.digest}" in str(failed.value)
        assert f"its sha256 is {hashlib.sha256(wrong.read_bytes()).hexdigest()}" in str(failed.value)
        assert f"{host.name} ({host.address}:{host.port})" in str(failed.value)
        assert await names_in(connection, f"{seen_as}/sha256") == []


async def test_a_private_copy_of_content_not_cached_intact_is_refused_leaving_no_run(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    host = ssh_hosts[0]
    root, seen_as = fresh_root()
    cached = f"{seen_as}/sha256/{template.digest.hex}"
    async with connected(host) as connection:
        with pytest.raises(NotCached, match=f"holds no copy of {template.digest}"):
            await private_copy(connection, template.digest, root=root)
        await ensure_content(connection, template.digest, template.tar, root=root)
        await shell(connection, f"chmod u+w {cached} && printf x >> {cached}")
        tampered = await remote_sha256(connection, cached)

        with pytest.raises(NotCached, match=f"a copy whose sha256 is {tampered} of {template.digest}"):
            await private_copy(connection, template.digest, root=root)

        assert await names_in(connection, f"{seen_as}/runs") == []


async def test_remove_run_removes_only_runs_even_ones_made_read_only(
    ssh_hosts: list[TargetHost], template: Template
) -> None:
    host = ssh_hosts[1]
    root, seen_as = fresh_root()
    async with connected(host) as connection:
        await ensure_content(connection, template.digest, template.tar, root=root)
        run = await private_copy(connection, template.digest, root=root)
        await shell(connection, f"chmod -R a-w {run}")
        sha256_dir = f"{host.home}/{seen_as}/sha256"
        others = [
            sha256_dir,
            f"{host.home}/{seen_as}/runs",
            f"{run}/../../sha256",
            f"{run}/",
            f"{host.home}/elsewhere/runs/{run.rsplit('/', 1)[1]}",
            run.rsplit("/", 1)[1],
        ]
        for path in others:
            with pytest.raises(ValueError, match="is not a run directory"):
                await remove_run(connection, path, root=root)
        assert await names_in(connection, f"{seen_as}/runs") == [run.rsplit("/", 1)[1]]

        await remove_run(connection, run, root=root)
        await remove_run(connection, run, root=root)  # gone already: nothing to do

        assert await names_in(connection, f"{seen_as}/runs") == []
        assert await names_in(connection, f"{seen_as}/sha256") == [template.digest.hex]


async def test_a_host_gone_during_use_is_unreachable_named_by_its_inventory_name(
    ssh_host: TargetHost, template: Template
) -> None:
    async with connected(ssh_host) as connection:
        ssh_host.stop()
        await until(lambda: _closed(connection), "the connection to the stopped host to close")

        with pytest.raises(Unreachable, match="the connection failed checking its cached") as lost:
            await ensure_content(connection, template.digest, template.tar)

    assert f"{ssh_host.name} ({ssh_host.address}:{ssh_host.port})" in str(lost.value)


async def _closed(connection: asyncssh.SSHClientConnection) -> bool:
    return connection.is_closed()
