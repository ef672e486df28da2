"""ORM rows. They never reach the wire: the API has its own schemas."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.db.digest_column import DigestColumn
from storage.digest import Digest


class Base(DeclarativeBase):
    pass


class Role(enum.StrEnum):
    """What a token may do (DESIGN §7)."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    SYSTEM = "system"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiToken(Base):
    """A bearer token, stored as the SHA-256 of its secret: the secret itself is shown once and never kept."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint("role IN ('viewer', 'operator', 'admin', 'system')", name="api_tokens_role_known"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(200), server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class GitRepository(Base):
    """A tenant's Git repository; the server keeps a bare mirror of it. Credentials are stored encrypted."""

    __tablename__ = "git_repositories"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    branch: Mapped[str] = mapped_column(String(255), server_default="main")
    auth_kind: Mapped[str] = mapped_column(String(16), server_default="none")
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary)
    head_commit: Mapped[str | None] = mapped_column(String(40))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TargetCredential(Base):
    """How the workers log in to hosts: an SSH key (with its passphrase) or a password, and an optional become
    (sudo) password, sealed with the server's keys as one value and never returned. The public half of a key is
    kept in the clear, so an operator can tell which key it is."""

    __tablename__ = "target_credentials"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    """`ssh_key` or `password`."""
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    public_key: Mapped[str | None] = mapped_column(Text)
    has_passphrase: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    has_become_password: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Host(Base):
    """A target host of the tenant's inventory: where and as whom to log in, and the SSH host keys it must show."""

    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, server_default="22")
    username: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    """Host variables, for Ansible's inventory (never secrets: those belong in the credential)."""
    credential_id: Mapped[int | None] = mapped_column(ForeignKey("target_credentials.id", ondelete="RESTRICT"))
    host_keys: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    """The pinned SSH host keys (`TYPE BASE64`): a host that shows another key is refused."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Blob(Base):
    """A stored blob: the link between versions and the object at `storage.keys.blob_key(digest)`."""

    __tablename__ = "blobs"

    digest: Mapped[Digest] = mapped_column(DigestColumn, primary_key=True)
    """Stored as the 64 hex characters of the sha256 (the `sha256:` prefix is implied)."""
    tar_size: Mapped[int] = mapped_column(BigInteger)
    zst_size: Mapped[int] = mapped_column(BigInteger)
    zst_sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), server_default="stored")
    touched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    verified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    verify_outcome: Mapped[str | None] = mapped_column(String(16))
    """The last verify's outcome: ok, missing, corrupt or size-mismatch (`storage.verify.Outcome`)."""
    verify_detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TaskTemplate(Base):
    __tablename__ = "task_templates"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, server_default="")
    timeout: Mapped[int] = mapped_column(Integer, server_default="3600")
    pool: Mapped[str] = mapped_column(String(64), server_default="default")
    max_attempts: Mapped[int] = mapped_column(Integer, server_default="1")
    retry_on: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    """Which outcomes start another attempt (failed, timeout, lost); none by default: a script may not be safe twice."""
    source_git_info: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("template_versions.id", ondelete="RESTRICT", use_alter=True)
    )
    import_state: Mapped[str] = mapped_column(String(16), server_default="imported")
    execution: Mapped[str] = mapped_column(String(16), server_default="worker")
    """`worker`: the template runs on the worker; `targets`: on the hosts each task names (over SSH)."""
    require_sudo: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    forks: Mapped[int] = mapped_column(Integer, server_default="5")
    """Hosts a task runs on at once."""
    max_fail_percentage: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    """The share of hosts (percent) that may fail before the task does; 0: any failed host fails it."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TemplateVersion(Base):
    """What runs: a digest with its entry file, script type and parameter schema, and where it came from."""

    __tablename__ = "template_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("task_templates.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[Digest] = mapped_column(DigestColumn, ForeignKey("blobs.digest", ondelete="RESTRICT"))
    script_type: Mapped[str] = mapped_column(String(16))
    entry_file: Mapped[str] = mapped_column(Text)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    parameters_source: Mapped[str] = mapped_column(String(16), server_default="manual")
    """`scanned`: read from the entry's `@param` header or the directory's survey, and read again by each sync;
    `manual`: given by the client, kept across syncs."""
    source: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[uuid.UUID | None] = mapped_column()


class TreeDigest(Base):
    """Which digest a Git tree packs to: lets an import skip packing content it has seen (DESIGN §3)."""

    __tablename__ = "tree_digests"

    tree_key: Mapped[str] = mapped_column(String(300), primary_key=True)
    digest: Mapped[Digest] = mapped_column(DigestColumn, ForeignKey("blobs.digest", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TaskStatus(enum.StrEnum):
    """pending → queued → running → one final status (DESIGN §5). `lost`: the worker stopped heartbeating."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"


