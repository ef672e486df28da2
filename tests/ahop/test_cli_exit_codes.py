"""One map from errors to exit codes for every `ahop` command, and `ahop --version`."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version

from ahop.exit_codes import code_for_error, code_for_status
from app.errors import Conflict, InvalidInput, NotFound, Unavailable, Upstream
from app.maintenance.runs import AlreadyRunning
from storage.errors import IntegrityError, InvalidDigest, StorageUnavailable


def ahop(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AHOP_")}
    return subprocess.run(
        [sys.executable, "-m", "ahop", *args], capture_output=True, text=True, env={**base, **(env or {})}, check=False
    )


def test_version_prints_the_installed_package_version() -> None:
    result = ahop("--version")
    assert (result.returncode, result.stdout) == (0, f"ahop {version('ahop')}\n")


def test_every_error_maps_to_one_exit_code() -> None:
    assert [
        code_for_error(exc)
        for exc in (
            NotFound("x"),
            InvalidInput("x"),
            Conflict("x"),
            Unavailable("x"),
            Upstream("x"),
            AlreadyRunning("x"),
            InvalidDigest("x"),
            IntegrityError("x"),
            StorageUnavailable("x"),
            RuntimeError("a bug"),
        )
    ] == [2, 2, 2, 3, 3, 4, 2, 1, 3, None]
    assert [code_for_status(status) for status in (200, 400, 401, 403, 404, 409, 422, 500, 502, 503)] == [
        0,
        2,
        2,
        2,
        2,
        2,
        2,
        3,
        3,
        3,
    ]
