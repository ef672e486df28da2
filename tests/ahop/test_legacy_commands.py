"""Taking over a database of the original system: `ahop db adopt-legacy`, then `ahop template backfill`."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import zstandard

from app.devstack.stack import LocalStack
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.support.database import new_database
from tests.support.repositories import git, repository_of
from tests.support.s3 import s3_client
from tests.support.schema import SCHEMA

# The original system's tables as GORM made them (internal/models/*.go), trimmed to what the adoption reads plus a
# few columns it must ignore, and one table it knows nothing of.
LEGACY_SCHEMA = """
CREATE TABLE tenants (id bigserial PRIMARY KEY, name varchar(100) NOT NULL, code varchar(50) NOT NULL UNIQUE,
    status varchar(20) DEFAULT 'active', created_at timestamptz, updated_at timestamptz);
CREATE TABLE git_repositories (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES tenants (id),
    name varchar(100) NOT NULL, code varchar(50) NOT NULL, url varchar(500) NOT NULL, branch varchar(50) DEFAULT 'main',
    credential_id bigint, local_path varchar(200), created_at timestamptz, updated_at timestamptz);
CREATE TABLE task_templates (id bigserial PRIMARY KEY, tenant_id bigint NOT NULL REFERENCES tenants (id),
    name varchar(100) NOT NULL, code varchar(50) NOT NULL, script_type varchar(20) NOT NULL,
    entry_file varchar(500) NOT NULL, repository_id bigint NOT NULL REFERENCES git_repositories (id),
    description text, parameters jsonb, timeout bigint DEFAULT 300, require_sudo boolean DEFAULT false,
    created_by bigint NOT NULL, created_at timestamptz, updated_at timestamptz, UNIQUE (tenant_id, code));