UNFINISHED_STATUSES = (TaskStatus.PENDING, TaskStatus.QUEUED, TaskStatus.RUNNING)


class Task(Base):
    """One run of a template version. Keeps what it ran (code, version, digest) even after its template goes."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("task_templates.id", ondelete="SET NULL"))
    template_code: Mapped[str] = mapped_column(String(100))
    version_id: Mapped[int | None] = mapped_column(ForeignKey("template_versions.id", ondelete="SET NULL"))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[Digest] = mapped_column(DigestColumn)
    pool: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), server_default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    """The parameters with password values masked: what the API shows."""
    sealed_params: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The password values, encrypted with the server's keys; merged back only into the job."""
    status: Mapped[str] = mapped_column(String(16), server_default=TaskStatus.PENDING.value)
    attempt: Mapped[int] = mapped_column(Integer, server_default="1")
    max_attempts: Mapped[int] = mapped_column(Integer, server_default="1")
    retry_on: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'::text[]"))
    timeout: Mapped[int] = mapped_column(Integer)
    execution: Mapped[str] = mapped_column(String(16), server_default="worker")
    """`worker`: the template runs on the worker; `targets`: on the hosts each task names (over SSH)."""
    require_sudo: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    forks: Mapped[int] = mapped_column(Integer, server_default="5")
    """Hosts a task runs on at once."""
    max_fail_percentage: Mapped[int] = mapped_column(SmallInteger, server_default="0")
    """The share of hosts (percent) that may fail before the task does; 0: any failed host fails it."""
    targets: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    """The inventory snapshot of a `targets` task (`app.services.target_snapshot`): the hosts as they were when
    the task was created; every attempt runs on these."""
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    log_lines: Mapped[int] = mapped_column(Integer, server_default="0")
    log_truncated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_by: Mapped[uuid.UUID | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TaskLogLine(Base):
    """A task's output, stored when the task ends (the newest lines, up to the cap)."""

    __tablename__ = "task_log_lines"

    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stream: Mapped[str] = mapped_column(String(6))
    line: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int | None] = mapped_column(SmallInteger)
    """The attempt that wrote the line; None for lines stored before attempts were recorded (migration 0006)."""
    host: Mapped[str] = mapped_column(String(200), server_default="")
    """The target host whose run printed the line; "" for the worker's own lines."""


class HostRun(Base):
    """One host's run in one attempt of a `targets` task: pending when the attempt is sent, then as the worker
    reports it. The host is named as the task's snapshot names it (its row may have changed or gone since)."""

    __tablename__ = "host_runs"

    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    host_name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host_id: Mapped[int | None] = mapped_column(BigInteger)
    address: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(String(64))
    """The 64 hex characters of the content the host verified and ran; None until (or unless) it got it."""
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class RunKind(enum.StrEnum):
    GC = "gc"
    VERIFY = "verify"


class RunStatus(enum.StrEnum):
    """`problems`: a verify that finished and found blobs that are not ok; `failed`: the run itself stopped."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PROBLEMS = "problems"
    FAILED = "failed"


class MaintenanceRun(Base):
    """One GC or verify run, from the command line or the API: its options, its progress and finally its report."""

    __tablename__ = "maintenance_runs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=RunStatus.RUNNING.value)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    started_by: Mapped[str] = mapped_column(String(200), server_default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
