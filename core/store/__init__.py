"""The history store: every run, every record's outcome, the quarantine, prompt versions and
the LLM response cache, in SQLite (default) or PostgreSQL.

    async with await Store.open() as store:
        runs = await store.list_runs(limit=20)

The names below are imported on first use (PEP 562), not with the package: importing any
module of it (core.store.history_reader, core.store.revision) would otherwise build every
SQLAlchemy model first, which is most of what `loom runs` would spend.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.store.models import (
        ContextVersion,
        EvaluationResult,
        JudgeAgreementRow,
        Lineage,
        LLMCacheEntry,
        MonitoringAlert,
        Pipeline,
        PipelineRun,
        PromptVersion,
        QuarantineAction,
        QuarantinedRecord,
        RecordResultRow,
    )
    from core.store.store import PASSED, QUARANTINE_STATUSES, RunStart, Store

__all__ = [
    "PASSED", "QUARANTINE_STATUSES", "ContextVersion", "EvaluationResult", "JudgeAgreementRow",
    "LLMCacheEntry", "Lineage", "MonitoringAlert", "Pipeline", "PipelineRun", "PromptVersion",
    "QuarantineAction", "QuarantinedRecord", "RecordResultRow", "RunStart", "Store",
]
_FROM_STORE = {"PASSED", "QUARANTINE_STATUSES", "RunStart", "Store"}  # the rest: core.store.models


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'core.store' has no attribute {name!r}")
    module = "core.store.store" if name in _FROM_STORE else "core.store.models"
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value
