"""The package's import rules (docs/architecture.md), read from the import graph: commands never
import each other, library modules never import commands, no cycles, and library errors name
config fields."""


def _import_graph() -> dict[str, set[str]]:
    """saevlm module -> the saevlm modules it imports, at module level or inside functions
    (``from pkg import name`` counts as ``pkg.name`` when that is a module, else ``pkg``)."""
    import ast
    from pathlib import Path

    import saevlm

    root = Path(saevlm.__file__).parent
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        mods[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = f
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


LIBRARY_ROOMS = ("data", "models", "sae")


def test_command_modules_never_import_each_other():
    """Each command module is thin and imports only downward (library modules), never another
    command's module: shared code lives in data/, sae/, metrics/ library modules."""
    import ast
    import importlib.util

    from saevlm.cli import COMMANDS

    commands = {module for module, _ in COMMANDS.values()}
    offenders = []
    for module in commands:
        path = importlib.util.find_spec(module).origin
        for node in ast.walk(ast.parse(open(path).read())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{module} imports {n}" for n in names if n in commands and n != module]
    assert not offenders, offenders


def test_library_modules_never_import_command_modules():
    """Data flows one way: library modules (data/, sae/, metrics/ helpers, explorer/, report/render)
    never import a command module (``from pkg import mod`` counted as importing ``pkg.mod``)."""
    import ast
    from pathlib import Path

    import saevlm
    from saevlm.cli import COMMANDS

    commands = {module for module, _ in COMMANDS.values()}
    root = Path(saevlm.__file__).parent
    offenders = []
    for f in root.rglob("*.py"):
        module = "saevlm." + ".".join(f.relative_to(root).with_suffix("").parts)
        if module in commands or module.endswith("__main__") or module in ("saevlm.cli", "saevlm.api"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{module} imports {n}" for n in names if n in commands]
    assert not offenders, offenders


def test_no_import_cycles_anywhere():
    """No two saevlm modules import each other, directly or through others, counting imports
    inside functions too (a lazy import still ties the two modules together)."""
    graph = _import_graph()
    assert "saevlm.extraction" in graph["saevlm.extract"] and len(graph) > 60  # the walk sees the package
    cycles, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_library_errors_name_fields_not_flags(capsys, image_folder):
    """Library modules (data/, models/, sae/ but the train and encode commands) raise errors in
    their own words: no message begins with a --flag and no function takes a ``flag`` argument;
    the error carries the field, and the command line (saevlm.cli.flag_mapping, the one place that
    knows both) names it by its flag."""
    import ast
    import re
    from pathlib import Path

    import saevlm
    from helpers import run_cli
    from saevlm.cli import COMMANDS

    root = Path(saevlm.__file__).parent
    commands = {m for m, _ in COMMANDS.values()}
    offenders = []
    for room in LIBRARY_ROOMS:
        for f in sorted((root / room).glob("*.py")):
            module = "saevlm." + ".".join(f.relative_to(root).with_suffix("").parts)
            if module in commands:
                continue
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                    offenders += [f"{module}.{node.name}(flag=...)" for n in names if n in ("flag", "out_flag")]
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "UserError" and node.args:
                    first = node.args[0]
                    text = first.value if isinstance(first, ast.Constant) else \
                        first.values[0].value if isinstance(first, ast.JoinedStr) and first.values \
                        and isinstance(first.values[0], ast.Constant) else ""
                    if isinstance(text, str) and re.match(r"--\w", text):
                        offenders.append(f"{module}:{node.lineno}: {text[:40]}")
    assert not offenders, "\n".join(offenders)

    from saevlm.data.images import select_indices
    from saevlm.errors import UserError
    try:
        select_indices(10, 0, None)
    except UserError as err:
        assert str(err).startswith("take_every 0") and err.field == "take_every"
    # through the command line: the same error names the flag
    assert run_cli("extract", "--model_name", "x", "--output_dir", "o", "--take_every", "0",
                   "--dataset_name", "imagefolder", "--data_path", image_folder) == 2
    assert "error: --take_every 0: expected a positive integer" in capsys.readouterr().err


def test_no_private_argparse():
    """The command line is argparse's public interface only (no ``parser._actions``, no
    ``argparse._SubParsersAction``): read from every module's syntax tree, so a private name is
    caught however the line is written."""
    import argparse
    import ast
    from pathlib import Path

    import saevlm

    private = {name for name in dir(argparse) if name.startswith("_") and not name.startswith("__")}
    parser = argparse.ArgumentParser()
    parser.add_subparsers().add_parser("x")
    private |= {name for obj in (parser, argparse.Action(["-x"], "x"), argparse.Namespace())
                for name in dir(obj) if name.startswith("_") and not name.startswith("__")}
    offenders = []
    for f in Path(saevlm.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{f.name}:{node.lineno} .{node.attr}")
    assert not offenders, offenders


ROOMS = ("cli", "api", "data", "models", "extraction", "sae", "metrics", "steering", "report", "explorer")
SHARED = ("saevlm", "errors", "commandline", "config", "paper", "device", "threads", "distributed")  # any room may use


def _rooms_table() -> list[tuple[str, set[str], set[str]]]:
    """docs/architecture.md's rooms table: (room, its modules, the rooms its imports column names)."""
    import re

    from helpers import REPO

    graph = _import_graph()
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("| room |"):]
    table = table[:table.index("\n\n")]
    out = []
    for row in table.splitlines()[2:]:
        room, _, imports = row.split("|")[1:4]
        members = set()
        for f in re.findall(r"`([\w/]+\.py|\w+/)`", room):
            name = "saevlm." + (f[:-1] if f.endswith("/") else f[:-3]).replace("/", ".")
            members |= {m for m in graph if m == name or (f.endswith("/") and m.startswith(name + "."))}
        named = set(re.findall(r"[a-z_]+", imports)) & set(ROOMS)
        out.append((room.strip(), members, named))
    return out


def test_the_rooms_table_names_every_import():
    """Each row's imports column (docs/architecture.md) names exactly the other rooms its modules
    import, at module level or inside functions (the shared pieces aside); the command modules'
    row is the rule checked above (library modules only, never another command)."""
    graph = _import_graph()
    rows = _rooms_table()
    assert len(rows) >= 14
    wrong = []
    for room, members, named in rows:
        if room.startswith("command modules"):
            continue
        assert members, f"{room}: names no module of the package"
        used = {t.split(".")[1] for m in members for t in graph[m] if t not in members and "." in t}
        used -= set(SHARED)
        named -= {m.split(".")[1] for m in members}  # a room's own name in its text ("import-sae checks ...")
        if used != named:
            wrong.append(f"{room}: imports {sorted(used)}, the table says {sorted(named)}")
    assert not wrong, "\n".join(wrong)
