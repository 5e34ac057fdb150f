"""The history store: every run, every record's outcome, the quarantine, prompt versions and
the LLM response cache, in SQLite (default) or PostgreSQL.

    async with await Store.open() as store:
        runs = await store.list_runs(limit=20)
"""

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
    "PASSED",
    "QUARANTINE_STATUSES",
    "ContextVersion",
    "EvaluationResult",
    "JudgeAgreementRow",
    "LLMCacheEntry",
    "Lineage",
    "MonitoringAlert",
    "Pipeline",
    "PipelineRun",
    "PromptVersion",
    "QuarantineAction",
    "QuarantinedRecord",
    "RecordResultRow",
    "RunStart",
    "Store",
]
