"""Where a version's parameter schema came from: `scanned` (read from the entry's header or the directory's survey
at import or sync) or `manual` (given by the client).

Versions written before this revision were imported either with parameters given by hand or, without them, with
none at all (imports then dropped the scanned schema). Those with an empty schema are marked `scanned`, so the next
sync reads their schema from Git; those with a schema keep it as `manual`.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column(
        "template_versions",
        sa.Column("parameters_source", sa.String(16), nullable=False, server_default="manual"),
    )
    op.execute("UPDATE template_versions SET parameters_source = 'scanned' WHERE parameters = '[]'::jsonb")
    op.create_check_constraint(
        "template_versions_parameters_source_known",
        "template_versions",
        "parameters_source IN ('scanned', 'manual')",
    )


def downgrade() -> None:
    op.drop_constraint("template_versions_parameters_source_known", "template_versions", type_="check")
    op.drop_column("template_versions", "parameters_source")
