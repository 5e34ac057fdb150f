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


async def test_each_record_takes_its_own_answers_even_with_one_prompt(tmp_path, llm_server):
    """Records with the same prompt (`cache: false` asks the model for each): a resume hands
    each record only what was answered for it, and nothing of a record done before the crash."""
    from core.llm.answer_journal import record_scope

    path = journal_path(tmp_path, "run-3")
    first = AnswerJournal.open(path)
    async with client_for(llm_server, first) as client:
        for record in ("1:a", "2:b"):
            scope = record_scope.set(record)
            await client.complete(request())
            record_scope.reset(scope)
    first.close()
    assert llm_server.count == 2

    again = AnswerJournal.open(path)
    async with client_for(llm_server, again) as client:
        scope = record_scope.set("2:b")  # 1:a was checkpointed: not done again
        _, call = await client.complete(request())
        assert call.replayed and llm_server.count == 2
        _, call = await client.complete(request())  # b's one answer is taken: asked again
        assert not call.replayed and llm_server.count == 3
        record_scope.reset(scope)
        scope = record_scope.set("3:c")  # a record never asked before: 1:a's answer is not its
        _, call = await client.complete(request())
        assert not call.replayed and llm_server.count == 4
        record_scope.reset(scope)
    again.close()


async def test_a_call_that_never_connected_is_not_journaled_as_sent(tmp_path):
    """A request still connecting when the process dies never reached the server: the journal
    says `sent` only once the transport starts writing it (core.llm.base.request_sent)."""
    import socket

    from core.errors import ProviderError
    from core.llm.retry import RetryPolicy

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]

    class Nowhere:
        base_url = f"http://127.0.0.1:{port}/v1"

    path = journal_path(tmp_path, "run-4")
    journal = AnswerJournal.open(path)
    async with client_for(Nowhere, journal, retry_policy=RetryPolicy(max_retries=0)) as client:
        with pytest.raises(ProviderError):
            await client.complete(request())
    journal.close()
    assert not path.exists() or "sent" not in path.read_text()
    assert AnswerJournal.open(path).earlier.unanswered == 0
