"""Fault tests run the real API, its control loop and real workers: they share the API's fixtures."""

from tests.faults.s3_faults import api, big_origin, carol, faults_settings, private_s3

__all__ = ["api", "big_origin", "carol", "faults_settings", "private_s3"]
