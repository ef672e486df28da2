"""What every local server has in common: a process of ours, a readiness probe and a clean stop."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self

from app.devstack.processes import ManagedProcess


class LocalServer(ABC):
    """A server process started from a wheel. `launch` returns at once; `wait_ready` blocks with a bound.

    Launching every server first and then waiting for each lets them boot concurrently without threads,
    so an interrupt can never leave a server started behind our back.
    """

    process: ManagedProcess

    @classmethod
    @abstractmethod
    def launch(cls, state_dir: Path, *, durable: bool = True) -> Self:
        """Start the process. `durable=False` is a throwaway server for tests: its data goes when it stops."""

    @property
    @abstractmethod
    def where(self) -> str:
        """Where it listens, for messages."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether it answers requests now."""

    @classmethod
    def start(cls, state_dir: Path, *, durable: bool = True, timeout: float = 60.0) -> Self:
        """Launch and wait until ready; stop it again if it never gets there."""
        server = cls.launch(state_dir, durable=durable)
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def wait_ready(self, timeout: float = 60.0) -> None:
        self.process.wait_ready(self.ready, where=self.where, timeout=timeout)

    def stop(self) -> None:
        self.process.stop(timeout=30)
