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


def config_path_in(argv: list[str]) -> str | None:
    """The value of ``--config`` in a raw argument list (read before the parser is built: the
    file's values are shown as defaults in --help and make its required flags optional)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


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


def build_parser(only: str | None = None, with_help: bool = True, given: dict | None = None
                 ) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser of every command and each command's own parser. The flags come from the config
    dataclasses and hold no defaults (a parsed namespace is what the command line says; see
    :func:`command_config`). With ``only``, the flags of that command alone are built (the others
    are listed, flagless: building every command's flags imports every command module, a quarter
    of a second). ``given``: a ``--config`` file's values for ``only``, shown in its --help."""
    from saevlm.commandline import add_config_arguments

    parser = argparse.ArgumentParser(
        prog="saevlm",
        description="Sparse autoencoders on vision-language models (Pach et al., NeurIPS 2025): "
                    "extract activations, train SAEs, score monosemanticity, steer LLaVA and other MLLMs.",
        epilog="Run `saevlm <command> --help` for a command's flags. Docs: docs/ in the repository.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, (_, help_text) in COMMANDS.items():
        sp = commands[name] = sub.add_parser(name, help=help_text, description=help_text)
        if only is not None and name != only:
            continue
        add_config_arguments(sp, config_class(name), with_help, given if name == only else None)
        sp.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                        help="YAML file whose commands.%s section gives flag defaults (explicit flags win; "
                             "the paper's are configs/paper.yaml)" % name.replace("%", "%%"))
    return parser, commands


def config_file_values(command: str, path: str | None) -> dict:
    """``commands.<command>`` of a ``--config`` file as config field values (keys may be flag
    names: ``pre_zero``, ``no_steer``); nothing without a file."""
    from saevlm.config import command_file_values

    return command_file_values(config_class(command), command, path, list(COMMANDS)) if path else {}


def command_config(command: str, from_file: dict, given: dict):
    """The config ``saevlm <command>`` runs: the dataclass's defaults (the paper's, from
    configs/paper.yaml, written into the fields once), replaced by the ``--config`` file's values
    (:func:`config_file_values`), replaced by ``given`` (the flags on the command line, or keyword
    arguments in Python). The one place the three are combined."""
    return config_class(command)(**{**from_file, **given})


def parse_command_line(argv: list[str]):
    """The config a full command line (``["train", "--k", "7", ...]``) runs; argparse's own exit
    on a bad flag."""
    command = next((a for a in argv if a in COMMANDS), None)
    from_file = config_file_values(command, config_path_in(argv)) if command else {}
    parser, _ = build_parser(only=command or "", given=from_file)
    ns = vars(parser.parse_args(argv))
    if not ns.get("command"):
        from saevlm.errors import UserError
        raise UserError(f"no command in {argv!r}; expected one of {', '.join(COMMANDS)}")
    return command_config(ns["command"], from_file, _flags_given(ns))


def _flags_given(ns: dict) -> dict:
    """The field values in a parsed namespace: argparse stored only the flags given."""
    return {k: v for k, v in ns.items() if k not in ("version", "config", "command")}


def main(argv: list[str] | None = None) -> int:
    from saevlm.errors import UserError

    raw = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in raw if a in COMMANDS), None)
    config = config_path_in(raw)
    wants_help = command is None or any(a in ("-h", "--help") for a in raw)
    try:
        given = config_file_values(command, config) if command else {}
        parser, _ = build_parser(only=command or "", with_help=wants_help, given=given)
    except UserError as err:
        print(f"saevlm {command or ''}: error: {err}", file=sys.stderr)
        return 2
    args = vars(parser.parse_args(raw))
    if args.get("version"):
        import saevlm
        print(saevlm.__version__)
        return 0
    if not args.get("command"):
        parser.print_help()
        return 2
    from saevlm.threads import configure_threads
    configure_threads()  # torch's CPU threads for this machine and its current load (saevlm/threads.py)
    try:
        cfg = command_config(command, given, _flags_given(args))
        return int(importlib.import_module(COMMANDS[command][0]).run(cfg) or 0)
    except UserError as err:
        print(f"saevlm {command}: error: {err.with_flags(flag_mapping(command))}", file=sys.stderr)
        return 2
    except OSError as err:  # a file system failure outside the atomic writers (they raise UserError)
        from saevlm.data.atomic import describe_os_error
        print(f"saevlm {command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"saevlm {command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
