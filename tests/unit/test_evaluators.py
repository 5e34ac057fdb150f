"""The deterministic evaluators and their registry, built from real pipeline files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.errors import EvaluatorError, PipelineError
from core.evaluate.deterministic import (Contains, ExactMatch, Expression, JsonSchema, Length,
                                         OneOf, Range, Regex)
from core.evaluate.registry import EVALUATORS, build_evaluators
from tests.support.gating import evaluate_all
from core.spec import LoadedSpec, load_spec

HUGE = "ünïcode " * 2560  # 20 kB of text


def write_pipeline(folder: Path, evaluators: list[dict[str, Any]], *,
                   params: dict[str, Any] | None = None, **evaluate: Any) -> Path:
    """A small but complete pipeline folder: prompt, data file and pipeline.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompt.j2").write_text("Classify: {{ input.text }}\n", encoding="utf-8")
    (folder / "reviews.csv").write_text("id,text,expected\n1,great,positive\n", encoding="utf-8")
    pipeline = {
        "name": "evaluators_test",
        "params": params or {},
        "extract": {"source": "csv://reviews.csv", "id_field": "id"},
        "transform": {"prompt": "prompt.j2", "model": "gpt-4o-mini"},
        "evaluate": {"evaluators": evaluators, **evaluate},
        "load": {"destination": "jsonl://out.jsonl"},
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def load(folder: Path, evaluators: list[dict[str, Any]], **kwargs: Any) -> LoadedSpec:
    return load_spec(write_pipeline(folder, evaluators, **kwargs))


def build_one(tmp_path: Path, spec: dict[str, Any], **kwargs: Any):
    (evaluator,) = build_evaluators(load(tmp_path, [spec], **kwargs))
    return evaluator


async def score(evaluator, output: Any, input_data: dict[str, Any] | None = None):
    return await evaluator.score(input_data if input_data is not None else {}, output)


# ---------------------------------------------------------------- registry


def test_registry_maps_every_deterministic_type(tmp_path):
    assert {t: c.__name__ for t, c in EVALUATORS.items() if not c.uses_llm} == {
        "exact_match": "ExactMatch", "one_of": "OneOf", "regex": "Regex", "contains": "Contains",
        "json_schema": "JsonSchema", "range": "Range", "length": "Length",
        "expression": "Expression",
    }
    loaded = load(tmp_path, [
        {"type": "one_of", "field": "output.label", "values": ["a"]},
        {"name": "n", "type": "range", "field": "output.n", "min": 0, "threshold": 0.5, "weight": 3},
    ])
    first, second = build_evaluators(loaded)
    assert isinstance(first, OneOf) and first.name == "one_of"
    assert isinstance(second, Range)
    assert (second.name, second.threshold, second.weight) == ("n", 0.5, 3)


def test_registry_builds_nothing_for_no_evaluators(tmp_path):
    assert build_evaluators(load(tmp_path, [])) == []


async def test_evaluate_all_scores_in_order(tmp_path):
    loaded = load(tmp_path, [
        {"name": "label", "type": "one_of", "field": "output.label", "values": ["pos", "neg"]},
        {"name": "short", "type": "length", "field": "output.label", "max": 3},
    ])
    scores = await evaluate_all(build_evaluators(loaded), {}, {"label": "positive"})
    assert [(s.evaluator, s.passed) for s in scores] == [("label", False), ("short", False)]
    assert [s.to_dict()["type"] for s in scores] == ["one_of", "length"]


async def test_evaluate_all_names_the_evaluator_that_could_not_score(tmp_path):
    loaded = load(tmp_path, [
        {"name": "fine", "type": "one_of", "field": "output.x", "values": [1]},
        {"name": "broken", "type": "expression", "expr": "output.x / 0 > 1"},
    ])
    with pytest.raises(EvaluatorError) as caught:
        await evaluate_all(build_evaluators(loaded), {}, {"x": 1})
    assert str(caught.value).startswith("broken: expression 'output.x / 0 > 1' raised ZeroDivisionError")
    assert isinstance(caught.value.__cause__, EvaluatorError)


def test_registry_error_for_unreadable_schema_file_names_file_and_key(tmp_path):
    path = write_pipeline(tmp_path, [
        {"type": "one_of", "field": "output.x", "values": [1]},
        {"type": "json_schema", "schema": "schemas/out.json"},
    ])
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "out.json").write_text('{"type": "object",', encoding="utf-8")
    loaded = load_spec(path)
    with pytest.raises(PipelineError) as caught:
        build_evaluators(loaded)
    message = str(caught.value)
    assert message.startswith(f"{loaded.path}: evaluate.evaluators[1].schema: ")
    assert "out.json is not valid JSON" in message and "\n" not in message
    assert caught.value.key == "evaluate.evaluators[1].schema"
    assert caught.value.file == str(loaded.path)


