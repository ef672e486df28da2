"""Fault tests run the real API, its control loop and real workers: they share the API's fixtures."""

from tests.app.conftest import alice, api_settings

__all__ = ["alice", "api_settings"]
