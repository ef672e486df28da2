"""Bringing a database of the original system under our schema (seed §7), then importing its templates.

The legacy schema supported is the original Go/GORM system's, minimal: what the seed's migration reads.

    task_templates    id, tenant_id, code, name, script_type, entry_file,
                      repository_id REFERENCES git_repositories        (required)
                      description, parameters (json, jsonb or text), timeout, created_at, updated_at   (optional)
    git_repositories  id, tenant_id, name, url, branch                   (required)
                      credential_id, created_at, updated_at             (optional)
    tenants           id, code, name                                    (optional: without it, tenants are named
                                                                         legacy-<id>)

`entry_file` is a path from the repository root, as the original system ran it from its clone. Other columns and
tables are left alone.

Adoption (`adopt_legacy`) is a one-off, all-or-nothing data migration in the caller's single transaction:
1. refuse unless the shape is legacy (`task_templates.repository_id`, no `alembic_version`); a second run is told
   that the database is already adopted;
2. move every table, view and free sequence of `public` into schema `legacy`, untouched: the original system's
   other tables (tasks, hosts, …) would otherwise collide with tables our later migrations create. They stay there
   as an archive, for audit and rollback, until `drop_legacy` (`ahop db adopt-legacy --drop-legacy`);
3. run our migrations on the same connection (Alembic inside an external transaction commits nothing itself);
4. copy. Tenants get new UUIDs and no tokens; name = the legacy code, else its name, made to fit
   `[a-z0-9][a-z0-9_.-]*`. Repositories keep their ids (identity sequences are reset past them) but not the legacy
   credentials (sealed with the old system's key); credentials written into a URL are taken out of it (our API
   shows URLs) and, for http(s), sealed as the repository's https_token credentials when AHOP_SECRET_KEYS is set.
   Templates keep their ids, names, descriptions and timeouts (missing or non-positive: the old default, 300 s; at
   most 7 days); codes are made to fit our rule; `import_state = 'pending'` with no version; `source_git_info` is
   the seed's join: repository_id, repository_name, repository_url, branch, original_path = the legacy entry_file,
   created_at = the template's creation in ISO 8601 UTC (`…Z`; a timestamp without time zone is read as UTC).
   Under the key `legacy` it also keeps what the backfill needs and our row has no column for: the legacy code,
   entry_file, script_type and parameters (as stored).
So the templates the system uses have no `repository_id` column and no foreign key to repositories: deleting a
repository no longer touches them (DESIGN §3). Renamed codes, dropped credentials and URLs our rules refuse are
returned as notes for the operator.

Backfill (`Backfiller`) imports each pending template through `Importer` (so the blob order of DESIGN §6 holds),
one transaction per template: fetch the recorded repository (it must still exist in the template's tenant), resolve
`original_path` at the branch head; a file is imported alone (entry file = its name), a directory with the legacy
entry file relative to it (an Ansible directory without one: the first of the scan's playbook names). The legacy
parameters are converted to our schema (`app.scan.params`; datetime/date/time become text; the legacy `placeholder`
and `validation` are dropped, they stay under `legacy`). The template gets version 1, `import_state = 'imported'`
and `source_git_info` = the import's snapshot (with commit_sha and tree_id) plus the `legacy` record. What cannot
be imported stays pending, with the reason reported; a later run retries it (an operator may first fix the
repository through the API, or point `source_git_info.original_path` elsewhere, e.g. at the script's directory).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

import migrations
from app.db.models import Base, GitRepository, TaskTemplate, Tenant
from app.errors import Conflict, InvalidInput
from app.git.urls import check_remote_url
from app.services.credentials import CredentialBox, Credentials

LEGACY_SCHEMA = "legacy"
REQUIRED = {
    "task_templates": ("id", "tenant_id", "code", "name", "script_type", "entry_file", "repository_id"),
    "git_repositories": ("id", "tenant_id", "name", "url", "branch"),
}
OPTIONAL = {
    "task_templates": ("description", "parameters", "timeout", "created_at", "updated_at"),
    "git_repositories": ("credential_id", "created_at", "updated_at"),
    "tenants": ("code", "name"),
}
LEGACY_TIMEOUT = 300
MAX_TIMEOUT = 7 * 86400
TIME_TYPES = frozenset({"datetime", "date", "time"})
# Tables, partitioned tables, views, materialized views, foreign tables and sequences that no column owns (owned
# ones move with their table); extension members stay.
_MOVABLE = """
SELECT c.relname::text AS name, c.relkind::text AS kind FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype IN ('a', 'i', 'e'))
ORDER BY c.relname
"""
_ALTER = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "S": "SEQUENCE"}


def iso_utc(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC with `Z`, as every timestamp of ours; a naive time is taken to be UTC."""
    if moment is None:
        return None
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AdoptedTenant:
    legacy_id: int
    tenant_id: uuid.UUID
    name: str


