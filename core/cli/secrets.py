"""`loom secrets set|list|delete`: the ${NAME} secrets in the keyring."""

from __future__ import annotations

import argparse
import getpass
import sys

from core.api import Workspace
from core.cli.output import json_out, out_console
from core.credentials import KeyringSecrets


def _read_secret(name: str) -> str:
    """The value from a hidden prompt at a terminal, else all of stdin (one final newline off)."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return getpass.getpass(f"value for {name} (hidden): ")
    value = stdin.read() if stdin is not None else ""
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def secrets(args: argparse.Namespace) -> int:
    workspace = Workspace(".")
    out = out_console()
    if args.action == "set":
        KeyringSecrets.check_name(args.name)  # before asking for the value
        workspace.set_secret(args.name, _read_secret(args.name))
        out.print(f"stored {args.name} in the keyring ({workspace.secrets_backend()}); pipelines "
                  f"use it as ${{{args.name}}}", highlight=False)
        return 0
    if args.action == "delete":
        workspace.delete_secret(args.name)
        out.print(f"deleted {args.name} from the keyring", highlight=False)
        return 0
    names = workspace.secret_names()
    if args.json:
        sys.stdout.write(json_out(names) + "\n")
    elif names:
        for name in names:
            out.print(name, highlight=False)
    else:
        out.print("no secrets in the keyring yet: loom secrets set NAME", highlight=False)
    return 0

