"""Run one DAG file's DAG with `dag.test()` and print what happened as JSON (for the tests).

    python tests/airflow/dag_runner.py DAG_FILE DAG_ID LOGICAL_DATE

Runs in its own process, with AIRFLOW_HOME pointing at a scratch metadata database that
`airflow db migrate` prepared, and the DAG file's folder as the DAGs folder (dag.test() syncs
the DAG from there). The last line of stdout is `RESULT {json}`: the DAG run's state, each task
instance's state, and every XCom the run pushed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime, timezone


def main(path: str, dag_id: str, logical_date: str) -> None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.sdk import DAG
    from airflow.utils.session import create_session

    spec = importlib.util.spec_from_file_location("dag_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dags = [value for value in vars(module).values() if isinstance(value, DAG) and value.dag_id == dag_id]
    if not dags:
        raise SystemExit(f"{path} defines no DAG {dag_id!r}")
    run = dags[0].test(logical_date=datetime.fromisoformat(logical_date).replace(tzinfo=timezone.utc))
    with create_session() as session:
        tasks = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                    TaskInstance.run_id == run.run_id).all()
        xcoms = session.query(XComModel).filter(XComModel.dag_id == dag_id,
                                                XComModel.run_id == run.run_id).all()
        result = {
            "state": str(run.state.value if hasattr(run.state, "value") else run.state),
            "run_id": run.run_id,
            "tasks": {f"{t.task_id}[{t.map_index}]": str(getattr(t.state, "value", t.state))
                      for t in tasks},
            "xcom": {f"{x.task_id}[{x.map_index}].{x.key}": x.value for x in xcoms},
        }
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
