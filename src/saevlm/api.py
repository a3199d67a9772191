"""Every command from Python, without a shell: ``saevlm.api.run("train", activations_dir=..., k=20)``.

Keyword arguments are the command's flags without dashes (``--expansion_factor 1 2`` becomes
``expansion_factor=[1, 2]``); defaults are the same as on the command line (configs/paper.yaml).
A mistake raises :class:`saevlm.errors.UserError` with the same one-line message the CLI prints.
See docs/python-api.md for a worked example.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from saevlm.errors import UserError


def command_args(command: str, config: str | Path | None = None, **flags: Any) -> argparse.Namespace:
    """The ``argparse.Namespace`` that ``saevlm <command> [--config config] <flags>`` would build."""
    from saevlm.cli import COMMANDS, build_parser

    if command not in COMMANDS:
        raise UserError(f"{command!r}: unknown command; expected one of {', '.join(COMMANDS)}")
    parser = build_parser((command, str(config)) if config else None)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    dests = {a.dest: a for a in sub._actions}
    unknown = [k for k in flags if k not in dests]
    if unknown:
        raise UserError(f"saevlm {command}: no flag --{unknown[0]} (its flags: "
                        f"{', '.join(sorted(d for d in dests if d != 'help'))})")
    args = sub.parse_args([a for k, a in _required(sub, flags)])
    for key, value in flags.items():
        action = dests[key]
        many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if many and not isinstance(value, (list, tuple)):
            value = [value]
        if isinstance(value, Path):
            value = str(value)
        elif many:
            value = [str(v) if isinstance(v, Path) else v for v in value]
        setattr(args, key, value)
    args.command, args._module = command, COMMANDS[command][0]
    return args


def _required(sub: argparse.ArgumentParser, flags: dict):
    """Placeholder values for required flags the caller gives (set properly afterwards)."""
    for a in sub._actions:
        if a.required and a.option_strings:
            if a.dest not in flags:
                raise UserError(f"saevlm {sub.prog.split()[-1]}: --{a.dest} is required")
            yield a.dest, a.option_strings[0]
            yield a.dest, "placeholder"


def run(command: str, config: str | Path | None = None, **flags: Any) -> int:
    """Run ``saevlm <command>`` in this process; returns its exit status (0 = success)."""
    args = command_args(command, config, **flags)
    return int(importlib.import_module(args._module).run(args) or 0)
