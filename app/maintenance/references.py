"""What keeps a blob (DESIGN §6): a retained template version or an unfinished task.

A version is retained while it is its template's current version, one of the template's newest `keep` versions,
or the version an unfinished task runs. Retention deletes the other version rows; GC's mark uses the same
definition, so that a dry run (which deletes no version) names the blobs a real run then frees.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, exists, func, or_, select
from sqlalchemy.sql import Select, Subquery
from sqlalchemy.sql.expression import Exists

from app.db.models import UNFINISHED_STATUSES, Blob, Task, TaskTemplate, TemplateVersion
from storage.digest import Digest

UNFINISHED = [status.value for status in UNFINISHED_STATUSES]


def _ranked_versions() -> Subquery:
    """Every version with its rank among its template's versions, newest first."""
    return select(
        TemplateVersion.id,
        TemplateVersion.digest,
        func.row_number()
        .over(partition_by=TemplateVersion.template_id, order_by=TemplateVersion.version.desc())
        .label("rank"),
    ).subquery("ranked")


def _current(ranked: Subquery) -> Exists:
    return exists().where(TaskTemplate.current_version_id == ranked.c.id)


def _running(ranked: Subquery) -> Exists:
    return exists().where(Task.version_id == ranked.c.id, Task.status.in_(UNFINISHED))


def retained_versions(keep: int) -> Select[int, str]:
    """(id, digest) of every retained version."""
    ranked = _ranked_versions()
    return select(ranked.c.id, ranked.c.digest).where(or_(ranked.c.rank <= keep, _current(ranked), _running(ranked)))


def unretained_versions(keep: int) -> Select[int]:
    """The id of every version that is not retained (the complement of `retained_versions`)."""
    ranked = _ranked_versions()
    return select(ranked.c.id).where(ranked.c.rank > keep, ~_current(ranked), ~_running(ranked))


def held_by_task(digest: SQLColumnExpression[Digest]) -> ColumnElement[bool]:
    return exists().where(Task.digest == digest, Task.status.in_(UNFINISHED))


def held_by_any_version(digest: SQLColumnExpression[Digest]) -> ColumnElement[bool]:
    return exists().where(TemplateVersion.digest == digest)


def unreferenced(keep: int) -> ColumnElement[bool]:
    """True for a blob row that no retained version and no unfinished task references."""
    retained = retained_versions(keep).subquery("retained")
    return and_(~exists().where(retained.c.digest == Blob.digest), ~held_by_task(Blob.digest))


def unreferenced_now() -> ColumnElement[bool]:
    """The check made under the row lock just before deleting: no version row at all, no unfinished task."""
    return and_(~held_by_any_version(Blob.digest), ~held_by_task(Blob.digest))
