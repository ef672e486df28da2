"""What the scan tests read first off a template candidate."""

from __future__ import annotations

from app.scan.candidates import Candidate


def where_and_what(candidate: Candidate) -> tuple[str, str | None, str, str]:
    """Where a candidate's files are, what runs, and what it is called: its original_path, entry_file, code and
    name, the four an operator checks before importing it."""
    return (candidate.original_path, candidate.entry_file, candidate.code, candidate.name)