def test_registry_error_for_invalid_json_schema(tmp_path):
    loaded = load(tmp_path, [{"type": "json_schema", "schema": {"type": "objekt"}}])
    with pytest.raises(PipelineError) as caught:
        build_evaluators(loaded)
    assert caught.value.key == "evaluate.evaluators[0].schema"
    assert "invalid JSON schema at $.type" in str(caught.value)


def test_registry_error_for_bad_yaml_schema_file(tmp_path):
    path = write_pipeline(tmp_path, [{"type": "json_schema", "schema": "out.yaml"}])
    (tmp_path / "out.yaml").write_text("type: [object\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"evaluators\[0\]\.schema: schema file out.yaml "
                                            r"is not valid YAML"):
        build_evaluators(load_spec(path))


def test_registry_error_for_schema_file_gone_after_loading(tmp_path):
    path = write_pipeline(tmp_path, [{"type": "json_schema", "schema": "out.json"}])
    (tmp_path / "out.json").write_text("{}", encoding="utf-8")
    loaded = load_spec(path)
    (tmp_path / "out.json").unlink()
    with pytest.raises(PipelineError, match=r"evaluators\[0\]\.schema: cannot read schema file"):
        build_evaluators(loaded)


def test_registry_error_for_expression_syntax(tmp_path):
    loaded = load(tmp_path, [
        {"type": "one_of", "field": "output.x", "values": [1]},
        {"name": "e", "type": "expression", "expr": "output.x >"},
    ])
    with pytest.raises(PipelineError) as caught:
        build_evaluators(loaded)
    assert caught.value.key == "evaluate.evaluators[1].expr"
    assert "expression syntax error" in str(caught.value)
    assert str(caught.value).startswith(str(loaded.path))


def test_registry_error_for_misspelt_expression_name(tmp_path):
    loaded = load(tmp_path, [{"type": "expression", "expr": "ouput.score > 0.5"}])
    with pytest.raises(PipelineError, match=r"evaluators\[0\]\.expr: unknown name ouput"):
        build_evaluators(loaded)


def test_registry_error_for_unrooted_reference_field(tmp_path):
    loaded = load(tmp_path, [{"type": "exact_match", "field": "output.x",
                              "reference_field": "expected"}])
    with pytest.raises(PipelineError, match=r"evaluators\[0\]\.reference_field: 'expected' "
                                            r"must start with input\. or output\."):
        build_evaluators(loaded)


# ---------------------------------------------------------------- exact_match


async def test_exact_match_against_value_and_reference(tmp_path):
    ev = build_one(tmp_path, {"type": "exact_match", "field": "output.label", "value": "positive"})
    good = await score(ev, {"label": "positive"})
    assert (good.value, good.passed) == (1.0, True)
    bad = await score(ev, {"label": "negative"})
    assert (bad.value, bad.passed) == (0.0, False)
    assert bad.explanation == "expected 'positive', found 'negative'"

    ref = build_one(tmp_path / "ref", {"type": "exact_match", "field": "output.label",
                                        "reference_field": "input.expected"})
    assert (await score(ref, {"label": "neutral"}, {"expected": "neutral"})).passed
    assert not (await score(ref, {"label": "neutral"}, {"expected": "positive"})).passed


async def test_exact_match_missing_fields_are_failures(tmp_path):
    ev = build_one(tmp_path, {"type": "exact_match", "field": "output.label",
                              "reference_field": "input.expected"})
    missing = await score(ev, {"other": 1}, {"expected": "x"})
    assert (missing.value, missing.passed, missing.explanation) == (0.0, False, "output.label is missing")
    no_ref = await score(ev, {"label": "x"}, {})
    assert not no_ref.passed and no_ref.explanation == "no reference: input.expected is missing"


