"""Scores read well whatever an evaluator puts in them: deterministic explanations, and an LLM
judge's details (criteria met and not met, claims checked) rendered generically."""

from __future__ import annotations

from rich.console import Console

from loom_tui import format as fmt
from loom_tui.widgets.score_view import details_text, scores_table

COLORS = {"success": "green", "error": "red"}


def plain(renderable) -> str:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def test_a_judge_score_shows_its_criteria_and_claims() -> None:
    score = {
        "evaluator": "judged", "type": "custom_criteria", "value": 0.5, "passed": False,
        "threshold": 0.75, "weight": 2.0, "confidence": 0.9, "cost_usd": 0.00012,
        "explanation": "Half the criteria are met.",
        "details": {
            "criteria": [{"criterion": "Accurate sentiment", "met": True},
                         {"criterion": "No hallucination", "met": False,
                          "reason": "invents a refund"}],
            "claims": [{"claim": "The kettle leaked", "supported": True}],
            "model": "gpt-4o-mini",
        },
    }
    text = plain(scores_table([score], COLORS))
    assert "✗ judged  0.50 < 0.75" in text
    assert "custom_criteria · confidence 0.90 · weight 2 · $0.000120" in text
    assert "Half the criteria are met." in text
    assert "✓ Accurate sentiment" in text
    assert "✗ No hallucination — invents a refund" in text
    assert "✓ The kettle leaked" in text
    assert "model: gpt-4o-mini" in text


def test_deterministic_scores_and_odd_details() -> None:
    scores = [
        {"evaluator": "label_ok", "type": "one_of", "value": 1.0, "passed": True,
         "threshold": 1.0, "explanation": "'positive' is one of positive, negative"},
        {"evaluator": "broken", "type": "regex", "value": 0.0, "passed": False,
         "threshold": 1.0, "error": "field output.x is missing"},
    ]
    text = plain(scores_table(scores, COLORS))
    assert "✓ label_ok  1.00 ≥ 1.00  one_of" in text
    assert "could not score: field output.x is missing" in text
    assert plain(details_text(["a", "b"], COLORS)).split() == ["•", "a", "•", "b"]
    assert "n: 1, 2" in plain(details_text({"n": [1, 2]}, COLORS))
    assert "criteria: none given" in plain(details_text({"criteria_not_met": []}, COLORS))


def test_each_judge_reads_as_findings_marked_held_or_not() -> None:
    """The details the LLM judges really give (core.evaluate.judges): lists of what held and
    what did not become ✓ / ✗ lines under one label; itemised claims and statements carry
    their reasons (and make the bare lists redundant); sentences get a line each and wrap
    under themselves; the judge's model comes last."""
    scores = [
        {"evaluator": "faithful", "type": "custom_criteria", "value": 0.2, "passed": False,
         "threshold": 0.7, "explanation": "The price is invented.",
         "details": {"criteria_met": ["sentiment matches"],
                     "criteria_not_met": ["no invented facts: uneven browning, price"],
                     "judge": "replay:gpt-4o-mini"}},
        {"evaluator": "facts", "type": "factuality", "value": 0.5, "passed": False,
         "threshold": 0.8, "explanation": "1 of 2 claims supported",
         "details": {"supported": ["the kettle leaked"], "unsupported": ["a refund was given"],
                     "claims": [{"claim": "the kettle leaked", "verdict": "supported",
                                 "reason": "stated in the review"},
                                {"claim": "a refund was given", "verdict": "unsupported",
                                 "reason": "not in the reference"}],
                     "judge": "openai:gpt-4o-mini"}},
        {"evaluator": "grounded", "type": "groundedness", "value": 0.5, "passed": False,
         "threshold": 0.8, "explanation": "1 of 2 statements grounded",
         "details": {"grounded": ["costs $20"], "ungrounded": ["ships in a day"],
                     "statements": [{"statement": "costs $20", "grounded": True, "source": 2,
                                     "reason": "the price list"},
                                    {"statement": "ships in a day", "grounded": False,
                                     "source": None, "reason": "no source says so"}]}},
        {"evaluator": "similar", "type": "semantic", "value": 0.6, "passed": False,
         "threshold": 0.8, "explanation": "Different conclusion.",
         "details": {"key_differences": ["the reference says the customer kept the kettle, "
                                         "the output says it was returned"]}},
        {"evaluator": "on_topic", "type": "relevance", "value": 0.9, "passed": True,
         "threshold": 0.7, "details": {"addressed": ["price"], "missed": []}},
        {"evaluator": "polite", "type": "instruction_following", "value": 1.0, "passed": True,
         "threshold": 0.7, "details": {"followed": [], "violated": []}},
    ]
    text = plain(scores_table(scores, COLORS))
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[2:5] == ["  criteria:", "    ✓ sentiment matches",
                          "    ✗ no invented facts: uneven browning, price"]
    assert lines[5] == "  judge: replay:gpt-4o-mini"
    assert "    ✓ the kettle leaked — stated in the review" in lines
    assert "    ✗ a refund was given — not in the reference" in lines
    assert "supported:" not in text and "unsupported:" not in text  # the claims say it
    assert "    ✓ costs $20 — the price list (source 2)" in lines
    assert "    ✗ ships in a day — no source says so" in lines
    assert "  key differences:" in lines
    assert "    • the reference says the customer kept the kettle, the output says it was returned" in lines
    assert "  query:" in lines and "    ✓ price" in lines
    assert "  instructions: none given" in lines


def test_a_long_finding_wraps_under_itself() -> None:
    long = "the summary says the customer asked for a refund, which the review never says"
    console = Console(width=40, record=True, file=open("/dev/null", "w"))
    console.print(scores_table([{"evaluator": "j", "type": "custom_criteria", "value": 0.0,
                                 "passed": False, "threshold": 0.5,
                                 "details": {"criteria_met": [], "criteria_not_met": [long]}}],
                               COLORS))
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    start = lines.index("  criteria:")
    assert lines[start + 1].startswith("    ✗ the summary")
    assert all(line.startswith("      ") for line in lines[start + 2:] if line)


def test_formatting_never_makes_up_a_price() -> None:
    assert fmt.money(None) == "unknown" and fmt.money(0) == "$0"
    assert fmt.money(0.0021) == "$0.002100" and fmt.money(1.5) == "$1.5000"
    assert fmt.latency(0.41) == "410 ms" and fmt.latency(1.2) == "1.20 s"
    assert fmt.duration(97.3) == "1m 37s" and fmt.duration(4000) == "1h 06m"
    assert fmt.rejection(35, 5) == 0.125 and fmt.rejection(0, 0) is None
    assert fmt.one_line("a\n  b", 10) == "a b" and fmt.one_line("x" * 20, 5) == "xxxx…"
    assert fmt.record_summary({"id": "R1", "text": "a long review text of some length",
                               "n": 3}, skip="R1") == "a long review text of some length · n=3"
