"""The CPU-torch / CUDA-torchvision import fix (ENVIRONMENT.md)."""

import subprocess
import sys
import textwrap

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
                          timeout=300)


def test_stack_imports_after_saevlm():
    """transformers model classes, open_clip, dictionary_learning and torchvision all import."""
    r = _python("""
        import saevlm
        import torchvision, torchvision.transforms.v2
        from transformers import CLIPVisionModelWithProjection, SiglipVisionModel, Dinov2Model
        import open_clip
        import dictionary_learning
        from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
        from saevlm import _compat
        print("OK", torchvision.extension._has_ops(), _compat.fix_applied)
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    ok, has_ops, applied = r.stdout.split()[-3:]
    assert ok == "OK"
    # The fix acts exactly when torchvision's ops do not load.
    assert (has_ops == "True") == (applied == "False")


def test_fix_does_nothing_when_ops_load():
    """With a torchvision whose ops load, no schema is declared."""
    r = _python("""
        import sys, types
        ext = types.ModuleType("torchvision.extension"); ext._has_ops = lambda: True
        sys.modules["torchvision.extension"] = ext
        from saevlm import _compat
        _compat._declare_missing_schemas()
        print(_compat.fix_applied, _compat._library is None)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "True"]


def test_fix_declares_schemas_when_ops_missing():
    r = _python("""
        import sys, types
        ext = types.ModuleType("torchvision.extension"); ext._has_ops = lambda: False
        sys.modules["torchvision.extension"] = ext
        from saevlm import _compat
        _compat._declare_missing_schemas()
        import torch
        print(_compat.fix_applied, hasattr(torch.ops.torchvision, "nms"))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["True", "True"]


def test_help_is_fast_and_imports_no_torch():
    r = _python("""
        import sys
        from saevlm.cli import build_parser
        build_parser()
        print(sorted(m for m in ("torch", "transformers", "open_clip") if m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_config_file_sets_flag_defaults_and_explicit_flags_win(tmp_path, capsys):
    """`--config FILE`: its commands.<name> keys become defaults; flags on the command line win;
    unknown keys and bad values are errors naming the file and key."""
    from saevlm.cli import build_parser, main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("commands:\n  train:\n    k: 7\n    steps: 123\n    sae_model: top_k\n")
    args = build_parser(("train", str(cfg))).parse_args(["train", "--activations_dir", "x", "--steps", "5",
                                                         "--config", str(cfg)])
    assert (args.k, args.steps, args.sae_model) == (7, 5, ["top_k"])
    # the packaged paper config gives the defaults otherwise
    import yaml
    from pathlib import Path
    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())
    plain = build_parser().parse_args(["train", "--activations_dir", "x"])
    assert plain.k == paper["commands"]["train"]["k"] and plain.threshold_beta == paper["commands"]["train"]["threshold_beta"]
    cfg.write_text("commands:\n  train:\n    kk: 7\n")
    assert main(["train", "--activations_dir", "x", "--config", str(cfg)]) == 2
    assert "commands.train.kk: `saevlm train` has no --kk flag" in capsys.readouterr().err
    cfg.write_text("commands:\n  train:\n    sae_model: [nope]\n")
    assert main(["train", "--activations_dir", "x", "--config", str(cfg)]) == 2
    assert "'nope' is not one of" in capsys.readouterr().err
    cfg.write_text("commands: [1\n")
    assert main(["train", "--activations_dir", "x", "--config", str(cfg)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_report_and_steering_numbers_come_from_the_config():
    import yaml
    from pathlib import Path

    from saevlm.report import paper
    numbers = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "paper.yaml").read_text())["numbers"]
    assert paper.BEST_MS["batch_top_k"][22] == tuple(numbers["best_ms"]["batch_top_k"][22])
    assert paper.paper_value(paper.BEST_MS, "matryoshka_batch_top_k", "last", 64) == \
        numbers["best_ms"]["matryoshka_batch_top_k"]["last"][-1]
    assert paper.STEERING["bound_true_names"] == str(numbers["steering"]["bound_true_names"])


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


@pytest.mark.parametrize("word,expect", [("false", False), ("no", False), ("off", False), ("0", False),
                                         ("'False'", False), ("'off'", False),
                                         ("true", True), ("yes", True), ("on", True), ("1", True), ("'YES'", True)])
def test_config_booleans_mean_what_they_say(tmp_path, word, expect):
    """A switch set to false in --config stays off (it once turned ON: [False] is truthy), and
    true turns it on, in every spelling YAML users write; store_false and --x/--no-x switches too."""
    from saevlm.cli import build_parser

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"commands:\n  train:\n    no_normalize: {word}\n  ms:\n    overwrite: {word}\n"
                   f"  steering-score:\n    steer: {word}\n    pre_zero: {word}\n")
    train = build_parser(("train", str(cfg))).parse_args(["train", "--activations_dir", "x", "--config", str(cfg)])
    assert train.no_normalize is expect
    ms = build_parser(("ms", str(cfg))).parse_args(["ms", "--activations_dir", "x", "--embeddings_path", "y",
                                                    "--config", str(cfg)])
    assert ms.overwrite is expect
    sc = build_parser(("steering-score", str(cfg))).parse_args(
        ["steering-score", "--sae_path", "s", "--top_images", "t", "--clip_embeddings", "c", "--output_dir", "o",
         "--config", str(cfg)])
    assert sc.steer is expect and sc.zero_others is expect
    # an explicit flag still wins over the file
    train = build_parser(("train", str(cfg))).parse_args(["train", "--activations_dir", "x", "--no_normalize",
                                                          "--config", str(cfg)])
    assert train.no_normalize is True


@pytest.mark.parametrize("body,message", [
    ("commands:\n  train:\n    no_normalize: maybe\n", "commands.train.no_normalize: 'maybe' is not a boolean"),
    ("commands:\n  train:\n    steps: 20.7\n", "commands.train.steps: 20.7 is not an integer"),
    ("commands:\n  train:\n    steps: true\n", "commands.train.steps: True is a boolean"),
    ("commands:\n  train:\n    steps: twenty\n", "commands.train.steps: 'twenty' is not an integer"),
    ("commands:\n  trian:\n    steps: 20\n", "commands.trian: no such command; did you mean 'train'?"),
    ("command:\n  train:\n    steps: 20\n", "unknown top-level key 'command'"),
])
def test_config_values_are_parsed_exactly_and_unknown_sections_are_errors(tmp_path, capsys, body, message):
    from saevlm.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(body)
    assert main(["train", "--activations_dir", "x", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(cfg) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_config_numbers_that_are_exact_are_taken(tmp_path):
    from saevlm.cli import build_parser

    cfg = tmp_path / "c.yaml"
    cfg.write_text("commands:\n  train:\n    steps: 20.0\n    k: '7'\n    lr: 1\n")
    args = build_parser(("train", str(cfg))).parse_args(["train", "--activations_dir", "x", "--config", str(cfg)])
    assert (args.steps, args.k) == (20, 7) and args.lr == 1.0 and isinstance(args.lr, float)


def test_config_keys_may_be_flag_names(tmp_path):
    """``pre_zero`` (the flag; its destination is zero_others) and ``no_steer`` (a store_false
    flag of destination steer) mean the flag given or not."""
    from saevlm.cli import build_parser

    cfg = tmp_path / "c.yaml"
    base = ["steering-score", "--sae_path", "s", "--top_images", "t", "--clip_embeddings", "c", "--output_dir", "o",
            "--config", str(cfg)]
    for body, steer, zero in [("no_steer: true\n    pre_zero: true", False, True),
                              ("no_steer: false\n    pre_zero: false", True, False),
                              ("no_pre_zero: true", True, False)]:
        cfg.write_text(f"commands:\n  steering-score:\n    {body}\n")
        args = build_parser(("steering-score", str(cfg))).parse_args(base)
        assert (args.steer, args.zero_others) == (steer, zero), body


def test_threads_follow_the_machine_and_the_users_choice(monkeypatch):
    """saevlm's torch threads: the usable CPUs less the other running jobs less decoding workers;
    OMP_NUM_THREADS / SAEVLM_THREADS chosen by the user win."""
    import subprocess

    import saevlm.threads as th

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SAEVLM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(th, "usable_cpus", lambda: 8)
    monkeypatch.setattr(th, "other_running_jobs", lambda: 3)
    assert th.choose_threads() == 5 and th.choose_threads(workers=4) == 1 and th.choose_threads(workers=9) == 1
    monkeypatch.setenv("SAEVLM_THREADS", "6")
    assert th.choose_threads() == 6
    monkeypatch.setenv("SAEVLM_THREADS", "torch")
    assert th.choose_threads() is None
    monkeypatch.delenv("SAEVLM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert th.choose_threads() is None  # the user's
    # a real busy job is seen as one other running job (and this process's own threads are not)
    monkeypatch.undo()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        import time
        time.sleep(0.3)
        seen = max(th.other_running_jobs() for _ in range(5))
    finally:
        busy.kill()
        busy.wait()
    assert seen >= 1


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


LIBRARY_ROOMS = ("data", "models", "sae")


def test_library_errors_name_fields_not_flags(capsys, image_folder):
    """Library modules (data/, models/, sae/ but the train and encode commands) raise errors in
    their own words: no message begins with a --flag and no function takes a ``flag`` argument;
    the error carries the field, and the command line (saevlm.cli.flag_mapping, the one place that
    knows both) names it by its flag."""
    import ast
    import re
    from pathlib import Path

    import saevlm
    from conftest import run_cli
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


def test_transformers_range_is_checked():
    """The supported range (docs/install.md): 4.57 up to, not including, 6."""
    from saevlm._compat import check_transformers_version
    from saevlm.errors import UserError

    for ok in ("4.57.0", "4.57.6", "5.0.0.dev0", "5.17.0", "5.23.0"):
        check_transformers_version(ok)
    for bad in ("4.46.3", "4.56.2", "3.5.1", "6.0.0"):
        with pytest.raises(UserError, match=rf"transformers {bad} is not supported"):
            check_transformers_version(bad)


def test_an_unsupported_transformers_fails_at_import_in_one_line(tmp_path):
    """A transformers 4.46 (the authors') found first on the path: the command stops when it
    first imports transformers, with one line naming the version and the range, no traceback."""
    import os

    from helpers import make_image_folder

    fake = tmp_path / "site"
    (fake / "transformers").mkdir(parents=True)
    (fake / "transformers" / "__init__.py").write_text("raise SystemExit('the gate let an old transformers import')\n")
    (fake / "transformers-4.46.3.dist-info").mkdir()
    (fake / "transformers-4.46.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: transformers\nVersion: 4.46.3\n")
    images = make_image_folder(tmp_path / "imgs", num_classes=1, per_class=2)
    r = subprocess.run([sys.executable, "-m", "saevlm", "extract", "--model_name", "openai/clip-vit-base-patch32",
                        "--dataset_name", "imagefolder", "--data_path", str(images), "--layer", "3",
                        "--output_dir", str(tmp_path / "out"), "--device", "cpu", "--no_progress"],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1",
                            "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "let an old transformers import" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "saevlm extract: error: transformers 4.46.3 is not supported: saevlm needs transformers >= 4.57 and < 6 "
        "(pip install 'transformers>=4.57,<6'; docs/install.md)")
