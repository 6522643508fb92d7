"""PostgreSQL persistence: table definitions, engine set-up and repositories."""
