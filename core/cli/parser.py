"""The command line's grammar: `loom [FOLDER]`, `loom --run PIPELINE …` and the subcommands.

Imports argparse and nothing of the engine: `loom --help`, a usage error and the choice of
command cost no more than parsing. Each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from core import __version__

HEADLESS_COMMANDS = ("validate", "runs", "release", "quarantine", "secrets", "prices", "init")
# core.estimate.DEFAULT_SAMPLE, written here so that parsing does not import the estimator
# (tests/unit/test_cli_help.py keeps the two equal).
ESTIMATE_SAMPLE = 20

_INT_MAX = 2**63 - 1  # what the store's (and SQLite's) integers hold
_JSON_HELP = "print JSON on stdout instead of a table"


def _count(text: str) -> int:
    """An integer argument the store can hold: anything larger is a one-line usage error
    (argparse's), never an OverflowError from the database."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if not -_INT_MAX <= value <= _INT_MAX:
        raise argparse.ArgumentTypeError(f"{text[:30]}{'…' if len(text) > 30 else ''} is out "
                                         f"of range (at most {_INT_MAX})")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (its default also prints the whole usage)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parsers of a command's actions (`loom quarantine list`, …), by name: a command
        # given without its action prints them (core.cli.main).
        self.actions: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"loom: {message} (see loom --help)\n")
        raise SystemExit(2)


def build_run_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="loom",
        description="AI(E)TL pipelines: extract, transform with an LLM, evaluate, load or quarantine.",
        epilog=("commands: loom init [FOLDER] · loom validate PIPELINE… · loom runs · "
                "loom release RUN_ID · loom quarantine list|show|approve|reprocess|discard · "
                "loom secrets set|list|delete · loom prices [MODEL…]\n"
                "With no --run, `loom [FOLDER]` opens the workbench."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=".", help="folder with pipelines (workbench)")
    parser.add_argument("--run", metavar="PIPELINE", help="run a pipeline headless")
    parser.add_argument("--limit", type=_count, metavar="N", help="process at most N records")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a pipeline key, e.g. --set transform.model=gpt-4o (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    parser.add_argument("--no-cache", action="store_true", help="do not use cached LLM answers")
    parser.add_argument("--record", metavar="FILE", help="record every LLM exchange to a cassette")
    parser.add_argument("--estimate", type=_count, nargs="?", const=ESTIMATE_SAMPLE, metavar="N",
                        help=f"run N sample records (default {ESTIMATE_SAMPLE}) without loading "
                             "them and project the cost, tokens and time of the whole run")
    parser.add_argument("--shard", metavar="I/N",
                        help="process only shard I of N (numbered from 0) of the source's records")
    parser.add_argument("--shard-group", metavar="NAME",
                        help="the id the N shard runs share (default under Airflow: the task)")
    parser.add_argument("--resume", nargs="?", const="", metavar="RUN_ID",
                        help="finish an unfinished run (crashed, killed, cancelled or failed) "
                             "instead of starting one: RUN_ID, or the pipeline's newest; what "
                             "was loaded is not loaded again, what was answered not paid again")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: resume even though the pipeline changed since the "
                             "run started")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show Loom's version and the price data it uses, and exit")
    return parser


class _Version(argparse.Action):
    """`loom --version`: Loom's version and which genai-prices data prices its runs (read only
    when asked: the data is not loaded to parse a command line)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(f"loom {__version__}\nprices: {_price_data_line()}\n")
        parser.exit()


def _price_data_line() -> str:
    from core.config import load_config
    from core.errors import LoomError
    from core.llm.pricing import Pricing

    try:
        return Pricing.from_config(load_config()).data_info().describe()
    except LoomError:  # a broken config.yaml: still say what the data is
        return Pricing().data_info().describe()


def build_command_parser() -> _Parser:
    parser = _Parser(prog="loom")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_init(commands)
    _add_validate(commands)
    _add_runs(commands)
    _add_release(commands)
    parser.actions["quarantine"] = _add_quarantine(commands)
    parser.actions["secrets"] = _add_secrets(commands)
    _add_prices(commands)
    return parser


def _action_parsers(command: argparse.ArgumentParser) -> Any:
    """A command's actions. Not required by argparse: a command given alone prints them all
    (with their one-line help) and exits 2, instead of argparse's bare 'required: action'."""
    return command.add_subparsers(dest="action", metavar="ACTION", title="actions",
                                  parser_class=_Parser)


def _add_init(commands: "argparse._SubParsersAction[_Parser]") -> None:
    init = commands.add_parser(
        "init", help="write a small pipeline to start from (a prompt, pipeline.yaml, data) "
                     "that validates and runs offline")
    init.add_argument("folder", nargs="?", default=".", metavar="FOLDER",
                      help="where to write it (default: here); created if missing, existing "
                           "files are never overwritten")


