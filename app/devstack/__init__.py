"""Real PostgreSQL, Redis and S3 servers started from Python wheels, for `ahop dev` and the tests."""
