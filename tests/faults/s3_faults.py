"""What the S3 fault tests share: an S3 server, a database and an API of the test's own, a template large enough to be
caught in flight, and the check that nothing was left half-written or unreported.

Faults hit a SeaweedFS that no other test uses, started by the project's launcher (`app.devstack.seaweed`) on its
own ports and data directory: SIGSTOP/SIGCONT, SIGKILL, and a restart on the same ports and data. The database is
the test's own too, since the check runs GC and verify with no grace, which would free other tests' blobs.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.db.models import Role
from app.devstack.processes import ManagedProcess, free_ports
from app.devstack.seaweed import SeaweedS3
from app.devstack.stack import LocalStack
from app.settings import AppSettings
from storage.blobstore import BlobStore, S3Location
from storage.digest import Digest
from storage.keys import digest_from_key
from tests.support import waiting
from tests.support.cli import ahop_on_server
from tests.support.database import new_migrated_database, sql
from tests.support.repositories import commit_all
from tests.support.s3 import s3_client
from tests.support.served import server_env
from tests.support.tenants import Caller, make_tenant

BOUND = 90.0
"""Every wait's bound: it only catches hangs. With the short S3 timeouts below, a request to a stopped S3 fails in
about ten seconds; with botocore's fixed 60 s per try (three tries, then an abort as long) it took minutes."""
S3_TIMEOUTS = {"s3_connect_timeout": 2.0, "s3_read_timeout": 5.0, "s3_max_attempts": 2}
"""Short, as tests want them, yet far above what a healthy local S3 needs between two packets."""
BIG_BYTES = 72 << 20
"""The `big` template's payload, random so that it does not compress: above the store's 64 MiB multipart threshold,
its upload goes in five parts, and a caller can be caught between the first part and the last."""
PUT_BYTES = 62 << 20
"""The `put` template's payload: below the threshold, it goes up in one PUT, and is large enough that it cannot sit
whole in the kernel's socket buffers (up to 32 + 4 MiB on loopback here: `socket_buffers`)."""
CAUGHT_AFTER = 8 << 20
"""Bytes of a single PUT that S3 has stored when a test catches it in flight."""