async def test_exact_match_case_and_whitespace_options(tmp_path):
    strict = build_one(tmp_path / "a", {"type": "exact_match", "field": "output.t", "value": "Hello World"})
    assert not (await score(strict, {"t": "hello  world "})).passed
    loose = build_one(tmp_path / "b", {"type": "exact_match", "field": "output.t", "value": "Hello World",
                                       "ignore_case": True, "normalize_whitespace": True})
    result = await score(loose, {"t": "  hello \n\t WORLD "})
    assert result.passed
    assert "ignoring case" in result.explanation and "whitespace normalised" in result.explanation
    case_only = build_one(tmp_path / "c", {"type": "exact_match", "field": "output.t",
                                           "value": "Straße", "ignore_case": True})
    assert (await score(case_only, {"t": "STRASSE"})).passed  # casefold, not lower
    assert not (await score(case_only, {"t": "STRASSE "})).passed  # whitespace still counts


async def test_exact_match_numbers_against_text(tmp_path):
    # A CSV reference is text; a JSON answer is a number.
    ref = build_one(tmp_path / "a", {"type": "exact_match", "field": "output.stars",
                                     "reference_field": "input.stars"})
    assert (await score(ref, {"stars": 4}, {"stars": "4"})).passed
    assert (await score(ref, {"stars": 4.0}, {"stars": "4"})).passed
    assert (await score(ref, {"stars": 4.5}, {"stars": " 4.50 "})).passed
    assert not (await score(ref, {"stars": 5}, {"stars": "4"})).passed
    # Two strings stay strings: ids with leading zeros are not numbers.
    assert not (await score(ref, {"stars": "007"}, {"stars": "7"})).passed
    # Booleans match their JSON/CSV spellings, but not 1/0.
    assert (await score(ref, {"stars": True}, {"stars": "true"})).passed
    assert (await score(ref, {"stars": False}, {"stars": "False"})).passed
    assert not (await score(ref, {"stars": True}, {"stars": "1"})).passed
    assert not (await score(ref, {"stars": True}, {"stars": 1})).passed
    # null matches only null.
    assert not (await score(ref, {"stars": None}, {"stars": "None"})).passed
    assert (await score(ref, {"stars": None}, {"stars": None})).passed
    # Structures compare by content, whatever the key order.
    assert (await score(ref, {"stars": {"a": 1, "b": [1, 2]}}, {"stars": {"b": [1, 2], "a": 1}})).passed

    value = build_one(tmp_path / "b", {"type": "exact_match", "field": "output.n", "value": 3})
    assert (await score(value, {"n": "3"})).passed
    assert not (await score(value, {"n": "three"})).passed
    assert (await score(value, {"n": 10**30 // 10**30 * 3})).passed


async def test_exact_match_unicode_huge_and_template_text(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "exact_match", "field": "output.t",
                                    "reference_field": "input.t"})
    assert (await score(ev, {"t": "日本語 ✓ café"}, {"t": "日本語 ✓ café"})).passed
    assert (await score(ev, {"t": HUGE}, {"t": HUGE})).passed
    different = await score(ev, {"t": HUGE + "x"}, {"t": HUGE})
    assert not different.passed and len(different.explanation) <= 200
    literal = build_one(tmp_path / "b", {"type": "exact_match", "field": "output.t", "value": "49"})
    result = await score(literal, {"t": "{{ 7*7 }}"})
    assert not result.passed and "'{{ 7*7 }}'" in result.explanation


# ---------------------------------------------------------------- one_of


async def test_one_of_pass_fail_missing(tmp_path):
    ev = build_one(tmp_path, {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
                              "values": ["positive", "negative", "neutral"]})
    assert (await score(ev, {"sentiment": "neutral"})).passed
    bad = await score(ev, {"sentiment": "happy"})
    assert (bad.value, bad.explanation) == (0.0, "'happy' is not one of positive, negative, neutral")
    assert (await score(ev, {"sentiment": "Positive"})).passed is False
    missing = await score(ev, {})
    assert missing.explanation == "output.sentiment is missing" and not missing.passed
    assert not (await score(ev, {"sentiment": None})).passed


async def test_one_of_ignore_case_unicode_and_numbers(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "one_of", "field": "output.s",
                                    "values": ["Positive", "Négatif", 3], "ignore_case": True})
    assert (await score(ev, {"s": "POSITIVE"})).passed
    assert (await score(ev, {"s": "négatif"})).passed
    assert (await score(ev, {"s": "3"})).passed  # CSV text against a YAML number
    assert (await score(ev, {"s": 3.0})).passed
    assert not (await score(ev, {"s": "{{ 7*7 }}"})).passed
    assert not (await score(ev, {"s": HUGE})).passed
    quoted = build_one(tmp_path / "b", {"type": "one_of", "field": "output.n", "values": ["1", "2"]})
    assert (await score(quoted, {"n": 2})).passed
    assert not (await score(quoted, {"n": "02"})).passed
    assert not (await score(quoted, {"n": True})).passed


# ---------------------------------------------------------------- regex


async def test_regex_search_and_full_match(tmp_path):
    search = build_one(tmp_path / "a", {"type": "regex", "field": "output.code", "pattern": r"\d{3}"})
    assert (await score(search, {"code": "abc123def"})).passed
    failed = await score(search, {"code": "ab12"})
    assert not failed.passed and failed.explanation == r"'ab12' does not match '\\d{3}'"
    full = build_one(tmp_path / "b", {"type": "regex", "field": "output.code",
                                      "pattern": r"\d{3}", "full_match": True})
    assert not (await score(full, {"code": "abc123def"})).passed
    assert (await score(full, {"code": "123"})).passed
    assert (await score(full, {})).explanation == "output.code is missing"
    assert (await score(full, {"code": None})).explanation == "output.code is null"


async def test_regex_ignore_case_non_strings_unicode(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "regex", "field": "output.v", "pattern": "^caf[eé]$",
                                    "ignore_case": True})
    assert (await score(ev, {"v": "CAFÉ"})).passed
    assert not (await score(build_one(tmp_path / "b", {"type": "regex", "field": "output.v",
                                                       "pattern": "^caf[eé]$"}), {"v": "CAFÉ"})).passed
    num = build_one(tmp_path / "c", {"type": "regex", "field": "output.v", "pattern": r"^\d+$"})
    result = await score(num, {"v": 42})
    assert result.passed and "a number, matched as its text" in result.explanation
    boolean = build_one(tmp_path / "d", {"type": "regex", "field": "output.v",
                                         "pattern": "^(true|false)$", "full_match": True})
    assert (await score(boolean, {"v": False})).passed  # JSON spelling, not Python's False
    big = build_one(tmp_path / "e", {"type": "regex", "field": "output.v", "pattern": "needle"})
    assert (await score(big, {"v": HUGE + "needle"})).passed
    missed = await score(big, {"v": HUGE})
    assert not missed.passed and len(missed.explanation) <= 200
    literal = build_one(tmp_path / "f", {"type": "regex", "field": "output.v", "pattern": r"\{\{"})
    assert (await score(literal, {"v": "{{ 7*7 }}"})).passed


