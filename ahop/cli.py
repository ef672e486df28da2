"""The `ahop` command line. Each subcommand imports what it needs when it runs, so that `ahop worker` never
loads `app`, Litestar, SQLAlchemy or asyncpg.

Exit codes (one map for every command, `ahop.exit_codes`): 0 ok, 1 problems found or the script failed, 2 bad
input, 3 a service unavailable, 4 another GC is running, 124 the task timed out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import click

from ahop.blob_commands import snapshot, unpack
from ahop.client_commands import repo, template, worker_list
from ahop.console import configure_logging, echo_json, fail, load_settings, run
from ahop.exit_codes import EXIT_PROBLEMS, EXIT_UNAVAILABLE
from ahop.inventory_commands import credential, host
from ahop.legacy_commands import adopt_legacy, backfill
from ahop.maintenance_commands import gc, verify
from ahop.task_commands import task
from ahop.template_commands import template_delete, template_update, template_use, template_versions
from ahop.tenant_commands import tenant, token


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ahop", prog_name="ahop", message="%(prog)s %(version)s")
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
@click.option(
    "--demo-hosts",
    type=click.IntRange(0, 200),
    default=0,
    show_default=True,
    help="Start this many local SSH hosts (OpenSSH sshd) and add them to the inventory, label 'demo'.",
)
def dev(state_dir: Path, port: int, demo_hosts: int) -> None:
    """Run the whole system locally: Postgres, Redis and S3 (unless AHOP_* URLs name them), API and a worker."""
    import os

    from app.devstack.dev import DevOptions, run_dev
    from app.devstack.errors import StackError

    try:
        code = run_dev(DevOptions(state_dir=state_dir, port=port, demo_hosts=demo_hosts), os.environ, sys.stdout)
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


@cli.group(invoke_without_command=True)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker: takes jobs of its pool from Redis, fetches templates from S3. Needs no database."""
    if ctx.invoked_subcommand is not None:
        return
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
        where = urlsplit(settings.redis_url)  # where, never who: no password in the message
        fail(f"Redis unavailable at {where.hostname}:{where.port or 6379}{where.path}: {exc}", EXIT_UNAVAILABLE)


@worker.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_store(as_json: bool) -> None:
    """Re-pack every entry of this host's store; remove those whose digest no longer matches (exit 1 if any)."""
    from storage.blobstore import BlobStore
    from worker import store_verify
    from worker.settings import WorkerSettings
    from worker.store import LocalStore

    settings = load_settings(WorkerSettings)
    report = store_verify.verify_store(LocalStore(settings.worker_root, BlobStore(settings.s3_location())))
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(f"{len(report.ok)} entries ok in {settings.worker_root / 'store'}")
        for digest in report.removed:
            click.echo(f"removed {digest}: its files no longer pack to its digest")
        for digest in report.in_use:
            click.echo(f"kept {digest}: it does not match its digest but a task is using it; verify again later")
        for path in report.junk:
            click.echo(f"removed {path}: not a store entry")
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


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


worker.add_command(worker_list)
cli.add_command(snapshot)
cli.add_command(unpack)
cli.add_command(tenant)
cli.add_command(token)
cli.add_command(repo)
cli.add_command(template)
cli.add_command(host)
cli.add_command(credential)
cli.add_command(task)
cli.add_command(gc)
cli.add_command(verify)
db.add_command(adopt_legacy)
template.add_command(backfill)
for command in (template_update, template_delete, template_versions, template_use):
    template.add_command(command)


def main() -> None:
    """The `ahop` console script."""
    run(cli, "ahop")
