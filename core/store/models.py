"""The history store's tables, as SQLModel classes.

The same models serve SQLite (the default) and PostgreSQL: JSON columns become JSONB on
PostgreSQL, datetimes are stored in UTC and always come back timezone-aware. Indexes are named
here and in the migrations, which are the only way the schema changes (see migrations/).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# `none_as_null`: a Python None is stored as SQL NULL, not as the JSON text 'null', so that
# "has no verdict" is `verdict IS NULL` on both databases.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no timezone type: SQLAlchemy would silently drop the offset of an aware value.
    Values are converted to UTC before they are stored, and read back as UTC-aware.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # Loom writes UTC; a naive value is taken as UTC
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Pipeline(SQLModel, table=True):
    __tablename__ = "pipelines"

    name: str = Field(primary_key=True)
    version: str
    description: str | None = Field(default=None, sa_type=Text)
    definition: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    path: str | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PipelineRun(SQLModel, table=True):
    """One run of one pipeline: its configuration snapshot, counts, cost and latency."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (
        # History pages newest first, for all pipelines or one (keyset on started_at, run_id).
        Index("ix_pipeline_runs_started", "started_at", "run_id"),
        Index("ix_pipeline_runs_pipeline_started", "pipeline_name", "started_at", "run_id"),
        Index("ix_pipeline_runs_status", "status"),
        Index("ix_pipeline_runs_shard_group", "shard_group", "started_at"),
        # A pipeline is its file too (revision 0006): runs looked up by name and path.
        Index("ix_pipeline_runs_pipeline_file", "pipeline_name", "pipeline_path", "started_at",
              "run_id"),
    )

    run_id: str = Field(primary_key=True)
    pipeline_name: str = Field(foreign_key="pipelines.name", ondelete="CASCADE")
    pipeline_version: str
    pipeline_path: str | None = None
    started_at: datetime = Field(sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)  # the heartbeat: a stale running row is a crashed run
    status: str  # running | success | partial | failed | cancelled
    status_reason: str | None = Field(default=None, sa_type=Text)
    error_message: str | None = Field(default=None, sa_type=Text)

    # The configuration snapshot: what exactly ran.
    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)  # the YAML as written, placeholders unresolved
    model: str | None = None
    provider: str | None = None
    prompt_hash: str | None = None
    system_hash: str | None = None
    context_hashes: dict[str, str] = Field(default_factory=dict, sa_type=JSONType)
    params: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    source: str | None = Field(default=None, sa_type=Text)
    destination: str | None = Field(default=None, sa_type=Text)

    extracted: int = 0
    transformed: int = 0
    evaluated: int = 0
    loaded: int = 0
    quarantined: int = 0
    skipped: int = 0
    rejection_rate: float | None = None

    cost_usd: float | None = None  # None: some model had no known price
    cost_by_stage: dict[str, float | None] = Field(default_factory=dict, sa_type=JSONType)
    cost_by_model: dict[str, float | None] = Field(default_factory=dict, sa_type=JSONType)
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    cache_hits: int = 0

    duration_s: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    warnings: list[str] = Field(default_factory=list, sa_type=JSONType)
    extra: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)  # RunSummary.extra

    # A shard run (`--shard I/N`) processed only the records whose id hashes to shard I of N;
    # the N runs of one split share `shard_group` (see core.sharding). None: not sharded.
    shard_group: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None

    # How the LLM limits behaved (revision 0004): requests in flight as configured, the lowest
    # the adaptive limit went after 429s and where it ended; 429 answers; retries of any kind.
    concurrency: int | None = None
    concurrency_min: int | None = None
    concurrency_final: int | None = None
    throttled: int = 0
    retries: int = 0
    budget_usd: float | None = None  # budget.max_cost_usd when the run had one

    # Resuming (revision 0005, core.resume): how many times the run was started (1, then one
    # more per `--resume`), and where its last attempt got with publishing its load: NULL,
    # "committing" (the sink was told to publish; `commit_token` says how to tell whether it
    # did) or "committed".
    attempts: int = 1
    commit_state: str | None = None
    commit_token: str | None = Field(default=None, sa_type=Text)

    # Token accounting (revision 0006): of input_tokens, read from and written to the
    # provider's prompt cache; of output_tokens, spent on reasoning. What each cost lever saved,
    # in USD, by lever: {"prompt_cache": 0.0123} (later: response_cache, batch, cascade).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    savings_usd: dict[str, float] | None = Field(default=None, sa_type=JSONType)

    # Releasing (revision 0009, core.release, core.claims): who holds the run while its
    # commit_state is "releasing", and when the holder last renewed the claim.
    claim_holder: str | None = Field(default=None, sa_type=Text)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RecordResultRow(SQLModel, table=True):
    """Where one record of one run ended (core.records.RecordResult, flattened)."""

    __tablename__ = "record_results"
    __table_args__ = (
        Index("ix_record_results_run_record", "run_id", "record_id"),
        Index("ix_record_results_run_ordinal", "run_id", "ordinal"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    record_id: str
    ordinal: int
    # loaded | quarantined | skipped once the run is over. While it runs (or after a crash) also
    # passed: passed the gate, its output stored; written to the sink or not (core.resume).
    outcome: str
    stage: str | None = None  # the stage that stopped it
    reason: str | None = Field(default=None, sa_type=Text)
    error_type: str | None = None
    # The record as extracted: a loaded record that must be quarantined after the fact (the
    # sink's commit failed) can still be reprocessed from here.
    input: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    output: Any = Field(default=None, sa_type=JSONType, nullable=True)
    scores: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)  # Score.to_dict()
    verdict: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0
    latency_s: float = 0.0  # time spent waiting on models for this record (transform and judges)
    cached: bool = False  # the transform was answered from Loom's response cache
    llm_calls: int = 0  # requests that reached a provider (cache answers excluded)
    # Revision 0006: of input_tokens, prompt-cache reads and writes; of output_tokens,
    # reasoning; and what prompt caching saved on this record's calls (USD).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    prompt_cache_saved_usd: float = 0.0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class EvaluationResult(SQLModel, table=True):
    """One evaluator's statistics over one run."""

    __tablename__ = "evaluation_results"
    __table_args__ = (Index("ix_evaluation_results_run", "run_id", "evaluator"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    evaluator: str
    type: str
    threshold: float
    weight: float = 1.0
    count: int = 0
    passed: int = 0
    errors: int = 0
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p50: float | None = None
    p95: float | None = None
    pass_rate: float | None = None
    cost_usd: float | None = 0.0
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class QuarantinedRecord(SQLModel, table=True):
    """A record that did not load, with everything needed to judge and fix it.

    `id` is the number people type (`loom quarantine show 12`).
    """

    __tablename__ = "quarantined_records"
    __table_args__ = (
        # Every listing pages by id within its filters.
        Index("ix_quarantined_status", "status", "id"),
        Index("ix_quarantined_pipeline", "pipeline_name", "status", "id"),
        Index("ix_quarantined_run", "run_id", "status", "id"),
        Index("ix_quarantined_stage", "stage", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    pipeline_name: str
    record_id: str
    ordinal: int
    stage: str  # extract | transform | evaluate | load
    reason: str | None = Field(default=None, sa_type=Text)
    error_type: str | None = None
    input: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    output: Any = Field(default=None, sa_type=JSONType, nullable=True)
    raw_output: str | None = Field(default=None, sa_type=Text)
    messages: list[dict[str, str]] | None = Field(default=None, sa_type=JSONType)  # the rendered prompt
    scores: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)
    verdict: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    quarantined_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    status: str = "open"  # open | approved | reprocessed | discarded
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    resolution_note: str | None = Field(default=None, sa_type=Text)
    final_output: Any = Field(default=None, sa_type=JSONType, nullable=True)
    # The claim of an action at work on the record (revision 0009, core.claims): its id (the
    # action's staging and ledger name at the destination, kept when a dead holder's claim is
    # taken over), the holder and its last renewal, the action, the output it is loading and
    # the sink's commit token. NULL when no action holds the record.
    claim_id: str | None = None
    claim_holder: str | None = Field(default=None, sa_type=Text)
    claimed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    claim_action: str | None = None
    claim_output: Any = Field(default=None, sa_type=JSONType, nullable=True)
    commit_token: str | None = Field(default=None, sa_type=Text)
    # The answer a reprocess paid for, until it is loaded or judged: a reprocess killed after
    # the model answered does not pay again ({"output", "outcome", "scores", "verdict", ...}).
    answer: dict[str, Any] | None = Field(default=None, sa_type=JSONType)

    @property
    def number(self) -> int:
        """`id` of a record read from the store, which always has one (None before insert)."""
        if self.id is None:
            raise ValueError("a quarantined record not yet stored has no number")
        return self.id


class QuarantineAction(SQLModel, table=True):
    """One thing someone did to a quarantined record, and when."""

    __tablename__ = "quarantine_actions"
    __table_args__ = (Index("ix_quarantine_actions_quarantine", "quarantine_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    quarantine_id: int = Field(foreign_key="quarantined_records.id", ondelete="CASCADE")
    action: str  # approve | edit | reprocess | discard | ...
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    actor: str | None = None
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class PromptVersion(SQLModel, table=True):
    """A prompt or system template, addressed by the sha256 of its text."""

    __tablename__ = "prompt_versions"
    __table_args__ = (Index("ix_prompt_versions_pipeline", "pipeline_name", "created_at"),)

    hash: str = Field(primary_key=True)
    kind: str  # prompt | system
    pipeline_name: str | None = None  # the pipeline that first used it
    path: str | None = None
    content: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ContextVersion(SQLModel, table=True):
    """A context document, addressed by the sha256 of its text."""

    __tablename__ = "context_versions"
    __table_args__ = (Index("ix_context_versions_pipeline", "pipeline_name", "created_at"),)

    hash: str = Field(primary_key=True)
    name: str
    pipeline_name: str | None = None
    path: str | None = None
    content: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LLMCacheEntry(SQLModel, table=True):
    """A model answer kept to answer the same request again without a call."""

    __tablename__ = "llm_cache"
    __table_args__ = (Index("ix_llm_cache_expires", "expires_at"),)

    key: str = Field(primary_key=True)  # sha256 hex of the request
    provider: str
    model: str
    response: dict[str, Any] = Field(sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)  # None: never
    hits: int = 0


class ModelAdaptationRow(SQLModel, table=True):
    """What a model at an endpoint refused, learned from a 400 (core.llm.adaptation)."""

    __tablename__ = "model_adaptations"

    provider: str = Field(primary_key=True)
    base_url: str = Field(primary_key=True)  # "" when the provider has none
    model: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)  # drop | token_limit | structured
    value: str = Field(primary_key=True)  # the parameter, the token-limit name, the mode
    reason: str = Field(default="", sa_type=Text)  # the server's words
    learned_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Lineage(SQLModel, table=True):
    """Where a run read from and wrote to."""

    __tablename__ = "lineage"
    __table_args__ = (
        Index("ix_lineage_run", "run_id"),
        Index("ix_lineage_destination", "destination", "table_name"),
    )

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    source: str | None = Field(default=None, sa_type=Text)
    query: str | None = Field(default=None, sa_type=Text)
    destination: str | None = Field(default=None, sa_type=Text)
    table_name: str | None = None
    records_in: int | None = None
    records_out: int | None = None
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class MonitoringAlert(SQLModel, table=True):
    """A monitoring threshold a run crossed (latency SLA, score drop, cost spike)."""

    __tablename__ = "monitoring_alerts"
    __table_args__ = (
        Index("ix_monitoring_alerts_pipeline", "pipeline_name", "triggered_at"),
        Index("ix_monitoring_alerts_run", "run_id"),
        Index("ix_monitoring_alerts_acknowledged", "acknowledged"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pipeline_name: str
    run_id: str | None = Field(default=None, foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    alert_type: str  # latency_sla | score_degradation | cost_spike | ...
    severity: str  # warning | error | critical
    message: str = Field(sa_type=Text)
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    threshold_value: float | None = None
    actual_value: float | None = None
    triggered_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    acknowledged: bool = False
    acknowledged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = None
    notification_channel: str | None = None
    notification_sent: bool = False
    notification_sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class JudgeAgreementRow(SQLModel, table=True):
    """Whether the person who resolved a quarantined record agreed with one LLM judge on it
    (core.agreement). One row per record and judge; a later decision replaces it."""

    __tablename__ = "judge_agreements"
    __table_args__ = (
        Index("ux_judge_agreements_record", "quarantine_id", "evaluator", unique=True),
        Index("ix_judge_agreements_pipeline", "pipeline_name", "evaluator"),
    )

    id: int | None = Field(default=None, primary_key=True)
    quarantine_id: int = Field(foreign_key="quarantined_records.id", ondelete="CASCADE")
    run_id: str = Field(foreign_key="pipeline_runs.run_id", ondelete="CASCADE")
    pipeline_name: str
    record_id: str
    evaluator: str
    evaluator_type: str
    judge_value: float
    judge_passed: bool
    action: str  # approve | edit | discard
    agreed: bool
    actor: str | None = None
    decided_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


TABLES = (Pipeline, PipelineRun, RecordResultRow, EvaluationResult, QuarantinedRecord,
          QuarantineAction, PromptVersion, ContextVersion, LLMCacheEntry, Lineage, MonitoringAlert,
          JudgeAgreementRow)
metadata = SQLModel.metadata
