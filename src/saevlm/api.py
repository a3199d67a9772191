"""Every command from Python, without a shell, through its typed config.

    from saevlm import api
    api.run("top-images", activations_dir="runs/ms/codes", k=7)      # as `saevlm top-images ...`
    cfg = api.config("top-images", activations_dir="runs/ms/codes")  # a TopImagesConfig
    from saevlm.metrics.top_images import TopImagesConfig, run
    run(TopImagesConfig(activations_dir="runs/ms/codes", k=7))       # the same, spelt out

Keyword arguments are the config's fields (the flags without dashes; ``--expansion_factor 1 2``
is ``expansion_factor=[1, 2]``); defaults are the command line's (configs/paper.yaml, then
``config=FILE`` as ``--config FILE``). Values are converted and checked as the command line does
it: ``k="7"`` becomes 7, ``k="seven"``, an unknown choice or a missing required field raise
:class:`saevlm.errors.UserError` with the command line's message. See docs/python-api.md.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from saevlm.errors import UserError


def config(command: str, config: str | Path | None = None, **flags: Any):
    """The config ``saevlm <command> [--config config] <flags>`` would run."""
    from saevlm.cli import COMMANDS, command_config, config_class, config_file_values

    if command not in COMMANDS:
        raise UserError(f"{command!r}: unknown command; expected one of {', '.join(COMMANDS)}")
    names = [f.name for f in dataclasses.fields(config_class(command))]  # fields only, not the ClassVars
    unknown = [k for k in flags if k not in names]
    if unknown:
        raise UserError(f"saevlm {command}: no flag --{unknown[0]} (its flags: {', '.join(sorted(names))})")
    # as on the command line: the file's values over the dataclass's (the paper's), the given fields over both
    return command_config(command, config_file_values(command, str(config) if config else None), flags)


def command_args(command: str, config: str | Path | None = None, **flags: Any):
    """Older name of :func:`config`."""
    return globals()["config"](command, config, **flags)


def run(command: str, config: str | Path | None = None, **flags: Any) -> int:
    """Run ``saevlm <command>`` in this process; returns its exit status (0 = success)."""
    from saevlm.cli import COMMANDS

    cfg = globals()["config"](command, config, **flags)
    return int(importlib.import_module(COMMANDS[command][0]).run(cfg) or 0)
