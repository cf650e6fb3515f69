"""The newest Alembic revision; bump it with every new file in migrations/versions."""

HEAD = "0002"
