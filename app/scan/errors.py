"""Errors of the scan. Malformed headers and surveys are never errors: they are `Problem`s on their candidate.

ScanError            the tree itself cannot be read: an unknown revision, a damaged repository
"""

from __future__ import annotations


class ScanError(Exception):
    """The scan could not list or read the tree at all; nothing about any one candidate."""
