"""SSH key pairs made by OpenSSH's own `ssh-keygen`, and its fingerprints: an implementation independent of ours."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    private_file: Path
    public_file: Path

    @property
    def private(self) -> str:
        return self.private_file.read_text()

    @property
    def public(self) -> str:
        """`TYPE BASE64`, without the comment."""
        return " ".join(self.public_file.read_text().split()[:2])

    @property
    def fingerprint(self) -> str:
        """`SHA256:…` as `ssh-keygen -l` prints it."""
        return ssh_keygen_fingerprint(self.public_file)


def key_pair(directory: Path, name: str, *, kind: str = "ed25519", passphrase: str = "") -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", f"{name}@test", "-f", str(private)], check=True
    )
    return KeyPair(private, private.with_name(f"{name}.pub"))


def ssh_keygen_fingerprint(public_file: Path) -> str:
    """What `ssh-keygen -l` prints as the fingerprint of a key file (public, or private: of its public half)."""
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_file)], check=True, capture_output=True
    )
    return listed.stdout.decode().split()[1]
