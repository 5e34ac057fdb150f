"""Loom inside other tools' schedulers. Each module here imports its tool; `core` never does."""
