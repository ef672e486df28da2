"""Downloading a blob whose stored object fails its check answers 409 naming the digest and the repair.

Before, an object overwritten with other bytes of the same length went out with a 200 (the client got damaged
content), and one without the figures this system records on its objects answered 500.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.db.models import Role
from app.settings import AppSettings
from storage.digest import Digest
from storage.keys import blob_key
from tests.support.api import Client
from tests.support.blobs import overwrite
from tests.support.s3 import s3_client
from tests.support.templates import import_template
from tests.support.tenants import Caller


async def test_a_download_whose_object_fails_its_check_names_the_digest_and_the_repair(
    client: Client, alice: Caller, origin: Path, api_settings: AppSettings
) -> None:
    digest = (await import_template(client, alice, origin, code="damaged"))["artifact"]["digest"]
    url = f"/api/v1/artifacts/{digest}/blob"
    good = await client.get(url, headers=alice[Role.VIEWER])
    assert good.status_code == 200, good.text

    await asyncio.to_thread(overwrite, api_settings, digest, bytes(len(good.content)))  # same length, other bytes
    damaged = await client.get(url, headers=alice[Role.VIEWER])
    assert damaged.status_code == 409, damaged.text
    assert digest in damaged.json()["detail"]
    assert "run `ahop verify --repair`" in damaged.json()["detail"]

    # The right bytes, but stored by something else: without the figures this system records on its objects.
    s3 = s3_client(api_settings.s3_location())
    key = blob_key(Digest.parse(digest))
    await asyncio.to_thread(s3.put_object, Bucket=api_settings.s3_bucket, Key=key, Body=good.content)
    foreign = await client.get(url, headers=alice[Role.VIEWER])
    assert foreign.status_code == 409, foreign.text
    assert digest in foreign.json()["detail"]
    assert "run `ahop verify --repair`" in foreign.json()["detail"]

    spool = api_settings.data_dir / "tmp"
    assert await asyncio.to_thread(lambda: list(spool.iterdir()) if spool.exists() else []) == []
