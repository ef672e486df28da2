"""The `ahop` command line. Each subcommand imports what it needs when it runs, so that `ahop worker` never
loads `app`, Litestar, SQLAlchemy or asyncpg.

Exit codes: 0 ok, 1 problems found, 2 bad input, 3 a service unavailable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn, TypeVar

import click

if TYPE_CHECKING:  # imported for annotations only: every subcommand imports what it runs when it runs
    from storage.canonical import Limits

EXIT_PROBLEMS = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3

SettingsT = TypeVar("SettingsT")


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"ahop: {message}", err=True)
    sys.exit(code)


def load_settings(factory: Callable[[], SettingsT]) -> SettingsT:
    """Build a settings object from the environment; a bad value exits 2 naming the variable."""
    from pydantic import ValidationError

    try:
        return factory()
    except ValidationError as exc:
        problems = "; ".join(
            f"AHOP_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        fail(f"invalid settings: {problems}", EXIT_BAD_INPUT)


def configure_logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """ahop: a content-addressed store for ops task templates, with thin workers."""


@cli.command()
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path(".ahop"),
    show_default=True,
    help="Where the local servers keep their data, logs and pid files.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="API port.")
def dev(state_dir: Path, port: int) -> None:
    """Run the whole system locally: Postgres, Redis and S3 (unless AHOP_* URLs name them), API and a worker."""
    import os

    from app.devstack.dev import DevOptions, run_dev
    from app.devstack.errors import StackError

    try:
        code = run_dev(DevOptions(state_dir=state_dir, port=port), os.environ, sys.stdout)
    except StackError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    sys.exit(code)


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default: AHOP_HOST or 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: AHOP_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    """Serve the HTTP API."""
    from app.serve import serve as run_server
    from app.settings import AppSettings

    configure_logging()
    settings = load_settings(AppSettings)
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    run_server(settings.model_copy(update=overrides))


@cli.command()
def worker() -> None:
    """Run a worker: takes jobs of its pool from Redis, fetches templates from S3. Needs no database."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from storage.errors import StorageError
    from worker.main import run_worker
    from worker.settings import WorkerSettings

    configure_logging()
    settings = load_settings(WorkerSettings)
    try:
        run_worker(settings)
    except StorageError as exc:
        fail(f"S3 unavailable: {exc}", EXIT_UNAVAILABLE)
    except (RedisConnectionError, OSError) as exc:
        fail(f"Redis unavailable at {settings.redis_url}: {exc}", EXIT_UNAVAILABLE)


@cli.command()
@click.option("--repo", type=click.Path(path_type=Path), help="A Git repository (bare or not); read from its objects.")
@click.option("--rev", default="HEAD", show_default=True, help="Commit-ish to read with --repo.")
@click.option("--path", "tree_path", default="", help="Directory or file inside the repository ('' or '.': its root).")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="A directory (or file) on disk instead.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the .tar.zst blob here.")
@click.option("--level", type=click.IntRange(1, 22), default=3, show_default=True, help="zstd level.")
@click.option("--max-bytes", type=click.IntRange(min=0), default=1 << 30, show_default=True)
@click.option("--max-files", type=click.IntRange(min=0), default=100_000, show_default=True)
def snapshot(repo: Path | None, rev: str, tree_path: str, directory: Path | None, out: Path | None, level: int,
             max_bytes: int, max_files: int) -> None:  # fmt: skip
    """Pack a tree into its canonical blob and print one JSON object: digest, sizes, files, tree_id, commit.

    Offline: needs no service. `zstd -dc BLOB | sha256sum` prints the digest.
    """
    import json

    from storage.canonical import Limits
    from storage.errors import StorageError

    if (repo is None) == (directory is None):
        fail("give exactly one of --repo PATH or --dir DIR", EXIT_BAD_INPUT)
    limits = Limits(max_bytes=max_bytes, max_files=max_files)
    try:
        result = _write_snapshot(repo, rev, tree_path, directory, out, level, limits)
    except StorageError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    click.echo(json.dumps(result))


def _write_snapshot(repo: Path | None, rev: str, tree_path: str, directory: Path | None, out: Path | None,
                    level: int, limits: Limits) -> dict[str, object]:  # fmt: skip
    """Pack into a temporary file beside `out` and rename it into place: never a half-written blob."""
    import contextlib
    import os
    import tempfile

    from storage.snapshot import snapshot_directory, snapshot_git

    def pack(sink: BinaryIO | None) -> dict[str, object]:
        if directory is not None:
            return snapshot_directory(directory, sink, level=level, limits=limits).to_json()
        import git

        try:
            repository = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            fail(f"{repo} is not a Git repository", EXIT_BAD_INPUT)
        with repository:
            return snapshot_git(repository, rev, tree_path, sink, level=level, limits=limits).to_json()

    if out is None:
        return pack(None)
    descriptor, staging = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
    try:
        with os.fdopen(descriptor, "wb") as sink:
            result = pack(sink)
        os.replace(staging, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        raise
    return result


@cli.command()
@click.argument("blob", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--digest", required=True, help="The expected digest, sha256:<64 hex>.")
@click.option("--tar-size", type=click.IntRange(min=0), help="The recorded tar size (caps decompression).")
@click.option("--zst-sha256", help="The recorded sha256 of the compressed bytes, checked first.")
def unpack(blob: Path, dest: Path, digest: str, tar_size: int | None, zst_sha256: str | None) -> None:
    """Verified unpack of a local blob into the new directory DEST (exit 1 when the blob is not what it should be)."""
    import json

    from storage.digest import Digest
    from storage.errors import IntegrityError, InvalidDigest
    from storage.unpack import unpack_file

    try:
        expected = Digest.parse(digest)
        result = unpack_file(blob, dest, expected, tar_size=tar_size, zst_sha256=zst_sha256)
    except InvalidDigest as exc:
        fail(f"--digest: {exc}", EXIT_BAD_INPUT)
    except FileExistsError as exc:
        fail(f"{exc}; unpack needs a new directory", EXIT_BAD_INPUT)
    except IntegrityError as exc:
        fail(f"refused: {exc}", EXIT_PROBLEMS)
    click.echo(json.dumps({"digest": str(expected), "files": result.files, "tar_size": result.tar_size,
                           "dest": str(dest)}))  # fmt: skip


@cli.group()
def db() -> None:
    """Database schema migrations."""


def _migrate(action: Callable[[str], None]) -> None:
    from sqlalchemy.exc import DBAPIError

    from app.settings import AppSettings

    settings = load_settings(AppSettings)
    try:
        action(settings.database_url)
    except (OSError, DBAPIError) as exc:
        fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)


@db.command()
@click.argument("revision", default="head")
def upgrade(revision: str) -> None:
    """Upgrade the schema to REVISION (default: the latest)."""
    from app.db import migrate

    _migrate(lambda url: migrate.upgrade(url, revision))


@db.command()
@click.argument("revision")
def downgrade(revision: str) -> None:
    """Downgrade the schema to REVISION (`base` removes every table)."""
    from app.db import migrate

    _migrate(lambda url: migrate.downgrade(url, revision))


def main() -> None:
    cli(prog_name="ahop")
