"""Maintenance: the reports of GC and verify runs, each blob's last verify outcome, and the indexes GC and
retention delete by.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"

OUTCOMES = "'ok', 'missing', 'corrupt', 'size-mismatch'"


def upgrade() -> None:
    op.add_column("blobs", sa.Column("verify_outcome", sa.String(16), nullable=True))
    op.add_column("blobs", sa.Column("verify_detail", sa.Text(), nullable=True))
    op.create_check_constraint("blobs_verify_outcome_known", "blobs", f"verify_outcome IN ({OUTCOMES})")
    op.create_check_constraint(
        "blobs_verified_with_outcome", "blobs", "(verified_at IS NULL) = (verify_outcome IS NULL)"
    )

    # Retention deletes finished tasks by age: only finished rows are in this index.
    op.create_index("tasks_finished_at", "tasks", ["finished_at"], postgresql_where=sa.text("finished_at IS NOT NULL"))

    # Deleting blob and version rows (GC, retention, template deletion) checks the rows that refer to them.
    op.create_index("tree_digests_digest", "tree_digests", ["digest"])  # cascades from blobs
    op.create_index("tasks_version", "tasks", ["version_id"])  # set to NULL when a version goes; retention asks it
    op.create_index("task_templates_current_version", "task_templates", ["current_version_id"])  # restricts

    op.create_table(
        "maintenance_runs",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.Column("options", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("report", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('gc', 'verify')", name="maintenance_runs_kind_known"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'problems', 'failed')", name="maintenance_runs_status_known"
        ),
        sa.CheckConstraint(
            "(status = 'running') = (finished_at IS NULL)", name="maintenance_runs_finished_at_matches_status"
        ),
    )
    op.create_index("maintenance_runs_kind_started", "maintenance_runs", ["kind", sa.text("started_at DESC")])


def downgrade() -> None:
    op.drop_index("maintenance_runs_kind_started", table_name="maintenance_runs")
    op.drop_table("maintenance_runs")
    op.drop_index("task_templates_current_version", table_name="task_templates")
    op.drop_index("tasks_version", table_name="tasks")
    op.drop_index("tree_digests_digest", table_name="tree_digests")
    op.drop_index("tasks_finished_at", table_name="tasks")
    op.drop_constraint("blobs_verified_with_outcome", "blobs", type_="check")
    op.drop_constraint("blobs_verify_outcome_known", "blobs", type_="check")
    op.drop_column("blobs", "verify_detail")
    op.drop_column("blobs", "verify_outcome")
