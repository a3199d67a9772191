"""Should a well-kept library (tyro, simple_parsing) generate saevlm's command line?

Measured on the same typed configs that saevlm's generator (saevlm/commandline.py) reads:

- import cost of each library and ``saevlm train --help`` wall time (the target is under 0.5 s,
  without torch);
- the 28 python invocations of the authors' scripts (tests/authors_invocations.py): how many each
  library parses to the same config saevlm's command line gives (same field values);
- the one-line error for a bad value (``--k seven``).

Each library gets a plain mirror of every command's config (same fields, types and defaults;
required fields without a default; the authors' alias spellings passed as the library's
aliases; underscores kept in flag names: tyro's ``use_underscores``, simple_parsing's
underscore dash variant), so what is measured is the library, not saevlm's
metadata. Needs ``pip install tyro simple_parsing`` in the environment that runs it.

    python benchmarks/bench_cli.py [--write-readme]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import contextlib
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]


def wall(code: str, repeats: int = 5) -> float:
    """Median wall seconds of ``python -c code`` in a fresh process."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mirror(cls: type, library: str) -> type:
    """A plain dataclass with ``cls``'s fields, for ``library`` (alias flags as its aliases)."""
    from saevlm.commandline import REQUIRED

    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        tp = hints[f.name]
        flags = list(f.metadata.get("flags") or ())
        flags += [x for more, _ in f.metadata.get("extra") or () for x in more]  # the hidden switch spellings
        extra_names = [x.lstrip("-") for x in flags if x.lstrip("-") != f.name]
        if library == "tyro" and extra_names:
            import tyro
            tp = typing.Annotated[tp, tyro.conf.arg(aliases=[f"--{x}" for x in extra_names])]
        if library == "simple_parsing" and extra_names:
            import simple_parsing
            spec = simple_parsing.field(default=None if default is REQUIRED else default,
                                        alias=[f"--{x}" for x in extra_names])
            fields.append((f.name, tp, spec))
            continue
        if default is REQUIRED:
            fields.append((f.name, tp))
        elif isinstance(default, list):
            fields.append((f.name, tp, dataclasses.field(default_factory=lambda d=default: list(d))))
        else:
            fields.append((f.name, tp, dataclasses.field(default=default)))
    fields.sort(key=lambda x: len(x) > 2)  # fields without defaults first
    return dataclasses.make_dataclass(cls.__name__ + "Mirror", fields)


class Refused(Exception):
    """The library exited on the command line; ``lines`` is what it printed."""

    def __init__(self, lines: list[str]):
        said = [ln for ln in lines if not set(ln) <= set("-─ ") and not ln.startswith(("usage", "["))]
        super().__init__(" ".join(said)[:200])
        self.lines = lines


def parse_with(library: str, cls: type, argv: list[str]):
    """``argv`` parsed by ``library`` into ``cls``'s mirror, then made a saevlm config."""
    import re

    m = mirror(cls, library)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            if library == "tyro":
                import tyro
                out = tyro.cli(m, args=argv, use_underscores=True)
            else:
                import simple_parsing
                out = simple_parsing.parse(m, args=argv, add_option_string_dash_variants=
                                           simple_parsing.DashVariant.UNDERSCORE)
    except SystemExit:
        text = re.sub(r"\x1b\[[0-9;]*m", "", sink.getvalue())  # no colour codes
        lines = [ln.strip(" │╭╰─╮╯") for ln in text.splitlines()]
        raise Refused([ln.strip() for ln in lines if ln.strip()]) from None
    return cls(**{f.name: getattr(out, f.name) for f in dataclasses.fields(cls)})


