"""Claims in the store (core.claims), on SQLite and a real PostgreSQL: of several processes
claiming the same records at once one gets each; a dead holder's claim is taken over with what
it left; a release and a quarantine action on the same run exclude each other."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
from collections import Counter

import pytest

from core.claims import ClaimState, Holder, host_name, start_time
from core.records import Outcome, Stage
from core.store import Store
from tests.unit.store_records import result, run_start, summary


@pytest.fixture
def live_holders():
    """Holder keys of live processes (sleepers), as other `loom` processes would be."""
    sleepers = [subprocess.Popen(["sleep", "120"]) for _ in range(4)]
    try:
        yield [Holder(p.pid, host_name(), start_time(p.pid)).key for p in sleepers]
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()


def dead_holder() -> str:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return Holder(gone.pid, host_name(), "1").key


async def quarantined_store(count: int = 6) -> tuple[Store, list[int]]:
    store = await Store.open()
    await store.start_run(run_start())
    await store.write_results("run-0001", "sentiment", [
        result(i, Outcome.QUARANTINED, stage=Stage.EVALUATE, reason="no") for i in range(count)])
    ids = [row.id for row in await store.list_quarantine(run_id="run-0001")]
    return store, ids


async def test_of_four_processes_claiming_the_same_records_one_gets_each(backend, live_holders):
    store, ids = await quarantined_store()
    others = [await Store.open() for _ in live_holders]
    try:
        answers = await asyncio.gather(*[
            other.claim_quarantined(ids, "approve", key, f"claim{n}")
            for n, (other, key) in enumerate(zip(others, live_holders))])
        claimed = Counter(i for found in answers for i, claim in found.items()
                          if claim.state is ClaimState.CLAIMED)
        assert claimed == Counter({i: 1 for i in ids})
        # All of them to one claimant: one statement claims what is free.
        assert sorted(len([c for c in found.values() if c.state is ClaimState.CLAIMED])
                      for found in answers) == [0, 0, 0, len(ids)]
        for found in answers:
            for claim in found.values():
                if claim.state is not ClaimState.CLAIMED:
                    assert claim.state is ClaimState.HELD and claim.status == "approve"
                    assert claim.holder.startswith("pid ") and " on " in claim.holder
    finally:
        for other in others:
            await other.close()
        await store.close()


async def test_a_dead_holders_claim_is_taken_over_with_what_it_left(backend, live_holders):
    store, ids = await quarantined_store(2)
    try:
        dead = dead_holder()
        await store.claim_quarantined(ids, "approve", dead, "deadclaim")
        await store.stage_claim({ids[0]: {"sentiment": "maybe"}}, dead)
        await store.note_claim_token(ids[:1], dead, "ino:123")
        found = await store.claim_quarantined(ids, "discard", live_holders[0], "newclaim")
        assert found[ids[0]].state is ClaimState.TAKEN_OVER
        assert (found[ids[0]].claim_id, found[ids[0]].token, found[ids[0]].status) == (
            "deadclaim", "ino:123", "approve")
        row = await store.get_quarantined(ids[0])
        assert row.claim_holder == live_holders[0] and row.claim_output == {"sentiment": "maybe"}
        # The new holder is alive: a third process is refused.
        third = await store.claim_quarantined(ids, "approve", live_holders[1], "third")
        assert {c.state for c in third.values()} == {ClaimState.HELD}
        # Resolving clears the claim; asking again says it is done.
        await store.resolve_quarantined(ids[0], action="approve", status="approved")
        row = await store.get_quarantined(ids[0])
        assert (row.claim_id, row.claim_holder, row.commit_token) == (None, None, None)
        again = await store.claim_quarantined(ids[:1], "approve", live_holders[1], "fourth")
        assert again[ids[0]].state is ClaimState.RESOLVED and again[ids[0]].status == "approved"
    finally:
        await store.close()


async def test_a_release_and_a_quarantine_action_on_one_run_exclude_each_other(backend,
                                                                                live_holders):
    store, ids = await quarantined_store(2)
    try:
        await store.hold_run("run-0001")
        await store.claim_quarantined(ids[:1], "approve", live_holders[0], "q1")
        busy = await store.claim_release("run-0001", live_holders[1])
        assert busy.state is ClaimState.BUSY and busy.holder.startswith(
            f"pid {Holder.parse(live_holders[0]).pid} on ")
        await store.drop_claims(ids[:1], live_holders[0])
        assert (await store.claim_release("run-0001", live_holders[1])).state is \
            ClaimState.CLAIMED
        refused = await store.claim_quarantined(ids, "approve", live_holders[0], "q2")
        assert {c.state for c in refused.values()} == {ClaimState.RELEASING}
        assert (await store.claim_release("run-0001", live_holders[2])).state is ClaimState.HELD
        await store.note_release_token("run-0001", live_holders[1], "tok")
        # The releaser dies: the next release takes over, with the token it noted.
        run = await store.get_run("run-0001")
        assert run.commit_state == "releasing" and run.claim_holder == live_holders[1]
    finally:
        await store.close()


async def test_a_dead_release_is_taken_over_with_its_token(backend, live_holders):
    store, ids = await quarantined_store(1)
    try:
        await store.hold_run("run-0001")
        dead = dead_holder()
        assert (await store.claim_release("run-0001", dead)).state is ClaimState.CLAIMED
        assert await store.note_release_token("run-0001", dead, "tok")
        taken = await store.claim_release("run-0001", live_holders[0])
        assert (taken.state, taken.token) == (ClaimState.TAKEN_OVER, "tok")
        # A quarantine action may go on while the release's holder is dead.
        await store.abandon_release("run-0001", live_holders[0])
        run = await store.get_run("run-0001")
        assert (run.commit_state, run.claim_holder, run.commit_token) == ("held", None, None)
    finally:
        await store.close()


async def test_a_run_a_live_release_holds_is_not_resumed(backend, live_holders):
    from core.resume import resume_problem

    store, _ = await quarantined_store(1)
    try:
        held = dataclasses.replace(summary(), loaded=0, skipped=3)
        await store.finish_run(held, [])
        await store.hold_run("run-0001")
        assert resume_problem(await store.get_run("run-0001")) is None
        await store.claim_release("run-0001", live_holders[0])
        problem = resume_problem(await store.get_run("run-0001"))
        assert problem is not None and "is being released by pid " in problem
    finally:
        await store.close()
