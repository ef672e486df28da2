"""Reading task templates: lists with search, one template, its versions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Blob, TaskTemplate, TemplateVersion
from app.errors import NotFound


@dataclass(frozen=True)
class TemplateView:
    """A template with its current version and that version's blob."""

    template: TaskTemplate
    version: TemplateVersion | None
    blob: Blob | None


def _current() -> Select[TaskTemplate, TemplateVersion, Blob]:
    return (
        select(TaskTemplate, TemplateVersion, Blob)
        .outerjoin(TemplateVersion, TemplateVersion.id == TaskTemplate.current_version_id)
        .outerjoin(Blob, Blob.digest == TemplateVersion.digest)
    )


class Templates:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: uuid.UUID, template_id: int) -> TemplateView:
        row = (
            await self.session.execute(
                _current().where(TaskTemplate.id == template_id, TaskTemplate.tenant_id == tenant_id)
            )
        ).first()
        if row is None:
            raise NotFound(f"no template {template_id}")
        template, version, blob = row
        return TemplateView(template, version, blob)

    async def page(
        self, tenant_id: uuid.UUID, *, script_type: str | None, search: str | None, page: int, page_size: int
    ) -> tuple[list[TemplateView], int]:
        conditions = [TaskTemplate.tenant_id == tenant_id]
        if script_type:
            conditions.append(TemplateVersion.script_type == script_type)
        if search:
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conditions.append(
                or_(
                    TaskTemplate.name.ilike(pattern),
                    TaskTemplate.code.ilike(pattern),
                    TaskTemplate.description.ilike(pattern),
                )
            )
        query = _current().where(*conditions)
        total = await self.session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = await self.session.execute(
            query.order_by(TaskTemplate.id).offset((page - 1) * page_size).limit(page_size)
        )
        return [TemplateView(template, version, blob) for template, version, blob in rows], total

    async def versions(self, tenant_id: uuid.UUID, template_id: int) -> list[tuple[TemplateVersion, Blob]]:
        await self.get(tenant_id, template_id)
        rows = await self.session.execute(
            select(TemplateVersion, Blob)
            .join(Blob, Blob.digest == TemplateVersion.digest)
            .where(TemplateVersion.template_id == template_id)
            .order_by(TemplateVersion.version.desc())
        )
        return [(version, blob) for version, blob in rows]
