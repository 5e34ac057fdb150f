"""The references generated from the code (tools/generate_references.py) are current, and say
what the code does: the JSON Schema accepts the sample pipelines and refuses an unknown key, the
samples name it, and every key of the `--json` summary is documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from core.events import SUMMARY_FIELDS, RunSummary

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "core" / "schema" / "pipeline.schema.json"
SAMPLES = sorted((ROOT / "sample_pipelines").glob("*/pipeline.yaml"))


def test_the_generated_references_are_current() -> None:
    # The same check CI runs: a change to core/spec.py, core/cli.py's parsers or
    # core/events.py's SUMMARY_FIELDS needs `python tools/generate_references.py`.
    result = subprocess.run([sys.executable, "tools/generate_references.py", "--check"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_accepts_every_sample_pipeline_and_refuses_an_unknown_key() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert SAMPLES
    for path in SAMPLES:
        pipeline = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert [e.message for e in validator.iter_errors(pipeline)] == [], path
        pipeline["transform"]["promt"] = "prompts/x.j2"
        assert any("promt" in e.message for e in validator.iter_errors(pipeline)), path


def test_the_sample_pipelines_name_the_schema_on_their_first_line() -> None:
    for path in SAMPLES:
        first = path.read_text(encoding="utf-8").splitlines()[0]
        match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert match, (path, first)
        assert (path.parent / match.group(1)).resolve() == SCHEMA.resolve(), path


def _keys(value: object, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("cost_by_stage", "cost_by_model", "savings_usd", "details"):
                keys.add(prefix + key)  # keyed by stage, model, lever, check: open-ended
                continue
            keys.add(prefix + key)
            keys |= _keys(inner, f"{prefix}{key}.")
    elif isinstance(value, list):
        for item in value:
            keys |= _keys(item, prefix[:-1] + "[].")
    return keys


def test_every_key_of_the_json_summary_is_documented() -> None:
    from core.monitoring import Alert
    from core.sharding import Shard

    engine = (ROOT / "core" / "engine.py").read_text(encoding="utf-8")
    extra_keys = set(re.findall(r'extra\["(\w+)"\]', engine)) | {"alerts"}
    assert extra_keys >= {"shard", "attempts", "duplicate_ids", "held", "calls_repeated",
                          "calls_abandoned"}
    alert = Alert("cost_spike", "warning", "m", 2.0, 3.0, {"mean": 1.0}, id=1).to_dict()
    extra = {"shard": Shard(0, 2, "g").to_json(), "attempts": 2, "duplicate_ids": 1,
             "held": 3, "calls_repeated": 1, "calls_abandoned": 1, "alerts": [alert]}
    assert set(extra) == extra_keys
    summary = RunSummary(
        run_id="r", pipeline="p", status="success", status_reason=None, extracted=1, loaded=1,
        quarantined=0, skipped=0, cost_usd=0.1, cost_by_stage={"transform": 0.1},
        cost_by_model={"m": 0.1}, input_tokens=1, output_tokens=1, llm_calls=1, cache_hits=0,
        duration_s=0.1, latency_p50_s=0.1, latency_p95_s=0.1, latency_p99_s=0.1, extra=extra,
        savings_usd={"prompt_cache": 0.01})
    written = _keys(summary.to_json())
    documented = set(SUMMARY_FIELDS)
    assert written == documented, (sorted(written - documented), sorted(documented - written))

