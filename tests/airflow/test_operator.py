"""LoomPipelineOperator in real Airflow DAG runs (`dag.test()`), against the loopback LLM server.

These need the `airflow` extra, which the main virtualenv does not have: the documented test
command deselects them (`-m "not airflow"` in pyproject's addopts), and `.ci/run` runs them in a
virtualenv of their own (`pytest -m airflow`). Each DAG runs in a fresh process whose
AIRFLOW_HOME is a scratch folder with a SQLite metadata database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.store import Store
from tests.conftest import in_ci
from tests.pipelines import read_jsonl, reply, write_pipeline

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("dag_runner.py")
BIN = Path(sys.executable).parent
LABELS = ["positive", "negative", "neutral"]
DAY = "2026-06-01"

# {{ params.day }} reaches the model: the test sees Airflow's {{ ds }} arrive in the prompt.
DAY_PROMPT = 'Reviews of {{ params.day }}.\n{{ input.text }}\nreply: {{ input.reply }}\n'

DAG_FILE = """
from datetime import datetime
from airflow.sdk import DAG
from core.integrations.airflow import LoomPipelineOperator

DAY = {"day": "{{ ds }}"}  # rendered by Airflow: the DAG run's logical date

with DAG("loom_operator_test", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
    classify = LoomPipelineOperator(task_id="classify", pipeline="good",
                                    store_conn_id="loom_store", pipeline_params=DAY)
    sharded = LoomPipelineOperator.partial(
        task_id="sharded", pipeline="good", store_conn_id="loom_store", pipeline_params=DAY,
        set={"load.destination": "jsonl://out/shard-{shard}.jsonl"},
    ).expand(shard=["0/3", "1/3", "2/3"])
    # The same prompt on the same records: whichever runs first pays, the other answers from
    # the store's cache. classify first, so that its cost is the one the test can count on.
    classify >> sharded
    LoomPipelineOperator(task_id="gate", pipeline="bad", store_conn_id="loom_store",
                         pipeline_params=DAY, retries=0)
    LoomPipelineOperator(task_id="gate_allowed", pipeline="bad", store_conn_id="loom_store",
                         pipeline_params=DAY, fail_on_quality_gate=False,
                         set={"load.destination": "jsonl://out/allowed.jsonl"})
    LoomPipelineOperator(task_id="bad_shard", pipeline="good", store_conn_id="loom_store",
                         shard="3/3", retries=0)
"""


def rows(count: int, *, bad_every: int = 0) -> list[dict[str, str]]:
    out = []
    for i in range(count):
        expected = LABELS[i % 3]
        answer = LABELS[(i + 1) % 3] if bad_every and i % bad_every == 0 else expected
        out.append({"id": f"r{i:03d}", "text": f"review {i}", "expected": expected,
                    "reply": reply(answer)})
    return out


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch AIRFLOW_HOME with its metadata database migrated."""
    if not (BIN / "airflow").exists():
        if in_ci():
            pytest.fail("the airflow tests need the airflow extra: .ci/run installs it")
        pytest.skip("Airflow is not installed here (pip install -e '.[dev,airflow]')")
    home = tmp_path_factory.mktemp("airflow_home")
    result = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=airflow_env(home, home),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return home


def airflow_env(home: Path, dags: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PYTHONPATH": str(ROOT), **extra}
    return env


def run_dag(home: Path, dag_file: Path, dag_id: str, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(dag_file), dag_id, DAY], cwd=ROOT,
        env=airflow_env(home, dag_file.parent, **env), capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-5000:] + result.stderr[-5000:]
    outcome = json.loads(lines[-1][len("RESULT "):])
    outcome["log"] = result.stdout + result.stderr
    return outcome


def sqlite_connection(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


async def stored_runs(store_path: Path) -> list[Any]:
    store = await Store.open(f"sqlite:///{store_path}")
    try:
        return await store.list_runs(limit=50)
    finally:
        await store.close()


async def test_the_operator_runs_pipelines_in_a_dag_and_pushes_their_summaries(
        airflow_home: Path, tmp_path: Path, llm_server) -> None:
    dags = tmp_path / "dags"
    write_pipeline(dags / "good", rows=rows(30), prompt=DAY_PROMPT, base_url=llm_server.base_url)
    write_pipeline(dags / "bad", rows=rows(20, bad_every=2), prompt=DAY_PROMPT,
                   base_url=llm_server.base_url, evaluate={"max_rejection_rate": 0.2})
    dag_file = dags / "loom_operator_test.py"
    dag_file.write_text(DAG_FILE, encoding="utf-8")
    store_path = tmp_path / "team-store" / "loom.db"

    outcome = run_dag(airflow_home, dag_file, "loom_operator_test",
                      AIRFLOW_CONN_LOOM_STORE=sqlite_connection(store_path))
    tasks, xcom = outcome["tasks"], outcome["xcom"]
    assert tasks == {"classify[-1]": "success", "sharded[0]": "success", "sharded[1]": "success",
                     "sharded[2]": "success", "gate[-1]": "failed", "gate_allowed[-1]": "success",
                     "bad_shard[-1]": "failed"}, outcome["log"][-5000:]
    assert outcome["state"] == "failed"

    # The whole pipeline: XCom holds the run id, its status, counts and cost.
    classify = xcom["classify[-1].return_value"]
    assert classify["status"] == "success" and classify["pipeline"] == "test_pipeline"
    assert classify["records"] == {"extracted": 30, "loaded": 30, "quarantined": 0, "skipped": 0}
    assert classify["cost_usd"] > 0 and classify["tokens"]["input"] > 0
    # {{ ds }} rendered into pipeline_params, and from there into the prompt.
    prompts = [body["messages"][-1]["content"] for body in llm_server.requests]
    assert any(p.startswith(f"Reviews of {DAY}.") for p in prompts)
    assert not any("{{" in p for p in prompts)

    # Three mapped shards: one group, every record exactly once.
    shards = [xcom[f"sharded[{i}].return_value"] for i in range(3)]
    assert [s["shard"]["index"] for s in shards] == [0, 1, 2]
    assert len({s["shard"]["group"] for s in shards}) == 1
    assert shards[0]["shard"]["group"] == f"loom_operator_test.sharded.{outcome['run_id']}"
    assert sum(s["records"]["extracted"] for s in shards) == 30
    loaded = [row["id"] for i in range(3) for row in read_jsonl(dags / "good" / "out" / f"shard-{i}.jsonl")]
    assert sorted(loaded) == [f"r{i:03d}" for i in range(30)]

    # A quality gate above max_rejection_rate fails the task, and still says why in XCom.
    gate = xcom["gate[-1].return_value"]
    assert gate["status"] == "partial"
    assert gate["records"]["quarantined"] == 10
    assert "rejection rate 50.0% is above max_rejection_rate 20.0%" in gate["status_reason"]
    assert f"loom run {gate['run_id']} of test_pipeline ended partial" in outcome["log"]
    # ... unless the task says a partial run is fine.
    allowed = xcom["gate_allowed[-1].return_value"]
    assert allowed["status"] == "partial" and allowed["records"]["loaded"] == 10
    # A shard that does not exist fails before anything runs.
    assert "bad_shard[-1].return_value" not in xcom
    assert "--shard 3/3: I must be between 0 and 2" in outcome["log"]

    # Every run went to the store the Airflow connection names, the shards as one group.
    runs = await stored_runs(store_path)
    assert sorted(r.run_id for r in runs) == sorted(
        [classify["run_id"], gate["run_id"], allowed["run_id"], *(s["run_id"] for s in shards)])
    assert {r.params.get("day") for r in runs} == {DAY}
    grouped = [r for r in runs if r.shard_group is not None]
    assert sorted((r.shard_index, r.shard_count) for r in grouped) == [(0, 3), (1, 3), (2, 3)]


def test_the_example_dag_runs_four_mapped_shards_into_one_store(airflow_home: Path,
                                                                tmp_path: Path) -> None:
    # The example as shipped: the offline sample pipeline, four shards, the connection.
    dags = tmp_path / "dags"
    dags.mkdir()
    example = ROOT / "sample_pipelines" / "airflow" / "loom_customer_sentiment.py"
    (dags / example.name).symlink_to(example)  # as a deployment might link it in
    store_path = tmp_path / "team" / "loom.db"
    outcome = run_dag(airflow_home, dags / example.name, "loom_customer_sentiment",
                      AIRFLOW_CONN_LOOM_STORE=sqlite_connection(store_path))
    assert outcome["state"] == "success", outcome["log"][-5000:]
    assert [outcome["tasks"][f"classify[{i}]"] for i in range(4)] == ["success"] * 4
    report = outcome["xcom"]["report[-1].return_value"]
    assert report["records"] == {"extracted": 40, "loaded": 35, "quarantined": 5, "skipped": 0}
    out = ROOT / "sample_pipelines" / "customer_sentiment" / "out" / DAY
    files = [out / f"sentiment-{i}.csv" for i in range(4)]
    try:
        ids = [line.split(",")[0] for f in files for line in f.read_text().splitlines()[1:]]
        assert len(ids) == len(set(ids)) == 35
    finally:
        shutil.rmtree(out, ignore_errors=True)  # the sample's out/ folder, left as it was


class _TaskInstance:
    """What the operator uses of Airflow's task instance: xcom_push."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_on_kill_stops_the_run_cleanly_and_fails_the_task(airflow_home: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    import threading
    import time

    from tests.support.llm_server import LLMServer

    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_home))
    from core.integrations.airflow import AirflowException, LoomPipelineOperator

    with LLMServer(latency_s=0.3, seed=1) as server:
        pipeline = write_pipeline(tmp_path / "slow", rows=rows(40), base_url=server.base_url,
                                  transform={"concurrency": 2})
        operator = LoomPipelineOperator(task_id="slow", pipeline=str(pipeline),
                                        store_url=f"sqlite:///{tmp_path / 'loom.db'}")
        ti = _TaskInstance()
        failure: list[BaseException] = []

        def execute() -> None:
            try:
                operator.execute({"ti": ti, "run_id": "manual", "dag": None})
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=execute)
        thread.start()
        deadline = time.monotonic() + 30
        while server.count < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        operator.on_kill()  # what Airflow calls when the task is stopped
        thread.join(60)
    assert not thread.is_alive()
    assert len(failure) == 1 and type(failure[0]) is AirflowException
    summary = ti.pushed["return_value"]
    assert summary["status"] == "cancelled"
    assert f"ended cancelled: the Airflow task was stopped" in str(failure[0])
    records = summary["records"]
    assert records["skipped"] > 0 and records["loaded"] < 40
    assert records["extracted"] == records["loaded"] + records["quarantined"] + records["skipped"]
