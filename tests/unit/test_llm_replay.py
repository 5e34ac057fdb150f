"""Cassettes: the replay provider serves what the recorder wrote, and says clearly what it lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import CassetteMiss, ProviderError
from core.llm.base import LLMRequest, LLMResponse
from core.llm.replay import CassetteRecorder, ReplayProvider


def request(text: str = "Classify: great phone", **fields) -> LLMRequest:
    fields.setdefault("model", "gpt-4o-mini")
    return LLMRequest(messages=[{"role": "user", "content": text}], **fields)


ANSWER = LLMResponse(text='{"sentiment": "positive"}', input_tokens=12, output_tokens=6,
                     cached_tokens=4, model="gpt-4o-mini-2024-07-18", finish_reason="stop")


def write_lines(path: Path, *items: object) -> Path:
    path.write_text("".join((item if isinstance(item, str) else json.dumps(item)) + "\n"
                            for item in items), encoding="utf-8")
    return path


HEADER = {"loom_cassette": 1, "note": "written by hand for a test", "created_at": "2026-01-01T00:00:00+00:00"}


async def test_a_recorded_exchange_is_served_back(tmp_path):
    cassette = tmp_path / "c.jsonl"
    with CassetteRecorder(cassette, note="from a test") as recorder:
        assert recorder.record(request(), ANSWER) is True
    replay = ReplayProvider(cassette)
    answer = await replay.complete(request())
    assert answer.to_dict() == ANSWER.to_dict()
    header = json.loads(cassette.read_text().splitlines()[0])
    assert header["loom_cassette"] == 1 and header["note"] == "from a test" and header["created_at"]
    entry = json.loads(cassette.read_text().splitlines()[1])
    assert entry == {"key": request().key(), "request": request().fingerprint(),
                     "response": ANSWER.to_dict()}


async def test_the_key_has_no_provider_scope():
    # Recorded from openai, replayed under any provider: the cassette key is the bare request key.
    assert request().key() != request().key("openai", "https://api.openai.com/v1")
    assert request().key() == request().key()


async def test_a_miss_is_one_line_naming_the_cassette_and_the_key(tmp_path):
    cassette = write_lines(tmp_path / "reviews.jsonl", HEADER)
    replay = ReplayProvider(cassette)
    unknown = request("never recorded")
    with pytest.raises(CassetteMiss) as caught:
        await replay.complete(unknown)
    assert str(caught.value) == (f"no recorded answer in reviews.jsonl for this request "
                                 f"(key {unknown.key()[:12]}); record one with --record "
                                 f"FILE against a real provider")
    assert caught.value.retryable is False
    # Typed, with what a UI needs to say it in its own words.
    assert caught.value.cassette == cassette and caught.value.key == unknown.key()


async def test_every_field_of_the_request_is_part_of_the_key(tmp_path):
    cassette = tmp_path / "c.jsonl"
    with CassetteRecorder(cassette) as recorder:
        recorder.record(request(), ANSWER)
    replay = ReplayProvider(cassette)
    for changed in (request(temperature=0.5), request(model="gpt-4o"), request("other text"),
                    request(output_schema={"type": "object"}), request(seed=1)):
        with pytest.raises(CassetteMiss):
            await replay.complete(changed)


async def test_a_hand_written_line_may_give_the_request_instead_of_the_key(tmp_path):
    cassette = write_lines(tmp_path / "c.jsonl", HEADER,
                           {"request": {"model": "gpt-4o-mini",
                                        "messages": [{"role": "user", "content": "Classify: great phone"}]},
                            "response": {"text": "hand written"}})
    answer = await ReplayProvider(cassette).complete(request())
    assert answer.text == "hand written"
    assert answer.input_tokens == 0


@pytest.mark.parametrize("lines, line, words", [
    ([HEADER, "{not json"], 2, "not JSON"),
    ([{"key": "abc", "response": {"text": "x"}}], 1, "first line must be the header"),
    ([{"loom_cassette": 2}], 1, "version 2 is not supported"),
    ([HEADER, {"key": "abc", "response": {"tokens": 3}}], 2, "response.text"),
    ([HEADER, {"response": {"text": "x"}}], 2, "needs a key or a request"),
    ([HEADER, {"request": {"model": "m", "messages": [], "colour": "red"}, "response": {"text": "x"}}],
     2, "request:"),
    ([HEADER, "[1, 2]"], 2, "JSON object"),
    ([HEADER, {"key": "abc", "response": {"text": "x", "input_tokens": "many"}}], 2, "response:"),
])
def test_a_malformed_cassette_names_the_file_and_line(tmp_path, lines, line, words):
    cassette = write_lines(tmp_path / "bad.jsonl", *lines)
    with pytest.raises(ProviderError) as caught:
        ReplayProvider(cassette)
    assert str(caught.value).startswith(f"{cassette}:{line}: malformed cassette")
    assert words in str(caught.value)
    assert not isinstance(caught.value, CassetteMiss)


def test_an_empty_or_missing_cassette_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ProviderError, match="empty"):
        ReplayProvider(empty)
    with pytest.raises(ProviderError, match="cannot read"):
        ReplayProvider(tmp_path / "nowhere.jsonl")


def test_the_recorder_extends_a_cassette_without_duplicating_keys(tmp_path):
    cassette = tmp_path / "deep" / "c.jsonl"
    with CassetteRecorder(cassette) as recorder:
        assert recorder.record(request("one"), ANSWER)
        assert not recorder.record(request("one"), ANSWER)
    recorder.record(request("two"), ANSWER)  # reopens after close
    recorder.close()
    again = CassetteRecorder(cassette, note="ignored: the file has its header")
    assert len(again) == 2
    assert not again.record(request("two"), ANSWER)
    assert again.record(request("three"), ANSWER)
    again.close()
    lines = cassette.read_text().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[0])["note"] == "recorded by loom --record"
    assert len(ReplayProvider(cassette)) == 3


def test_the_recorder_never_glues_lines_to_a_hand_edited_cassette(tmp_path):
    cassette = tmp_path / "c.jsonl"
    cassette.write_text(json.dumps(HEADER), encoding="utf-8")  # no final newline
    with CassetteRecorder(cassette) as recorder:
        recorder.record(request(), ANSWER)
    assert len(ReplayProvider(cassette)) == 1


def test_each_recorded_line_is_on_disk_at_once(tmp_path):
    cassette = tmp_path / "c.jsonl"
    recorder = CassetteRecorder(cassette)
    recorder.record(request(), ANSWER)
    # Not closed: a run that crashes keeps what it recorded.
    assert len(ReplayProvider(cassette)) == 1
    recorder.close()
