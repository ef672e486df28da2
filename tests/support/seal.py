"""The workers' seal of the test session: the server and every worker a test starts hold the same keys."""

from __future__ import annotations

from cryptography.fernet import Fernet

WORKER_SECRET_KEYS = Fernet.generate_key().decode()
"""AHOP_WORKER_SECRET_KEYS of every server and worker of the session."""
