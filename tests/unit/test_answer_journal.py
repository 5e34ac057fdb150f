"""The run's answer journal: every answer kept the moment it arrives, so that a resume after a
crash pays only for the calls that were in flight."""

from __future__ import annotations

import json

import pytest

from core.llm.answer_journal import AnswerJournal, journal_path
from core.llm.budget import Budget
from core.llm.client import LLMClient
from core.llm.openai import OpenAIProvider
from core.llm.pricing import ModelRate, Pricing
from tests.unit.test_llm_client import request

PRICES = Pricing(prices={"gpt-4o-mini": ModelRate(0.15, 0.60)})


def client_for(server, journal: AnswerJournal, **options) -> LLMClient:
    provider = OpenAIProvider(api_key="sk-test-key-0123456789", base_url=server.base_url,
                              timeout_s=5, concurrency=4)
    return LLMClient(provider, pricing=PRICES, journal=journal, **options)


async def test_a_resumed_run_takes_the_answers_a_killed_attempt_was_given(tmp_path, llm_server):
    path = journal_path(tmp_path, "run-1")
    first = AnswerJournal.open(path)
    async with client_for(llm_server, first) as client:
        response, call = await client.complete(request())
        await client.complete(request('{"sentiment": "negative"}'))
    first.close()  # the process dies here: nothing was checkpointed
    assert llm_server.count == 2

    budget = Budget(1.0, pricing=PRICES)
    again = AnswerJournal.open(path)
    assert (again.earlier.answers, again.earlier.unanswered) == (2, 0)
    async with client_for(llm_server, again, budget=budget) as client:
        kept, replayed = await client.complete(request())
        assert llm_server.count == 2  # not asked again
        assert kept.text == response.text
        assert replayed.replayed and not replayed.cached
        assert replayed.cost_usd == call.cost_usd and budget.spent == pytest.approx(call.cost_usd)
        # Once per answer it was given: the same request again is a new call.
        await client.complete(request())
        assert llm_server.count == 3
    again.discard()
    assert not path.exists()


def test_calls_sent_and_never_answered_are_counted_and_a_torn_line_ignored(tmp_path):
    path = journal_path(tmp_path, "run-2")
    journal = AnswerJournal.open(path)
    lost = journal.sent("k1", 0.002)
    failed = journal.sent("k2", 0.001)
    journal.ended(failed)  # a call that failed: no answer billed, not a repeat
    journal.sent("k3", 0.003)
    journal.close()
    with path.open("ab") as handle:
        handle.write(b'{"answered": "' + lost.encode() + b'", "key": "k1", "resp')  # cut by the kill
    earlier = AnswerJournal.open(path).earlier
    assert (earlier.answers, earlier.unanswered) == (0, 2)
    assert earlier.unanswered_reserved_usd == pytest.approx(0.005)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["sent"] == lost and len(lines) == 5


def test_a_journal_that_cannot_be_written_lets_the_run_go_on(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    journal = AnswerJournal.open(blocked / "journal" / "run.jsonl")
    journal.sent("k", 0.0)  # no exception: the run goes on without it
    assert journal.failed is not None and "NotADirectoryError" in journal.failed
