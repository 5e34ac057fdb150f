"""The workbench's messages, in the order things happen. Workers post these; handlers on the
screens own every widget change. Reading this file tells you how the app works.

Pipelines   PipelinesScanned
Workbench   PipelineOpened → RecordsFetched → (typing) PromptEdited → PromptRendered
            → SampleRequested → SampleEvaluated | SampleFailed
            → (ctrl+s) PromptSaved → VerdictsCompared
            → (v) VariantsListed → PromptEdited (the variant, unsaved)
            → (m) KeyChecked (in the switcher) → PreviewModelLoaded → SampleRequested
Run         RunBegan → RunProgressed (coalesced: only the newest waits) … → RunEnded
                     → RunWarned                                   | RunCouldNotStart
Quarantine  PageWanted → PageFetched · QuarantineCounted · QuarantineDetailFetched
            → (approve, edit, reprocess, discard) QuarantineActionsApplied
            → (F8, or e on Pipelines) EstimateReady
History     PageWanted → PageFetched (runs with shard groups gathered, and their alerts)
            · RunsCounted · RunSeriesFetched · JudgesFetched · RunsCompared
            → (a) AlertsAcknowledged
Secrets     SecretsListed (names and the keyring backend, or why there is no usable keyring)
            → (set, delete) SecretStored | SecretDeleted | SecretRefused
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.message import Message

from core.api import (ActionResult, Estimate, JudgeAgreement, KeyStatus, LoadedSpec,
                      MonitoringAlert, PipelineEntry, PipelineRun, PreviewModel,
                      PromptComparison, PromptVariant, QuarantineAction, QuarantinedRecord,
                      RenderResult, RunComparison, RunPoint, SavedPrompt)
from core.events import Progress, RunResumed, RunStarted, RunSummary
from core.records import Record, RecordResult


# ---------------------------------------------------------------- pipelines


class PipelinesScanned(Message):
    """Every pipeline file under the folder, valid or not, and each one's newest run."""

    def __init__(self, entries: Sequence[PipelineEntry], last_runs: dict[str, PipelineRun],
                 generation: int) -> None:
        self.entries = list(entries)
        self.last_runs = last_runs
        self.generation = generation
        super().__init__()


# ---------------------------------------------------------------- workbench


class PipelineOpened(Message):
    """The workbench's pipeline is loaded, with its prompt file as it is on disk."""

    def __init__(self, loaded: LoadedSpec, prompt_text: str, prompt_path: str) -> None:
        self.loaded = loaded
        self.prompt_text = prompt_text
        self.prompt_path = prompt_path
        super().__init__()


class RecordsFetched(Message):
    """A page of the records the source yields (read only that far)."""

    def __init__(self, records: Sequence[Record], direction: str, generation: int) -> None:
        self.records = list(records)
        self.direction = direction
        self.generation = generation
        super().__init__()


class PromptEdited(Message):
    """The prompt buffer changed; the screen debounces before rendering and sampling."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PromptEdited)


class PromptRendered(Message):
    """The prompt rendered for the picked record, or its template error with the line."""

    def __init__(self, record_id: str, result: RenderResult) -> None:
        self.record_id = record_id
        self.result = result
        super().__init__()


class SampleRequested(Message):
    """Transform and evaluate the sample now (the debounce fired, or a key asked)."""


class SampleEvaluated(Message):
    """The sample's results: outputs, every score, the gate's verdict, tokens, cost, latency.
    For an unsaved edit, also the same records under the saved prompt (`comparison`)."""

    def __init__(self, results: Sequence[RecordResult], prompt_text: str,
                 comparison: PromptComparison | None = None) -> None:
        self.results = list(results)
        self.prompt_text = prompt_text
        self.comparison = comparison
        super().__init__()


class SampleFailed(Message):
    """The sample could not run at all (a missing secret, a provider that refuses)."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__()


class PromptSaved(Message):
    def __init__(self, saved: SavedPrompt) -> None:
        self.saved = saved
        super().__init__()


class VerdictsCompared(Message):
    """The prompt A/B: which sample records changed verdict against the previous version
    (with the sample's results under the new one)."""

    def __init__(self, comparison: PromptComparison) -> None:
        self.comparison = comparison
        super().__init__()


class EstimateReady(Message):
    """What a whole run would cost, take and use, projected from a sample of records."""

    def __init__(self, estimate: Estimate) -> None:
        self.estimate = estimate
        super().__init__()


# ---------------------------------------------------------------- run


class RunBegan(Message):
    def __init__(self, event: RunStarted) -> None:
        self.event = event
        super().__init__()


class RunProgressed(Message):
    """A snapshot of the run so far. Only the newest matters: a queued one is replaced."""

    def __init__(self, progress: Progress | None, errors: tuple[str, ...] | None = None,
                 rejections: tuple[str, ...] | None = None) -> None:
        self.progress = progress  # None: only the lists (the run's last word on them)
        self.errors = errors  # the latest records that failed, apart from the rejected
        self.rejections = rejections
        super().__init__()

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, RunProgressed)


class RunWarned(Message):
    def __init__(self, warning: str) -> None:
        self.warning = warning
        super().__init__()


class RunEnded(Message):
    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        super().__init__()


