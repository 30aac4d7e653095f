"""Storage: one interface (base.py), SQL implementation for SQLite and PostgreSQL (sql.py)."""