# ---------------------------------------------------------------- contains


async def test_contains_all_partial_values_and_threshold(tmp_path):
    strict = build_one(tmp_path / "a", {"type": "contains", "field": "output.summary",
                                        "values": ["refund", "delay", "apology"]})
    partial = await score(strict, {"summary": "A refund after a delay."})
    assert partial.value == pytest.approx(2 / 3)
    assert not partial.passed  # default threshold 1.0
    assert partial.explanation == "2 of 3 present; missing 'apology'"
    lenient = build_one(tmp_path / "b", {"type": "contains", "field": "output.summary",
                                         "values": ["refund", "delay", "apology"], "threshold": 0.6})
    assert (await score(lenient, {"summary": "A refund after a delay."})).passed
    assert not (await score(lenient, {"summary": "A refund."})).passed
    full = await score(strict, {"summary": "refund, delay, apology"})
    assert (full.value, full.passed) == (1.0, True)


async def test_contains_any_none_and_case(tmp_path):
    any_ = build_one(tmp_path / "a", {"type": "contains", "field": "output.t", "mode": "any",
                                      "values": ["Refund", "Crédit"], "ignore_case": True})
    assert (await score(any_, {"t": "we issued a CRÉDIT"})).value == 1.0
    none_hit = await score(any_, {"t": "nothing"})
    assert none_hit.value == 0.0 and none_hit.explanation.startswith("none of 'Refund', 'Crédit'")
    forbid = build_one(tmp_path / "b", {"type": "contains", "field": "output.t", "mode": "none",
                                        "values": ["{{", "<script"]})
    assert (await score(forbid, {"t": "clean text"})).passed
    hit = await score(forbid, {"t": "says {{ 7*7 }}"})
    assert not hit.passed and hit.explanation == "found forbidden '{{'"
    assert not (await score(forbid, {})).passed
    case_sensitive = build_one(tmp_path / "c", {"type": "contains", "field": "output.t",
                                                "values": ["Refund"]})
    assert not (await score(case_sensitive, {"t": "refund"})).passed


