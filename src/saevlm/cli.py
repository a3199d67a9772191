"""``python -m saevlm <command>``: the table of contents.

Each command lives in its stage module: a typed config (``CONFIG``, a frozen dataclass whose field
docstrings are the ``--help``) and ``run(config)``, which imports its heavy libraries itself, so
``--help`` stays fast. The flags are generated from the configs (saevlm/commandline.py).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("saevlm.extract", "activations of a vision encoder at hook points -> stores"),
    "embed": ("saevlm.embed", "image embeddings (DINOv2 / CLIP) for the Monosemanticity Score"),
    "synthetic": ("saevlm.synthetic", "a synthetic ground-truth world of activations and embeddings"),
    "train": ("saevlm.sae.train", "train SAEs (dictionary_learning's classes) on a store"),
    "encode": ("saevlm.sae.encode", "apply an SAE to an activation store -> sparse code store"),
    "ms": ("saevlm.metrics.ms", "Monosemanticity Score of every neuron (exact, one streaming pass)"),
    "top-images": ("saevlm.metrics.top_images", "the k highest-activating images of every neuron"),
    "uniqueness": ("saevlm.metrics.uniqueness", "Jaccard overlap of neurons' top-image sets"),
    "visualize": ("saevlm.metrics.visualize", "PNG grids of neurons' top images and MS histograms"),
    "hierarchy": ("saevlm.metrics.hierarchy", "Matryoshka groups vs taxonomy depth of top images"),
    "benchmark-agreement": ("saevlm.metrics.agreement", "agreement of MS (or any score) with the user study"),
    "fms": ("saevlm.metrics.fms", "Feature Monosemanticity Score (Härle et al. 2025), label-based"),
    "name": ("saevlm.metrics.naming", "a CLIP name for every latent, and its top images' label purity"),
    "stability": ("saevlm.metrics.stability", "match the latents of SAEs trained with different seeds"),
    "steer": ("saevlm.steering.steer", "an MLLM's answer with SAE latents clamped in its vision tower"),
    "steering-score": ("saevlm.steering.score", "steering score: CLIP similarity of steered answers"),
    "similarity-baseline": ("saevlm.steering.baseline", "steering-score bounds: true / shuffled names"),
    "import-sae": ("saevlm.sae.import_sae", "an SAE from SAELens / sparsify / dictionary_learning -> a trainer folder"),
    "export-sae": ("saevlm.sae.export_sae", "a saevlm SAE -> SAELens or sparsify files (and a model card)"),
    "make-eval-folder": ("saevlm.data.eval_folder", "first image of each class -> an eval folder"),
    "report": ("saevlm.report.build", "gather a run directory into report.md / report.html"),
    "explore": ("saevlm.explore", "browse, search and name every latent of a run in a web page"),
    "inspect": ("saevlm.inspect_store", "print a store's manifest summary and check its files"),
    "demo": ("saevlm.demo", "the built-in default job: the MS experiment on the synthetic world"),
}


def config_class(command: str):
    """The config dataclass of ``command`` (its module's ``CONFIG``)."""
    return importlib.import_module(COMMANDS[command][0]).CONFIG


def flag_mapping(command: str):
    """field -> the flag ``saevlm <command>`` spells it (None: not one of its flags): the one place
    that knows both, used to say a library error (which names fields) in the command's flags."""
    import dataclasses

    from saevlm.commandline import flag_name

    cls = config_class(command)
    by_field = {f.name: flag_name(f) for f in dataclasses.fields(cls)}
    aliases = {flag for f in dataclasses.fields(cls) for flag in f.metadata.get("flags") or ()}

    def flag_of(field: str) -> str | None:
        if field in by_field:
            return by_field[field]
        return f"--{field}" if f"--{field}" in aliases else None
    return flag_of


def build_parser(config: tuple[str, str] | None = None, with_help: bool = True,
                 only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, with the paper's defaults from configs/paper.yaml. With
    ``config`` = (command, path), that file's ``commands.<command>`` values are the defaults of
    its flags and those flags are no longer required (see :func:`config_file_values`). With
    ``only``, the flags of that command alone are built (the others are listed, flagless: building
    every command's flags imports every command module, a quarter of a second)."""
    from saevlm.commandline import add_config_arguments
    from saevlm.config import apply_defaults, paper_defaults

    parser = argparse.ArgumentParser(
        prog="saevlm",
        description="Sparse autoencoders on vision-language models (Pach et al., NeurIPS 2025): "
                    "extract activations, train SAEs, score monosemanticity, steer LLaVA and other MLLMs.",
        epilog="Run `saevlm <command> --help` for a command's flags. Docs: docs/ in the repository.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        if only is not None and name != only:
            continue
        add_config_arguments(sp, config_class(name), with_help)
        sp.add_argument("--config", default=None, metavar="FILE",
                        help="YAML file whose commands.%s section gives flag defaults (explicit flags win; "
                             "the paper's are configs/paper.yaml)" % name.replace("%", "%%"))
        apply_defaults(sp, paper_defaults(name), name, "configs/paper.yaml")
        if config is not None and config[0] == name:  # the parsed namespace shows the file's values too
            given = config_file_values(sp, name, config[1])
            sp.set_defaults(**given)
            for a in sp._actions:
                if a.dest in given:
                    a.required = False
    return parser


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


def config_file_values(sp: argparse.ArgumentParser, command: str, path: str) -> dict:
    """``commands.<command>`` of a ``--config`` file as config field values, each converted as
    the command line converts it (keys may be flag names: ``pre_zero``, ``no_steer``)."""
    from saevlm.config import check_sections, config_values, load_config

    data = load_config(path)
    check_sections(data, list(COMMANDS), f"--config {path}")
    return config_values(sp, data.get("commands", {}).get(command, {}) or {}, command, f"--config {path}")


def explicit_fields(sp: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The fields ``argv`` sets on the command line (parsed again with every default suppressed)."""
    import copy

    quiet = copy.deepcopy(sp)
    for a in quiet._actions:
        a.default, a.required = argparse.SUPPRESS, False
    quiet._defaults = {}
    return set(vars(quiet.parse_known_args(argv)[0]))


def command_config(parser: argparse.ArgumentParser, ns: argparse.Namespace, raw: list[str], config: str | None):
    """The config of a parsed command line: the paper's defaults and the flags; with ``--config
    FILE``, the file's values replace the defaults (``dataclasses.replace``) and the flags given
    on the command line replace those (explicit flags win)."""
    import dataclasses

    from saevlm.commandline import config_from_namespace

    cls = config_class(ns.command)
    if not config:
        return config_from_namespace(cls, ns)
    sp = subparser(parser, ns.command)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)}
    argv = raw[raw.index(ns.command) + 1:]
    explicit = {k: values[k] for k in explicit_fields(sp, argv) if k in values}
    from_file = cls(**{**values, **config_file_values(sp, ns.command, config)})
    return dataclasses.replace(from_file, **explicit)


def main(argv: list[str] | None = None) -> int:
    from saevlm.config import config_path_in
    from saevlm.errors import UserError

    raw = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in raw if a in COMMANDS), None)
    config = config_path_in(raw)
    wants_help = command is None or any(a in ("-h", "--help") for a in raw)
    try:
        parser = build_parser((command, config) if command and config else None, with_help=wants_help,
                              only=command or "")
    except UserError as err:
        print(f"saevlm {command or ''}: error: {err}", file=sys.stderr)
        return 2
    args = parser.parse_args(raw)
    if args.version:
        import saevlm
        print(saevlm.__version__)
        return 0
    if not args.command:
        parser.print_help()
        return 2
    from saevlm.threads import configure_threads
    configure_threads()  # torch's CPU threads for this machine and its current load (saevlm/threads.py)
    try:
        cfg = command_config(parser, args, raw, config)
        return int(importlib.import_module(args._module).run(cfg) or 0)
    except UserError as err:
        print(f"saevlm {args.command}: error: {err.with_flags(flag_mapping(args.command))}", file=sys.stderr)
        return 2
    except OSError as err:  # a file system failure outside the atomic writers (they raise UserError)
        from saevlm.data.atomic import describe_os_error
        print(f"saevlm {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"saevlm {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
