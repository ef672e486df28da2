"""Importing templates through the API: content-addressed blobs in S3, versions, dedup, isolation, failures."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import zstandard
from litestar.testing import AsyncTestClient

from app.db.models import Role, TemplateVersion
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.support.api import Client
from tests.support.repositories import add_repository, git
from tests.support.s3 import s3_client
from tests.support.templates import assert_refused_on_import_and_update, body
from tests.support.tenants import Caller


async def test_import_stores_the_canonical_blob_and_a_snapshot_of_its_source(
    client: Client, alice: Caller, origin: Path, api_settings: AppSettings
) -> None:
    repository_id = await add_repository(client, alice, origin)
    response = await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])
    assert response.status_code == 201, response.text
    template = response.json()

    source = template["source_git_info"]
    assert source["commit_sha"] == git(origin, "rev-parse", "HEAD")
    assert source["tree_id"] == git(origin, "rev-parse", "HEAD:scripts/disk_cleanup")
    assert (source["repository_id"], source["repository_name"], source["repository_url"]) == (
        repository_id,
        "ops",
        str(origin),
    )
    assert (source["branch"], source["original_path"]) == ("main", "scripts/disk_cleanup")
    assert source["created_at"].endswith("Z")
    assert template["version"] == 1
    assert template["parameters"][0]["name"] == "days"

    artifact = template["artifact"]
    digest = Digest.parse(artifact["digest"])
    stored = (
        s3_client(api_settings.s3_location())
        .get_object(Bucket=api_settings.s3_bucket, Key=blob_key(digest))["Body"]
        .read()
    )
    assert len(stored) == artifact["zst_size"]
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(stored)  # zstd -dc BLOB | sha256sum
    assert hashlib.sha256(tar).hexdigest() == digest.hex
    assert artifact["files"] == 2

    shown = await client.get(f"/api/v1/task-templates/{template['id']}", headers=alice[Role.VIEWER])
    assert shown.json() == template


async def test_same_content_is_stored_once_and_a_change_makes_a_new_digest(
    client: Client, alice: Caller, origin: Path, api_settings: AppSettings
) -> None:
    repository_id = await add_repository(client, alice, origin)
    first = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    again = await client.post(
        "/api/v1/task-templates", json=body(repository_id, code="disk_cleanup_2"), headers=alice[Role.ADMIN]
    )
    assert again.json()["artifact"] == first["artifact"]
    s3 = s3_client(api_settings.s3_location())
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=api_settings.s3_bucket).get("Contents", [])]
    assert keys.count(blob_key(Digest.parse(first["artifact"]["digest"]))) == 1

    (origin / "scripts" / "disk_cleanup" / "cleanup.sh").write_text("#!/bin/bash\necho changed\n")
    git(origin, "commit", "-qam", "change")
    changed = await client.post(
        "/api/v1/task-templates", json=body(repository_id, code="disk_cleanup_3"), headers=alice[Role.ADMIN]
    )
    assert changed.json()["artifact"]["digest"] != first["artifact"]["digest"]


async def test_two_concurrent_imports_of_the_same_content_store_one_blob(
    client: Client, alice: Caller, origin: Path, api_settings: AppSettings
) -> None:
    repository_id = await add_repository(client, alice, origin)
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/task-templates", json=body(repository_id, code=f"c{i}"), headers=alice[Role.ADMIN])
            for i in range(3)
        )
    )
    assert [r.status_code for r in responses] == [201, 201, 201], [r.text for r in responses]
    digests = {r.json()["artifact"]["digest"] for r in responses}
    assert len(digests) == 1
    key = blob_key(Digest.parse(digests.pop()))
    listed = s3_client(api_settings.s3_location()).list_objects_v2(Bucket=api_settings.s3_bucket, Prefix=key)
    assert [item["Key"] for item in listed.get("Contents", [])] == [key]


async def test_deleting_the_repository_leaves_the_template_and_its_blob(
    client: Client, alice: Caller, origin: Path, api_settings: AppSettings
) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    assert (
        await client.delete(f"/api/v1/git-repositories/{repository_id}", headers=alice[Role.ADMIN])
    ).status_code == 204
    shown = await client.get(f"/api/v1/task-templates/{created['id']}", headers=alice[Role.VIEWER])
    assert shown.status_code == 200
    assert shown.json()["artifact"] == created["artifact"]
    key = blob_key(Digest.parse(created["artifact"]["digest"]))
    assert (
        s3_client(api_settings.s3_location()).head_object(Bucket=api_settings.s3_bucket, Key=key)["ContentLength"] > 0
    )


async def test_bad_imports_are_refused_and_write_nothing(client: Client, alice: Caller, origin: Path) -> None:
    repository_id = await add_repository(client, alice, origin)
    cases = [
        (body(repository_id, original_path="../etc"), "original_path"),
        (body(repository_id, original_path="/etc"), "original_path"),
        (body(repository_id, original_path="scripts/nope"), "original_path"),
        (body(repository_id, entry_file="missing.sh"), "entry_file"),
        (body(repository_id + 1000), "repository_id"),
        (body(repository_id, script_type="perl", code="bad code!"), "script_type"),
    ]
    for payload, field in cases:
        response = await client.post("/api/v1/task-templates", json=payload, headers=alice[Role.ADMIN])
        assert response.status_code == 422, (payload, response.text)
        assert field in {error["field"] for error in response.json()["extra"]["errors"]}, response.text
    listed = await client.get("/api/v1/task-templates", headers=alice[Role.ADMIN])
    assert listed.json()["total"] == 0
    await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])
    duplicate = await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])
    assert duplicate.status_code == 409


async def test_list_search_and_tenant_isolation(client: Client, alice: Caller, bob: Caller, origin: Path) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    found = await client.get("/api/v1/task-templates?search=CLEAN&script_type=shell", headers=alice[Role.VIEWER])
    assert [item["id"] for item in found.json()["items"]] == [created["id"]]
    assert (await client.get("/api/v1/task-templates?search=zzz", headers=alice[Role.VIEWER])).json()["total"] == 0
    for url in (f"/api/v1/task-templates/{created['id']}", f"/api/v1/task-templates/{created['id']}/versions"):
        assert (await client.get(url, headers=bob[Role.ADMIN])).status_code == 404
    assert (await client.get("/api/v1/task-templates", headers=bob[Role.ADMIN])).json()["total"] == 0
    bob_import = await client.post("/api/v1/task-templates", json=body(repository_id), headers=bob[Role.ADMIN])
    assert bob_import.status_code == 422  # alice's repository does not exist for bob
    versions = await client.get(f"/api/v1/task-templates/{created['id']}/versions", headers=alice[Role.VIEWER])
    assert [v["version"] for v in versions.json()] == [1]


async def test_s3_down_answers_503_and_writes_no_row(
    alice: Caller, origin: Path, api_settings: AppSettings, tmp_path: Path, database_url: str
) -> None:
    from pydantic import SecretStr
    from sqlalchemy import func, select

    from app.db.engine import create_engine, create_session_factory
    from app.db.models import Blob, TaskTemplate
    from app.devstack.seaweed import SeaweedS3
    from app.devstack.stack import LocalStack
    from app.main import create_app

    engine = create_engine(database_url, pool_size=1)

    async def counts() -> tuple[int, set[Digest]]:
        async with create_session_factory(engine)() as session:
            templates = await session.scalar(
                select(func.count()).select_from(TaskTemplate).where(TaskTemplate.tenant_id == alice.tenant_id)
            )
            unreferenced = await session.scalars(
                select(Blob.digest).where(~Blob.digest.in_(select(TemplateVersion.digest)))
            )
            return templates or 0, set(unreferenced)

    s3 = SeaweedS3.start(tmp_path / "own-s3", durable=False)
    try:
        LocalStack(
            env={
                "AHOP_S3_BUCKET": "down-test",
                "AHOP_S3_ENDPOINT_URL": s3.endpoint_url,
                "AHOP_S3_ACCESS_KEY_ID": s3.credentials.access_key_id,
                "AHOP_S3_SECRET_ACCESS_KEY": s3.credentials.secret_access_key,
            }
        ).ensure_bucket()
        settings = api_settings.model_copy(
            update={
                "s3_endpoint_url": s3.endpoint_url,
                "s3_bucket": "down-test",
                "s3_access_key_id": s3.credentials.access_key_id,
                "s3_secret_access_key": SecretStr(s3.credentials.secret_access_key),
            }
        )
        async with AsyncTestClient(create_app(settings)) as client:
            repository_id = await add_repository(client, alice, origin)
            s3.stop()
            before = await counts()
            response = await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])
            after = await counts()
    finally:
        s3.stop()
        await engine.dispose()
    assert response.status_code == 503, response.text
    assert "S3" in response.json()["detail"]
    assert after == before == (0, before[1])  # no template, and no blob row left behind by this import


async def test_reimporting_a_known_tree_does_not_pack_again(
    alice: Caller, origin: Path, api_settings: AppSettings, database_url: str, client: Client
) -> None:
    import uuid

    from cryptography.fernet import Fernet  # noqa: F401  (the settings carry the key)

    from app.db.engine import create_engine, create_session_factory
    from app.git.mirror import Mirrors
    from app.services.credentials import CredentialBox
    from app.services.imports import Importer, TemplateSpec
    from storage.blobstore import BlobStore
    from storage.canonical import Limits

    repository_id = await add_repository(client, alice, origin)
    engine = create_engine(database_url, pool_size=2)
    mirrors = Mirrors(api_settings.data_dir, api_settings.git_options())
    store = BlobStore(api_settings.s3_location())
    try:
        async with create_session_factory(engine)() as session:
            importer = Importer(
                session,
                mirrors,
                CredentialBox(api_settings.secret_key_list()),
                store,
                Limits(),
                api_settings.data_dir / "tmp",
            )
            spec = dict(body(repository_id))
            first = await importer.import_template(uuid.UUID(alice.tenant_id), TemplateSpec(**spec), None)
            first_digest, first_sha = first.blob.digest, first.blob.zst_sha256
            second = await importer.import_template(
                uuid.UUID(alice.tenant_id), TemplateSpec(**{**spec, "code": "again"}), None
            )
            second_digest = second.blob.digest
            # An object removed behind its row's back (a bucket restored from an old backup, a stray delete) is
            # not handed out: the cache hit is checked, and the content packed and stored again.
            s3_client(api_settings.s3_location()).delete_object(
                Bucket=api_settings.s3_bucket, Key=blob_key(first_digest)
            )
            third = await importer.import_template(
                uuid.UUID(alice.tenant_id), TemplateSpec(**{**spec, "code": "healed"}), None
            )
            third_digest = third.blob.digest
            restored = store.head(first_digest)
    finally:
        await engine.dispose()
    assert (first.packed, second.packed, third.packed) == (True, False, True)
    assert first_digest == second_digest == third_digest
    assert restored.zst_sha256 == first_sha


async def test_artifacts_show_their_users_and_stream_their_bytes(
    client: Client, alice: Caller, bob: Caller, origin: Path
) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    digest = created["artifact"]["digest"]

    shown = await client.get(f"/api/v1/artifacts/{digest}", headers=alice[Role.VIEWER])
    assert shown.status_code == 200, shown.text
    assert shown.json()["used_by"] == [
        {"template_id": created["id"], "code": "disk_cleanup", "version": 1, "current": True}
    ]
    assert (shown.json()["state"], shown.json()["files"]) == ("stored", 2)

    download = await client.get(f"/api/v1/artifacts/{digest}/blob", headers=alice[Role.VIEWER])
    assert download.status_code == 200
    assert len(download.content) == created["artifact"]["zst_size"]
    tar = zstandard.ZstdDecompressor().decompressobj().decompress(download.content)
    assert f"sha256:{hashlib.sha256(tar).hexdigest()}" == digest

    for url in (f"/api/v1/artifacts/{digest}", f"/api/v1/artifacts/{digest}/blob"):
        assert (await client.get(url, headers=bob[Role.ADMIN])).status_code == 404
    malformed = await client.get("/api/v1/artifacts/sha256:XYZ", headers=alice[Role.VIEWER])
    assert malformed.status_code == 422


async def test_pool_and_retry_policy_are_set_on_import_and_changed_in_place(
    client: Client, alice: Caller, origin: Path
) -> None:
    repository_id = await add_repository(client, alice, origin)
    plain = await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])
    assert (plain.json()["pool"], plain.json()["max_attempts"], plain.json()["retry_on"]) == ("default", 1, [])

    created = await client.post(
        "/api/v1/task-templates",
        json=body(
            repository_id, code="gpu_cleanup", pool="gpu.batch-1", max_attempts=3, retry_on=["lost", "timeout", "lost"]
        ),
        headers=alice[Role.ADMIN],
    )
    assert created.status_code == 201, created.text
    url = f"/api/v1/task-templates/{created.json()['id']}"
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert (shown["pool"], shown["max_attempts"], shown["retry_on"]) == ("gpu.batch-1", 3, ["lost", "timeout"])

    changed = await client.put(
        url, json={"pool": "default", "max_attempts": 10, "retry_on": ["failed"]}, headers=alice[Role.ADMIN]
    )
    assert changed.status_code == 200, changed.text
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert (shown["pool"], shown["max_attempts"], shown["retry_on"], shown["version"]) == ("default", 10, ["failed"], 1)
    cleared = await client.put(url, json={"retry_on": [], "max_attempts": 1}, headers=alice[Role.ADMIN])
    assert (cleared.json()["retry_on"], cleared.json()["max_attempts"], cleared.json()["pool"]) == ([], 1, "default")
    listed = (await client.get("/api/v1/task-templates?search=gpu_cleanup", headers=alice[Role.VIEWER])).json()
    assert (listed["items"][0]["pool"], listed["items"][0]["max_attempts"]) == ("default", 1)


async def test_bad_pool_and_retry_policy_are_refused_naming_the_field(
    client: Client, alice: Caller, origin: Path
) -> None:
    repository_id = await add_repository(client, alice, origin)
    created = (await client.post("/api/v1/task-templates", json=body(repository_id), headers=alice[Role.ADMIN])).json()
    url = f"/api/v1/task-templates/{created['id']}"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pool": "-gpu"}, "pool"),
        ({"pool": "gpu pool"}, "pool"),
        ({"pool": ""}, "pool"),
        ({"pool": "p" * 65}, "pool"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 11}, "max_attempts"),
        ({"retry_on": ["success"]}, "retry_on"),
        ({"retry_on": "failed"}, "retry_on"),
    ]
    await assert_refused_on_import_and_update(client, alice, repository_id, url, cases)
    shown = (await client.get(url, headers=alice[Role.VIEWER])).json()
    assert (shown["pool"], shown["max_attempts"], shown["retry_on"]) == ("default", 1, [])
    assert (await client.get("/api/v1/task-templates", headers=alice[Role.VIEWER])).json()["total"] == 1
