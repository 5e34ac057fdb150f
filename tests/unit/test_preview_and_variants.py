"""Prompt variants beside a prompt (core.variants), the session's preview model as --set
overrides and its key status (core.preview), and the sample's recorded answers for every
variant (the cassette the offline demo ships)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.api import KeyStatus, PreviewModel, Workspace
from core.config import LoomConfig
from core.errors import CassetteMiss
from core.llm.capabilities import known_models
from core.preview import key_status
from core.records import Outcome
from core.variants import prompt_variants

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_pipelines" / "customer_sentiment"


def test_variants_are_the_files_beside_the_prompt(tmp_path: Path) -> None:
    prompt = tmp_path / "prompts" / "classify.j2"
    (tmp_path / "prompts" / "variants").mkdir(parents=True)
    prompt.write_text("{{ input.text }}")
    (tmp_path / "prompts" / "variants" / "b_second.j2").write_text("plain {{ input.text }}")
    (tmp_path / "prompts" / "variants" / "a_first.j2").write_text(
        "{#- variant: says   what\n  it changes -#}\nfirst {{ input.text }}")
    (tmp_path / "prompts" / "variants" / "notes.txt").write_text("not a prompt")
    (tmp_path / "prompts" / "variants" / "bad.j2").write_bytes(b"\xff\xfe not utf-8")
    found = prompt_variants(prompt)
    assert [(v.name, v.title, v.description) for v in found] == [
        ("a_first", "A first", "says what it changes"), ("b_second", "B second", "")]
    # The prompt a variant is (what the editor loads and a save writes): not its description.
    assert [v.text for v in found] == ["first {{ input.text }}", "plain {{ input.text }}"]
    assert prompt_variants(tmp_path / "elsewhere" / "p.j2") == []


def test_a_variants_description_renders_to_nothing() -> None:
    """The `{#- variant: … -#}` line changes no request: the cassette keys stay the prompt's."""
    workspace = Workspace(ROOT)
    loaded = workspace.load(SAMPLE)
    from core.records import Record

    record = Record(id="R1", data={"product": "kettle", "text": "Fine."}, ordinal=0)
    for variant in workspace.prompt_variants(loaded):
        whole = variant.path.read_text(encoding="utf-8")
        assert whole.startswith("{#- variant:") and not variant.text.startswith("{#")
        assert workspace.render(loaded, record, whole).messages == \
            workspace.render(loaded, record, variant.text).messages


def test_the_preview_model_as_overrides() -> None:
    workspace = Workspace(ROOT)
    loaded = workspace.load(SAMPLE)
    transform = loaded.spec.transform
    openai = PreviewModel("openai", "gpt-4o")
    assert openai.overrides(transform) == [
        "transform.provider=openai", 'transform.model="gpt-4o"', "transform.base_url=null",
        "transform.api_key=${OPENAI_API_KEY}", "transform.cassette=null"]
    previewed = workspace.load_for_preview(SAMPLE, openai)
    assert (previewed.spec.transform.provider, previewed.spec.transform.model) == \
        ("openai", "gpt-4o")
    assert previewed.spec.transform.api_key == "${OPENAI_API_KEY}"  # keyring, then environment
    local = workspace.load_for_preview(SAMPLE, PreviewModel("openai_compatible", "0.5",
                                                            "http://127.0.0.1:9/v1"))
    assert local.spec.transform.model == "0.5"  # a model name is a string, never a number
    assert local.spec.transform.base_url == "http://127.0.0.1:9/v1"
    assert local.spec.transform.api_key is None
    # The file is not written: loading it again gives the pipeline's own.
    assert workspace.load(SAMPLE).spec.transform.provider == "replay"
    assert workspace.preview_providers(loaded) == ["replay", "openai", "anthropic",
                                                   "openai_compatible"]


def test_key_status_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    transform = Workspace(ROOT).load(SAMPLE).spec.transform
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert key_status("replay", transform, set()).available
    assert key_status("openai", transform, set()) == KeyStatus("OPENAI_API_KEY", None)
    assert key_status("openai", transform, {"OPENAI_API_KEY"}).found_in == "keyring"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert key_status("openai", transform, None).found_in == "environment"
    assert key_status("openai_compatible", transform, set()).name is None


def test_known_models_leave_out_fine_tunes_and_snapshots() -> None:
    models = known_models("openai")
    assert "gpt-4o-mini" in models
    assert not any(m.startswith("ft:") or "audio" in m for m in models)
    assert "gpt-4o-mini-2024-07-18" not in models
    assert "claude-haiku-4-5" in known_models("anthropic")


def test_run_confirmation_thresholds_have_documented_defaults() -> None:
    above = LoomConfig().workbench.confirm_run_above
    assert (above.cost_usd, above.duration_s, above.records) == (0.10, 120.0, 1000)
    assert LoomConfig.model_validate({"workbench": {"confirm_run_above": {"records": 5}}}) \
        .workbench.confirm_run_above.records == 5


def test_the_cassette_message_is_the_command_lines_and_the_error_is_typed() -> None:
    miss = CassetteMiss("no recorded answer", cassette=Path("demo.jsonl"), key="abc")
    assert (miss.cassette, miss.key, miss.retryable) == (Path("demo.jsonl"), "abc", False)


async def test_the_demo_answers_every_variant_offline(tmp_path: Path, loom_home: Path) -> None:
    """Every record under every shipped variant has a recorded answer, and each variant
    changes some verdicts against the shipped prompt (the per-record diff has something)."""
    shutil.copytree(SAMPLE, tmp_path / "s", ignore=shutil.ignore_patterns("out"))
    async with Workspace(tmp_path) as workspace:
        loaded = workspace.load(tmp_path / "s")
        records = await workspace.preview(loaded, limit=100)
        assert len(records) == 40
        shipped = await workspace.run_sample(loaded, records)
        base = {r.record.id: r.outcome is Outcome.LOADED for r in shipped}
        variants = workspace.prompt_variants(loaded)
        assert [v.name for v in variants] == ["short_summary", "strict_neutral",
                                              "taxonomy_rubric"]
        for variant in variants:
            results = await workspace.run_sample(loaded, records, prompt_text=variant.text)
            assert not [r.record.id for r in results if r.error_type == "CassetteMiss"], \
                variant.name
            now = {r.record.id: r.outcome is Outcome.LOADED for r in results}
            assert any(now[i] != base[i] for i in base), variant.name
        # An edit no variant covers is a typed miss.
        missed = await workspace.run_sample(loaded, records[:1], prompt_text="hi {{ input.text }}")
        assert missed[0].error_type == "CassetteMiss"
        assert "--record FILE" in (missed[0].reason or "")  # the command line's words
