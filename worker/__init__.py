"""The thin worker: needs only Redis, S3 (read) and its own disk; never Postgres, never Git."""
