"""The reference project's data: a deterministic generator and a PostgreSQL loader."""
