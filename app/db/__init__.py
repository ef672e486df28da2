"""Postgres: the engine, the ORM rows and the schema migrations' entry points."""
