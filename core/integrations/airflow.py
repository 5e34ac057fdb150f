"""Run a Loom pipeline as an Airflow task: `LoomPipelineOperator`.

    pip install 'loom-aietl[airflow]'          # Airflow 3 (the task SDK); add ,postgres for a
                                               # PostgreSQL history store

    from core.integrations.airflow import LoomPipelineOperator

    LoomPipelineOperator(task_id="classify", pipeline="pipelines/reviews.yaml",
                         pipeline_params={"since": "{{ ds }}"})

The task runs the pipeline headless on the worker, exactly as `loom --run` would (same engine,
same history store), in an event loop of its own. Its return value, and so its XCom
`return_value`, is the run's summary: `run_id`, `status`, `records` {extracted, loaded,
quarantined, skipped}, `cost_usd`, `tokens`, `duration_s`, `latency_s`, plus `pipeline`,
`status_reason` and, for a shard, `shard`. A failed or cancelled run fails the task (Airflow
may retry it); a `partial` run (rejection rate above `max_rejection_rate`) fails it without
retries when `fail_on_quality_gate` is set, since a retry would pay again for the same
answers. A failing task pushes the summary under the same key before it fails, so callbacks
and `all_done` tasks can find the run.

`pipeline_params` and not `params`: `params` is every Airflow operator's own argument (the
DAG's and task's Params, merged by Airflow, and never template-rendered: Airflow refuses to
serialize a DAG that templates it). `pipeline_params` is rendered, so `{{ ds }}` works, and each
value becomes `--set params.NAME=VALUE` with its type kept.

Only this module imports Airflow: importing `core` never does.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from airflow.sdk import BaseOperator, Connection
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("core.integrations.airflow needs Airflow 3: "
                      "pip install 'loom-aietl[airflow]'") from exc
try:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # pragma: no cover - Airflow 3.0 kept them in airflow.exceptions
    # no-redef where Airflow is installed; the dev environment (CI's mypy) has none: unused there.
    from airflow.exceptions import AirflowException, AirflowFailException  # type: ignore[no-redef, unused-ignore]

from core.api import Workspace
from core.engine import RunController, RunOptions
from core.errors import LoomError
from core.events import Event, Progress, RunFinished, RunStarted, RunStatus, RunSummary, RunWarning
from core.reporting import money, plain_progress_line, progress_interval, progress_stage
from core.sharding import Shard

PROGRESS_LOG_INTERVAL_S = 30.0  # a line now and then in the task log, not four a second


class LoomPipelineOperator(BaseOperator):
    """Run one Loom pipeline (or one shard of it) and push its summary to XCom.

    :param pipeline: the pipeline file, or a folder holding pipeline.yaml. A relative path is
        relative to the folder of the DAG file. Templated.
    :param pipeline_params: values for the pipeline's `params` (`{{ params.x }}` in prompts and
        SQL). Templated: `{"since": "{{ ds }}"}`.
    :param set: other overrides, as `loom --run --set` takes them: a mapping
        `{"transform.model": "gpt-4o"}` or a list of `"KEY=VALUE"` strings. Templated.
    :param fail_on_quality_gate: fail the task when the run ends `partial`.
    :param store_url: the history store (what LOOM_STORE_URL says), e.g.
        `postgresql://loom:…@db/loom`; default: LOOM_STORE_URL or the worker's Loom config.
        Templated.
    :param store_conn_id: an Airflow connection (postgres or sqlite) holding the history store,
        instead of `store_url`: its password then stays in Airflow's secrets.
    :param shard: `"I/N"` (or `[I, N]`): process only shard I of N, numbered from 0 like map
        indexes. Map it: `.partial(...).expand(shard=[f"{i}/4" for i in range(4)])`. Templated.
    :param shard_group: the id the N shard runs share; default: this DAG run's task
        (`dag_id.task_id.run_id`), the same for every mapped instance. Templated.
    :param limit: process at most this many source records (like `--limit`).
    :param use_cache: reuse answers from Loom's response cache (False: `--no-cache`).
    """

    template_fields: Sequence[str] = ("pipeline", "pipeline_params", "set", "store_url", "shard",
                                      "shard_group")
    template_fields_renderers = {"pipeline_params": "json", "set": "json"}
    ui_color = "#e8e0f5"

    def __init__(self, *, pipeline: str, pipeline_params: Mapping[str, Any] | None = None,
                 set: Mapping[str, Any] | Sequence[str] | None = None,  # noqa: A002 - the CLI's name
                 fail_on_quality_gate: bool = True, store_url: str | None = None,
                 store_conn_id: str | None = None, shard: str | Sequence[int] | None = None,
                 shard_group: str | None = None, limit: int | None = None,
                 use_cache: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if store_url and store_conn_id:
            raise ValueError("give store_url or store_conn_id, not both")
        self.pipeline = str(pipeline)
        self.pipeline_params = dict(pipeline_params or {})
        self.set = set if set is not None else {}
        self.fail_on_quality_gate = fail_on_quality_gate
        self.store_url = store_url
        self.store_conn_id = store_conn_id
        self.shard = shard
        self.shard_group = shard_group
        self.limit = limit
        self.use_cache = use_cache
        self._loop: asyncio.AbstractEventLoop | None = None
        self._controller: RunController | None = None
        self._last_progress_log = 0.0

    # ------------------------------------------------------------------ the task

    def execute(self, context: Any) -> dict[str, Any]:
        shard = self._shard(context)
        path = self._pipeline_path(context)
        overrides = self.overrides()
        store_url = self._store_url()
        try:
            summary = self._run_in_fresh_loop(path, overrides, store_url, shard)
        except LoomError as exc:
            # Nothing ran (a bad pipeline, a missing secret, an unreachable store): a user error
            # (exit code 2) will not fix itself on retry; the others may.
            failure = AirflowFailException if exc.exit_code == 2 else AirflowException
            raise failure(f"loom: {exc}") from exc
        result = {"pipeline": summary.pipeline, **summary.to_json(),
                  "status_reason": summary.status_reason}
        self.log.info("loom run %s of %s: %s · %s", summary.run_id, summary.pipeline,
                      summary.status, _counts(summary))
        failure = self._failure(summary)
        if failure is not None:
            context["ti"].xcom_push(key="return_value", value=result)
            raise failure
        return result

    def on_kill(self) -> None:
        """Stop cleanly: records in flight finish, the rest are skipped, the run is recorded."""
        loop, controller = self._loop, self._controller
        if loop is not None and controller is not None and not loop.is_closed():
            loop.call_soon_threadsafe(controller.cancel, "the Airflow task was stopped")

    # ------------------------------------------------------------------ pieces

    def overrides(self) -> list[str]:
        """The `--set` list this task runs with: params first, then `set`."""
        items = [f"params.{name}={_yaml_value(value)}"
                 for name, value in self.pipeline_params.items()]
        if isinstance(self.set, Mapping):
            items += [f"{key}={_yaml_value(value)}" for key, value in self.set.items()]
        elif isinstance(self.set, str):
            items.append(self.set)
        else:
            items += [str(item) for item in self.set]
        return items

    def _shard(self, context: Any) -> Shard | None:
        if self.shard is None or self.shard == "":
            return None
        if isinstance(self.shard, str):
            text = self.shard
        elif isinstance(self.shard, Sequence) and len(self.shard) == 2:
            text = f"{self.shard[0]}/{self.shard[1]}"
        else:
            raise AirflowFailException(f"loom: shard={self.shard!r}: expected 'I/N' or [I, N]")
        group = self.shard_group or ".".join(
            str(part) for part in (context["dag"].dag_id, self.task_id, context["run_id"]))
        try:
            return Shard.parse(text, group)
        except LoomError as exc:
            raise AirflowFailException(f"loom: {exc}") from exc

    def _pipeline_path(self, context: Any) -> Path:
        path = Path(self.pipeline).expanduser()
        if path.is_absolute():
            return path
        fileloc = getattr(context.get("dag"), "fileloc", None)
        return Path(fileloc).parent / path if fileloc else path

    def _store_url(self) -> str | None:
        if not self.store_conn_id:
            return self.store_url or None
        return connection_store_url(Connection.get(self.store_conn_id), self.store_conn_id)

    def _run_in_fresh_loop(self, path: Path, overrides: list[str], store_url: str | None,
                           shard: Shard | None) -> RunSummary:
        def go() -> RunSummary:
            return asyncio.run(self._run(path, overrides, store_url, shard))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return go()
        # A loop already runs in this thread: the run gets a thread and a loop of its own.
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["summary"] = go()
            except BaseException as exc:  # handed back to the task's thread
                outcome["error"] = exc

        thread = threading.Thread(target=target, name=f"loom-{self.task_id}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        summary: RunSummary = outcome["summary"]
        return summary

    async def _run(self, path: Path, overrides: list[str], store_url: str | None,
                   shard: Shard | None) -> RunSummary:
        self._loop = asyncio.get_running_loop()
        self._controller = RunController()
        self._last_progress_log = time.monotonic()
        self._last_stage: str | None = None
        self._pipeline_name = path.parent.name
        try:
            self._progress_interval = progress_interval() or PROGRESS_LOG_INTERVAL_S
        except LoomError:
            self._progress_interval = PROGRESS_LOG_INTERVAL_S
        try:
            async with Workspace(path.parent, store_url_override=store_url) as workspace:
                loaded = workspace.load(path, overrides)
                options = RunOptions(limit=self.limit, use_cache=self.use_cache, shard=shard)
                return await workspace.run_to_end(loaded, options, listeners=[self._log_event],
                                                  controller=self._controller)
        finally:
            self._loop = None

    def _log_event(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._pipeline_name = event.pipeline
            self.log.info("loom run %s of %s started: %s → %s:%s → %s", event.run_id,
                          event.pipeline, event.source, event.provider, event.model,
                          event.destination)
        elif isinstance(event, RunWarning):
            self.log.warning("loom: %s", event.message)
        elif isinstance(event, Progress):
            # The same line `loom --run` writes to a log (core.reporting): done/total, rate,
            # cost so far, ETA, waits; at each stage change and every interval.
            now = time.monotonic()
            stage = progress_stage(event)
            if stage != self._last_stage or \
                    now - self._last_progress_log >= self._progress_interval:
                self._last_progress_log = now
                self._last_stage = stage
                self.log.info("loom: %s", plain_progress_line(self._pipeline_name, event, stage))
        elif isinstance(event, RunFinished) and event.summary.status_reason:
            self.log.info("loom: %s", event.summary.status_reason)

    def _failure(self, summary: RunSummary) -> AirflowException | None:
        reason = f": {summary.status_reason}" if summary.status_reason else ""
        text = f"loom run {summary.run_id} of {summary.pipeline} ended {summary.status}{reason}"
        if summary.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            return AirflowException(text)
        if summary.status == RunStatus.PARTIAL and self.fail_on_quality_gate:
            return AirflowFailException(text)
        return None


def connection_store_url(connection: Any, conn_id: str = "") -> str:
    """A history store URL from an Airflow connection of type postgres or sqlite."""
    from sqlalchemy.engine import URL

    kind = (getattr(connection, "conn_type", None) or "").lower()
    if kind in ("postgres", "postgresql"):
        return URL.create("postgresql", username=connection.login or None,
                          password=connection.password or None, host=connection.host or None,
                          port=connection.port or None,
                          database=connection.schema or None).render_as_string(hide_password=False)
    if kind == "sqlite":
        if not connection.host:
            raise AirflowFailException(f"loom: connection {conn_id!r}: a sqlite connection "
                                       f"needs the database file as its host")
        return f"sqlite:///{connection.host}"
    raise AirflowFailException(f"loom: connection {conn_id!r} is of type {kind or 'none'!r}: "
                               f"the history store is postgres or sqlite")


def _yaml_value(value: Any) -> str:
    """A `--set` value that reads back as exactly this value (JSON is YAML)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _counts(summary: RunSummary) -> str:
    return (f"{summary.extracted} extracted, {summary.loaded} loaded, "
            f"{summary.quarantined} quarantined, {summary.skipped} skipped, "
            f"{money(summary.cost_usd)}")
