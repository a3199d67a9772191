"""The paper's settings from ``configs/paper.yaml`` (the single source), and ``--config FILE``.

``configs/paper.yaml`` is shipped inside the package (``saevlm/configs/paper.yaml`` is a link to
it in the repository, a copy in a built wheel). Its ``commands`` section gives flag defaults per
command; its ``numbers`` section the paper's results that the report and steering bounds compare
against (arXiv 2504.02821, Tables 1a, A1, A2, 3 and Figs. 4, 5).

``saevlm <command> --config FILE`` reads ``commands.<command>`` of another file the same way:
its keys (flag names without dashes) become the flags' defaults, so flags given on the command
line still win.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from saevlm.commandline import Kind, as_bool, convert
from saevlm.errors import UserError

PAPER_CONFIG = Path(__file__).with_name("configs") / "paper.yaml"


def load_config(path: str | Path, flag: str = "--config") -> dict:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{flag} {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {path}: expected a mapping with a 'commands:' section")
    commands = data.get("commands", {})
    if not isinstance(commands, dict) or any(not isinstance(v, dict) for v in commands.values()):
        raise UserError(f"{flag} {path}: 'commands' must map command names to {{flag: value}} mappings")
    return data


@functools.lru_cache(maxsize=1)
def paper_config() -> dict:
    """configs/paper.yaml, parsed once."""
    return load_config(PAPER_CONFIG, "configs/paper.yaml")


def paper_defaults(command: str) -> dict:
    return dict(paper_config().get("commands", {}).get(command, {}))


def paper_default(command: str, key: str) -> Any:
    """A config field's default from configs/paper.yaml (``commands.<command>.<key>``): the one
    place the paper's settings are written."""
    values = paper_config().get("commands", {}).get(command, {})
    if key not in values:
        raise KeyError(f"configs/paper.yaml has no commands.{command}.{key}")
    value = values[key]
    return list(value) if isinstance(value, list) else value


def paper_numbers() -> dict:
    return paper_config()["numbers"]


TOP_LEVEL_KEYS = ("commands", "numbers", "experiments")


def check_sections(data: dict, commands: list[str] | tuple[str, ...], source: str) -> None:
    """Unknown top-level keys and unknown command sections are errors (a misspelt ``trian:``
    would otherwise be ignored silently)."""
    import difflib

    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise UserError(f"{source}: unknown top-level key {key!r} (expected {', '.join(TOP_LEVEL_KEYS)})")
    for name in data.get("commands", {}) or {}:
        if name not in commands:
            close = difflib.get_close_matches(str(name), list(commands), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"{source}: commands.{name}: no such command{hint} (commands: {', '.join(commands)})")


def _typed_value(action: argparse.Action, value: Any, where: str) -> Any:
    """One config value converted as the command line would convert it, but exactly: an int flag
    takes 20 or "20" (or 20.0), never 20.7 or a boolean."""
    flag = f"--{action.dest}"
    base = getattr(action.type, "base", action.type)  # a generated flag's converter names its type
    if isinstance(value, bool) and base is not bool:
        raise UserError(f"{where}: {value!r} is a boolean, but {flag} takes a value (quote it if you mean "
                        f"the word)")
    if base in (int, float):  # the command line's own conversion (saevlm.commandline.convert), this file's words
        try:
            return convert(Kind(base, False, False), value, flag)
        except UserError:
            raise UserError(f"{where}: {value!r} is not an integer ({flag} takes whole numbers)" if base is int
                            else f"{where}: {value!r} is not a number") from None
    if value is None:
        return None
    if action.type is None or base is str:
        return value if isinstance(value, str) else str(value)  # what argparse would have stored
    try:
        return action.type(value if isinstance(value, str) else str(value))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{where}: {value!r} is not a valid {flag} value") from None


def apply_defaults(parser: argparse.ArgumentParser, values: dict[str, Any], command: str, source: str) -> None:
    """Make ``values`` (flag name -> value) the defaults of ``parser``'s flags (see
    :func:`config_values`); a flag given a default here is no longer required."""
    typed = config_values(parser, values, command, source)
    parser.set_defaults(**typed)
    for a in parser._actions:
        if a.dest in typed:
            a.required = False


def config_values(parser: argparse.ArgumentParser, values: dict[str, Any], command: str, source: str) -> dict:
    """``values`` (flag name -> value, from a YAML file) as config field values (destination ->
    value), each parsed with the flag's own type: unknown names, non-booleans for switches, inexact
    numbers and values outside a flag's choices are errors naming the file and key."""
    out: dict[str, Any] = {}
    actions = {a.dest: a for a in parser._actions}
    # a key may also be a flag's own name (``pre_zero`` for ``--pre_zero``, whose destination is
    # zero_others); then a switch's value says whether the flag is given
    by_option: dict[str, tuple[argparse.Action, bool]] = {}
    for a in parser._actions:
        for opt in a.option_strings:
            negated = isinstance(a, argparse.BooleanOptionalAction) and opt.startswith("--no-")
            by_option.setdefault(opt.lstrip("-").replace("-", "_"), (a, negated))
    for key in list(values):
        dest = key.replace("-", "_")
        action = actions.get(dest)
        as_flag, negated = False, False
        if action is None and dest in by_option:
            (action, negated), as_flag = by_option[dest], True
            dest = action.dest
        where = f"{source}: commands.{command}.{key}"
        if action is None or dest in ("help", "config"):
            known = ", ".join(sorted(d for d in actions if d not in ("help", "config")))
            raise UserError(f"{source}: commands.{command}.{key}: `saevlm {command}` has no --{dest} flag "
                            f"(its flags: {known})")
        value = values[key]
        if action.nargs == 0:  # a switch (store_true / store_false / --x/--no-x / store_const)
            flag = as_bool(value, where)
            if isinstance(action, argparse.BooleanOptionalAction):
                value = flag != negated
            elif isinstance(action.const, bool):
                # by destination the value is the destination's; by flag name, whether it is given
                value = (action.const if flag else not action.const) if as_flag else flag
            else:
                value = action.const if flag else action.default
            out[dest] = value
            continue
        many = action.nargs in ("+", "*") or (isinstance(action.nargs, int) and action.nargs >= 1)
        if many and not isinstance(value, list):
            value = [value]
        if not many and isinstance(value, list):
            raise UserError(f"{where}: --{dest} takes one value, found a list")
        value = [_typed_value(action, v, where) for v in value] if many else _typed_value(action, value, where)
        if action.choices is not None:
            for v in (value if many else [value]):
                if v not in action.choices:
                    raise UserError(f"{where}: {v!r} is not one of {', '.join(map(str, action.choices))}")
        out[dest] = value
    return out


def config_path_in(argv: list[str]) -> str | None:
    """The value of ``--config`` in a raw argument list (before argparse sees it)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def lookup(data: dict, dotted: str, source: str):
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{source}: no key {dotted!r} (missing {part!r})")
        value = value[part]
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m saevlm.config FILE KEY``: print a value for shell scripts (lists space-joined)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m saevlm.config FILE dotted.key", file=sys.stderr)
        return 2
    try:
        value = lookup(load_config(argv[0], "CONFIG"), argv[1], f"CONFIG {argv[0]}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(" ".join(map(str, value)) if isinstance(value, list) else value)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
