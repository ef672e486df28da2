"""Repository credentials at rest: sealed with the first key, opened with any, refused without one."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from app.errors import InvalidInput
from app.services.credentials import CredentialBox, Credentials


def test_keys_rotate_without_losing_stored_credentials() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    credentials = Credentials("https_token", "ghp_secret", "bot")
    sealed_before = CredentialBox([old]).seal(credentials)
    assert b"ghp_secret" not in sealed_before
    rotated = CredentialBox([new, old])
    assert rotated.open(sealed_before) == credentials
    assert CredentialBox([new]).open(rotated.seal(credentials)) == credentials
    with pytest.raises(InvalidInput, match="no longer has"):
        CredentialBox([new]).open(sealed_before)


def test_a_server_without_keys_refuses_to_store_credentials() -> None:
    with pytest.raises(InvalidInput, match="AHOP_SECRET_KEYS"):
        CredentialBox([]).seal(Credentials("ssh_key", "-----BEGIN KEY-----"))
