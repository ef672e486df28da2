"""The inventory: a tenant's target hosts and the credentials that log in to them.

A credential's secrets (the private key and its passphrase, or the password, and the become password) are sealed
with the server's keys as one value; its public half is kept in the clear, so an operator can tell which key it is.
A host names its credential, which cannot be deleted while hosts use it, and pins its SSH host keys.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "target_credentials",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("has_passphrase", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("has_become_password", sa.Boolean(), nullable=False, server_default=sa.false()),
        *_timestamps(),
        sa.UniqueConstraint("tenant_id", "name", name="target_credentials_name_unique"),
        sa.CheckConstraint("kind IN ('ssh_key', 'password')", name="target_credentials_kind_known"),
        sa.CheckConstraint("(kind = 'ssh_key') = (public_key IS NOT NULL)", name="target_credentials_key_public"),
    )
    op.create_table(
        "hosts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("address", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False, server_default="22"),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("labels", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")),
        sa.Column("variables", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column(
            "credential_id",
            sa.BigInteger(),
            sa.ForeignKey("target_credentials.id", ondelete="RESTRICT"),
            nullable=True,
        ),
        sa.Column("host_keys", postgresql.ARRAY(sa.Text()), nullable=False, server_default=sa.text("'{}'::text[]")),
        *_timestamps(),
        sa.UniqueConstraint("tenant_id", "name", name="hosts_name_unique"),
        sa.CheckConstraint("port BETWEEN 1 AND 65535", name="hosts_port_range"),
        sa.CheckConstraint("jsonb_typeof(variables) = 'object'", name="hosts_variables_object"),
    )
    op.create_index("hosts_labels", "hosts", ["labels"], postgresql_using="gin")
    op.create_index("hosts_credential", "hosts", ["credential_id"])


def downgrade() -> None:
    op.drop_table("hosts")
    op.drop_table("target_credentials")
