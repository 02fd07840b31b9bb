"""Alembic migrations shipped inside the package, so ``oneiric-memory db ...`` works from a wheel."""
