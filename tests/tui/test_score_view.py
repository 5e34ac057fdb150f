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
    assert "criteria_not_met: none" in plain(details_text({"criteria_not_met": []}, COLORS))


def test_formatting_never_makes_up_a_price() -> None:
    assert fmt.money(None) == "unknown" and fmt.money(0) == "$0"
    assert fmt.money(0.0021) == "$0.002100" and fmt.money(1.5) == "$1.5000"
    assert fmt.latency(0.41) == "410 ms" and fmt.latency(1.2) == "1.20 s"
    assert fmt.duration(97.3) == "1m 37s" and fmt.duration(4000) == "1h 06m"
    assert fmt.rejection(35, 5) == 0.125 and fmt.rejection(0, 0) is None
    assert fmt.one_line("a\n  b", 10) == "a b" and fmt.one_line("x" * 20, 5) == "xxxx…"
    assert fmt.record_summary({"id": "R1", "text": "a long review text of some length",
                               "n": 3}, skip="R1") == "a long review text of some length · n=3"
