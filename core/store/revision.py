"""The store schema's newest Alembic revision, in a module of its own: the migrator compares a
store with it before importing Alembic, and the quick history reader (core.store.history_reader)
before trusting a store's tables, without importing SQLAlchemy."""

# The newest revision in migrations/versions; tests/unit/test_store.py keeps the two in step.
SCHEMA_HEAD = "0009"
