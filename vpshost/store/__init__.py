"""State store: SQLAlchemy models and the database they live in."""
