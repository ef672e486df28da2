"""Repository credentials at rest: encrypted with the server's keys, never returned by the API.

Keys come from settings (AHOP_SECRET_KEYS, comma-separated Fernet keys): the first encrypts, all decrypt, so a key
can be rotated by putting the new one first and keeping the old one until every row has been re-encrypted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.errors import InvalidInput


@dataclass(frozen=True)
class Credentials:
    """An https token (with an optional user name) or an ssh private key."""

    kind: str  # "https_token" | "ssh_key"
    secret: str
    username: str = ""


class CredentialBox:
    def __init__(self, keys: list[str]) -> None:
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys]) if keys else None

    def seal(self, credentials: Credentials) -> bytes:
        if self._fernet is None:
            raise InvalidInput(
                "this server has no AHOP_SECRET_KEYS, so it cannot store repository credentials",
                {"credentials": "not accepted by this server"},
            )
        payload = {"kind": credentials.kind, "secret": credentials.secret, "username": credentials.username}
        return self._fernet.encrypt(json.dumps(payload).encode())

    def open(self, sealed: bytes) -> Credentials:
        if self._fernet is None:
            raise InvalidInput("this server has no AHOP_SECRET_KEYS to decrypt repository credentials")
        try:
            payload = json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise InvalidInput(
                "the repository's credentials were sealed with a key this server no longer has"
            ) from None
        return Credentials(kind=payload["kind"], secret=payload["secret"], username=payload.get("username", ""))

    def seal_json(self, value: Any) -> bytes:
        """Encrypt any JSON value (a task's password parameters); `InvalidInput` when this server has no keys."""
        if self._fernet is None:
            raise InvalidInput("this server has no AHOP_SECRET_KEYS, so it cannot store secret values")
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode())

    def open_json(self, sealed: bytes) -> Any:
        """Decrypt what `seal_json` wrote; `InvalidInput` when no key of this server opens it."""
        if self._fernet is None:
            raise InvalidInput("this server has no AHOP_SECRET_KEYS to decrypt secret values")
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            raise InvalidInput("the secret values were sealed with a key this server no longer has") from None
