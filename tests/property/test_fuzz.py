"""Property tests: whatever the YAML or the data, no traceback, no score outside [0, 1]."""

from __future__ import annotations

import asyncio
import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import cli
from core.errors import EvaluatorError, LoomError
from core.evaluate.registry import build_evaluators
from core.spec import load_spec
from tests.pipelines import write_pipeline

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# Values YAML can hold, including the awkward ones.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "csv://", "sqlite://x.db", "${MISSING}", "{{ input.x }}", "{% if %}",
                     "one_of", "weighted", "replace", "upsert", "-1", "1e400", "\x00", "🙂"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.extend(paths(value, prefix + (key,)))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            out.extend(paths(value, prefix + (index,)))
    return out


def mutate(tree: dict[str, Any], path: tuple[Any, ...], action: str, value: Any, key: str) -> dict:
    tree = copy.deepcopy(tree)
    parent: Any = tree
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif action == "add" and isinstance(parent, dict):
        parent[key] = value
    elif action == "rename" and isinstance(parent, dict):
        parent[key] = parent.pop(last)
    return tree


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("fuzz")
    path = write_pipeline(folder / "p", rows=[{"id": "1", "text": "t", "expected": "positive",
                                                "reply": "{}"}])
    return path, yaml.safe_load(path.read_text())


@SETTINGS
@given(data=st.data())
def test_validate_never_tracebacks_on_mutated_pipelines(base, data, capsys) -> None:
    path, raw = base
    mutated = raw
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        targets = paths(mutated)
        if not targets:
            break
        target = data.draw(st.sampled_from(targets))
        action = data.draw(st.sampled_from(["replace", "delete", "add", "rename"]))
        mutated = mutate(mutated, target, action, data.draw(values), data.draw(st.text(max_size=10)))
    text = yaml.safe_dump(mutated, allow_unicode=True)
    if data.draw(st.booleans()):
        # Sometimes the file itself is broken text.
        cut = data.draw(st.integers(min_value=0, max_value=len(text)))
        text = text[:cut] + data.draw(st.sampled_from(["", ":", "[", "\t", "- ", "{{", "'"])) + text[cut:]
    candidate = path.parent / "mutated.yaml"
    candidate.write_text(text, encoding="utf-8")
    code = cli.main(["validate", str(candidate)])
    out, err = capsys.readouterr()
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


EVALUATORS = [
    {"type": "exact_match", "field": "output.v", "reference_field": "input.v"},
    {"type": "exact_match", "field": "output.v", "value": "x", "ignore_case": True,
     "normalize_whitespace": True},
    {"type": "one_of", "field": "output.v", "values": ["a", 1, None, True], "ignore_case": True},
    {"type": "regex", "field": "output.v", "pattern": "^[a-z]+\\d*$", "ignore_case": True},
    {"type": "contains", "field": "output.v", "values": ["a", "é", "{{"], "mode": "all"},
    {"type": "contains", "field": "output", "values": ["x"], "mode": "none"},
    {"type": "json_schema", "field": "output", "schema": {"type": "object", "required": ["v"]}},
    {"type": "range", "field": "output.v", "min": -1, "max": 1},
    {"type": "length", "field": "output.v", "min": 1, "max": 5, "unit": "words"},
    {"type": "length", "field": "output.v", "max": 3, "unit": "items"},
    {"type": "expression", "expr": "output.v == input.v"},
    {"type": "expression", "expr": "(output.v | length) / 10 if output.v is string else 0.5"},
]

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=30)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)
records = st.fixed_dictionaries({}, optional={"v": json_values, "w": json_values})


@pytest.fixture(scope="module")
def evaluators(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("fuzz_eval")
    named = [{**spec, "name": f"e{i}"} for i, spec in enumerate(EVALUATORS)]
    path = write_pipeline(folder / "p", rows=[{"id": "1", "text": "t"}],
                          evaluate={"evaluators": named})
    return build_evaluators(load_spec(path))


@SETTINGS
@given(input_data=records, output=st.one_of(records, json_values))
def test_every_evaluator_scores_any_record_within_0_and_1(evaluators, input_data, output) -> None:
    async def score_all() -> None:
        for evaluator in evaluators:
            try:
                score = await evaluator.score(input_data, output)
            except EvaluatorError:
                continue  # a clear failure quarantines the record: allowed, a crash is not
            assert 0.0 <= score.value <= 1.0 and not math.isnan(score.value), (evaluator.name, score)
            assert score.passed == (score.value >= score.threshold)
            assert isinstance(score.explanation, str)

    asyncio.run(score_all())


def test_loom_errors_are_single_lines() -> None:
    # The property above leans on this: a LoomError's text never spans lines.
    assert "\n" not in str(LoomError("one line"))


# Records through the engine: whatever the order of their ids, every id loads exactly once — the
# first of its records (on_duplicate_id: quarantine) or the last (keep_last) — and no record that
# shares an id with another is ever sent to the model twice.
RUN_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                        suppress_health_check=[HealthCheck.function_scoped_fixture,
                                               HealthCheck.too_slow])


@RUN_SETTINGS
@given(ids=st.lists(st.sampled_from(["a", "b", "c", "d", "e", "é", "{{ x }}", "'; --"]),
                    min_size=1, max_size=30),
       policy=st.sampled_from(["quarantine", "keep_last"]),
       batch_size=st.integers(min_value=1, max_value=7))
def test_any_order_of_duplicate_ids_loads_each_id_once(tmp_path_factory, llm_server, ids, policy,
                                                        batch_size) -> None:
    from core.api import Workspace
    from core.engine import RunOptions
    from tests.pipelines import read_jsonl, reply

    folder = tmp_path_factory.mktemp("dups")
    rows = [{"id": record_id, "text": f"take {n}", "expected": "neutral",
             "reply": reply("neutral")} for n, record_id in enumerate(ids)]
    path = write_pipeline(folder, rows=rows, base_url=llm_server.base_url,
                          extract={"source": "csv://reviews.csv", "id_field": "id",
                                   "batch_size": batch_size, "on_duplicate_id": policy},
                          transform={"cache": False},
                          load={"destination": "jsonl://out/results.jsonl",
                                "fields": {"id": "id", "text": "input.text"}})
    calls = llm_server.count

    async def run() -> Any:
        async with Workspace(folder) as workspace:
            return await workspace.run_to_end(workspace.load(path), RunOptions())

    summary = asyncio.run(run())
    unique = list(dict.fromkeys(ids))
    others = len(ids) - len(unique)
    assert (summary.extracted, summary.loaded) == (len(ids), len(unique))
    assert (summary.quarantined, summary.skipped) == (
        (others, 0) if policy == "quarantine" else (0, others))
    assert llm_server.count - calls == len(unique)
    chosen = {}
    for n, record_id in enumerate(ids):
        if policy == "keep_last" or record_id not in chosen:
            chosen[record_id] = f"take {n}"
    loaded = read_jsonl(folder / "out" / "results.jsonl")
    assert len(loaded) == len(unique)
    assert {row["id"]: row["text"] for row in loaded} == chosen
