"""Git repositories, blobs, task templates and their versions, and the tree → digest cache."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"

SHA256_HEX = "~ '^[0-9a-f]{64}$'"


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "git_repositories",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("branch", sa.String(255), nullable=False, server_default="main"),
        sa.Column("auth_kind", sa.String(16), nullable=False, server_default="none"),
        sa.Column("credentials", sa.LargeBinary(), nullable=True),
        sa.Column("head_commit", sa.String(40), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(),
        sa.UniqueConstraint("tenant_id", "name", name="git_repositories_name_unique"),
        sa.CheckConstraint("auth_kind IN ('none', 'https_token', 'ssh_key')", name="git_repositories_auth_known"),
        sa.CheckConstraint("(auth_kind = 'none') = (credentials IS NULL)", name="git_repositories_credentials_match"),
    )
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("tar_size", sa.BigInteger(), nullable=False),
        sa.Column("zst_size", sa.BigInteger(), nullable=False),
        sa.Column("zst_sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="stored"),
        sa.Column("touched_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(f"digest {SHA256_HEX}", name="blobs_digest_form"),
        sa.CheckConstraint(f"zst_sha256 {SHA256_HEX}", name="blobs_zst_sha256_form"),
        sa.CheckConstraint("tar_size > 0 AND zst_size > 0 AND files >= 0", name="blobs_sizes_positive"),
        sa.CheckConstraint("state IN ('stored', 'missing', 'corrupt')", name="blobs_state_known"),
    )
    op.create_table(
        "task_templates",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.Uuid(), sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("code", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("timeout", sa.Integer(), nullable=False, server_default="3600"),
        sa.Column("pool", sa.String(64), nullable=False, server_default="default"),
        sa.Column("source_git_info", postgresql.JSONB(), nullable=True),
        sa.Column("current_version_id", sa.BigInteger(), nullable=True),
        sa.Column("import_state", sa.String(16), nullable=False, server_default="imported"),
        *_timestamps(),
        sa.UniqueConstraint("tenant_id", "code", name="task_templates_code_unique"),
        sa.CheckConstraint("code ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$'", name="task_templates_code_form"),
        sa.CheckConstraint("timeout > 0", name="task_templates_timeout_positive"),
        sa.CheckConstraint("import_state IN ('imported', 'pending')", name="task_templates_import_state_known"),
        sa.CheckConstraint(
            "import_state = 'pending' OR current_version_id IS NOT NULL", name="task_templates_imported_has_version"
        ),
    )
    op.create_table(
        "template_versions",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "template_id", sa.BigInteger(), sa.ForeignKey("task_templates.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        # RESTRICT: a blob row cannot go while a version references it; GC deletes the object only after the row.
        sa.Column("digest", sa.String(64), sa.ForeignKey("blobs.digest", ondelete="RESTRICT"), nullable=False),
        sa.Column("script_type", sa.String(16), nullable=False),
        sa.Column("entry_file", sa.Text(), nullable=False),
        sa.Column("parameters", postgresql.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("source", postgresql.JSONB(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.UniqueConstraint("template_id", "version", name="template_versions_number_unique"),
        sa.CheckConstraint("version > 0", name="template_versions_number_positive"),
        sa.CheckConstraint("script_type IN ('shell', 'python', 'ansible')", name="template_versions_script_known"),
    )
    op.create_index("template_versions_digest", "template_versions", ["digest"])
    op.create_foreign_key(
        "task_templates_current_version",
        "task_templates",
        "template_versions",
        ["current_version_id"],
        ["id"],
        ondelete="RESTRICT",
    )
    op.create_table(
        "tree_digests",
        sa.Column("tree_key", sa.String(300), primary_key=True),
        sa.Column("digest", sa.String(64), sa.ForeignKey("blobs.digest", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tree_digests")
    op.drop_constraint("task_templates_current_version", "task_templates", type_="foreignkey")
    op.drop_table("template_versions")
    op.drop_table("task_templates")
    op.drop_table("blobs")
    op.drop_table("git_repositories")