async def test_contains_lists_huge_text_and_numbers(tmp_path):
    tags = build_one(tmp_path / "a", {"type": "contains", "field": "output.tags",
                                      "values": ["urgent", "billing"], "ignore_case": True})
    assert (await score(tags, {"tags": ["URGENT", "billing", "x"]})).passed
    assert (await score(tags, {"tags": ["urgently"]})).value == 0.0  # items, not substrings
    big = build_one(tmp_path / "b", {"type": "contains", "field": "output.t", "values": ["ünïcode"]})
    assert (await score(big, {"t": HUGE})).passed
    number = build_one(tmp_path / "c", {"type": "contains", "field": "output.n", "values": ["42"]})
    assert (await score(number, {"n": 1324})).passed is False
    assert (await score(number, {"n": 3421})).passed


# ---------------------------------------------------------------- json_schema


SENTIMENT_SCHEMA = {
    "type": "object", "required": ["sentiment"],
    "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                   "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
}


async def test_json_schema_inline(tmp_path):
    ev = build_one(tmp_path, {"type": "json_schema", "schema": SENTIMENT_SCHEMA})
    assert isinstance(ev, JsonSchema)
    assert (await score(ev, {"sentiment": "positive", "confidence": 0.9})).passed
    bad = await score(ev, {"sentiment": "happy"})
    assert not bad.passed
    assert bad.explanation.startswith("$.sentiment: 'happy' is not one of")
    nested = await score(ev, {"sentiment": "neutral", "confidence": 3})
    assert nested.explanation == "$.confidence: 3 is greater than the maximum of 1"
    missing = await score(ev, {"confidence": "x"})
    assert not missing.passed and "(and 1 more)" in missing.explanation
    unicode = await score(ev, {"sentiment": "日本語" * 3000})
    assert not unicode.passed and len(unicode.explanation) <= 200


async def test_json_schema_on_a_field_and_missing(tmp_path):
    ev = build_one(tmp_path, {"type": "json_schema", "field": "output.items",
                              "schema": {"type": "array", "items": {"type": "string"}, "minItems": 1}})
    assert (await score(ev, {"items": ["a", "{{ 7*7 }}"]})).passed
    wrong = await score(ev, {"items": ["a", 2]})
    assert wrong.explanation == "$[1]: 2 is not of type 'string'"
    assert (await score(ev, {})).explanation == "output.items is missing"


async def test_json_schema_from_json_and_yaml_files(tmp_path):
    schemas = tmp_path / "schemas"
    schemas.mkdir(parents=True)
    (schemas / "sentiment.json").write_text(json.dumps(SENTIMENT_SCHEMA), encoding="utf-8")
    (schemas / "sentiment.yaml").write_text(yaml.safe_dump(SENTIMENT_SCHEMA), encoding="utf-8")
    loaded = load(tmp_path, [
        {"name": "from_json", "type": "json_schema", "schema": "schemas/sentiment.json"},
        {"name": "from_yaml", "type": "json_schema", "schema": "schemas/sentiment.yaml"},
    ])
    for ev in build_evaluators(loaded):
        assert (await score(ev, {"sentiment": "negative"})).passed
        assert not (await score(ev, {"sentiment": 1})).passed


async def test_json_schema_draft_from_dollar_schema_and_formats(tmp_path):
    draft7 = build_one(tmp_path / "a", {"type": "json_schema", "schema": {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "array", "items": [{"type": "string"}], "additionalItems": False}})
    assert type(draft7.validator).__name__ == "Draft7Validator"
    assert (await score(draft7, ["a"])).passed
    assert not (await score(draft7, ["a", "b"])).passed
    default = build_one(tmp_path / "b", {"type": "json_schema", "schema": {"type": "string",
                                                                           "format": "date"}})
    assert type(default.validator).__name__ == "Draft202012Validator"
    assert (await score(default, "2024-02-29")).passed
    assert not (await score(default, "2023-02-29")).passed


