"""The tables of the schema the migrations build."""

from __future__ import annotations

SCHEMA = {
    "tenants",
    "api_tokens",
    "git_repositories",
    "blobs",
    "task_templates",
    "template_versions",
    "tree_digests",
    "tasks",
    "task_log_lines",
    "maintenance_runs",
    "target_credentials",
    "hosts",
    "host_runs",
}
