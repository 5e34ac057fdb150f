"""Sandboxed rendering: data is data, templates cannot escape, errors name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import SecurityError, TemplateError
from core.prompts import content_hash, load_prompts
from core.spec import load_spec
from tests.pipelines import write_pipeline


def prompts_for(tmp_path: Path, prompt: str, **sections):
    path = write_pipeline(tmp_path / "p", rows=[{"id": "1", "text": "t"}], prompt=prompt, **sections)
    return load_prompts(load_spec(path))


def test_input_context_and_params_render(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "glossary.md").write_text("TERMS")
    prompts = prompts_for(tmp_path, "{{ params.lang }}|{{ context.glossary }}|{{ input.text }}",
                          transform={"context": ["glossary.md"]}, params={"lang": "fr"})
    messages = prompts.render({"text": "hello"})
    assert messages == [{"role": "user", "content": "fr|TERMS|hello"}]


def test_template_syntax_in_data_is_never_rendered(tmp_path: Path) -> None:
    prompts = prompts_for(tmp_path, "say: {{ input.text }}")
    hostile = "{{ 7*7 }} {% for x in range(3) %}{{x}}{% endfor %} {{ ''.__class__ }}"
    assert prompts.render({"text": hostile})[0]["content"] == f"say: {hostile}"


def test_missing_variables_are_errors_with_the_line(tmp_path: Path) -> None:
    prompts = prompts_for(tmp_path, "line one\n{{ input.text }}\n{{ input.nope }}")
    with pytest.raises(TemplateError) as info:
        prompts.render({"text": "x"})
    assert "line 3" in str(info.value)
    assert "nope" in str(info.value)


@pytest.mark.parametrize("escape", [
    "{{ input.__class__.__mro__ }}",
    "{{ ''.__class__.__base__.__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
])
def test_escaping_the_sandbox_is_a_security_error(tmp_path: Path, escape: str) -> None:
    prompts = prompts_for(tmp_path, escape)
    with pytest.raises((SecurityError, TemplateError)) as info:
        prompts.render({"text": "x"})
    assert isinstance(info.value, SecurityError) or "undefined" in str(info.value)


def test_the_sandbox_is_immutable(tmp_path: Path) -> None:
    prompts = prompts_for(tmp_path, "{{ input.tags.append(1) }}")
    with pytest.raises(SecurityError):
        prompts.render({"tags": []})


def test_hashes_are_content_addressed(tmp_path: Path) -> None:
    prompts = prompts_for(tmp_path, "A {{ input.text }}")
    assert prompts.prompt_hash == content_hash("A {{ input.text }}")
    assert prompts.with_prompt("B").prompt_hash != prompts.prompt_hash
