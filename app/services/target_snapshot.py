"""A task's targets as they are when it is created: the inventory snapshot.

A task names hosts (by id or name) and labels (every host with one of them); it records, per host, what its runs
need and what an operator later needs to know about them: id, name, address, port, login user, the credential's id,
the pinned host keys with their fingerprints, labels and variables. Retries and reruns use this snapshot, as a
task's digest pins its content: a host that changes or goes after the task was created changes nothing of it.

A host that could not be logged in to is refused now, not at its run: one without a credential, or without pinned
host keys. Every problem of the request is named at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Host
from app.errors import InvalidInput
from targets.host_keys import parse_host_key

MAX_TARGETS = 10_000
"""Hosts one task may run on."""


async def snapshot_targets(
    session: AsyncSession, tenant_id: uuid.UUID, hosts: Sequence[int | str], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """The snapshot of the hosts named and those with one of `labels`, by name, each once; `InvalidInput` naming
    every host or label that is wrong."""
    ids = sorted({host for host in hosts if isinstance(host, int)})
    names = sorted({host for host in hosts if isinstance(host, str)})
    wanted = []
    if ids:
        wanted.append(Host.id.in_(ids))
    if names:
        wanted.append(Host.name.in_(names))
    if labels:
        wanted.append(Host.labels.overlap(sorted(set(labels))))
    if not wanted:
        return []
    rows = list(
        await session.scalars(select(Host).where(Host.tenant_id == tenant_id, or_(*wanted)).order_by(Host.name))
    )
    problems = _missing(rows, ids, names, labels)
    if len(rows) > MAX_TARGETS:
        problems["hosts"].append(f"{len(rows)} hosts: a task runs on at most {MAX_TARGETS}")
    problems["hosts"] += [reason for reason in map(_unready, rows) if reason]
    named = {field: "; ".join(reasons) for field, reasons in problems.items() if reasons}
    if named:
        raise InvalidInput("; ".join(named.values()), named)
    return [_entry(row) for row in rows]


def _missing(rows: list[Host], ids: list[int], names: list[str], labels: Sequence[str]) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {"hosts": [], "labels": []}
    unknown = [str(i) for i in ids if i not in {row.id for row in rows}]
    unknown += [repr(name) for name in names if name not in {row.name for row in rows}]
    if unknown:
        problems["hosts"].append(f"no host {', '.join(unknown)} in the inventory")
    found_labels = {label for row in rows for label in row.labels}
    if unmatched := sorted(set(labels) - found_labels):
        problems["labels"].append(f"no host has the label {', '.join(map(repr, unmatched))}")
    return problems


def _unready(row: Host) -> str | None:
    if row.credential_id is None:
        return f"host {row.name!r} has no credential (ahop host update {row.name} --credential NAME)"
    if not row.host_keys:
        return f"host {row.name!r} has no pinned host keys (ahop host scan-keys {row.name})"
    return None


def _entry(row: Host) -> dict[str, Any]:
    keys = [parse_host_key(line) for line in row.host_keys]
    return {
        "host_id": row.id,
        "name": row.name,
        "address": row.address,
        "port": row.port,
        "user": row.username,
        "credential_id": row.credential_id,
        "host_keys": [key.public for key in keys],
        "fingerprints": [key.fingerprint for key in keys],
        "labels": list(row.labels),
        "variables": dict(row.variables),
    }