CREATE TABLE tasks (id bigserial PRIMARY KEY, template_id bigint REFERENCES task_templates (id), status varchar(20));
"""
DAYS = [{"name": "days", "type": "string", "label": "保留天数", "required": True, "default_value": "7"}]


@pytest.fixture
def legacy_database(stack: LocalStack) -> Iterator[str]:
    with new_database(stack, "ahop_legacy") as url:
        yield url


async def _sql(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


def sql(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_sql(url, statement, *args))


def ahop(settings: AppSettings, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AHOP_")}
    location = settings.s3_location()
    env.update(
        AHOP_DATABASE_URL=database_url,
        AHOP_DATA_DIR=str(settings.data_dir),
        AHOP_GIT_ALLOWED_SCHEMES="https,file",
        AHOP_GIT_FILE_ROOTS=settings.git_file_roots,
        AHOP_SECRET_KEYS=settings.secret_keys.get_secret_value() if settings.secret_keys else "",
        AHOP_S3_ENDPOINT_URL=location.endpoint_url or "",
        AHOP_S3_BUCKET=location.bucket,
        AHOP_S3_ACCESS_KEY_ID=location.access_key_id or "",
        AHOP_S3_SECRET_ACCESS_KEY=location.secret_access_key or "",
    )
    return subprocess.run([sys.executable, "-m", "ahop", *args], capture_output=True, text=True, env=env, check=False)


def _build_legacy(url: str, ops: Path, tools: Path) -> None:
    async def build() -> None:
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(LEGACY_SCHEMA)
            await connection.executemany(
                "INSERT INTO tenants (id, name, code) VALUES ($1, $2, $3)",
                [(1, "运维团队", "ops-team"), (2, "DB Team", "DB Team")],
            )
            await connection.executemany(
                "INSERT INTO git_repositories (id, tenant_id, name, code, url, branch) VALUES ($1, $2, $3, $4, $5, $6)",
                [
                    (1, 1, "运维脚本库", "ops", str(ops), "main"),
                    (2, 2, "db-tools", "db", f"file://{tools}", "main"),
                    (5, 2, "retired", "retired", str(tools), "main"),
                    (7, 1, "mirror", "mirror", "https://deploy:s3cret@git.example.com/ops.git", "main"),
                ],
            )
            await connection.executemany(
                "INSERT INTO task_templates (id, tenant_id, name, code, script_type, entry_file, repository_id,"
                " parameters, timeout, created_by, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10::text::timestamptz)",
                [
                    (
                        1,
                        1,
                        "磁盘清理脚本",
                        "disk_cleanup",
                        "shell",
                        "scripts/disk_cleanup.sh",
                        1,
                        json.dumps(DAYS),
                        600,
                        "2024-01-20 10:30:00+08",
                    ),
                    (
                        2,
                        1,
                        "Nginx",
                        "nginx deploy",
                        "ansible",
                        "playbooks/nginx",
                        1,
                        "[]",
                        None,
                        "2024-02-01 00:00:00Z",
                    ),
                    (3, 1, "Old cleanup", "old_cleanup", "shell", "scripts/removed.sh", 1, None, 60, None),
                    (4, 1, "Backup", "backup", "shell", "scripts/backup/backup.sh", 1, None, 60, None),
                    (5, 2, "Vacuum", "vacuum", "python", "tools/vacuum.py", 2, None, 60, None),
                    (6, 2, "Retired", "retired_job", "shell", "tools/vacuum.py", 5, None, 60, None),
                ],
            )
            await connection.execute("INSERT INTO tasks (template_id, status) VALUES (1, 'success')")
        finally:
            await connection.close()

    asyncio.run(build())


def _blob_members(settings: AppSettings, digest: str) -> list[str]:
    """The names in the blob, after checking that it decompresses to bytes whose sha256 is the digest."""
    parsed = Digest.parse(digest)
    stored = (
        s3_client(settings.s3_location()).get_object(Bucket=settings.s3_bucket, Key=blob_key(parsed))["Body"].read()
    )
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
    assert hashlib.sha256(tar).hexdigest() == parsed.hex
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return archive.getnames()


def test_adopt_a_legacy_database_then_backfill_its_templates(
    legacy_database: str, api_settings: AppSettings, tmp_path: Path
) -> None:
    nonce = secrets.token_hex(8)  # fresh content per run: the bucket is shared by the session
    ops = repository_of(
        tmp_path / "ops",
        {
            "scripts/disk_cleanup.sh": f"#!/bin/bash\n# {nonce}\nfind /tmp -mtime +$1 -delete\n",
            "scripts/other.sh": "echo other\n",
            "scripts/backup/backup.sh": f". ./lib.sh\nbackup # {nonce}\n",
            "scripts/backup/lib.sh": "backup() { :; }\n",
            "playbooks/nginx/site.yml": f"- hosts: all  # {nonce}\n",
            "playbooks/nginx/templates/nginx.conf": "events {}\n",
        },
    )
    tools = repository_of(tmp_path / "tools", {"tools/vacuum.py": f"print('vacuum {nonce}')\n"})
    _build_legacy(legacy_database, ops, tools)

    adopted = ahop(api_settings, legacy_database, "db", "adopt-legacy", "--json")
    assert adopted.returncode == 0, adopted.stderr
    report = json.loads(adopted.stdout)
    assert {t["legacy_id"]: t["name"] for t in report["tenants"]} == {1: "ops-team", 2: "db-team"}
    tenant_of = {t["legacy_id"]: t["tenant_id"] for t in report["tenants"]}
    assert (report["repositories"], report["templates"]) == (4, 6)
    assert "template 2: code 'nginx deploy' is now 'nginx_deploy'" in report["notes"]
    assert "repository 7: the credentials in its url are sealed as its https_token credentials" in report["notes"]
    [mirror] = sql(legacy_database, "SELECT url, auth_kind, credentials FROM git_repositories WHERE id = 7")
    assert (mirror["url"], mirror["auth_kind"]) == ("https://git.example.com/ops.git", "https_token")
    assert b"s3cret" not in mirror["credentials"]  # sealed: the API shows urls, never credentials

    tables = sql(
        legacy_database, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'legacy')"
    )
    assert {r["tablename"] for r in tables if r["schemaname"] == "public"} == SCHEMA | {"alembic_version"}
    archived = {r["tablename"] for r in tables if r["schemaname"] == "legacy"}
    assert archived == {"tenants", "git_repositories", "task_templates", "tasks"}
    columns = sql(
        legacy_database,
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'task_templates'",
    )
    assert "repository_id" not in {r["column_name"] for r in columns}
    references = sql(
        legacy_database,
        "SELECT confrelid::regclass::text AS target FROM pg_constraint "
        "WHERE conrelid = 'public.task_templates'::regclass AND contype = 'f'",
    )
    assert {r["target"] for r in references} == {"tenants", "template_versions"}

    rows = {r["id"]: r for r in sql(legacy_database, "SELECT * FROM task_templates")}
    assert all(r["import_state"] == "pending" and r["current_version_id"] is None for r in rows.values())
    info = json.loads(rows[1]["source_git_info"])
    assert {key: value for key, value in info.items() if key != "legacy"} == {
        "repository_id": 1,
        "repository_name": "运维脚本库",
        "repository_url": str(ops),
        "branch": "main",
        "original_path": "scripts/disk_cleanup.sh",
        "created_at": "2024-01-20T02:30:00Z",
    }
    assert info["legacy"]["parameters"] == DAYS
    assert (rows[1]["code"], rows[1]["timeout"], str(rows[1]["tenant_id"])) == ("disk_cleanup", 600, tenant_of[1])
    assert (rows[2]["code"], rows[2]["timeout"]) == ("nginx_deploy", 300)  # the legacy default for a missing timeout
    assert sql(legacy_database, "SELECT nextval(pg_get_serial_sequence('git_repositories', 'id')) AS id")[0]["id"] == 8

    again = ahop(api_settings, legacy_database, "db", "adopt-legacy")
    assert (again.returncode, "already adopted" in again.stderr) == (2, True), again.stderr

    # Now that nothing references a repository, one can go; and an operator points template 4 at its directory.
    sql(legacy_database, "DELETE FROM git_repositories WHERE id = 5")
    sql(
        legacy_database,
        "UPDATE task_templates SET source_git_info = jsonb_set(source_git_info, '{original_path}',"
        " '\"scripts/backup\"') WHERE id = 4",
    )
    git(ops, "rm", "-q", "scripts/other.sh")
    git(ops, "commit", "-q", "-m", "second")

    filled = ahop(api_settings, legacy_database, "template", "backfill", "--json")
    assert filled.returncode == 1, filled.stderr
    result = json.loads(filled.stdout)
    failed = {row["template_id"]: row["reason"] for row in result["failed"]}
    assert set(failed) == {3, 6}
    assert "'scripts/removed.sh' no longer exists" in failed[3]
    assert failed[6] == "repository 5 no longer exists"
    digests = {row["template_id"]: row["digest"] for row in result["imported"]}
    assert set(digests) == {1, 2, 4, 5}

    versions = {r["template_id"]: r for r in sql(legacy_database, "SELECT * FROM template_versions")}
    rows = {r["id"]: r for r in sql(legacy_database, "SELECT * FROM task_templates")}
    for template_id, digest in digests.items():
        version = versions[template_id]
        assert (version["version"], f"sha256:{version['digest']}") == (1, digest)
        assert (rows[template_id]["import_state"], rows[template_id]["current_version_id"]) == (
            "imported",
            version["id"],
        )
    assert {template_id: rows[template_id]["import_state"] for template_id in failed} == {3: "pending", 6: "pending"}

    assert _blob_members(api_settings, digests[1]) == ["disk_cleanup.sh"]  # a recorded file is imported alone
    assert (versions[1]["script_type"], versions[1]["entry_file"]) == ("shell", "disk_cleanup.sh")
    [days] = json.loads(versions[1]["parameters"])
    assert (days["name"], days["type"], days["label"], days["required"], days["default"]) == (
        "days",
        "text",
        "保留天数",
        True,
        "7",
    )
    assert _blob_members(api_settings, digests[2]) == ["site.yml", "templates/nginx.conf"]
    assert (versions[2]["script_type"], versions[2]["entry_file"]) == ("ansible", "site.yml")
    assert _blob_members(api_settings, digests[4]) == ["backup.sh", "lib.sh"]
    assert versions[4]["entry_file"] == "backup.sh"
    assert _blob_members(api_settings, digests[5]) == ["vacuum.py"]

    info = json.loads(rows[1]["source_git_info"])
    assert (info["commit_sha"], info["tree_id"]) == (
        git(ops, "rev-parse", "HEAD"),
        git(ops, "rev-parse", "HEAD:scripts/disk_cleanup.sh"),
    )
    assert (info["repository_id"], info["original_path"], info["legacy"]["code"]) == (
        1,
        "scripts/disk_cleanup.sh",
        "disk_cleanup",
    )
    assert info["created_at"].endswith("Z")

    only_db_team = ahop(api_settings, legacy_database, "template", "backfill", "--tenant", tenant_of[2])
    assert only_db_team.returncode == 1
    assert "template 6 retired_job" in only_db_team.stdout
    assert "0 imported, 1 failed" in only_db_team.stdout

    dropped = ahop(api_settings, legacy_database, "db", "adopt-legacy", "--drop-legacy", "--json")
    assert dropped.returncode == 0, dropped.stderr
    assert set(json.loads(dropped.stdout)["dropped"]) == archived
    assert not sql(legacy_database, "SELECT 1 FROM pg_namespace WHERE nspname = 'legacy'")


def test_adopt_refuses_a_database_that_is_not_legacy(legacy_database: str, api_settings: AppSettings) -> None:
    sql(legacy_database, "CREATE TABLE task_templates (id bigserial PRIMARY KEY, name text)")
    refused = ahop(api_settings, legacy_database, "db", "adopt-legacy")
    assert (refused.returncode, "no task_templates.repository_id" in refused.stderr) == (2, True), refused.stderr
    left = sql(legacy_database, "SELECT tablename FROM pg_tables WHERE schemaname IN ('public', 'legacy')")
    assert [r["tablename"] for r in left] == ["task_templates"]  # nothing changed


def test_an_adoption_that_fails_halfway_changes_nothing(
    legacy_database: str, api_settings: AppSettings, tmp_path: Path
) -> None:
    _build_legacy(legacy_database, tmp_path, tmp_path)
    sql(legacy_database, "CREATE TYPE blobs AS ENUM ('x')")  # types stay in public: our table `blobs` collides
    failed = ahop(api_settings, legacy_database, "db", "adopt-legacy")
    assert (failed.returncode, "nothing was changed" in failed.stderr) == (2, True), failed.stderr
    assert 'type "blobs" already exists' in failed.stderr
    tables = sql(
        legacy_database, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'legacy')"
    )
    assert {(r["schemaname"], r["tablename"]) for r in tables} == {
        ("public", name) for name in ("tenants", "git_repositories", "task_templates", "tasks")
    }
