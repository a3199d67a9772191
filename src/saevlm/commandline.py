"""Typed command configs, and the command line generated from them.

Every command is a frozen dataclass (``TopImagesConfig``, ``TrainConfig``, ...) next to the
library function that runs it. A field is declared once, with :func:`opt`: its type annotation
gives the conversion (``int`` takes whole numbers only, ``list[int]`` one or more, ``bool`` a
switch), its default is the paper's (configs/paper.yaml), and the string literal written under it
(an attribute docstring, as in saev) is its ``--help`` text. From these, :func:`add_config_arguments`
writes the argparse flags (this module holds the package's only ``add_argument`` calls), and
:class:`CommandConfig.__post_init__` applies the very same conversion and checks to a config built
in Python, so ``TopImagesConfig(activations_dir="x", k="7")`` has ``k == 7`` and
``TopImagesConfig(activations_dir="x", k="seven")`` raises the CLI's message as a ``UserError``.

Small option groups shared by several commands (device, progress bar) are mixins defined once.
Importing this module imports no torch: ``saevlm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, ClassVar

from saevlm.errors import UserError


class _Required:
    """The default of a field the user must give (a missing one is the CLI's error, not a TypeError)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def opt(default: Any = REQUIRED, *, flags: tuple[str, ...] = (), choices: tuple | list | None = None,
        group: str | None = None, mutex: str | None = None, metavar: str | None = None, nargs: str | None = None,
        action: str | None = None, positional: bool = False, help: str | None = None,
        extra: tuple[tuple[tuple[str, ...], str], ...] = ()) -> Any:
    """One config field and how the command line shows it.

    ``flags``: the option strings (default ``--<field name>``; more than one keeps the authors'
    alias spellings); ``choices``; ``group``: the --help section; ``mutex``: fields sharing a name
    exclude each other; ``nargs``: ``"*"`` where none is allowed (lists take one or more by
    default); ``action``: ``"store_false"`` (the flag turns a True field off) or ``"optional"``
    (``--x`` / ``--no-x``) for switches; ``help``: only where a docstring cannot be written (the
    field's docstring is the help text); ``extra``: more switches for the same field, each
    ``(flags, action)``, not listed in --help (the authors' spellings, e.g. ``--no_steer``)."""
    meta = {"flags": tuple(flags), "choices": None if choices is None else tuple(choices), "group": group,
            "mutex": mutex, "metavar": metavar, "nargs": nargs, "action": action, "positional": positional,
            "help": help, "extra": tuple(extra)}
    if isinstance(default, list):
        value = list(default)
        return dataclasses.field(default_factory=lambda: list(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.lru_cache(maxsize=None)
def _class_nodes(filename: str) -> dict[str, ast.ClassDef]:
    """The class definitions of a source file, parsed once (inspect.getsource per class would
    parse the module again for every class)."""
    with open(filename, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of ``cls`` and its bases: the string literal right under a field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            node = _class_nodes(inspect.getsourcefile(klass)).get(klass.__name__)
        except (OSError, TypeError, SyntaxError):
            continue
        body = node.body if node is not None else []
        for stmt, nxt in zip(body, body[1:]):
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and \
                    isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}


def as_bool(value: Any, where: str) -> bool:
    """A config boolean: true/false, yes/no, on/off, 1/0 (YAML's own booleans included)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise UserError(f"{where}: {value!r} is not a boolean (use true/false, yes/no, on/off or 1/0)")


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a field's annotation says about its values."""

    base: type  # str, int, float or bool
    many: bool  # a list
    optional: bool  # None allowed


@functools.lru_cache(maxsize=None)
def field_kinds(cls: type) -> dict[str, Kind]:
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional, many = hints[f.name], False, False
        args = typing.get_args(tp)
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
            optional = True
            rest = [a for a in args if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else str
        if typing.get_origin(tp) in (list, tuple):
            many, tp = True, typing.get_args(tp)[0]
        out[f.name] = Kind(tp if tp in (str, int, float, bool) else str, many, optional)
    return out


def flag_name(f: dataclasses.Field) -> str:
    """How messages name a field: its first flag (``--k``), or its name for a positional."""
    if f.metadata.get("positional"):
        return f.name
    return (f.metadata.get("flags") or (f"--{f.name}",))[0]


def convert(kind: Kind, value: Any, flag: str) -> Any:
    """One value as the command line converts it, but exact: an int field takes 7 or "7" (or 7.0),
    never 7.5 or a boolean; messages are argparse's."""
    if value is None and kind.optional:
        return None
    name = {int: "int", float: "float", str: "str", bool: "bool"}[kind.base]
    if kind.base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) or hasattr(value, "__fspath__"):
            return str(value)
        raise UserError(f"argument {flag}: invalid str value: {value!r}")
    if kind.base is bool:
        return as_bool(value, f"argument {flag}")
    if isinstance(value, bool):
        raise UserError(f"argument {flag}: invalid {name} value: {value!r}")
    if kind.base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise UserError(f"argument {flag}: invalid int value: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise UserError(f"argument {flag}: invalid float value: {value!r}") from None


def _argparse_type(kind: Kind, flag: str):
    def parse(text: str):
        try:
            return convert(kind, text, flag)
        except UserError:
            raise argparse.ArgumentTypeError(f"invalid {kind.base.__name__} value: {text!r}") from None
    parse.__name__ = kind.base.__name__  # argparse names the type in its messages
    return parse


@dataclasses.dataclass(frozen=True, kw_only=True)
class CommandConfig:
    """Base of every command's config: converts and checks its fields on construction, exactly as
    the command line does, raising ``UserError`` with the command line's messages."""

    COMMAND: ClassVar[str] = ""

    def __post_init__(self) -> None:
        kinds = field_kinds(type(self))
        missing = [flag_name(f) for f in dataclasses.fields(self) if getattr(self, f.name) is REQUIRED]
        if missing:
            raise UserError(f"the following arguments are required: {', '.join(missing)}")
        for f in dataclasses.fields(self):
            kind, value, flag = kinds[f.name], getattr(self, f.name), flag_name(f)
            if kind.many and value is not None:
                items = list(value) if isinstance(value, (list, tuple)) else [value]
                if not items and f.metadata.get("nargs") != "*":
                    raise UserError(f"argument {flag}: expected at least one argument")
                value = [convert(Kind(kind.base, False, False), v, flag) for v in items]
            elif not kind.many:
                if isinstance(value, (list, tuple)):
                    raise UserError(f"argument {flag}: takes one value, found {value!r}")
                value = convert(kind, value, flag)
            choices = f.metadata.get("choices")
            if choices is not None and value is not None:
                for v in value if kind.many else [value]:
                    if v not in choices:
                        raise UserError(f"argument {flag}: invalid choice: {v!r} (choose from "
                                        f"{', '.join(map(repr, choices))})")
            if kind.base is float and value is not None:
                import math
                bad = [v for v in (value if kind.many else [value]) if not math.isfinite(v)]
                if bad:  # nan / inf pass float() but mean nothing as a setting (--alpha nan steered to nothing)
                    raise UserError(f"{flag} {bad[0]!r}: expected a finite number")
            for seed in ((value if kind.many else [value]) if f.name == "seed" and value is not None else ()):
                if isinstance(seed, int) and not 0 <= seed < 2 ** 32:
                    # numpy refuses negative seeds and torch / numpy overflow past 64 bits deep inside
                    raise UserError(f"argument {flag}: {seed} is not a seed; expected an integer from 0 to "
                                    f"{2 ** 32 - 1}")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Checks across fields (override); raise ``UserError`` naming the flag."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceOption:
    """The compute device, for commands that run a model or large tensor work."""

    device: str = opt("auto")
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:<index> (default: %(default)s)"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class OutputOption:
    """Where a command writes its results, for the commands that write them beside their input
    unless told otherwise; each says where in ``OUTPUT_DEFAULT`` (filled into the help)."""

    OUTPUT_DEFAULT: ClassVar[str] = "beside the input"
    output_dir: str | None = opt(None)
    """where the results go (default: {OUTPUT_DEFAULT})"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProgressOption:
    """Progress bars (tqdm, with rates) on long work."""

    no_progress: bool = opt(False)
    """no progress bar"""


SHARED_LAST = ("output_dir", "device", "no_progress")  # listed after a command's own flags in --help


def _help_text(cls: type, f: dataclasses.Field, docs: dict[str, str], shown: Any) -> str | None:
    """A field's --help text with its default written in (the parser itself holds no defaults:
    see :func:`add_config_arguments`); a literal % is escaped for argparse."""
    text = f.metadata.get("help") or docs.get(f.name) or ""
    text = text.replace("{OUTPUT_DEFAULT}", getattr(cls, "OUTPUT_DEFAULT", ""))
    escaped = text.replace("%", "%%")  # argparse formats help with %; the default is written in here
    return escaped.replace("%%(default)s", str(shown).replace("%", "%%")) \
        .replace("%%(default)r", repr(shown).replace("%", "%%")) or None


def field_default(f: dataclasses.Field) -> Any:
    """A field's declared default (REQUIRED where there is none): the paper's, from configs/paper.yaml."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, with_help: bool = True,
                         given: dict[str, Any] | None = None) -> None:
    """The flags of ``cls``'s fields on ``parser``: the one place saevlm writes ``add_argument``.

    The parser decides nothing about values it was not given: every flag's argparse default is
    ``SUPPRESS``, so a parsed namespace holds exactly the flags on the command line, and the
    config dataclass supplies the rest (its defaults are the only ones). ``given`` are values
    from a ``--config`` file: they are shown as the defaults in --help, and a required field they
    give is no longer required on the command line. ``with_help=False`` leaves the help texts out
    (they are read from the source; a command that only runs needs none)."""
    given = given or {}
    docs, kinds = (field_docs(cls) if with_help else {}), field_kinds(cls)
    groups: dict[str | None, Any] = {None: parser}
    mutexes: dict[str, Any] = {}
    own = [f for f in dataclasses.fields(cls) if f.name not in SHARED_LAST]
    for f in own + [f for f in dataclasses.fields(cls) if f.name in SHARED_LAST]:  # a command's own flags first
        meta, kind = f.metadata, kinds[f.name]
        default = given.get(f.name, field_default(f))
        where = groups.get(meta.get("group"))
        if where is None:
            where = groups[meta["group"]] = parser.add_argument_group(meta["group"])
        if meta.get("mutex"):
            if meta["mutex"] not in mutexes:
                mutexes[meta["mutex"]] = where.add_mutually_exclusive_group()
            where = mutexes[meta["mutex"]]
        kw: dict[str, Any] = {"help": _help_text(cls, f, docs, default) if with_help else None,
                              "default": argparse.SUPPRESS}
        if meta.get("positional"):
            where.add_argument(f.name, **kw, **({} if default is REQUIRED else {"nargs": "?"}))
            continue
        flags = meta.get("flags") or (f"--{f.name}",)
        kw["dest"] = f.name
        if kind.base is bool and not kind.many:
            action = meta.get("action")
            kw["action"] = {"optional": argparse.BooleanOptionalAction, "store_false": "store_false"}.get(
                action, "store_true")
            where.add_argument(*flags, **kw)
            for more, how in meta.get("extra") or ():  # hidden spellings of the same switch
                where.add_argument(*more, dest=f.name, action=how, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            continue
        kw["type"] = _argparse_type(kind, flags[0])
        if default is REQUIRED:
            kw["required"] = True
        if kind.many:
            kw["nargs"] = meta.get("nargs") or "+"
        if meta.get("choices") is not None:
            kw["choices"] = list(meta["choices"])
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        where.add_argument(*flags, **kw)