def _add_validate(commands: "argparse._SubParsersAction[_Parser]") -> None:
    validate = commands.add_parser("validate", help="check pipelines without running them")
    validate.add_argument("pipelines", nargs="+", metavar="PIPELINE",
                          help="pipeline.yaml files (or their folders) to check")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a pipeline key before checking (repeatable)")
    validate.add_argument("--no-data", action="store_true",
                          help="do not read the source to render the prompt against its first "
                               "records (for a source that cannot be reached from here)")


def _add_runs(commands: "argparse._SubParsersAction[_Parser]") -> None:
    runs = commands.add_parser("runs", help="run history")
    runs.add_argument("--pipeline", help="only this pipeline's runs")
    runs.add_argument("--limit", type=_count, default=20, metavar="N",
                      help="the N newest runs (default 20)")
    runs.add_argument("--json", action="store_true", help=_JSON_HELP)


def _add_release(commands: "argparse._SubParsersAction[_Parser]") -> None:
    release = commands.add_parser(
        "release", help="publish the passing records a held run (replace, ended partial) kept "
                        "back, into its destination, once")
    release.add_argument("run_id", metavar="RUN_ID", help="the held run (or a unique prefix)")
    release.add_argument("--json", action="store_true", help=_JSON_HELP)


def _add_quarantine(commands: "argparse._SubParsersAction[_Parser]") -> argparse.ArgumentParser:
    quarantine = commands.add_parser("quarantine", help="records that did not pass")
    actions = _action_parsers(quarantine)
    listing = actions.add_parser("list", help="quarantined records")
    listing.add_argument("--run", dest="run_id", metavar="RUN_ID", help="only this run's records")
    listing.add_argument("--pipeline", help="only this pipeline's records")
    listing.add_argument("--stage", choices=["extract", "transform", "evaluate", "load"],
                         help="only records that failed at this stage")
    listing.add_argument("--status", default="open",
                         choices=["open", "approved", "reprocessed", "discarded", "all"],
                         help="only records in this state (default open)")
    listing.add_argument("--limit", type=_count, default=50, metavar="N",
                         help="at most N records (default 50)")
    listing.add_argument("--json", action="store_true", help=_JSON_HELP)
    show = actions.add_parser("show", help="one quarantined record, whole")
    show.add_argument("id", type=_count, metavar="ID", help="the record's quarantine id")
    show.add_argument("--json", action="store_true", help=_JSON_HELP)
    approve = actions.add_parser("approve", help="load the records' outputs as they are")
    approve.add_argument("ids", type=_count, nargs="+", metavar="ID", help="quarantine ids")
    approve.add_argument("--output", metavar="JSON",
                         help="replace the output first (one ID): edit, then approve")
    approve.add_argument("--note", help="why, kept in the record's history")
    approve.add_argument("--json", action="store_true", help=_JSON_HELP)
    reprocess = actions.add_parser(
        "reprocess", help="transform and evaluate again with the current prompt and model")
    reprocess.add_argument("ids", type=_count, nargs="+", metavar="ID", help="quarantine ids")
    reprocess.add_argument("--json", action="store_true", help=_JSON_HELP)
    discard = actions.add_parser("discard", help="drop the records for good")
    discard.add_argument("ids", type=_count, nargs="+", metavar="ID", help="quarantine ids")
    discard.add_argument("--note", help="why, kept in the record's history")
    discard.add_argument("--json", action="store_true", help=_JSON_HELP)
    return quarantine


def _add_secrets(commands: "argparse._SubParsersAction[_Parser]") -> argparse.ArgumentParser:
    secrets = commands.add_parser("secrets", help="${NAME} secrets in the keyring (service loom)")
    actions = _action_parsers(secrets)
    setting = actions.add_parser(
        "set", help="store a secret: the value from a hidden prompt, or from stdin when piped")
    setting.add_argument("name", metavar="NAME", help="the secret's name, as in ${NAME}")
    names = actions.add_parser("list", help="the names of the stored secrets (never values)")
    names.add_argument("--json", action="store_true", help=_JSON_HELP)
    deleting = actions.add_parser("delete", help="remove a secret")
    deleting.add_argument("name", metavar="NAME", help="the secret's name, as in ${NAME}")
    return secrets


def _add_prices(commands: "argparse._SubParsersAction[_Parser]") -> None:
    prices = commands.add_parser(
        "prices", help="what models cost, from genai-prices and your overrides (USD per 1M tokens)")
    prices.add_argument("models", nargs="*", metavar="MODEL", help="model names to price")
    prices.add_argument("--provider", default=None,
                        choices=("openai", "anthropic", "openai_compatible", "replay"),
                        help="the Loom provider the model is called through (default: by name)")
    prices.add_argument("--base-url", default=None, help="the provider's base URL")
    prices.add_argument("--refresh", action="store_true",
                        help="download genai-prices' current data into $LOOM_HOME/prices.json "
                             "(runs then use it; delete the file to go back to the bundled data)")
    prices.add_argument("--url", default=None, help="with --refresh: where to download from")
    prices.add_argument("--json", action="store_true", help=_JSON_HELP)
