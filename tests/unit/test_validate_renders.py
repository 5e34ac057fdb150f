"""`loom validate` renders the prompt against the source's first records (no model call) and
names each undefined variable with the template line and the record."""

from __future__ import annotations

import pytest

from core import cli
from tests.pipelines import reply, write_pipeline

ROWS = [{"id": f"R00{i}", "text": f"review {i}", "expected": "positive",
         "reply": reply("positive")} for i in range(1, 4)]


def validate(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_typo_in_a_variable_is_named_with_its_line_and_record(tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=ROWS, base_url=llm_server.base_url,
                          prompt="Classify this review.\n\n{{ input.txet }}\nreply: {{ input.reply }}\n")
    code, out, err = validate(capsys, str(path))
    assert code == 2 and out == ""
    assert err == ("error: prompt.j2:3: input.txet is undefined for record R001 "
                   "(fields: id, text, expected, reply)\n")
    assert llm_server.count == 0
    code, out, err = validate(capsys, str(path), "--no-data")
    assert code == 0 and "ok test_pipeline" in out


def test_a_good_prompt_renders_for_the_first_records_without_a_call(tmp_path, llm_server, capsys):
    path = write_pipeline(tmp_path / "p", rows=ROWS, base_url=llm_server.base_url)
    code, out, err = validate(capsys, str(path))
    assert code == 0, err
    assert "prompt rendered for 3 records, no model call" in out
    assert llm_server.count == 0


def test_undefined_names_in_the_system_prompt_and_at_top_level(tmp_path, capsys):
    path = write_pipeline(tmp_path / "p", rows=ROWS, prompt="{{ review }}\n",
                          transform={"system": "system.j2"})
    (tmp_path / "p" / "system.j2").write_text("You are careful.\n{{ input.meta.lang }}\n")
    code, out, err = validate(capsys, str(path))
    assert code == 2
    assert err == ("error: system.j2:2: input.meta is undefined for record R001 "
                   "(fields: id, text, expected, reply)\n")
    (tmp_path / "p" / "system.j2").write_text("You are careful.\n")
    code, out, err = validate(capsys, str(path))
    assert err == "error: prompt.j2:1: review is undefined for record R001 (fields: id, text, expected, reply)\n"


def test_a_source_that_cannot_be_read_is_one_line_and_no_data_skips_it(tmp_path, capsys):
    path = write_pipeline(tmp_path / "p", rows=ROWS,
                          extract={"source": "postgres://loom:${PG_PASSWORD}@127.0.0.1:9/db",
                                   "table": "reviews"})
    code, out, err = validate(capsys, str(path))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: cannot read records to render the prompt with: ")
    assert "--no-data skips this check" in err
    code, out, err = validate(capsys, str(path), "--no-data")
    assert code == 0, err


@pytest.mark.parametrize("prompt", ["{{ input.text | int + 'x' }}\n"])
def test_other_render_errors_keep_the_templates_words(tmp_path, capsys, prompt):
    path = write_pipeline(tmp_path / "p", rows=ROWS, prompt=prompt)
    code, out, err = validate(capsys, str(path))
    assert code == 2 and err.startswith("error: prompt.j2:1: ") and "record R001" in err
