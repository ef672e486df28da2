"""S3 stopped (SIGSTOP) or killed (SIGKILL) under an import through a real `ahop serve`: before the upload, and in the
middle of it. The import answers 503 naming S3 within a bound, writes no template, version or partial object, leaves
nothing that GC and verify do not name, and succeeds once S3 is back."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from app.db.models import Role
from app.settings import AppSettings
from tests.faults.s3_faults import (
    PrivateS3,
    ServedApi,
    add_repository,
    answered,
    assert_no_partial_object,
    assert_nothing_left_unreported,
    big_import_in_flight,
    blob_row,
    inject,
    post_import,
    recover,
    template_rows,
)
from tests.support.database import sql
from tests.support.templates import body
from tests.support.tenants import Caller

FAULTS = ["stopped", "killed"]


def assert_names_s3(answer: dict[str, object]) -> None:
    assert answer["status_code"] == 503, answer
    assert "S3 is unavailable, nothing was imported" in str(answer["detail"]), answer


@pytest.mark.parametrize("fault", FAULTS)
async def test_an_import_while_s3_is_down_answers_503_writes_nothing_and_succeeds_once_s3_is_back(
    fault: str, api: ServedApi, private_s3: PrivateS3, faults_settings: AppSettings, carol: Caller, origin: Path
) -> None:
    async with api.client() as client:
        request = body(await add_repository(client, carol, origin, "ops"), parameters=[])
        inject(private_s3, fault)
        response = await answered(post_import(client, carol, request), f"an import while S3 is {fault}")
        assert response.status_code == 503, response.text
        assert_names_s3(response.json())
        assert await template_rows(faults_settings, "disk_cleanup") == []
        assert await sql(faults_settings.database_url, "SELECT digest FROM blobs") == []

        recover(private_s3, fault)
        assert list(private_s3.store().list_blobs()) == []
        retried = await client.post("/api/v1/task-templates", json=request, headers=carol[Role.ADMIN])
        assert retried.status_code == 201, retried.text
    await assert_nothing_left_unreported(faults_settings, private_s3)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("template", ["put", "big"], ids=["one PUT", "in parts"])
async def test_an_import_whose_upload_s3_stops_or_dies_in_the_middle_answers_503_and_leaves_no_partial_blob(
    template: str,
    fault: str,
    api: ServedApi,
    private_s3: PrivateS3,
    faults_settings: AppSettings,
    carol: Caller,
    big_origin: Path,
    tmp_path: Path,
) -> None:
    async with api.client() as client:
        # Hold the API still while S3 fails, so that the fault lands in the middle of this very upload.
        big = await big_import_in_flight(
            client, carol, big_origin, private_s3, faults_settings, lambda: api.signal(signal.SIGSTOP), template
        )
        digest = big.digest
        try:
            big.assert_mid_upload(private_s3)
            inject(private_s3, fault)
        finally:
            api.signal(signal.SIGCONT)
        response = await answered(big.answer, f"an import whose S3 {fault} mid-upload")
        assert response.status_code == 503, response.text
        assert_names_s3(response.json())
        assert await template_rows(faults_settings, template) == []
        assert await blob_row(faults_settings, digest) == []  # the row written before the upload is taken back

        recover(private_s3, fault)
        assert_no_partial_object(private_s3, digest, tmp_path)
        await assert_nothing_left_unreported(faults_settings, private_s3)
        retried = await client.post("/api/v1/task-templates", json=big.request, headers=carol[Role.ADMIN])
        assert retried.status_code == 201, retried.text
        assert retried.json()["artifact"]["digest"] == str(digest)
    await assert_nothing_left_unreported(faults_settings, private_s3)
