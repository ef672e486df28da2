"""Templates run on the worker or on targets; tasks record their inventory snapshot; each host's run has a row.

A template says where it runs (`execution`: `worker` or `targets`), whether its entry runs through sudo
(`require_sudo`), how many hosts run at once (`forks`) and what share of hosts may fail before the task does
(`max_fail_percentage`); existing templates run on the worker, as they did. A task copies these at creation,
with the hosts it runs on as they were then (`targets`, the snapshot), so that retries and reruns never follow the
inventory's or the template's later state. `host_runs` holds one row per host and attempt; an output line records
the host whose run printed it ("" for the worker's own lines).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"

HOST_STATUSES = "'pending', 'running', 'success', 'failed', 'unreachable', 'timeout', 'cancelled', 'lost'"


def _run_fields() -> list[sa.Column[object]]:
    """The fields templates and tasks share: where and how a task runs."""
    return [
        sa.Column("execution", sa.String(16), nullable=False, server_default="worker"),
        sa.Column("require_sudo", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("forks", sa.Integer(), nullable=False, server_default="5"),
        sa.Column("max_fail_percentage", sa.SmallInteger(), nullable=False, server_default="0"),
    ]


def _run_checks(table: str) -> None:
    op.create_check_constraint(f"{table}_execution_known", table, "execution IN ('worker', 'targets')")
    op.create_check_constraint(f"{table}_forks_range", table, "forks BETWEEN 1 AND 1000")
    op.create_check_constraint(f"{table}_max_fail_percentage_range", table, "max_fail_percentage BETWEEN 0 AND 100")


def upgrade() -> None:
    for table in ("task_templates", "tasks"):
        for column in _run_fields():
            op.add_column(table, column)
        _run_checks(table)
    op.add_column("tasks", sa.Column("targets", postgresql.JSONB(), nullable=True))
    op.create_check_constraint(
        "tasks_targets_of_execution",
        "tasks",
        "(execution = 'targets') = (targets IS NOT NULL AND jsonb_typeof(targets) = 'array')",
    )
    op.add_column("task_log_lines", sa.Column("host", sa.String(200), nullable=False, server_default=""))
    op.create_table(
        "host_runs",
        sa.Column("task_id", sa.Uuid(), sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("host_name", sa.String(200), nullable=False),
        sa.Column("host_id", sa.BigInteger(), nullable=True),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task_id", "attempt", "host_name", name="host_runs_pkey"),
        sa.CheckConstraint(f"status IN ({HOST_STATUSES})", name="host_runs_status_known"),
        sa.CheckConstraint("digest IS NULL OR digest ~ '^[0-9a-f]{64}$'", name="host_runs_digest_hex"),
    )


def downgrade() -> None:
    op.drop_table("host_runs")
    op.drop_column("task_log_lines", "host")
    op.drop_constraint("tasks_targets_of_execution", "tasks")
    op.drop_column("tasks", "targets")
    for table in ("tasks", "task_templates"):
        for name in ("execution_known", "forks_range", "max_fail_percentage_range"):
            op.drop_constraint(f"{table}_{name}", table)
        for column in ("max_fail_percentage", "forks", "require_sudo", "execution"):
            op.drop_column(table, column)