@dataclass
class PrivateS3:
    """A running SeaweedFS of one test, with its bucket, and the faults a test injects into it (by its pid)."""

    server: SeaweedS3
    bucket: str

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def freeze(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, and never answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.server.process.popen.wait(BOUND)

    def restart(self) -> None:
        """Start it again on the same ports and data directory, as after a crash."""
        self.server.process.respawn()
        self.server.wait_ready(BOUND)

    def wait_serving(self, key: str) -> None:
        """Wait until the object under `key` can be read whole: a restarted SeaweedFS answers its health check
        before its volume server has registered again, and a read meanwhile fails."""
        client = self.client()
        deadline = time.monotonic() + BOUND
        while True:
            try:
                client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                return
            except Exception:  # the server's errors while it comes back, whatever their kind
                assert time.monotonic() < deadline, f"S3 did not serve {key} within {BOUND}s of its restart"
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill it and remove its data: its data is the test's alone, and after a restart SeaweedFS takes half a
        minute to stop gracefully (its volume server)."""
        if self.server.process.running():
            self.kill()
        self.server.stop()

    def settings(self) -> dict[str, Any]:
        """The AppSettings fields that point at this server, with short timeouts."""
        return {
            "s3_endpoint_url": self.server.endpoint_url,
            "s3_bucket": self.bucket,
            "s3_access_key_id": self.server.credentials.access_key_id,
            "s3_secret_access_key": SecretStr(self.server.credentials.secret_access_key),
            **S3_TIMEOUTS,
        }

    def stored_bytes(self) -> int:
        """Bytes in its data directory: they grow while a PUT streams in, before the object exists."""
        return sum(path.stat().st_size for path in self.server.data_dir.rglob("*") if path.is_file())

    def wait_stored(self, size: int) -> None:
        """Return once the data directory holds `size` bytes; looked at often, so that a PUT is caught early."""
        deadline = time.monotonic() + BOUND
        while self.stored_bytes() < size:
            assert time.monotonic() < deadline, f"S3 did not store {size} bytes within {BOUND}s"
            time.sleep(0.002)

    def store(self) -> BlobStore:
        """The project's own client of the bucket, as GC and verify see it."""
        return BlobStore(self.location())

    def location(self) -> S3Location:
        """The bucket on the private server, with its credentials."""
        credentials = self.server.credentials
        return S3Location(
            self.server.endpoint_url, self.bucket, credentials.access_key_id, credentials.secret_access_key
        )

    def client(self) -> Any:
        """A plain boto3 client of the test's own, to look at the bucket as an operator's tools would."""
        return s3_client(self.location())


@pytest.fixture
def private_s3(tmp_path: Path) -> Iterator[PrivateS3]:
    server = SeaweedS3.start(tmp_path / "private-s3", durable=False)
    s3 = PrivateS3(server, f"faults-{secrets.token_hex(4)}")
    try:
        s3.store().ensure_bucket()
        yield s3
    finally:
        s3.stop()


@pytest.fixture
async def faults_settings(
    api_settings: AppSettings, stack: LocalStack, private_s3: PrivateS3, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[AppSettings]:
    """The API's settings over a database of the test's own and its private S3."""
    async with new_migrated_database(stack, "ahop_s3f") as url:
        yield api_settings.model_copy(
            update={"database_url": url, "git_file_roots": str(tmp_path_factory.getbasetemp()), **private_s3.settings()}
        )


@pytest.fixture
async def carol(faults_settings: AppSettings) -> Caller:
    return await make_tenant(faults_settings.database_url)


@pytest.fixture(scope="session")
def big_origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two templates of random data, `big` (BIG_BYTES) and `put` (PUT_BYTES), each beside a
    script that says how much it holds."""
    repo = tmp_path_factory.mktemp("big-origin")
    for name, size in (("big", BIG_BYTES), ("put", PUT_BYTES)):
        (repo / name).mkdir()
        (repo / name / "run.sh").write_text('#!/bin/bash\necho "payload: $(wc -c < payload.bin) bytes"\n')
        with open(repo / name / "payload.bin", "wb") as out:
            for _ in range(size >> 20):
                out.write(os.urandom(1 << 20))
    commit_all(repo, message="big")
    return repo


def big_body(repository_id: int, path: str = "big") -> dict[str, Any]:
    return {
        "name": path.title(),
        "code": path,
        "script_type": "shell",
        "entry_file": "run.sh",
        "repository_id": repository_id,
        "original_path": path,
        "parameters": [],
        "timeout": 600,
    }


@dataclass
class ServedApi:
    """A real `ahop serve` process of the test, stopped by its pid."""

    process: ManagedProcess
    url: str

    @classmethod
    def start(cls, settings: AppSettings, tmp_path: Path, **env: str) -> ServedApi:
        (port,) = free_ports(1)
        variables = {
            **server_env(settings, tmp_path),
            "AHOP_GIT_FILE_ROOTS": settings.git_file_roots,
            **{f"AHOP_{name.upper()}": str(value) for name, value in S3_TIMEOUTS.items()},
            **env,
        }
        process = ManagedProcess.start(
            "ahop serve",
            [sys.executable, "-m", "ahop", "serve", "--port", str(port)],
            log_path=tmp_path / "api.log",
            pid_file=tmp_path / "api.pid",
            env=variables,
        )
        api = cls(process, f"http://127.0.0.1:{port}")
        api.wait_ready()
        return api

    def wait_ready(self) -> None:
        def live() -> bool:
            try:
                return httpx.get(f"{self.url}/health/live", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        self.process.wait_ready(live, where=self.url, timeout=BOUND)

    def restart(self) -> None:
        """Start it again with the same settings, as a supervisor would after it died."""
        self.process.respawn()
        self.wait_ready()

    def client(self) -> httpx.AsyncClient:
        """A client that waits as long as the API takes: the test's own bounds catch hangs."""
        return httpx.AsyncClient(base_url=self.url, timeout=BOUND * 2)

    def signal(self, which: signal.Signals) -> None:
        os.kill(self.process.pid, which)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.popen.wait(BOUND)

    def stop(self) -> None:
        if self.process.running():
            self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.process.stop()


@pytest.fixture
def api(faults_settings: AppSettings, tmp_path: Path) -> Iterator[ServedApi]:
    """A real `ahop serve` over the test's database and private S3."""
    served = ServedApi.start(faults_settings, tmp_path / "api")
    yield served
    served.stop()


async def answered(request: asyncio.Task[httpx.Response], what: str) -> httpx.Response:
    """The response of a request sent in the background, within the bound that catches hangs."""
    try:
        return await asyncio.wait_for(request, BOUND)
    except TimeoutError:
        raise AssertionError(f"no answer to {what} within {BOUND}s") from None


def inject(s3: PrivateS3, fault: str) -> None:
    if fault == "stopped":
        s3.freeze()
    else:
        s3.kill()


def recover(s3: PrivateS3, fault: str) -> None:
    if fault == "stopped":
        s3.thaw()
    else:
        s3.restart()


async def add_repository(client: httpx.AsyncClient, caller: Caller, origin: Path, name: str) -> int:
    response = await client.post(
        "/api/v1/git-repositories", json={"name": name, "url": str(origin)}, headers=caller[Role.ADMIN]
    )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def post_import(client: httpx.AsyncClient, caller: Caller, request: dict[str, Any]) -> asyncio.Task[httpx.Response]:
    """The import of `request`, sent in the background (its answer is awaited with `answered`)."""
    return asyncio.create_task(client.post("/api/v1/task-templates", json=request, headers=caller[Role.ADMIN]))


def socket_buffers() -> int:
    """The most bytes a TCP connection can hold in flight between two processes: the largest receive buffer plus
    the largest send buffer the kernel grows to."""
    return sum(int(Path(f"/proc/sys/net/ipv4/tcp_{kind}").read_text().split()[2]) for kind in ("rmem", "wmem"))


@dataclass(frozen=True)
class BigImport:
    """An import of a big template whose upload is under way: its request, its answer to come, its digest, and the
    id of its multipart upload (None for a single PUT, whose progress S3's data directory shows from `baseline`)."""

    request: dict[str, Any]
    answer: asyncio.Task[httpx.Response]
    digest: Digest
    upload_id: str | None
    baseline: int = 0

    def assert_mid_upload(self, s3: PrivateS3) -> None:
        """The premise of a test that holds the uploader still to interrupt its upload: the upload is open, nothing
        is stored under the digest, and (for one PUT) what S3 has plus what the sockets hold is not all of it, so
        it cannot finish while the uploader is held."""
        store = s3.store()
        if self.upload_id is not None:
            pending = {upload.upload_id for upload in store.list_pending_uploads()}
            assert self.upload_id in pending, "the upload finished before it could be interrupted"
        else:
            reach = s3.stored_bytes() - self.baseline + socket_buffers()
            assert reach < PUT_BYTES, f"S3 and the sockets hold {reach} bytes: the PUT may finish; make it bigger"
        assert not store.exists(self.digest), "the upload finished before it could be interrupted"


async def big_import_in_flight(
    client: httpx.AsyncClient,
    caller: Caller,
    origin: Path,
    s3: PrivateS3,
    settings: AppSettings,
    hold: Callable[[], None],
    path: str = "big",
) -> BigImport:
    """Add `origin`, import its template `path`, and once the upload of its blob is under way (a multipart upload
    with a part stored for `big`, a PUT of which S3 has stored CAUGHT_AFTER bytes for `put`) call `hold` at once,
    which stops the uploader (SIGSTOP or SIGKILL of the API): every moment between the two lets a fast machine
    send more of the upload. Looking up what the test needs to know comes after."""
    request = big_body(await add_repository(client, caller, origin, path), path)
    if path == "big":
        answer = post_import(client, caller, request)
        digest, upload_id = await upload_in_flight(s3, hold)
        return BigImport(request, answer, digest, upload_id)
    baseline = s3.stored_bytes()
    answer = post_import(client, caller, request)
    await asyncio.to_thread(s3.wait_stored, baseline + CAUGHT_AFTER)
    hold()
    (row,) = await sql(settings.database_url, "SELECT digest FROM blobs")  # written before the upload began
    return BigImport(request, answer, Digest(row["digest"]), None, baseline)


def assert_no_partial_object(s3: PrivateS3, digest: Digest, work: Path) -> None:
    """Nothing under the digest's key, or the whole blob: a server that resumes after its client gave up may still
    finish storing what the client had sent (an object without a row, which GC and verify must then name)."""
    store = s3.store()
    if store.exists(digest):
        store.download(digest, work / "check.tar.zst")  # IntegrityError unless size and sha256 match its record


async def upload_in_flight(s3: PrivateS3, hold: Callable[[], None]) -> tuple[Digest, str]:
    """Wait until a multipart upload of a blob has stored its first part (and has more to send), call `hold` at
    once, and return the upload's digest and id."""
    client = s3.client()

    def look() -> tuple[Digest, str] | None:
        for upload in client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", []):
            parts = client.list_parts(Bucket=s3.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            digest = digest_from_key(upload["Key"])
            if parts.get("Parts") and digest is not None:
                hold()
                return digest, str(upload["UploadId"])
        return None

    async def seen() -> tuple[Digest, str] | None:
        return await asyncio.to_thread(look)

    found: tuple[Digest, str] = await waiting.until(seen, "a blob's multipart upload with a part stored", BOUND)
    return found


async def template_rows(settings: AppSettings, code: str) -> list[Any]:
    return await sql(
        settings.database_url, "SELECT id, import_state, current_version_id FROM task_templates WHERE code = $1", code
    )


async def blob_row(settings: AppSettings, digest: Digest) -> list[Any]:
    return await sql(settings.database_url, "SELECT digest FROM blobs WHERE digest = $1", digest.hex)


async def maintenance(settings: AppSettings, *args: str) -> dict[str, Any]:
    """`ahop gc|verify … --grace 0 --json` as an operator runs it; its report."""
    done = await ahop_on_server(settings, *args, "--grace", "0", "--json")
    assert done.returncode in (0, 1), done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)["report"]
    return report


async def assert_nothing_left_unreported(settings: AppSettings, s3: PrivateS3) -> None:
    """No version row without its object; whatever else is in the bucket or the blob rows (an unfinished upload, an
    object or a row that no version references) is named by verify or GC, GC collects it, and verify is then clean."""
    store = s3.store()
    versions = await sql(settings.database_url, "SELECT DISTINCT digest FROM template_versions")
    for row in versions:
        assert store.exists(Digest(row["digest"])), f"version of sha256:{row['digest']} has no object"
    referenced = {f"sha256:{row['digest']}" for row in versions}
    rows = {f"sha256:{row['digest']}" for row in await sql(settings.database_url, "SELECT digest FROM blobs")}
    objects = {str(item.digest) for item in store.list_blobs()}
    pending = list(store.list_pending_uploads())

    verified = await maintenance(settings, "verify")
    named = set(verified["orphan_digests"]) | {problem["digest"] for problem in verified["problems"]}
    planned = await maintenance(settings, "gc", "--dry-run")
    collectable = set(planned["candidate_digests"]) | set(planned["orphan_digests"])
    leftovers = (rows | objects) - referenced
    assert leftovers <= named | collectable, (leftovers, verified, planned)
    assert leftovers <= collectable, (leftovers, planned)
    assert planned["stale_uploads"] == len(pending), (pending, planned)

    collected = await maintenance(settings, "gc")
    assert collected["uploads_aborted"] == len(pending), collected
    assert list(store.list_pending_uploads()) == []
    clean = await maintenance(settings, "verify")
    assert clean["all_ok"], clean
