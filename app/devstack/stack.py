"""The local stack: for each of Postgres, Redis and S3 whose URL is not given, a real server of our own."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.devstack.errors import StackError
from app.devstack.postgres import PostgresServer, ensure_database
from app.devstack.redis import RedisServer
from app.devstack.seaweed import SeaweedS3
from app.devstack.server import LocalServer
from storage.blobstore import BlobStore, S3Location
from storage.errors import StorageError

SERVICE_KEYS = (
    "AHOP_DATABASE_URL",
    "AHOP_REDIS_URL",
    "AHOP_S3_ENDPOINT_URL",
    "AHOP_S3_ACCESS_KEY_ID",
    "AHOP_S3_SECRET_ACCESS_KEY",
    "AHOP_S3_REGION",
)
"""The settings that name a running service (and its S3 keys and region) for a scratch stack."""


@dataclass
class LocalStack:
    """The service URLs the system runs on, and the servers we started to provide some of them."""

    env: dict[str, str]
    """AHOP_* variables naming every service (given ones passed through, ours filled in)."""
    servers: list[LocalServer] = field(default_factory=list)

    @classmethod
    def start(
        cls, state_dir: Path, given: Mapping[str, str], *, database: str = "ahop", durable: bool = True
    ) -> LocalStack:
        """Start the services `given` does not name; create the database and bucket the system uses.

        Servers boot concurrently; if any fails (or we are interrupted), the ones started are stopped again.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        stack = cls(env={key: value for key, value in given.items() if key.startswith("AHOP_")})
        kinds: list[type[LocalServer]] = []
        if "AHOP_REDIS_URL" not in given:
            kinds.append(RedisServer)
        if "AHOP_S3_ENDPOINT_URL" not in given:
            kinds.append(SeaweedS3)
        if "AHOP_DATABASE_URL" not in given:
            kinds.append(PostgresServer)  # last: its initdb runs while the others boot
        try:
            for kind in kinds:
                stack.servers.append(kind.launch(state_dir, durable=durable))
            for server in stack.servers:
                server.wait_ready()
            stack._fill_env(database)
        except BaseException:
            stack.stop()
            raise
        return stack

    @classmethod
    def scratch(cls, state_dir: Path) -> LocalStack:
        """A stack for a test session or a benchmark: the services the environment names (`SERVICE_KEYS`), and
        servers of our own that keep nothing once stopped for the others, in the `postgres` database."""
        given = {key: os.environ[key] for key in SERVICE_KEYS if key in os.environ}
        return cls.start(state_dir, given, database="postgres", durable=False)

    def _fill_env(self, database: str) -> None:
        for server in self.servers:
            if isinstance(server, PostgresServer):
                ensure_database(server.url(), database)
                self.env["AHOP_DATABASE_URL"] = server.url(database)
            elif isinstance(server, RedisServer):
                self.env["AHOP_REDIS_URL"] = server.url()
            elif isinstance(server, SeaweedS3):
                self.env["AHOP_S3_ENDPOINT_URL"] = server.endpoint_url
                self.env["AHOP_S3_ACCESS_KEY_ID"] = server.credentials.access_key_id
                self.env["AHOP_S3_SECRET_ACCESS_KEY"] = server.credentials.secret_access_key
        self.env.setdefault("AHOP_S3_BUCKET", "ahop")

    def s3_location(self, bucket: str | None = None) -> S3Location:
        return S3Location(
            endpoint_url=self.env.get("AHOP_S3_ENDPOINT_URL"),
            bucket=bucket or self.env["AHOP_S3_BUCKET"],
            access_key_id=self.env.get("AHOP_S3_ACCESS_KEY_ID"),
            secret_access_key=self.env.get("AHOP_S3_SECRET_ACCESS_KEY"),
            region=self.env.get("AHOP_S3_REGION", "us-east-1"),
        )

    def ensure_bucket(self, bucket: str | None = None, *, timeout: float = 30.0) -> None:
        """Create the bucket, retrying while a just-started S3 server finishes coming up."""
        store = BlobStore(self.s3_location(bucket))
        deadline = time.monotonic() + timeout
        while True:
            try:
                store.ensure_bucket()
                return
            except StorageError as exc:
                if time.monotonic() > deadline:
                    raise StackError(f"S3: could not create the bucket: {exc}") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop every server this stack started, last started first; never anything else."""
        for server in reversed(self.servers):
            with contextlib.suppress(Exception):
                server.stop()
        self.servers.clear()
