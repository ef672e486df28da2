"""Real OpenSSH servers as the hosts tests manage (`app.devstack.ssh_hosts` runs them), and what tests mark with.

A test host's user may log in with the client key (no passphrase), with the protected client key and its
passphrase, or (as root) with a password. Not root, every host's user is the current user, with the current user's
home.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.devstack.ssh_hosts import (
    AS_ROOT,
    DEFAULT_HOST_KEY_KINDS,
    HostsLayout,
    KeyFile,
    SshHost,
    exited,
    running_ssh_hosts,
)

__all__ = ["AS_ROOT", "TargetHost", "exited", "needs_root", "target_hosts"]

needs_root = pytest.mark.skipif(
    not AS_ROOT,
    reason="needs root (sshd checks passwords only as root, and only root makes users and sudo rules): "
    "run make test as root, as CI does",
)


class TargetHost(SshHost):
    """A test's host: its user also logs in with a key that needs a passphrase."""

    @property
    def protected_client_key(self) -> Path:
        """Private key authorized for `user` that needs `client_key_passphrase`."""
        return self.client_keys[1].path

    @property
    def client_key_passphrase(self) -> str:
        return self.client_keys[1].passphrase


@contextmanager
def target_hosts(
    tmp_path: Path, count: int, *, host_key_kinds: tuple[str, ...] = DEFAULT_HOST_KEY_KINDS
) -> Iterator[list[TargetHost]]:
    """`count` running hosts (host-1 … host-count), each with host keys of `host_key_kinds` (KEYGEN_ARGUMENTS);
    all stopped, and their users removed, at the end."""
    client = tmp_path / "client"
    run = secrets.token_hex(3)  # users of tests running side by side never clash
    layout = HostsLayout(
        directory=tmp_path,
        names=[f"host-{index}" for index in range(1, count + 1)],
        client_keys=[
            KeyFile(client / "id_ed25519", "ed25519", "ahop-test-client"),
            KeyFile(
                client / "id_ed25519_protected", "ed25519", "ahop-test-client-protected", secrets.token_urlsafe(12)
            ),
        ],
        user_name=lambda index: f"ahop-h{index}-{run}",
        host_key_kinds=host_key_kinds,
    )
    with running_ssh_hosts(layout, TargetHost) as hosts:
        yield hosts