async def test_json_schema_local_refs_followed_remote_refs_refused(tmp_path):
    (tmp_path / "label.json").write_text('{"enum": ["a", "b"]}', encoding="utf-8")
    (tmp_path / "root.json").write_text(json.dumps({
        "type": "object", "properties": {"label": {"$ref": "label.json"}}}), encoding="utf-8")
    ev = build_one(tmp_path, {"type": "json_schema", "schema": "root.json"})
    assert (await score(ev, {"label": "a"})).passed
    assert not (await score(ev, {"label": "c"})).passed
    remote = load(tmp_path / "r", [{"type": "json_schema", "schema": {
        "properties": {"x": {"$ref": "https://example.com/x.json"}}}}])
    with pytest.raises(PipelineError, match=r"schema: \$ref 'https://example.com/x.json': only "
                                            r"local schema files are followed"):
        build_evaluators(remote)
    dangling = load(tmp_path / "d", [{"type": "json_schema", "schema": {
        "properties": {"x": {"$ref": "nowhere.json"}}}}])
    with pytest.raises(PipelineError, match=r"\$ref 'nowhere.json': cannot read schema file"):
        build_evaluators(dangling)


# ---------------------------------------------------------------- range


async def test_range_bounds_and_numeric_text(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "range", "field": "output.c", "min": 0, "max": 1})
    assert (await score(ev, {"c": 0.5})).passed
    assert (await score(ev, {"c": 0})).passed and (await score(ev, {"c": 1})).passed
    above = await score(ev, {"c": 1.5})
    assert not above.passed and above.explanation == "1.5 is above max 1"
    assert (await score(ev, {"c": -0.1})).explanation == "-0.1 is below min 0"
    assert (await score(ev, {"c": " 0.75 "})).passed  # CSV text
    text = await score(ev, {"c": "high"})
    assert (text.value, text.explanation) == (0.0, "'high' is not a number")
    assert (await score(ev, {"c": True})).explanation == "true is not a number"
    assert (await score(ev, {"c": "nan"})).passed is False
    assert (await score(ev, {"c": "{{ 7*7 }}"})).passed is False
    assert (await score(ev, {})).explanation == "output.c is missing"
    low_only = build_one(tmp_path / "b", {"type": "range", "field": "input.stars", "min": 3})
    assert (await score(low_only, {}, {"stars": "5"})).passed
    assert (await score(low_only, {}, {"stars": 10**40})).passed
    assert not (await score(low_only, {}, {"stars": 2})).passed


# ---------------------------------------------------------------- length


async def test_length_chars_words_items(tmp_path):
    chars = build_one(tmp_path / "a", {"type": "length", "field": "output.t", "min": 2, "max": 5})
    assert (await score(chars, {"t": "日本語"})).passed  # characters, not bytes
    long = await score(chars, {"t": "abcdef"})
    assert not long.passed and long.explanation == "6 chars, above max 5"
    assert (await score(chars, {"t": "a"})).explanation == "1 char, below min 2"
    assert (await score(chars, {"t": 123})).passed
    assert not (await score(chars, {"t": ["a", "b"]})).passed
    assert (await score(chars, {"t": None})).explanation == "output.t is null"
    words = build_one(tmp_path / "b", {"type": "length", "field": "output.t", "max": 3,
                                       "unit": "words"})
    assert (await score(words, {"t": "  one two\n three "})).passed
    assert not (await score(words, {"t": HUGE})).passed
    assert (await score(words, {"t": HUGE})).explanation == "2560 words, above max 3"
    items = build_one(tmp_path / "c", {"type": "length", "field": "output.tags", "min": 1,
                                       "unit": "items"})
    assert (await score(items, {"tags": ["x"]})).passed
    assert not (await score(items, {"tags": []})).passed
    assert (await score(items, {"tags": {"k": 1}})).passed
    not_list = await score(items, {"tags": "x"})
    assert not not_list.passed and "not a list" in not_list.explanation
    assert (await score(items, {})).explanation == "output.tags is missing"


# ---------------------------------------------------------------- expression


async def test_expression_bool_and_params(tmp_path):
    ev = build_one(tmp_path, {"name": "confident", "type": "expression",
                              "expr": "output.confidence >= params.min_conf and output.label in ['a', 'b']"},
                   params={"min_conf": 0.7})
    yes = await score(ev, {"confidence": 0.8, "label": "a"})
    assert (yes.value, yes.passed) == (1.0, True)
    no = await score(ev, {"confidence": 0.5, "label": "a"})
    assert (no.value, no.passed) == (0.0, False) and no.explanation.endswith("is false")


