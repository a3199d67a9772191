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

from saevlm.commandline import as_bool
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


def _switch_spellings(cls: type) -> dict[str, tuple[str, bool]]:
    """Every name a YAML key may use for ``cls``'s fields: the field name, and each flag's own
    name (``pre_zero`` for ``--pre_zero``, ``no_steer``, ``no_uncertainty``), each with whether a
    true value there means the field is False (a ``--no-x`` or store_false spelling)."""
    import dataclasses

    from saevlm.commandline import field_kinds

    kinds = field_kinds(cls)
    names: dict[str, tuple[str, bool]] = {}
    for f in dataclasses.fields(cls):
        meta, switch = f.metadata, kinds[f.name].base is bool and not kinds[f.name].many
        spellings: list[tuple[str, bool]] = [(flag, switch and meta.get("action") == "store_false")
                                             for flag in meta.get("flags") or ()]
        if switch and meta.get("action") == "optional":
            spellings += [("--no-" + flag[2:], True) for flag in meta.get("flags") or (f"--{f.name}",)]
        for flags, how in meta.get("extra") or ():
            for flag in flags:
                spellings.append((flag, how == "store_false"))
                if how is argparse.BooleanOptionalAction:
                    spellings.append(("--no-" + flag[2:], True))
        for flag, negated in spellings:
            names.setdefault(flag.lstrip("-").replace("-", "_"), (f.name, negated))
    for f in dataclasses.fields(cls):  # a field's own name is its value, whatever its flags say
        names[f.name] = (f.name, False)
    return names


def _file_value(kind, value: Any, flag: str, where: str) -> Any:
    """One value of a config file converted to a field's type, exactly: an int field takes 20 or
    "20" (or 20.0), never 20.7 or a boolean; messages name the file and key."""
    from saevlm.commandline import Kind, convert

    if isinstance(value, bool) and kind.base is not bool:
        raise UserError(f"{where}: {value!r} is a boolean, but {flag} takes a value (quote it if you mean "
                        f"the word)")
    if value is None and kind.optional:
        return None
    try:
        return convert(Kind(kind.base, False, False), value, flag)
    except UserError:
        if kind.base is int:
            raise UserError(f"{where}: {value!r} is not an integer ({flag} takes whole numbers)") from None
        raise UserError(f"{where}: {value!r} is not a " + ("number" if kind.base is float else
                                                          f"valid {flag} value")) from None


def file_values(cls: type, values: dict[str, Any], command: str, source: str) -> dict:
    """``values`` (a config file's ``commands.<command>`` mapping) as field values of ``cls``, read
    from the dataclass alone: keys are field names or flag names (a switch's flag name says whether
    the flag is given: ``no_steer: true`` is ``steer = False``); unknown keys, non-booleans for
    switches, inexact numbers and values outside a field's choices are errors naming the file and
    key."""
    import dataclasses

    from saevlm.commandline import field_kinds, flag_name

    kinds, names = field_kinds(cls), _switch_spellings(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{source}: commands.{command}.{key}"
        name, negated = names.get(str(key).replace("-", "_"), (None, False))
        if name is None:
            known = ", ".join(sorted(fields))
            raise UserError(f"{where}: `saevlm {command}` has no --{str(key).replace('-', '_')} flag "
                            f"(its flags: {known})")
        kind, flag, field = kinds[name], flag_name(fields[name]), fields[name]
        if kind.base is bool and not kind.many:
            out[name] = as_bool(value, where) != negated
            continue
        if kind.many and not isinstance(value, list):
            value = [value]
        if not kind.many and isinstance(value, list):
            raise UserError(f"{where}: {flag} takes one value, found a list")
        value = [_file_value(kind, v, flag, where) for v in value] if kind.many else \
            _file_value(kind, value, flag, where)
        choices = field.metadata.get("choices")
        for v in (value if kind.many else [value]) if choices is not None else ():
            if v is not None and v not in choices:
                raise UserError(f"{where}: {v!r} is not one of {', '.join(map(str, choices))}")
        out[name] = value
    return out


def command_file_values(cls: type, command: str, path: str | Path, commands: list[str] | tuple[str, ...]) -> dict:
    """``commands.<command>`` of the ``--config`` file ``path`` as field values of ``cls``."""
    data = load_config(path)
    check_sections(data, commands, f"--config {path}")
    return file_values(cls, data.get("commands", {}).get(command, {}) or {}, command, f"--config {path}")


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
