"""Every command's config dataclass and its command line agree on defaults."""

import argparse


def test_configs_default_to_the_cli_defaults():
    """Every command's config built in Python with only its required fields is what the CLI runs
    with only those flags (the same defaults, from the same declarations and configs/paper.yaml)."""
    import dataclasses

    from saevlm.api import config
    from saevlm.cli import COMMANDS, build_parser, config_class
    from saevlm.commandline import REQUIRED
    from saevlm.extraction import ExtractionSettings
    from saevlm.sae.train import TrainConfig

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for command in COMMANDS:
        cls = config_class(command)
        required = {f.name: "x" for f in dataclasses.fields(cls) if f.default is REQUIRED}
        argv = [command] + [a for f in dataclasses.fields(cls) if f.name in required
                            for a in ([] if f.metadata.get("positional") else [f"--{f.name}"]) + ["x"]]
        from saevlm.commandline import config_from_namespace
        assert config_from_namespace(cls, parser.parse_args(argv)) == cls(**required) == config(command, **required), \
            command
        assert set(sub[command]._option_string_actions) >= {f"--{f.name}" for f in dataclasses.fields(cls)
                                                              if not f.metadata.get("positional")
                                                              and not f.metadata.get("flags")}
    cfg = TrainConfig(activations_dir="x")
    assert cfg.hyperparameters()["decay_start"] == cfg.steps - 1 == 109_999 and cfg.k == 20
    ex = config("extract", data_path="d", model_name="m", output_dir="o")
    assert ExtractionSettings.from_config(ex, "activations", "float32") == ExtractionSettings()
