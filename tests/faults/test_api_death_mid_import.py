"""A real `ahop serve` killed (SIGKILL) in the middle of an import's upload: no half template and no version without
its object; what the import left (its blob row, its unfinished upload) is named by verify and GC and collected; the
API started again serves, and the same import then succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from app.db.models import Role
from app.settings import AppSettings
from tests.faults.s3_faults import (
    BOUND,
    PrivateS3,
    ServedApi,
    assert_nothing_left_unreported,
    big_import_in_flight,
    template_rows,
)
from tests.support.tenants import Caller


async def test_an_api_killed_mid_import_leaves_a_consistent_state_and_the_import_succeeds_after_a_restart(
    api: ServedApi, private_s3: PrivateS3, faults_settings: AppSettings, carol: Caller, big_origin: Path
) -> None:
    async with api.client() as client:
        big = await big_import_in_flight(client, carol, big_origin, private_s3, faults_settings, api.kill)
        big.assert_mid_upload(private_s3)
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(big.answer, BOUND)

    assert await template_rows(faults_settings, "big") == []
    await assert_nothing_left_unreported(faults_settings, private_s3)

    api.restart()
    async with api.client() as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        retried = await client.post("/api/v1/task-templates", json=big.request, headers=carol[Role.ADMIN])
        assert retried.status_code == 201, retried.text
        assert retried.json()["artifact"]["digest"] == str(big.digest)
    assert private_s3.store().exists(big.digest)
    assert [row["import_state"] for row in await template_rows(faults_settings, "big")] == ["imported"]
    await assert_nothing_left_unreported(faults_settings, private_s3)