async def test_expression_params_override(tmp_path):
    loaded = load(tmp_path, [{"type": "expression", "expr": "output.n > params.limit"}],
                  params={"limit": 10})
    (default,) = build_evaluators(loaded)
    (overridden,) = build_evaluators(loaded, params={"limit": 100})
    assert (await score(default, {"n": 50})).passed
    assert not (await score(overridden, {"n": 50})).passed


async def test_expression_number_is_the_value(tmp_path):
    ev = build_one(tmp_path, {"type": "expression", "threshold": 0.5,
                              "expr": "output.hits / output.total"})
    half = await score(ev, {"hits": 1, "total": 2})
    assert (half.value, half.passed) == (0.5, True)
    low = await score(ev, {"hits": 1, "total": 4})
    assert (low.value, low.passed) == (0.25, False)


async def test_expression_bad_results_and_runtime_errors(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "expression", "expr": "output.n * 10"})
    with pytest.raises(EvaluatorError, match=r"returned 20 \(a number\); it must give true/false"):
        await score(ev, {"n": 2})
    text = build_one(tmp_path / "b", {"type": "expression", "expr": "output.label"})
    with pytest.raises(EvaluatorError, match=r"expression 'output.label' returned 'yes' \(a str\)"):
        await score(text, {"label": "yes"})
    boom = build_one(tmp_path / "c", {"type": "expression", "expr": "output.a / output.b > 1"})
    with pytest.raises(EvaluatorError, match="raised ZeroDivisionError"):
        await score(boom, {"a": 1, "b": 0})
    with pytest.raises(EvaluatorError, match="raised TypeError"):
        await score(boom, {"a": "x", "b": 2})


async def test_expression_missing_field_is_a_failure(tmp_path):
    ev = build_one(tmp_path, {"type": "expression", "expr": "output.score > 0.5"})
    result = await score(ev, {"label": "x"})
    assert (result.value, result.passed) == (0.0, False)
    assert "has no attribute 'score'" in result.explanation
    bare = build_one(tmp_path / "b", {"type": "expression", "expr": "output.score"})
    assert not (await score(bare, {})).passed


async def test_expression_sandbox_violations(tmp_path):
    ev = build_one(tmp_path / "a", {"type": "expression", "expr": "output.__class__"})
    with pytest.raises(EvaluatorError, match="tried something the sandbox forbids"):
        await score(ev, {"x": 1})
    mutate = build_one(tmp_path / "b", {"type": "expression", "expr": "output.tags.append(1) is none"})
    with pytest.raises(EvaluatorError, match="sandbox forbids"):
        await score(mutate, {"tags": []})
    dunder = build_one(tmp_path / "c", {"type": "expression",
                                        "expr": "output.__class__.__mro__ | length > 0"})
    with pytest.raises(EvaluatorError, match="sandbox forbids"):
        await score(dunder, {})


async def test_expression_data_is_never_a_template(tmp_path):
    ev = build_one(tmp_path, {"type": "expression", "expr": "output.text == '{{ 7*7 }}'"})
    assert (await score(ev, {"text": "{{ 7*7 }}"})).passed
    assert not (await score(ev, {"text": "49"})).passed
    unicode = build_one(tmp_path / "u", {"type": "expression",
                                         "expr": "'café' in output.text and output.text | length > 20000"})
    assert (await score(unicode, {"text": HUGE + "café"})).passed


# ---------------------------------------------------------------- built by hand


async def test_evaluators_built_directly_from_spec_models():
    from core.spec import ContainsSpec, ExpressionSpec, JsonSchemaSpec, OneOfSpec

    one_of = OneOf(OneOfSpec(type="one_of", field="output", values=["x"]))
    assert (await score(one_of, "x")).passed
    contains = Contains(ContainsSpec(type="contains", values=["a"], name="has_a"))
    assert (await score(contains, "cat")).evaluator == "has_a"
    expression = Expression(ExpressionSpec(type="expression", expr="params.k == 1"), params={"k": 1})
    assert (await score(expression, None)).passed
    schema = JsonSchema(JsonSchemaSpec(type="json_schema", schema={"type": "integer"}))
    assert (await score(schema, 3)).passed
    assert {ExactMatch.type, Regex.type, Length.type, Range.type} <= set(EVALUATORS)
