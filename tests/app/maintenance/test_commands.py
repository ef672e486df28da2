"""`ahop gc` and `ahop verify` as an operator runs them: reports on stdout, progress on stderr, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.support.blobs import put_orphan, remove_object
from tests.support.cli import ahop_on_server, server_command_env
from tests.support.deployment import Deployment
from tests.support.s3 import s3_client
from tests.support.templates import import_template


async def test_gc_prints_its_report_and_a_second_gc_at_once_exits_4(own: Deployment, origin: Path) -> None:
    orphan = put_orphan(s3_client(own.settings.s3_location()), own.settings.s3_bucket)

    dry = await ahop_on_server(own.settings, "gc", "--dry-run", "--grace", "0", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["report"]["orphan_digests"] == [str(orphan)]

    held = await own.maintenance.start_gc(dry_run=True, grace=0, wait=False, started_by="someone else")
    busy = await ahop_on_server(own.settings, "gc", "--grace", "0")
    assert busy.returncode == 4
    assert f"already running (run {held.run_id}" in busy.stderr
    await held.execute(None)

    real = await ahop_on_server(own.settings, "gc", "--grace", "0")
    assert real.returncode == 0, real.stderr
    assert "objects without a row: 1 removed" in real.stdout
    assert "gc: orphans:" in real.stderr  # plain progress lines when stderr is not a terminal


async def test_verify_exits_0_when_all_is_well_1_on_a_problem_and_2_on_bad_input(own: Deployment, origin: Path) -> None:
    imported = await import_template(own.client, own.carol, origin, "checked", parameters=[])
    digest = imported["artifact"]["digest"]

    good = await ahop_on_server(own.settings, "verify", "--grace", "0")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "ok 1, missing 0, corrupt 0" in good.stdout

    remove_object(own.settings, digest)
    bad = await ahop_on_server(own.settings, "verify", "--digest", digest, "--grace", "0", "--json")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)["report"]
    assert report["problems"][0]["digest"] == digest
    assert report["problems"][0]["outcome"] == "missing"

    repaired = await ahop_on_server(own.settings, "verify", "--repair", "--grace", "0")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: packed again from repository" in repaired.stdout

    malformed = await ahop_on_server(own.settings, "verify", "--digest", "sha256:nothex")
    assert malformed.returncode == 2
    assert "expected a digest of the form sha256:<64 lowercase hex>" in malformed.stderr
    unknown = await ahop_on_server(own.settings, "verify", "--digest", "sha256:" + "0" * 64)
    assert unknown.returncode == 2
    assert f"no blob sha256:{'0' * 64} is recorded" in unknown.stderr
    both = await ahop_on_server(own.settings, "verify", "--sample", "3", "--all")
    assert both.returncode == 2


async def test_on_a_terminal_verify_draws_a_progress_bar_with_counts_and_bytes(own: Deployment, origin: Path) -> None:
    imported = await import_template(own.client, own.carol, origin, "shown", parameters=[])
    controller, terminal = pty.openpty()
    try:
        env = server_command_env(own.settings)
        env.update(COLUMNS="120", TERM="xterm")
        process = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ahop", "verify", "--grace", "0"],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            env=env,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        drawn = b""
        with contextlib.suppress(OSError):  # EIO once the other end is closed and drained
            while chunk := os.read(controller, 65536):
                drawn += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert process.returncode == 0, process.stdout
    screen = drawn.decode(errors="replace")
    assert "verify blobs" in screen
    assert "1/1" in screen
    assert f"{imported['artifact']['zst_size']} bytes" in screen
    assert "ok 1" in process.stdout  # the report stays on stdout
