"""Each LLM judge against the loopback server: what it asks, and the Score it makes of the answer."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import PipelineError
from core.evaluate.judges import JudgeFailed
from core.records import Outcome, Record, Stage
from core.spec import load_spec
from core.store import Store
from tests.pipelines import reply, write_pipeline
from tests.support.judging import (built, judge_pipeline, judge_prompt, judge_requests,
                                   judge_responder)
from tests.support.llm_server import ANTHROPIC_PATH, LLMServer, OPENAI_PATH

INPUT = {"id": "r1", "text": "The kettle boils fast.", "expected": "positive"}


def criteria_answer(score: float = 0.4, **extra: Any) -> dict[str, Any]:
    return {"score": score, "confidence": 0.8, "explanation": "Names no reason for the label.",
            "criteria_met": ["label is valid"], "criteria_not_met": ["gives a reason"], **extra}


async def test_custom_criteria_sends_criteria_and_fields_and_parses_the_score(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: criteria_answer(0.4))
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "judged", "type": "custom_criteria", "criteria": "States a reason for the label",
         "threshold": 0.7, "weight": 3}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})

    (request,) = judge_requests(llm_server)
    prompt = judge_prompt(request)
    assert "States a reason for the label" in prompt
    assert '"sentiment": "positive"' in prompt  # the judged output
    assert "The kettle boils fast." in prompt  # the record it came from
    assert request["model"] == "gpt-4o-mini" and "temperature" not in request  # sent only when set
    schema = request["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {"score", "confidence", "explanation", "criteria_met",
                                       "criteria_not_met"}

    assert (score.evaluator, score.type, score.value, score.passed) == ("judged", "custom_criteria",
                                                                        0.4, False)
    assert (score.threshold, score.weight, score.confidence) == (0.7, 3.0, 0.8)
    assert score.explanation == "Names no reason for the label."
    assert score.details["criteria_met"] == ["label is valid"]
    assert score.details["criteria_not_met"] == ["gives a reason"]
    assert score.details["judge"] == "openai_compatible:gpt-4o-mini"
    (call,) = score.calls
    assert call.stage == "evaluate" and call.cost_usd and call.cost_usd > 0
    assert score.to_dict()["cost_usd"] == call.cost_usd and "latency_s" in score.to_dict()


async def test_a_judge_passes_at_its_threshold_and_defaults_to_0_7(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: criteria_answer(0.7))
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "custom_criteria", "criteria": "Polite"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
    assert score.threshold == 0.7 and score.passed


async def test_semantic_compares_with_the_reference_and_lists_differences(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: {
        "score": 0.55, "confidence": 0.9, "explanation": "Same topic, different verdict.",
        "key_differences": ["reference says the lid broke"]})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "close", "type": "semantic", "field": "output.summary",
         "reference_field": "input.gold", "input_field": None}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score({"gold": "The lid broke after a week."},
                                  {"summary": "Works fine."})
    prompt = judge_prompt(judge_requests(llm_server)[0])
    assert "<reference>\nThe lid broke after a week.\n</reference>" in prompt
    assert "<output>\nWorks fine.\n</output>" in prompt
    assert "<input>" not in prompt  # input_field: null leaves the record out
    assert score.value == 0.55 and not score.passed
    assert score.details["key_differences"] == ["reference says the lid broke"]


async def test_factuality_scores_the_share_of_supported_claims(tmp_path, llm_server):
    claims = [{"claim": "boils in 2 minutes", "verdict": "supported", "reason": "input says so"},
              {"claim": "made of steel", "verdict": "supported", "reason": "input says so"},
              {"claim": "costs $20", "verdict": "unsupported", "reason": "price not given"}]
    llm_server.responder = judge_responder(lambda body: {
        "claims": claims, "confidence": 0.7, "explanation": "The price is invented."})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "facts", "type": "factuality", "field": "output.summary",
         "reference_field": "input.facts"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score({"facts": "Steel kettle, boils in 2 minutes."},
                                  {"summary": "A steel kettle that boils in 2 minutes for $20."})
    prompt = judge_prompt(judge_requests(llm_server)[0])
    assert "Steel kettle, boils in 2 minutes." in prompt and "only when the reference" in prompt
    assert score.value == pytest.approx(2 / 3) and not score.passed
    assert score.explanation.startswith("2 of 3 claims supported; unsupported: costs $20.")
    assert score.details["supported"] == ["boils in 2 minutes", "made of steel"]
    assert score.details["unsupported"] == ["costs $20"]
    assert score.confidence == 0.7


async def test_factuality_without_claims_has_nothing_to_contradict(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: {
        "claims": [], "confidence": 0.9, "explanation": "An opinion only."})
    loaded = judge_pipeline(tmp_path, llm_server, [{"type": "factuality"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
    assert "common knowledge" in judge_prompt(judge_requests(llm_server)[0])
    assert score.value == 1.0 and score.explanation.startswith("no factual claims to check")


async def test_groundedness_numbers_the_sources_and_scores_the_grounded_share(tmp_path, llm_server):
    statements = [
        {"statement": "Returns take 30 days", "grounded": True, "source": 2, "reason": "doc 2"},
        {"statement": "Shipping is free", "grounded": False, "source": None, "reason": "nowhere"}]
    llm_server.responder = judge_responder(lambda body: {
        "statements": statements, "confidence": 0.95, "explanation": "One claim is invented."})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "grounded", "type": "groundedness", "field": "output.answer",
         "source_field": "input.docs", "threshold": 0.9}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score({"docs": ["Orders ship in 2 days.", "Returns: 30 days."]},
                                  {"answer": "Returns take 30 days and shipping is free."})
    prompt = judge_prompt(judge_requests(llm_server)[0])
    assert '<source number="1">\nOrders ship in 2 days.\n</source>' in prompt
    assert '<source number="2">\nReturns: 30 days.\n</source>' in prompt
    assert score.value == 0.5 and not score.passed
    assert score.explanation.startswith("1 of 2 statements grounded in 2 sources; "
                                        "not grounded: Shipping is free")
    assert score.details["ungrounded"] == ["Shipping is free"]


async def test_relevance_sends_the_query(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: {
        "score": 0.9, "confidence": 0.85, "explanation": "Answers the question.",
        "addressed": ["return window"], "missed": []})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "relevance", "field": "output.answer", "query_field": "input.question"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score({"question": "How long do I have to return it?"},
                                  {"answer": "30 days."})
    assert "<query>\nHow long do I have to return it?\n</query>" in \
        judge_prompt(judge_requests(llm_server)[0])
    assert (score.value, score.passed, score.details["addressed"]) == (0.9, True, ["return window"])


async def test_instruction_following_sends_the_instructions(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: {
        "score": 0.5, "confidence": 1.0, "explanation": "Too long.",
        "followed": ["lowercase"], "violated": ["at most five words"]})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "instruction_following", "criteria": "At most five words, all lowercase."}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
    assert "<instructions>\nAt most five words, all lowercase.\n</instructions>" in \
        judge_prompt(judge_requests(llm_server)[0])
    assert score.value == 0.5 and score.details["violated"] == ["at most five words"]


def _answer_position(body: dict[str, Any], text: str) -> str:
    prompt = judge_prompt(body)
    return "A" if f"<answer_a>\n{text}\n</answer_a>" in prompt else "B"


async def test_pairwise_against_a_reference_maps_the_winner_back_whatever_the_order(tmp_path, llm_server):
    # The judge prefers whichever position holds the output: the score must be 1 both times.
    llm_server.responder = judge_responder(lambda body: {
        "winner": _answer_position(body, "short and right"), "confidence": 0.75,
        "explanation": "More accurate."})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "vs_gold", "type": "pairwise", "field": "output.summary",
         "reference_field": "input.gold"}])
    positions = set()
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        for gold in ("long and wrong", "another reference", "a third one", "and a fourth"):
            score = await judge.score({"gold": gold}, {"summary": "short and right"})
            assert (score.value, score.passed, score.confidence) == (1.0, True, 0.75)
            assert score.details["winner"] == "output"
            assert score.details["against"] == "input.gold"
            positions.add(score.details["output_position"])
    assert positions == {"A", "B"}  # the order varies with the texts, not always first

    llm_server.responder = judge_responder(lambda body: {
        "winner": "tie", "confidence": 0.5, "explanation": "Equally good."})
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        tie = await judge.score({"gold": "x"}, {"summary": "y"})
    assert (tie.value, tie.passed, tie.details["winner"]) == (0.5, True, "tie")
    assert tie.threshold == 0.5


async def test_pairwise_losing_to_the_reference_scores_0(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: {
        "winner": "B" if _answer_position(body, "mine") == "A" else "A", "confidence": 0.9,
        "explanation": "The reference is complete."})
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "pairwise", "field": "output.summary", "reference_field": "input.gold",
         "allow_tie": False}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score({"gold": "theirs"}, {"summary": "mine"})
    request = judge_requests(llm_server)[0]
    assert request["response_format"]["json_schema"]["schema"]["properties"]["winner"]["enum"] == ["A", "B"]
    assert (score.value, score.passed, score.details["winner"]) == (0.0, False, "reference")
    assert score.explanation.startswith("input.gold preferred over the output")


async def test_pairwise_against_another_prompt_version(tmp_path, llm_server):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "v1.j2").write_text("Old prompt.\n{{ input.text }}\nreply: {\"sentiment\": \"neutral\"}\n")

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        return {"winner": _answer_position(body, '{"sentiment": "positive"}'),
                "confidence": 0.6, "explanation": "Closer to the review."}

    llm_server.responder = judge_responder(answer)
    loaded = judge_pipeline(folder, llm_server, [
        {"name": "vs_v1", "type": "pairwise", "against_prompt": "v1.j2",
         "model": "gpt-4o", "criteria": "Which label fits the review?"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
        assert [v.path for v in judge.prompt_versions()][-1].endswith("v1.j2")

    other, judged = llm_server.requests
    assert other["messages"][-1]["content"].startswith("Old prompt.")
    assert other["model"] == "gpt-4o-mini"  # the other version runs with the transform's model
    assert judged["model"] == "gpt-4o"  # the judge with its own
    prompt = judge_prompt(judged)
    assert '{"sentiment": "neutral"}' in prompt and "Which label fits the review?" in prompt
    assert score.value == 1.0 and score.details["winner"] == "output"
    assert score.details["other_output"] == '{"sentiment": "neutral"}'
    assert [c.stage for c in score.calls] == ["evaluate", "evaluate"]
    assert [c.model for c in score.calls] == ["gpt-4o-mini", "gpt-4o"]


async def test_a_malformed_judge_reply_is_repaired_once(tmp_path, llm_server):
    replies = iter(["Score: 0.9, looks good", json.dumps(criteria_answer(0.9))])
    llm_server.responder = judge_responder(lambda body: next(replies))
    loaded = judge_pipeline(tmp_path, llm_server, [{"type": "custom_criteria", "criteria": "x"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
    first, repair = judge_requests(llm_server)
    assert repair["messages"][-2] == {"role": "assistant", "content": "Score: 0.9, looks good"}
    assert "not valid: not JSON" in repair["messages"][-1]["content"]
    assert score.value == 0.9 and len(score.calls) == 2


async def test_a_score_outside_0_1_is_invalid_and_repaired(tmp_path, llm_server):
    replies = iter([json.dumps(criteria_answer(8)), json.dumps(criteria_answer(0.8))])
    llm_server.responder = judge_responder(lambda body: next(replies))
    loaded = judge_pipeline(tmp_path, llm_server, [{"type": "custom_criteria", "criteria": "x"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        score = await judge.score(INPUT, {"sentiment": "positive"})
    repair = judge_requests(llm_server)[1]
    assert "schema at score: 8 is greater than the maximum of 1" in repair["messages"][-1]["content"]
    assert score.value == 0.8


async def test_a_reply_still_malformed_after_the_repair_quarantines_the_record(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: '{"score": "high"}')
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"name": "label_ok", "type": "one_of", "field": "output.sentiment",
         "values": ["positive"]},
        {"name": "judged", "type": "custom_criteria", "criteria": "x"}],
        evaluate={"quality_gate": "any_pass"})  # lenient: a silent pass would load it
    record = Record(id="r1", data=INPUT | {"reply": reply("positive")}, ordinal=0)
    async with built(loaded) as runtime:
        (judge,) = [e for e in runtime.processor.evaluators if e.uses_llm]
        with pytest.raises(JudgeFailed, match="judge reply invalid after one repair"):
            await judge.score(INPUT, {"sentiment": "positive"})
        result = await runtime.processor.process(record)
    assert result.outcome is Outcome.QUARANTINED and result.stage is Stage.EVALUATE
    assert result.reason.startswith("judged: judge reply invalid after one repair: does not "
                                    "match the judge's schema")
    assert result.error_type == "JudgeFailed"
    failed = result.scores[-1]
    assert failed.evaluator == "judged" and failed.error and not failed.passed
    assert failed.details["reply"] == '{"score": "high"}'
    assert len(failed.calls) == 2 and all(c.stage == "evaluate" for c in failed.calls)
    assert len(result.calls) == 3  # the transform's call and both judge calls are paid for


async def test_a_judge_whose_provider_keeps_failing_skips_the_record_with_the_cause(tmp_path, llm_server):
    # The judge's endpoint failed, not the record: it waits for --resume, unquarantined.
    loaded = judge_pipeline(tmp_path, llm_server, [{"type": "relevance", "query_field": "input.q"}],
                            transform={"max_retries": 1})
    record = Record(id="r1", data={"q": "why?", "text": "t", "reply": reply("positive")}, ordinal=0)
    async with built(loaded) as runtime:
        llm_server.script(["ok", "500", "500"])  # the transform answers, the judge never does
        result = await runtime.processor.process(record)
    assert result.outcome is Outcome.SKIPPED and result.stage is Stage.EVALUATE
    assert result.reason.startswith("not processed: relevance: ")
    assert "500" in result.reason and result.error_type == "ProviderFailure"


async def test_nothing_to_judge_scores_0_without_a_call(tmp_path, llm_server):
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "semantic", "field": "output.summary", "reference_field": "input.gold"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        missing_output = await judge.score({"gold": "g"}, {"sentiment": "positive"})
        missing_reference = await judge.score({}, {"summary": "s"})
    assert llm_server.count == 0
    assert (missing_output.value, missing_output.explanation) == (0.0, "output.summary is missing")
    assert missing_reference.explanation == "cannot judge: input.gold is missing"
    assert missing_output.confidence == 1.0 and not missing_output.calls


async def test_a_judge_with_its_own_provider_and_model_uses_its_own_client(tmp_path, llm_server):
    with LLMServer(seed=3) as judge_server:
        judge_server.responder = judge_responder(lambda body: criteria_answer(0.9))
        loaded = judge_pipeline(tmp_path, llm_server, [
            {"type": "custom_criteria", "criteria": "x", "provider": "anthropic",
             "model": "claude-haiku-4-5", "base_url": judge_server.anthropic_base_url,
             "api_key": "judge-key", "max_tokens": 400}])
        record = Record(id="r1", data=INPUT | {"reply": reply("positive")}, ordinal=0)
        async with built(loaded) as runtime:
            (judge,) = runtime.processor.evaluators
            assert judge.client is not runtime.client
            result = await runtime.processor.process(record)
        assert llm_server.count == 1 and llm_server.count[OPENAI_PATH] == 1  # the transform only
        assert judge_server.count[ANTHROPIC_PATH] == 1
        (request,) = judge_server.requests
        assert request["model"] == "claude-haiku-4-5" and request["max_tokens"] == 400
        # The model takes native structured output: the judge's schema, closed, no forced tool.
        schema = request["output_config"]["format"]["schema"]
        assert request["output_config"]["format"]["type"] == "json_schema"
        assert schema["additionalProperties"] is False and "tool_choice" not in request
        assert judge_server.headers[0]["x-api-key"] == "judge-key"
    judge_score = result.scores[0]
    assert result.outcome is Outcome.LOADED and judge_score.value == 0.9
    assert judge_score.details["judge"] == "anthropic:claude-haiku-4-5"
    assert {c.model for c in result.calls} == {"gpt-4o-mini", "claude-haiku-4-5"}


async def test_a_judge_with_only_another_model_shares_the_run_client(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: criteria_answer(0.9))
    loaded = judge_pipeline(tmp_path, llm_server, [
        {"type": "custom_criteria", "criteria": "x", "model": "gpt-4o"}])
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        assert judge.client is runtime.client and judge.model == "gpt-4o"


async def test_judge_answers_are_cached_under_stage_evaluate(tmp_path, llm_server):
    llm_server.responder = judge_responder(lambda body: criteria_answer(0.9))
    loaded = judge_pipeline(tmp_path, llm_server, [{"type": "custom_criteria", "criteria": "x"}])
    store = await Store.open(f"sqlite:///{tmp_path / 'cache.db'}")
    try:
        async with built(loaded, cache=store) as runtime:
            (judge,) = runtime.processor.evaluators
            first = await judge.score(INPUT, {"sentiment": "positive"})
        async with built(loaded, cache=store) as runtime:
            (judge,) = runtime.processor.evaluators
            second = await judge.score(INPUT, {"sentiment": "positive"})
    finally:
        await store.close()
    assert llm_server.count == 1
    assert first.calls[0].cost_usd > 0 and not first.calls[0].cached
    (cached,) = second.calls
    assert cached.cached and cached.cost_usd == 0 and cached.stage == "evaluate"
    assert second.value == first.value and second.explanation == first.explanation


async def test_a_pipeline_prompt_replaces_the_packaged_one(tmp_path, llm_server):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "my_judge.j2").write_text(
        "House rules ({{ params.team }}): {{ criteria }}\nReview text: {{ record.text }}\n"
        "Answer: {{ output }}\n")
    llm_server.responder = judge_responder(lambda body: criteria_answer(0.9))
    loaded = judge_pipeline(folder, llm_server, [
        {"type": "custom_criteria", "criteria": "Be kind", "prompt": "my_judge.j2"}],
        params={"team": "support"})
    async with built(loaded) as runtime:
        (judge,) = runtime.processor.evaluators
        await judge.score(INPUT, {"sentiment": "positive"})
        system, prompt = judge.prompt_versions()
    assert judge_prompt(judge_requests(llm_server)[0]) == (
        'House rules (support): Be kind\nReview text: The kettle boils fast.\n'
        'Answer: {"sentiment": "positive"}')
    assert system.path == "loom:evaluate/judge_prompts/system.j2"
    assert prompt.path.endswith("my_judge.j2")


@pytest.mark.parametrize("evaluator, message", [
    ({"type": "pairwise"}, "pairwise needs exactly one of reference_field or against_prompt"),
    ({"type": "pairwise", "reference_field": "input.a", "against_prompt": "v1.j2"},
     "pairwise needs exactly one of reference_field or against_prompt"),
    ({"type": "semantic"}, "evaluate.evaluators[0].reference_field: required key is missing"),
    ({"type": "relevance", "query_field": "question"}, "'question' must start with input."),
    ({"type": "custom_criteria", "criteria": "x", "prompt": "missing.j2"},
     "evaluate.evaluators[0].prompt: prompt file not found: missing.j2"),
    ({"type": "pairwise", "against_prompt": "nope.j2"},
     "evaluate.evaluators[0].against_prompt: prompt file not found: nope.j2"),
    ({"type": "custom_criteria", "criteria": "x", "provider": "openai_compatible"},
     None),  # inherits the transform's base_url: valid
    ({"type": "custom_criteria", "criteria": "x", "provider": "replay"},
     "evaluate.evaluators[0]: a judge on provider replay needs a cassette: file"),
    ({"type": "custom_criteria", "criteria": "x", "provider": "anthropic", "temperature": 3},
     "evaluate.evaluators[0].temperature"),
])
def test_judge_specs_are_checked_when_the_pipeline_loads(tmp_path, evaluator, message):
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "reply": "r"}],
                          evaluate={"evaluators": [evaluator]})
    if message is None:
        load_spec(path)
        return
    with pytest.raises(PipelineError) as caught:
        load_spec(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_judge_on_another_provider_does_not_inherit_the_transform_endpoint(tmp_path):
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t", "reply": "r"}],
                          transform={"provider": "anthropic", "base_url": "http://127.0.0.1:9"},
                          evaluate={"evaluators": [{"type": "custom_criteria", "criteria": "x",
                                                    "provider": "openai_compatible"}]})
    with pytest.raises(PipelineError, match="a judge on provider openai_compatible needs base_url"):
        load_spec(path)


async def test_a_judge_refused_for_its_credentials_stops_the_run(tmp_path, llm_server):
    from core.processing import FatalRunError

    with LLMServer(seed=3, api_key="right-key") as judge_server:
        loaded = judge_pipeline(tmp_path, llm_server, [
            {"type": "custom_criteria", "criteria": "x", "base_url": judge_server.base_url,
             "api_key": "wrong-key"}])
        record = Record(id="r1", data=INPUT | {"reply": reply("positive")}, ordinal=0)
        async with built(loaded) as runtime:
            with pytest.raises(FatalRunError, match="401"):
                await runtime.processor.process(record)


async def test_a_judge_key_placeholder_is_resolved_at_run_time(tmp_path, llm_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "resolved-judge-key")
    with LLMServer(seed=5) as judge_server:
        judge_server.responder = judge_responder(lambda body: criteria_answer(0.9))
        loaded = judge_pipeline(tmp_path, llm_server, [
            {"type": "custom_criteria", "criteria": "x", "base_url": judge_server.base_url,
             "api_key": "${JUDGE_KEY}"}])
        assert loaded.raw["evaluate"]["evaluators"][0]["api_key"] == "${JUDGE_KEY}"  # as written
        async with built(loaded) as runtime:
            (judge,) = runtime.processor.evaluators
            score = await judge.score(INPUT, {"sentiment": "positive"})
        assert judge_server.headers[0]["Authorization"] == "Bearer resolved-judge-key"
    assert score.value == 0.9


async def test_a_judge_prompt_the_sandbox_refuses_stops_the_run(tmp_path, llm_server):
    from core.processing import FatalRunError

    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "sneaky.j2").write_text("{{ output.__class__.__mro__ }}\n")
    loaded = judge_pipeline(folder, llm_server, [
        {"type": "custom_criteria", "criteria": "x", "prompt": "sneaky.j2"}])
    record = Record(id="r1", data=INPUT | {"reply": reply("positive")}, ordinal=0)
    async with built(loaded) as runtime:
        with pytest.raises(FatalRunError, match="sandbox forbids"):
            await runtime.processor.process(record)
    assert judge_requests(llm_server) == []


async def test_a_judge_prompt_missing_a_variable_quarantines_the_record(tmp_path, llm_server):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "j.j2").write_text("{{ record.no_such_field }}\n")
    loaded = judge_pipeline(folder, llm_server, [
        {"name": "j", "type": "custom_criteria", "criteria": "x", "prompt": "j.j2"}])
    record = Record(id="r1", data=INPUT | {"reply": reply("positive")}, ordinal=0)
    async with built(loaded) as runtime:
        result = await runtime.processor.process(record)
    assert result.outcome is Outcome.QUARANTINED and result.stage is Stage.EVALUATE
    assert result.reason.startswith("j: judge prompt did not render:")
    assert "no_such_field" in result.reason
