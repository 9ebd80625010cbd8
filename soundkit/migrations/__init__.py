"""Alembic migrations for Soundkit's database (run through ``soundkit db upgrade``)."""
