"""Each stored output line records the attempt that wrote it.

Lines stored before this revision keep no attempt (NULL), so the upgrade rewrites no row: readers take such a line
as attempt 1's when its task never had another attempt; for a task that was retried, which attempt wrote each of its
older lines is not known (shown as null).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("task_log_lines", sa.Column("attempt", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("task_log_lines", "attempt")
