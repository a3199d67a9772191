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


def paper_numbers() -> dict:
    return paper_config()["numbers"]


def apply_defaults(parser: argparse.ArgumentParser, values: dict[str, Any], command: str, source: str) -> None:
    """Make ``values`` (flag name -> value) the defaults of ``parser``'s flags: unknown names and
    values outside a flag's choices are errors naming the file and key."""
    actions = {a.dest: a for a in parser._actions}
    for key in list(values):
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            known = ", ".join(sorted(d for d in actions if d not in ("help", "config")))
            raise UserError(f"{source}: commands.{command}.{key}: `saevlm {command}` has no --{dest} flag "
                            f"(its flags: {known})")
        value = values[key]
        many = action.nargs in ("+", "*") or isinstance(action.nargs, int)
        if many and not isinstance(value, list):
            value = [value]
        if not many and isinstance(value, list):
            raise UserError(f"{source}: commands.{command}.{key}: --{dest} takes one value, found a list")
        if action.choices is not None:
            for v in (value if many else [value]):
                if v not in action.choices:
                    raise UserError(f"{source}: commands.{command}.{key}: {v!r} is not one of "
                                    f"{', '.join(map(str, action.choices))}")
        if action.type is not None and value is not None:
            try:
                value = [action.type(v) for v in value] if many else action.type(value)
            except (TypeError, ValueError):
                raise UserError(f"{source}: commands.{command}.{key}: {value!r} is not a valid "
                                f"--{dest} value") from None
        parser.set_defaults(**{dest: value})
        action.required = False  # a default now exists


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