@dataclass(frozen=True)
class Adoption:
    revision: str
    tenants: list[AdoptedTenant]
    repositories: int
    templates: int
    archived: list[str]
    """The relations moved into schema `legacy`."""
    notes: list[str] = field(default_factory=list)
    """What an operator should know or do: renamed codes, credentials to set again, URLs we would refuse."""


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_TENANT_UNFIT = re.compile(r"[^a-z0-9_.-]+")
_CODE_UNFIT = re.compile(r"[^A-Za-z0-9_.-]+")


def _unique(name: str, taken: set[str], limit: int, legacy_id: int) -> str:
    """`name`, or with `-<legacy id>` appended when taken; joins `taken`."""
    if name in taken:
        name = f"{name[: limit - len(str(legacy_id)) - 1]}-{legacy_id}"
    taken.add(name)
    return name


def _tenant_name(row: dict[str, Any], taken: set[str]) -> str:
    fitted = (
        _TENANT_UNFIT.sub("-", str(raw or "").strip().lower()).strip("_.-")[:100] for raw in (row["code"], row["name"])
    )
    return _unique(next((name for name in fitted if name), f"legacy-{row['id']}"), taken, 100, row["id"])


async def _rows(connection: AsyncConnection, table: str, columns: dict[str, set[str]]) -> list[dict[str, Any]]:
    present = columns.get(table, set())
    wanted = [*REQUIRED.get(table, ("id",)), *OPTIONAL[table]]
    fields = ", ".join(
        "NULL AS " + name if name not in present else f"{name}::text AS {name}" if name == "parameters" else name
        for name in wanted
    )
    result = await connection.execute(text(f"SELECT {fields} FROM {LEGACY_SCHEMA}.{table} ORDER BY id"))
    return [dict(row) for row in result.mappings()]


async def _columns(connection: AsyncConnection, schema: str) -> dict[str, set[str]]:
    result = await connection.execute(
        text("SELECT table_name::text, column_name::text FROM information_schema.columns WHERE table_schema = :s"),
        {"s": schema},
    )
    found: dict[str, set[str]] = {}
    for table, column in result:
        found.setdefault(table, set()).add(column)
    return found


async def _schema_exists(connection: AsyncConnection) -> bool:
    query = text("SELECT 1 FROM pg_namespace WHERE nspname = :s")
    return await connection.scalar(query, {"s": LEGACY_SCHEMA}) is not None


async def _revision(connection: AsyncConnection) -> str | None:
    if await connection.scalar(text("SELECT to_regclass('public.alembic_version')::text")) is None:
        return None
    revision = await connection.scalar(text("SELECT version_num FROM public.alembic_version"))
    return str(revision) if revision is not None else None


async def _check_shape(connection: AsyncConnection) -> dict[str, set[str]]:
    revision = await _revision(connection)
    if revision is not None:
        where = f'; the original tables are in schema "{LEGACY_SCHEMA}"' if await _schema_exists(connection) else ""
        raise Conflict(f"the database is already adopted: it is under ahop's migrations (revision {revision}){where}")
    columns = await _columns(connection, "public")
    if "repository_id" not in columns.get("task_templates", set()):
        raise InvalidInput(
            "not a database of the original system: it has no task_templates.repository_id "
            "(an empty database is set up with `ahop db upgrade`)"
        )
    missing = [
        f"{table}.{name}"
        for table, names in REQUIRED.items()
        for name in names
        if name not in columns.get(table, set())
    ]
    if missing:
        raise InvalidInput(f"the legacy schema lacks {', '.join(missing)}; see `app.services.legacy` for the shape")
    if await _schema_exists(connection):
        raise Conflict(f'a schema named "{LEGACY_SCHEMA}" exists already; rename or drop it, then adopt again')
    return columns


