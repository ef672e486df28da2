"""How a long run tells its watcher how far it got: phases with a total, and counts and bytes done in each."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def phase(self, name: str, total: int | None = None) -> None:
        """A new phase starts; `total` items are expected (None: unknown)."""

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        """`items` more of the phase are done, carrying `nbytes` bytes."""


class Silent:
    """Progress that nobody watches."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, items: int = 1, nbytes: int = 0) -> None:
        pass
