"""Classify each day's product reviews, split over four Airflow workers.

The team set-up (README: "From a laptop to a team"): every worker runs Loom against one shared
PostgreSQL history store, named by the Airflow connection `loom_store`, and each instance of
the mapped task takes one shard of the source: shard I of 4, numbered from 0 like map indexes.
The four runs share a shard group (this DAG run's task), so `loom runs` on any machine shows
them as one line, summed. Each shard writes its own file (`{shard}` in the destination), so no
worker overwrites another's rows; a database table in append or upsert mode could take all four.

Needs: pip install 'loom-aietl[airflow,postgres]' on the workers, and the connection:
    airflow connections add loom_store --conn-type postgres --conn-host db.internal \
        --conn-login loom --conn-password ... --conn-schema loom
Try it on a laptop, with a SQLite store and no scheduler:
    export AIRFLOW_HOME=/tmp/airflow AIRFLOW__CORE__DAGS_FOLDER=sample_pipelines/airflow
    export AIRFLOW_CONN_LOOM_STORE='{"conn_type": "sqlite", "host": "/tmp/loom-team.db"}'
    airflow db migrate && python sample_pipelines/airflow/loom_customer_sentiment.py
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import dag, task

from core.integrations.airflow import LoomPipelineOperator

SHARDS = 4
# The sample pipeline beside this folder; resolve() so that a symlink in the DAGs folder works.
PIPELINE = Path(__file__).resolve().parent.parent / "customer_sentiment"


@dag(schedule="@daily", start_date=datetime(2026, 1, 1), catchup=False, tags=["loom"])
def loom_customer_sentiment() -> None:
    classify = LoomPipelineOperator.partial(
        task_id="classify",
        pipeline=str(PIPELINE),
        # Templated: each day's run is recorded with its date, and writes to its own folder.
        pipeline_params={"run_date": "{{ ds }}"},
        set={"load.destination": "csv://out/{{ ds }}/sentiment-{shard}.csv"},
        store_conn_id="loom_store",
        fail_on_quality_gate=True,  # a run above max_rejection_rate fails its task
        retries=2,  # a failed run (a provider outage) is retried; a quality gate failure is not
    ).expand(shard=[f"{i}/{SHARDS}" for i in range(SHARDS)])

    @task
    def report(summaries: list[dict[str, Any]]) -> dict[str, Any]:
        """The shards' XComs added up: what `loom runs` shows for the group."""
        records = {key: sum(s["records"][key] for s in summaries)
                   for key in ("extracted", "loaded", "quarantined", "skipped")}
        costs = [s["cost_usd"] for s in summaries]
        return {"group": summaries[0]["shard"]["group"], "runs": [s["run_id"] for s in summaries],
                "records": records,
                "cost_usd": None if None in costs else round(sum(costs), 6)}

    report(classify.output)


dag_object = loom_customer_sentiment()

if __name__ == "__main__":
    dag_object.test()
