"""A job's secrets sealed for the workers: password parameters and host logins never lie in Redis as plaintext.

The server seals, a worker opens, with the keys of `AHOP_WORKER_SECRET_KEYS` (comma-separated Fernet keys that the
server and every worker hold, and nothing else: not the database's AHOP_SECRET_KEYS, which only the server has).
The first key seals and all of them open, so a key is rotated by putting a new one first on every host, then
dropping the old one once no job sealed with it can still wait. A token says when it was sealed; a worker opens it
only within `AHOP_WORKER_SEAL_TTL` seconds of that, so a job copied out of Redis stops being worth anything.

With `app` this module shares only the format; `worker.protocol` carries the token as `TaskJob.sealed`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel, Field, SecretStr

DEFAULT_SEAL_TTL = 7 * 24 * 3600
"""Seconds a sealed job may wait for a worker; a longer wait fails the attempt, saying to retry it (which seals
again)."""


class SealError(Exception):
    """Secrets that cannot be sealed or opened here: no keys, another key, an expired or damaged token."""


@dataclass(frozen=True)
class LoginSecret:
    """How a worker logs in to the hosts of one credential: a private key (with its passphrase) or a password, and
    the password sudo asks for. Its repr shows no secret."""

    private_key: str | None = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    become_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobSecrets:
    """Everything secret one job needs: password parameter values by name, and logins by `JobHost.login`."""

    params: dict[str, Any] = field(default_factory=dict, repr=False)
    logins: dict[str, LoginSecret] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return bool(self.params or self.logins)

    def unmasked(self, params: dict[str, Any]) -> dict[str, Any]:
        """A job's `params` with each password's sealed value in place of its mask (version 3 keeps the name
        there, masked), in the template's order."""
        return {name: self.params.get(name, value) for name, value in params.items()}


class SealSettings(BaseModel):
    """The settings of the seal, one set of fields for the server and the worker (each reads them with its own)."""

    worker_secret_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated Fernet keys shared by the server and the workers only; the first seals a "
        "job's secrets (password parameters, host logins), all open them.",
    )
    worker_seal_ttl: int = Field(
        default=DEFAULT_SEAL_TTL, gt=0, description="Seconds after sealing within which a worker opens a job's secrets."
    )

    def worker_seal(self) -> WorkerSeal:
        """The seal these settings describe."""
        keys = self.worker_secret_keys.get_secret_value() if self.worker_secret_keys else None
        return WorkerSeal.from_setting(keys, self.worker_seal_ttl)


class WorkerSeal:
    """Seals and opens `JobSecrets` with the workers' keys."""

    def __init__(self, keys: list[str], ttl: int = DEFAULT_SEAL_TTL) -> None:
        try:
            self._fernet = MultiFernet([Fernet(key.strip().encode()) for key in keys]) if keys else None
        except ValueError as error:
            raise SealError(
                f"AHOP_WORKER_SECRET_KEYS holds a value that is not a Fernet key ({error}); expected comma-separated "
                "url-safe base64 keys of 32 bytes, as cryptography's Fernet.generate_key() makes them"
            ) from None
        self.ttl = ttl

    @classmethod
    def from_setting(cls, value: str | None, ttl: int = DEFAULT_SEAL_TTL) -> WorkerSeal:
        """The seal of a comma-separated setting; empty or None makes a seal without keys."""
        return cls([key for key in (value or "").split(",") if key.strip()], ttl)

    @property
    def has_keys(self) -> bool:
        return self._fernet is not None

    def seal(self, secrets: JobSecrets) -> str:
        if self._fernet is None:
            raise SealError(
                "no AHOP_WORKER_SECRET_KEYS are set, so secrets cannot be sent to the workers; set the same keys on "
                "the server and every worker"
            )
        return self._fernet.encrypt(json.dumps(asdict(secrets), separators=(",", ":")).encode()).decode()

    def open(self, token: str) -> JobSecrets:
        if self._fernet is None:
            raise SealError(
                "this worker has no AHOP_WORKER_SECRET_KEYS, so it cannot open the job's secrets; give it the "
                "server's AHOP_WORKER_SECRET_KEYS"
            )
        try:
            payload = json.loads(self._fernet.decrypt(token.encode(), ttl=self.ttl))
        except InvalidToken:
            raise SealError(self._why_not(token)) from None
        return JobSecrets(
            params=dict(payload.get("params", {})),
            logins={name: LoginSecret(**login) for name, login in payload.get("logins", {}).items()},
        )

    def _why_not(self, token: str) -> str:
        assert self._fernet is not None
        try:
            self._fernet.decrypt(token.encode())
        except InvalidToken:
            return (
                "the job's secrets were sealed with a key this worker does not hold (or are damaged); give the "
                "worker the server's AHOP_WORKER_SECRET_KEYS"
            )
        return (
            f"the job's secrets were sealed more than {self.ttl} s ago (AHOP_WORKER_SEAL_TTL) and have expired; "
            "retry the task, which seals them again"
        )
