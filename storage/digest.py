"""`Digest`: the content address of a template, `sha256:<64 lowercase hex>` of its canonical tar."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from storage.errors import InvalidDigest

if TYPE_CHECKING:
    import hashlib

ALGORITHM = "sha256"
_FORM = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Digest:
    """A validated digest. `str(digest)` is its one textual form."""

    hex: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.hex):
            raise InvalidDigest(f"expected 64 lowercase hex characters of a sha256, got {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse `sha256:<64 lowercase hex>`; anything else raises `InvalidDigest` saying what is expected."""
        if not isinstance(text, str) or not _FORM.fullmatch(text):
            shown = text if isinstance(text, str) and len(text) <= 80 else f"{str(text)[:80]}…"
            raise InvalidDigest(f"expected a digest of the form sha256:<64 lowercase hex>, got {shown!r}")
        return cls(text.removeprefix("sha256:"))

    @classmethod
    def of(cls, hasher: hashlib._Hash) -> Digest:
        """The digest a finished sha256 hasher computed."""
        if hasher.name != ALGORITHM:
            raise InvalidDigest(f"expected a {ALGORITHM} hasher, got {hasher.name}")
        return cls(hasher.hexdigest())

    def __str__(self) -> str:
        return f"{ALGORITHM}:{self.hex}"
