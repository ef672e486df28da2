"""`ahop db adopt-legacy` and `ahop template backfill`: taking over a database of the original system (seed §7).

Both talk to Postgres directly (AHOP_DATABASE_URL); the backfill also fetches Git (AHOP_DATA_DIR,
AHOP_GIT_ALLOWED_SCHEMES, AHOP_SECRET_KEYS) and writes blobs to S3 (AHOP_S3_*), like the API's import. The work
itself is `app.services.legacy`, whose docstring gives the legacy schema supported and the choices made.

Adoption is one transaction: it succeeds whole or changes nothing. The backfill commits template by template, so an
interrupted run loses nothing and a second run retries only what is still pending.
Exit codes: 0 ok, 1 some templates could not be imported (listed with the reason), 2 not a legacy database or
already adopted (or a bad --tenant), 3 the database or S3 unavailable.
"""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING, Any

import click

from ahop.console import echo_json, fail, load_settings
from ahop.exit_codes import EXIT_BAD_INPUT, EXIT_PROBLEMS, EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from app.services.backfill import Outcome
    from app.services.legacy import Adoption
    from app.settings import AppSettings


@click.command("adopt-legacy")
@click.option("--drop-legacy", is_flag=True, help='Drop schema "legacy", the archive an earlier adoption left.')
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def adopt_legacy(drop_legacy: bool, as_json: bool) -> None:
    """Bring a database of the original system under ahop's migrations, in one transaction.

    Moves the original tables into schema "legacy" (kept as an archive), creates ours, and copies tenants,
    repositories and templates; templates keep source_git_info and wait, pending, for `ahop template backfill`.
    """
    import asyncio

    from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, ProgrammingError

    from app.db.engine import create_engine
    from app.services import legacy
    from app.services.credentials import CredentialBox
    from app.settings import AppSettings

    settings = load_settings(AppSettings)

    async def run() -> Adoption | list[str]:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with engine.connect() as connection, connection.begin():
                if drop_legacy:
                    return await legacy.drop_legacy(connection)
                box = CredentialBox(settings.secret_key_list())
                return await legacy.adopt_legacy(connection, settings.allowed_schemes(), box)
        finally:
            await engine.dispose()

    try:
        done = asyncio.run(run())
    except (IntegrityError, DataError, ProgrammingError) as exc:  # something in the way of our schema or data
        fail(f"the database refused the adoption, nothing was changed: {exc.orig}", EXIT_BAD_INPUT)
    except (OSError, DBAPIError) as exc:
        fail(f"database unavailable (nothing was changed): {exc}", EXIT_UNAVAILABLE)
    if isinstance(done, list):
        if as_json:
            echo_json({"dropped": done}, indent=None)
        else:
            click.echo(f'dropped schema "legacy": {", ".join(done)}')
        return
    _show_adoption(done, as_json)


def _show_adoption(done: Adoption, as_json: bool) -> None:
    tenants = [{"legacy_id": t.legacy_id, "tenant_id": str(t.tenant_id), "name": t.name} for t in done.tenants]
    if as_json:
        report = {
            "revision": done.revision,
            "tenants": tenants,
            "repositories": done.repositories,
            "templates": done.templates,
            "archived": done.archived,
            "notes": done.notes,
        }
        echo_json(report, indent=None)
        return
    click.echo(
        f"adopted: schema at revision {done.revision}; {done.repositories} repositories, {done.templates} "
        f'templates pending import; original tables kept in schema "legacy" ({len(done.archived)})'
    )
    for tenant in tenants:
        click.echo(f"tenant {tenant['legacy_id']} -> {tenant['name']} {tenant['tenant_id']}")
    for note in done.notes:
        click.echo(f"note: {note}")
    click.echo("next: `ahop token create --tenant ID --role admin` for each tenant, then `ahop template backfill`")


def _backfill(settings: AppSettings, tenant_id: uuid.UUID | None) -> list[Outcome]:
    import asyncio

    from app.db.engine import create_engine, create_session_factory
    from app.git.mirror import Mirrors
    from app.services.backfill import Backfiller
    from app.services.credentials import CredentialBox
    from app.services.imports import Importer
    from app.services.tokens import get_tenant
    from storage.blobstore import BlobStore
    from storage.canonical import Limits

    async def run() -> list[Outcome]:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            with BlobStore(settings.s3_location()) as store:
                async with create_session_factory(engine)() as session:
                    if tenant_id is not None:
                        await get_tenant(session, tenant_id)
                        await session.rollback()
                    mirrors = Mirrors(settings.data_dir, settings.git_options())
                    limits = Limits(max_bytes=settings.max_template_bytes, max_files=settings.max_template_files)
                    importer = Importer(
                        session,
                        mirrors,
                        CredentialBox(settings.secret_key_list()),
                        store,
                        limits,
                        settings.data_dir / "tmp",
                    )
                    return await Backfiller(session, importer).run(tenant_id)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@click.command("backfill")
@click.option("--tenant", "tenant_id", type=click.UUID, help="Only this tenant's templates.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def backfill(tenant_id: uuid.UUID | None, as_json: bool) -> None:
    """Import the templates that `ahop db adopt-legacy` left pending.

    Each is imported from its recorded repository and path at the branch head, straight in the database and S3,
    not through the API. Exits 1 when some could not be imported; they stay pending, listed with the reason.
    """
    from sqlalchemy.exc import DBAPIError

    from app.errors import Unavailable
    from app.settings import AppSettings
    from storage.errors import StorageError

    settings = load_settings(AppSettings)
    try:
        outcomes = _backfill(settings, tenant_id)
    except Unavailable as exc:
        fail(f"{exc} (templates imported so far stay imported; run again to go on)", EXIT_UNAVAILABLE)
    except StorageError as exc:
        fail(f"S3 unavailable: {exc}", EXIT_UNAVAILABLE)
    except (OSError, DBAPIError) as exc:
        fail(f"database unavailable: {exc}", EXIT_UNAVAILABLE)
    imported = [_outcome(o) for o in outcomes if o.reason is None]
    failed = [_outcome(o) for o in outcomes if o.reason is not None]
    if as_json:
        echo_json({"imported": imported, "failed": failed}, indent=None)
    else:
        for row in imported:
            click.echo(
                f"imported  template {row['template_id']} {row['code']} (tenant {row['tenant_id']}) {row['digest']}"
            )
        for row in failed:
            click.echo(
                f"failed    template {row['template_id']} {row['code']} (tenant {row['tenant_id']}): {row['reason']}"
            )
        click.echo(f"{len(imported)} imported, {len(failed)} failed" + (" (still pending)" if failed else ""))
    if failed:
        sys.exit(EXIT_PROBLEMS)


def _outcome(outcome: Outcome) -> dict[str, Any]:
    row: dict[str, Any] = {
        "template_id": outcome.template_id,
        "tenant_id": str(outcome.tenant_id),
        "code": outcome.code,
    }
    row.update({"digest": outcome.digest} if outcome.reason is None else {"reason": outcome.reason})
    return row
