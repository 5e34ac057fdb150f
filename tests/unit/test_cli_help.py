"""The command line describes itself: every flag has a help line, and a command given without
its action (`loom quarantine`, `loom secrets`) lists the actions and exits 2."""

from __future__ import annotations

import argparse

import pytest

from core import cli
from core.cli.parser import ESTIMATE_SAMPLE
from core.estimate import DEFAULT_SAMPLE


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    found = [("loom", cli.build_run_parser())]
    pending = [("loom", cli.build_command_parser())]
    while pending:
        name, parser = pending.pop()
        found.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {sub}", subparser) for sub, subparser in action.choices.items()]
    return found


def test_every_argument_of_every_command_has_help() -> None:
    missing = [f"{name}: {action.option_strings or action.dest}"
               for name, parser in every_parser() for action in parser._actions
               if not isinstance(action, argparse._SubParsersAction)
               and not (action.help or "").strip()]
    assert missing == []
    # and every command and action has its one line in its parent's listing
    for name, parser in every_parser():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert {choice.dest for choice in action._choices_actions} == set(action.choices)
                assert all(choice.help for choice in action._choices_actions), name


@pytest.mark.parametrize(("command", "actions"), [
    ("quarantine", ["list", "show", "approve", "reprocess", "discard"]),
    ("secrets", ["set", "list", "delete"]),
])
def test_a_command_without_its_action_lists_its_actions(command: str, actions: list[str],
                                                        capsys) -> None:
    assert cli.main([command]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"usage: loom {command}")
    for action in actions:
        assert f"\n    {action} " in err or f"\n    {action}\n" in err, action
    assert err.splitlines()[-1] == f"loom: {command} needs one of the actions above"


def test_an_unknown_action_is_still_one_usage_line(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["quarantine", "approve-all"])
    assert exited.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_loom_help_names_every_command(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for command in cli.HEADLESS_COMMANDS:
        assert f"loom {command}" in out, command


def test_the_parser_estimate_default_is_the_estimators() -> None:
    # The parser writes it down so that parsing does not import the estimator.
    assert ESTIMATE_SAMPLE == DEFAULT_SAMPLE
