"""Loom's headless engine. Imports no Textual, ever: the workbench (loom_tui) is a client of core.api."""

__version__ = "0.1.0"
