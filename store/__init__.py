"""Storage: SQLAlchemy 2 async Core tables, repositories, Alembic migrations and the ledger's persistence."""
