"""The `loom` workbench: a Textual app over core.api, core.events and the record types."""