def _upgrade_schema(connection: Connection) -> None:
    """Our migrations, on this connection and inside its transaction (Alembic commits nothing it did not begin)."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    script = ScriptDirectory.from_config(config)

    def steps(revision: Any, context: Any) -> Any:
        return script._upgrade_revs("head", revision)

    with EnvironmentContext(config, script, fn=steps, destination_rev="head") as environment:
        environment.configure(connection=connection, target_metadata=Base.metadata)
        with environment.begin_transaction():
            environment.run_migrations()


async def adopt_legacy(connection: AsyncConnection, allowed_schemes: frozenset[str], box: CredentialBox) -> Adoption:
    """Adopt the legacy database on `connection`, which must be in a transaction (see the module docstring)."""
    columns = await _check_shape(connection)
    await connection.execute(text(f"CREATE SCHEMA {LEGACY_SCHEMA}"))
    archived = []
    for name, kind in (await connection.execute(text(_MOVABLE))).all():
        await connection.execute(text(f"ALTER {_ALTER[kind]} public.{_quoted(name)} SET SCHEMA {LEGACY_SCHEMA}"))
        archived.append(name)
    await connection.run_sync(_upgrade_schema)
    tenants = await _rows(connection, "tenants", columns) if "id" in columns.get("tenants", set()) else []
    repositories = await _rows(connection, "git_repositories", columns)
    templates = await _rows(connection, "task_templates", columns)
    if orphans := [
        f"{kind} {row['id']}"
        for kind, rows in (("repository", repositories), ("template", templates))
        for row in rows
        if row["tenant_id"] is None
    ]:
        raise InvalidInput(f"rows without a tenant_id cannot be adopted: {', '.join(orphans)}; give them one first")
    notes: list[str] = []
    adopted = await _copy_tenants(connection, tenants, {row["tenant_id"] for row in [*repositories, *templates]}, notes)
    tenant_of = {tenant.legacy_id: tenant.tenant_id for tenant in adopted}
    copied = await _copy_repositories(connection, repositories, tenant_of, allowed_schemes, box, notes)
    pending = await _copy_templates(connection, templates, {row["id"]: row for row in repositories}, tenant_of, notes)
    for table in ("git_repositories", "task_templates"):  # the next id the identity hands out follows ours
        await connection.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), coalesce(max(id), 0) + 1, false) FROM {table}"
            )
        )
    return Adoption(await _revision(connection) or "", adopted, copied, pending, archived, notes)


async def _copy_tenants(
    connection: AsyncConnection, rows: list[dict[str, Any]], used: set[int], notes: list[str]
) -> list[AdoptedTenant]:
    known = {row["id"]: row for row in rows}
    for legacy_id in sorted(used - known.keys()):
        known[legacy_id] = {"id": legacy_id, "code": None, "name": None}
        notes.append(f"tenant {legacy_id} is not in the legacy tenants table; it is created as legacy-{legacy_id}")
    taken: set[str] = set()
    adopted = [
        AdoptedTenant(legacy_id, uuid.uuid4(), _tenant_name(known[legacy_id], taken)) for legacy_id in sorted(known)
    ]
    if adopted:
        await connection.execute(insert(Tenant), [{"id": t.tenant_id, "name": t.name} for t in adopted])
    return adopted


def _without_credentials(url: str) -> tuple[str, Credentials | None] | None:
    """For a URL that carries credentials (which ours never do, as the API shows URLs): the URL without them (an ssh
    user stays) and, for http(s), the https token they make; None for any other URL."""
    parts = urlsplit(url) if "://" in url else None
    scheme = parts.scheme.lower() if parts else ""
    if parts is None or scheme not in ("http", "https", "ssh") or "@" not in parts.netloc:
        return None
    host = parts.netloc.rpartition("@")[2]
    if scheme == "ssh":
        return None if parts.password is None else (urlunsplit(parts._replace(netloc=f"{parts.username}@{host}")), None)
    secret = parts.password if parts.password is not None else parts.username or ""
    username = (parts.username or "") if parts.password is not None else ""
    return urlunsplit(parts._replace(netloc=host)), Credentials("https_token", unquote(secret), unquote(username))


async def _copy_repositories(
    connection: AsyncConnection,
    rows: list[dict[str, Any]],
    tenant_of: dict[int, uuid.UUID],
    allowed_schemes: frozenset[str],
    box: CredentialBox,
    notes: list[str],
) -> int:
    names: dict[int, set[str]] = {}
    now = datetime.now(UTC)
    copied = []
    for row in rows:
        url, auth_kind, sealed = row["url"] or "", "none", None
        if (split := _without_credentials(url)) is not None:
            url, credentials = split
            try:
                sealed, auth_kind = (box.seal(credentials), credentials.kind) if credentials else (None, "none")
                kept = "sealed as its https_token credentials" if credentials else "dropped (set an ssh key instead)"
            except InvalidInput:  # no AHOP_SECRET_KEYS
                kept = "dropped: this server has no AHOP_SECRET_KEYS; set them through the API"
            notes.append(f"repository {row['id']}: the credentials in its url are {kept}")
        taken = names.setdefault(row["tenant_id"], set())
        name = _unique(str(row["name"] or "").strip()[:200] or f"repository-{row['id']}", taken, 200, row["id"])
        if name != row["name"]:
            notes.append(f"repository {row['id']} ({row['name']!r}) is now named {name!r}")
        if row["credential_id"] is not None:
            notes.append(
                f"repository {row['id']} used legacy credential {row['credential_id']}, which is not "
                "carried over: set its credentials through the API before the backfill"
            )
        try:
            check_remote_url(url, allowed_schemes)
        except InvalidInput as exc:
            notes.append(f"repository {row['id']}: {exc}; correct it through the API before the backfill")
        copied.append(
            {
                "id": row["id"],
                "tenant_id": tenant_of[row["tenant_id"]],
                "name": name,
                "url": url,
                "branch": row["branch"] or "main",
                "auth_kind": auth_kind,
                "credentials": sealed,
                "created_at": row["created_at"] or now,
                "updated_at": row["updated_at"] or now,
            }
        )
    if copied:
        await connection.execute(insert(GitRepository), copied)
    return len(copied)


def _source_git_info(row: dict[str, Any], repository: dict[str, Any]) -> dict[str, Any]:
    """The seed's join, with `created_at` in ISO 8601 UTC, plus what the backfill needs under `legacy`."""
    try:
        parameters = json.loads(row["parameters"]) if row["parameters"] is not None else None
    except json.JSONDecodeError:
        parameters = row["parameters"]  # kept as it was; the backfill reports it
    return {
        "repository_id": row["repository_id"],
        "repository_name": repository.get("name"),
        "repository_url": repository.get("url"),
        "branch": (repository.get("branch") or "main") if repository else None,
        "original_path": row["entry_file"],
        "created_at": iso_utc(row["created_at"]),
        "legacy": {
            "code": row["code"],
            "entry_file": row["entry_file"],
            "script_type": row["script_type"],
            "parameters": parameters,
        },
    }