class RunWasResumed(Message):
    """A resumed run found what its earlier attempts finished (core.events.RunResumed)."""

    def __init__(self, event: RunResumed) -> None:
        self.event = event
        super().__init__()


class RunCouldNotStart(Message):
    """An error that prevented the run (a missing secret, an unreadable prompt)."""

    def __init__(self, error: str) -> None:
        self.error = error
        super().__init__()


# ---------------------------------------------------------------- paged listings


class PageWanted(Message):
    """A paged table nears the end of its window: fetch the page after (or before) `anchor`."""

    def __init__(self, table: Any, direction: str, anchor: Any, generation: int) -> None:
        self.table = table
        self.direction = direction
        self.anchor = anchor
        self.generation = generation
        super().__init__()

    @property
    def control(self) -> Any:
        return self.table


class PageFetched(Message):
    """The page a `PageWanted` asked for (its items, ready to become rows)."""

    def __init__(self, table: Any, items: Sequence[Any], direction: str, generation: int, *,
                 more: bool | None = None) -> None:
        self.table = table
        self.items = list(items)
        self.direction = direction
        self.generation = generation
        self.more = more  # whether the listing goes on past this page (None: a full page says so)
        super().__init__()


# ---------------------------------------------------------------- quarantine


class QuarantineCounted(Message):
    def __init__(self, total: int, generation: int) -> None:
        self.total = total
        self.generation = generation
        super().__init__()


class QuarantineDetailFetched(Message):
    """One record, whole, with every action taken on it."""

    def __init__(self, record: QuarantinedRecord, actions: Sequence[QuarantineAction]) -> None:
        self.record = record
        self.actions = list(actions)
        super().__init__()


class QuarantineActionsApplied(Message):
    """Approve, edit, reprocess or discard finished: each record's outcome, and its row now."""

    def __init__(self, action: str, results: Sequence[ActionResult],
                 rows: Sequence[QuarantinedRecord]) -> None:
        self.action = action
        self.results = list(results)
        self.rows = list(rows)
        super().__init__()


# ---------------------------------------------------------------- history


class RunsCounted(Message):
    def __init__(self, total: int, generation: int) -> None:
        self.total = total
        self.generation = generation
        super().__init__()


class RunSeriesFetched(Message):
    """A pipeline's recent runs, oldest first: its cost and latency charts."""

    def __init__(self, pipeline: str, points: Sequence[RunPoint]) -> None:
        self.pipeline = pipeline
        self.points = list(points)
        super().__init__()


class RunsCompared(Message):
    def __init__(self, comparison: RunComparison) -> None:
        self.comparison = comparison
        super().__init__()


class JudgesFetched(Message):
    """How often each LLM judge of a pipeline agreed with the people who reviewed its records."""

    def __init__(self, pipeline: str, agreements: Sequence[JudgeAgreement]) -> None:
        self.pipeline = pipeline
        self.agreements = list(agreements)
        super().__init__()


class RunReleased(Message):
    """A held run's records were released (or it said why not): one line for the user."""

    def __init__(self, message: str, *, error: bool = False) -> None:
        self.message = message
        self.error = error
        super().__init__()


class AlertsAcknowledged(Message):
    """Alerts were acknowledged: these runs' alerts as they are now."""

    def __init__(self, alerts: dict[str, list[MonitoringAlert]], count: int) -> None:
        self.alerts = alerts
        self.count = count
        super().__init__()


# ---------------------------------------------------------------- secrets
# A secret's value is in none of these: workers take it, store it and forget it.


class SecretsListed(Message):
    """The names Loom keeps in the keyring and the backend holding them (`problem` says why
    there is no usable keyring instead; then `names` is empty), which pipelines of the folder
    ask for which `${NAME}`, and which of those names the environment has."""

    def __init__(self, names: Sequence[str], backend: str | None, problem: str | None,
                 references: dict[str, list[str]], in_environment: set[str]) -> None:
        self.names = list(names)
        self.backend = backend
        self.problem = problem
        self.references = references
        self.in_environment = in_environment
        super().__init__()


class SecretStored(Message):
    def __init__(self, name: str, replaced: bool) -> None:
        self.name = name
        self.replaced = replaced
        super().__init__()


class SecretDeleted(Message):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()


class SecretRefused(Message):
    """The keyring did not take a set or a delete (a bad name, no usable keyring): why."""

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self.error = error
        super().__init__()


class RunsRefreshed(Message):
    """Runs read again (the ones still running when last shown)."""

    def __init__(self, runs: list[Any]) -> None:
        self.runs = runs
        super().__init__()


# ---------------------------------------------------------------- variants and the preview model


class VariantsListed(Message):
    """The prompt variants beside the pipeline's prompt (v opens them, read in a worker)."""

    def __init__(self, variants: Sequence[PromptVariant]) -> None:
        self.variants = list(variants)
        super().__init__()


class KeyChecked(Message):
    """Whether the key a provider reads is in the keyring or the environment (by name)."""

    def __init__(self, provider: str, status: KeyStatus) -> None:
        self.provider = provider
        self.status = status
        super().__init__()


class PreviewModelLoaded(Message):
    """The pipeline loaded with the session's provider/model as overrides (None: its own)."""

    def __init__(self, loaded: LoadedSpec, model: PreviewModel | None) -> None:
        self.loaded = loaded
        self.model = model
        super().__init__()
