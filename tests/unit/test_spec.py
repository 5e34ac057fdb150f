"""Pipeline YAML errors: one line naming the file, the line and the key; exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core import cli
from core.errors import PipelineError
from core.spec import load_spec
from tests.pipelines import write_pipeline


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "expected": "positive",
                                                 "reply": "{}"}])


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(needle)


def test_a_valid_pipeline_loads(pipeline: Path) -> None:
    loaded = load_spec(pipeline)
    assert loaded.spec.name == "test_pipeline"
    assert loaded.spec.transform.model == "gpt-4o-mini"
    assert loaded.base_dir == pipeline.parent.resolve()


def test_a_folder_means_its_pipeline_yaml(pipeline: Path) -> None:
    assert load_spec(pipeline.parent).spec.name == "test_pipeline"


# The seven kinds of broken pipeline the acceptance names, each: (how to break it, what the
# one-line message must contain).
BROKEN = {
    "yaml_syntax": (lambda p: edit(p, "name: test_pipeline", "name: [test_pipeline"),
                    ["YAML syntax error"]),
    "unknown_key": (lambda p: edit(p, "  prompt: prompt.j2", "  promt: prompt.j2"),
                    ["transform.promt", "unknown key", "did you mean 'prompt'"]),
    "missing_prompt": (lambda p: (p.parent / "prompt.j2").unlink(),
                       ["transform.prompt", "prompt file not found: prompt.j2"]),
    "unknown_evaluator": (lambda p: edit(p, "type: one_of", "type: one_off"),
                          ["evaluate.evaluators[0].type", "unknown evaluator type 'one_off'"]),
    "bad_scheme": (lambda p: edit(p, "destination: jsonl://", "destination: ftp://"),
                   ["load.destination", "unknown destination scheme 'ftp://'"]),
    "wrong_type": (lambda p: edit(p, "batch_size: 50", "batch_size: fifty"),
                   ["extract.batch_size", "valid integer", "'fifty'"]),
    "template_syntax": (lambda p: (p.parent / "prompt.j2").write_text("{{ input.text }\n{% if %}"),
                        ["transform.prompt", "prompt.j2 line 1", "template syntax error"]),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_broken_pipeline_is_one_line_naming_file_and_key_with_exit_2(
        kind: str, pipeline: Path, capsys: pytest.CaptureFixture[str]) -> None:
    breaker, expected = BROKEN[kind]
    breaker(pipeline)
    code = cli.main(["validate", str(pipeline)])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(pipeline) in lines[0]
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err

    code = cli.main(["--run", str(pipeline)])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_errors_carry_the_yaml_line(pipeline: Path) -> None:
    edit(pipeline, "  prompt: prompt.j2", "  promt: prompt.j2")
    with pytest.raises(PipelineError) as info:
        load_spec(pipeline)
    assert info.value.line == line_of(pipeline, "promt:")
    assert info.value.key == "transform.promt"


def test_unknown_keys_are_named_before_the_errors_they_cause(pipeline: Path) -> None:
    edit(pipeline, "  model: gpt-4o-mini", "  modle: gpt-4o-mini")
    with pytest.raises(PipelineError) as info:
        load_spec(pipeline)
    assert info.value.key == "transform.modle"
    assert "did you mean 'model'" in str(info.value)


def test_set_overrides_apply_and_are_named_when_wrong(pipeline: Path) -> None:
    loaded = load_spec(pipeline, ["transform.model=gpt-4o", "transform.temperature=0.5"])
    assert loaded.spec.transform.model == "gpt-4o"
    assert loaded.spec.transform.temperature == 0.5
    assert loaded.raw["transform"]["model"] == "gpt-4o"  # the snapshot shows what ran
    with pytest.raises(PipelineError, match=r"--set transform\.temperature"):
        load_spec(pipeline, ["transform.temperature=hot"])
    with pytest.raises(PipelineError, match="expected KEY=VALUE"):
        load_spec(pipeline, ["transform.model"])


@pytest.mark.parametrize("mutation, fragment", [
    ({"evaluate": {"quality_gate": "weighted"}}, "needs gate_threshold"),
    ({"transform": {"provider": "replay"}}, "needs a cassette"),
    ({"transform": {"provider": "openai_compatible", "base_url": None}}, "needs base_url"),
    ({"load": {"destination": "sqlite://out.db"}}, "needs table:"),
    ({"extract": {"source": "sqlite://nope.db", "table": "t"}}, "database not found: nope.db"),
    ({"extract": {"source": "sqlite://nope.db"}}, "a sqlite source needs query: or table:"),
    ({"evaluate": {"evaluators": [{"type": "regex", "field": "output.x", "pattern": "("}]}},
     "invalid regular expression"),
    ({"evaluate": {"evaluators": [{"type": "one_of", "field": "x", "values": [1]}]}},
     "must start with input. or output."),
    ({"evaluate": {"evaluators": [{"type": "one_of", "field": "output.a", "values": [1]},
                                  {"type": "one_of", "field": "output.b", "values": [1]}]}},
     "two evaluators are named 'one_of'"),
    ({"name": "has spaces"}, "no spaces"),
    ({"transform": {"temperature": 5}}, "less than or equal to 2"),
])
def test_semantic_errors_are_one_line(pipeline: Path, mutation: dict, fragment: str) -> None:
    raw = yaml.safe_load(pipeline.read_text())
    for key, value in mutation.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    pipeline.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError) as info:
        load_spec(pipeline)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_pipeline_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="no such pipeline file"):
        load_spec(tmp_path / "nope.yaml")


def test_a_yaml_list_is_not_a_pipeline(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(PipelineError, match="a pipeline is a YAML mapping"):
        load_spec(path)


# ---------------------------------------------------------------- requests every vendor refuses


def test_a_schema_whose_root_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "expected": "x", "reply": "{}"}],
                          transform={"output_schema": {"type": "array", "items": {"type": "string"}}})
    with pytest.raises(PipelineError, match=r"transform.output_schema.*object at its root"):
        load_spec(path)


def test_json_mode_without_the_word_json_in_the_prompt_is_refused(tmp_path: Path) -> None:
    rows = [{"id": "1", "text": "t", "expected": "x", "reply": "{}"}]
    path = write_pipeline(tmp_path / "p", rows=rows, prompt="Classify {{ input.text }}.",
                          transform={"output_schema": None, "response_format": "json"})
    with pytest.raises(PipelineError, match=r"transform.response_format.*the word \"json\""):
        load_spec(path)
    ok = write_pipeline(tmp_path / "q", rows=rows, prompt="Answer in JSON: {{ input.text }}.",
                        transform={"output_schema": None, "response_format": "json"})
    assert load_spec(ok).spec.transform.response_format == "json"


def test_params_may_not_set_what_loom_sets(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "expected": "x", "reply": "{}"}],
                          transform={"params": {"max_tokens": 10}})
    with pytest.raises(PipelineError, match=r"params.max_tokens: Loom sets max_tokens itself \(use transform.max_tokens\)"):
        load_spec(path)
