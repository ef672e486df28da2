"""Tasks, their stored output, and the retry policy a template may opt in to."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"

STATUSES = "'pending', 'queued', 'running', 'success', 'failed', 'timeout', 'cancelled', 'lost'"
UNFINISHED = "'pending', 'queued', 'running'"
RETRYABLE = "ARRAY['failed', 'timeout', 'lost']::text[]"


def upgrade() -> None:
    # Retries are opt-in per template (DESIGN §5): a script may not be safe to run twice.
    op.add_column("task_templates", sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="1"))
    op.add_column(
        "task_templates",
        sa.Column("retry_on", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")),
    )
    op.create_check_constraint("task_templates_max_attempts_range", "task_templates", "max_attempts BETWEEN 1 AND 10")
    op.create_check_constraint("task_templates_retry_on_known", "task_templates", f"retry_on <@ {RETRYABLE}")
    op.create_check_constraint("task_templates_pool_form", "task_templates", "pool ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'")

    op.create_table(
        "tasks",
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        # The task keeps what it ran (code, version, digest) when its template goes: history outlives templates.
        sa.Column(
            "template_id", sa.BigInteger(), sa.ForeignKey("task_templates.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("template_code", sa.String(100), nullable=False),
        sa.Column(
            "version_id", sa.BigInteger(), sa.ForeignKey("template_versions.id", ondelete="SET NULL"), nullable=True
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        # No foreign key: a finished task must not keep its blob from GC; an unfinished one does (DESIGN §6).
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False, server_default=""),
        sa.Column("params", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("sealed_params", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("retry_on", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(255), nullable=True),
        sa.Column("log_lines", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("log_truncated", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(f"status IN ({STATUSES})", name="tasks_status_known"),
        sa.CheckConstraint("digest ~ '^[0-9a-f]{64}$'", name="tasks_digest_form"),
        sa.CheckConstraint("attempt BETWEEN 1 AND max_attempts", name="tasks_attempt_in_range"),
        sa.CheckConstraint("timeout > 0", name="tasks_timeout_positive"),
        sa.CheckConstraint(f"retry_on <@ {RETRYABLE}", name="tasks_retry_on_known"),
        sa.CheckConstraint(
            f"(status IN ({UNFINISHED})) = (finished_at IS NULL)", name="tasks_finished_at_matches_status"
        ),
    )
    op.create_index("tasks_tenant_created", "tasks", ["tenant_id", sa.text("created_at DESC")])
    op.create_index("tasks_template", "tasks", ["template_id"])
    # The control loop scans only unfinished tasks; keep that index small.
    op.create_index(
        "tasks_unfinished", "tasks", ["status", "updated_at"], postgresql_where=sa.text(f"status IN ({UNFINISHED})")
    )
    op.create_index(
        "tasks_unfinished_digest", "tasks", ["digest"], postgresql_where=sa.text(f"status IN ({UNFINISHED})")
    )

    op.create_table(
        "task_log_lines",
        sa.Column("task_id", sa.Uuid(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("stream", sa.String(6), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "seq", name="task_log_lines_pkey"),
        sa.CheckConstraint("stream IN ('stdout', 'stderr')", name="task_log_lines_stream_known"),
        sa.CheckConstraint("seq > 0", name="task_log_lines_seq_positive"),
    )


def downgrade() -> None:
    op.drop_table("task_log_lines")
    op.drop_table("tasks")
    op.drop_constraint("task_templates_pool_form", "task_templates", type_="check")
    op.drop_constraint("task_templates_retry_on_known", "task_templates", type_="check")
    op.drop_constraint("task_templates_max_attempts_range", "task_templates", type_="check")
    op.drop_column("task_templates", "retry_on")
    op.drop_column("task_templates", "max_attempts")
