"""Target hosts for the tests of `targets`: real OpenSSH servers (tests/support/ssh_hosts.py).

`hosts` are started once per test module and must be left as found (running, not paused); a test that pauses or
stops a host takes `lone_host`, its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ssh_hosts import TargetHost, target_hosts


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TargetHost]]:
    """Three running hosts shared by the tests of one module."""
    with target_hosts(tmp_path_factory.mktemp("hosts"), 3) as started:
        yield started


@pytest.fixture
def lone_host(tmp_path: Path) -> Iterator[TargetHost]:
    """A host of the test's own, which it may pause or stop."""
    with target_hosts(tmp_path / "lone", 1) as started:
        yield started[0]