async def _copy_templates(
    connection: AsyncConnection,
    rows: list[dict[str, Any]],
    repositories: dict[int, dict[str, Any]],
    tenant_of: dict[int, uuid.UUID],
    notes: list[str],
) -> int:
    codes: dict[int, set[str]] = {}
    now = datetime.now(UTC)
    copied = []
    for row in rows:
        fitted = _CODE_UNFIT.sub("_", str(row["code"] or "").strip()).lstrip("_.-")[:100] or f"template-{row['id']}"
        code = _unique(fitted, codes.setdefault(row["tenant_id"], set()), 100, row["id"])
        if code != row["code"]:
            notes.append(f"template {row['id']}: code {row['code']!r} is now {code!r}")
        repository = repositories.get(row["repository_id"]) or {}
        if row["repository_id"] is None:
            notes.append(f"template {row['id']} ({code}) names no repository: the backfill cannot import it")
        elif repository and repository["tenant_id"] != row["tenant_id"]:
            notes.append(f"template {row['id']} ({code}): repository {row['repository_id']} is another tenant's")
        timeout = row["timeout"] if row["timeout"] is not None and row["timeout"] > 0 else LEGACY_TIMEOUT
        if timeout > MAX_TIMEOUT:
            notes.append(f"template {row['id']} ({code}): timeout {timeout}s is now {MAX_TIMEOUT}s, the API's limit")
            timeout = MAX_TIMEOUT
        copied.append(
            {
                "id": row["id"],
                "tenant_id": tenant_of[row["tenant_id"]],
                "code": code,
                "name": str(row["name"] or code)[:200],
                "description": row["description"] or "",
                "timeout": timeout,
                "source_git_info": _source_git_info(row, repository),
                "import_state": "pending",
                "created_at": row["created_at"] or now,
                "updated_at": row["updated_at"] or now,
            }
        )
    if copied:
        await connection.execute(insert(TaskTemplate), copied)
    return len(copied)


async def drop_legacy(connection: AsyncConnection) -> list[str]:
    """Drop schema `legacy`, the archive an adoption left; the names of the relations that went with it."""
    if await _revision(connection) is None:
        raise InvalidInput("the database is not adopted yet: run `ahop db adopt-legacy` first")
    if not await _schema_exists(connection):
        raise Conflict(f'there is no schema "{LEGACY_SCHEMA}" to drop (dropped already?)')
    result = await connection.execute(
        text(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1"
        ),
        {"s": LEGACY_SCHEMA},
    )
    dropped = list(result.scalars())
    await connection.execute(text(f"DROP SCHEMA {LEGACY_SCHEMA} CASCADE"))
    return dropped