def authors_agreement(library: str) -> tuple[int, list[str]]:
    from authors_invocations import INVOCATIONS, SCRIPT_TO_COMMAND
    from saevlm.cli import config_class, parse_command_line

    same, why = 0, []
    for _, script, argv in INVOCATIONS:
        command = SCRIPT_TO_COMMAND[script]
        ours = parse_command_line([command, *argv])
        try:
            theirs = parse_with(library, config_class(command), argv)
        except Refused as e:
            why.append(f"{script}: refused: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a library failing on a field type is a finding
            why.append(f"{script}: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            continue
        if ours == theirs:
            same += 1
        else:
            diff = [f.name for f in dataclasses.fields(ours) if getattr(ours, f.name) != getattr(theirs, f.name)]
            why.append(f"{script}: differs in {', '.join(diff)}")
    return same, why


HELP = {
    "saevlm": "import sys; sys.argv=['saevlm','train','--help']\nfrom saevlm.cli import main\n"
              "try: main()\nexcept SystemExit: pass",
    "tyro": "import sys, tyro\nfrom saevlm.sae.train import TrainConfig\nsys.path.insert(0, '{b}')\n"
            "from bench_cli import mirror\ntry: tyro.cli(mirror(TrainConfig, 'tyro'), args=['--help'], "
            "use_underscores=True)\nexcept SystemExit: pass",
    "simple_parsing": "import sys, simple_parsing\nfrom saevlm.sae.train import TrainConfig\nsys.path.insert(0, '{b}')\n"
                      "from bench_cli import mirror\ntry: simple_parsing.parse(mirror(TrainConfig, 'simple_parsing'), "
                      "args=['--help'])\nexcept SystemExit: pass",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    import simple_parsing
    import tyro

    rows = []
    base = wall("pass")
    for name, module, version in (("saevlm (argparse)", "argparse", sys.version.split()[0]),
                                  ("tyro", "tyro", tyro.__version__),
                                  ("simple_parsing", "simple_parsing", getattr(simple_parsing, "__version__", "0.1.9"))):
        key = module if module != "argparse" else "saevlm"
        imp = wall(f"import {module}") - base
        helped = wall(HELP[key].replace("{b}", str(ROOT / "benchmarks")))
        same, why = authors_agreement(key) if key != "saevlm" else (28, [])
        rows.append((name, version, imp, helped, same, why))
    err = {}
    from saevlm.cli import main as saevlm_main
    from saevlm.metrics.top_images import TopImagesConfig

    sink = io.StringIO()
    with contextlib.redirect_stderr(sink):
        try:
            saevlm_main(["top-images", "--activations_dir", "x", "--k", "seven"])
        except SystemExit:
            pass
    err["saevlm (argparse)"] = len([ln for ln in sink.getvalue().splitlines() if ln.strip()])
    for key in ("tyro", "simple_parsing"):
        try:
            parse_with(key, TopImagesConfig, ["--activations_dir", "x", "--k", "seven"])
        except Refused as e:
            err[key] = len(e.lines)
    lines = [f"Machine: {sys.platform}, Python {sys.version.split()[0]}. Median of 5 fresh processes; "
             f"import cost is over an empty interpreter ({base:.3f} s).", "",
             "| parser | version | import (s) | `train --help` (s) | authors' 28 invocations, same config | "
             "lines printed for `--k seven` |", "|---|---|---|---|---|---|"]
    for name, version, imp, helped, same, why in rows:
        lines.append(f"| {name} | {version} | {imp:.3f} | {helped:.3f} | {same}/28 | {err[name]} |")
    lines.append("")
    for name, *_, why in rows:
        distinct = list(dict.fromkeys(why))
        lines += [f"- {name}: {w}" for w in distinct[:5]]
        if len(distinct) > 5:
            lines.append(f"- {name}: ... and {len(distinct) - 5} more")
    text = "\n".join(lines)
    print(text)
    if args.write_readme:
        readme = ROOT / "benchmarks" / "README.md"
        begin, end = "<!-- cli:begin -->", "<!-- cli:end -->"
        old = readme.read_text()
        block = f"{begin}\n{text}\n{end}"
        if begin in old:
            old = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
        else:
            old += ("\n## The command line: saevlm's generator vs tyro / simple_parsing\n\n"
                    "`python benchmarks/bench_cli.py --write-readme` (needs `pip install tyro simple_parsing`).\n\n"
                    + block + "\n")
        readme.write_text(old)
        print(f"wrote {readme}")


if __name__ == "__main__":
    main()
