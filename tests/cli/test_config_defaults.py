"""Every command's config dataclass and its command line agree on defaults."""


def test_configs_default_to_the_cli_defaults():
    """Every command's config built in Python with only its required fields is what the CLI runs
    with only those flags (the same defaults, from the same declarations and configs/paper.yaml)."""
    import dataclasses

    from saevlm.api import config
    from saevlm.cli import COMMANDS, build_parser, config_class, parse_command_line
    from saevlm.commandline import REQUIRED
    from saevlm.extraction import ExtractionSettings
    from saevlm.sae.train import TrainConfig

    _, sub = build_parser()
    for command in COMMANDS:
        cls = config_class(command)
        required = {f.name: "x" for f in dataclasses.fields(cls) if f.default is REQUIRED}
        argv = [command] + [a for f in dataclasses.fields(cls) if f.name in required
                            for a in ([] if f.metadata.get("positional") else [f"--{f.name}"]) + ["x"]]
        assert parse_command_line(argv) == cls(**required) == config(command, **required), command
        usage = sub[command].format_usage()
        assert all(f"--{f.name}" in usage for f in dataclasses.fields(cls)
                   if not f.metadata.get("positional") and not f.metadata.get("flags")), command
    cfg = TrainConfig(activations_dir="x")
    assert cfg.hyperparameters()["decay_start"] == cfg.steps - 1 == 109_999 and cfg.k == 20
    ex = config("extract", data_path="d", model_name="m", output_dir="o")
    assert ExtractionSettings.from_config(ex, "activations", "float32") == ExtractionSettings()


def test_the_parser_holds_no_defaults_and_paper_yaml_is_applied_once():
    """The config dataclasses are the only defaults: a parsed command line holds exactly the flags
    given (argparse decides no value), and every ``commands.<name>.<key>`` of configs/paper.yaml is
    the declared default of that command's field (read into the dataclass once, nowhere else)."""
    import dataclasses

    from saevlm.cli import COMMANDS, build_parser, config_class
    from saevlm.commandline import field_default
    from saevlm.config import paper_config

    parser, _ = build_parser(only="train")
    ns = vars(parser.parse_args(["train", "--activations_dir", "a", "--k", "7", "--no-tf32"]))
    assert ns == {"version": False, "command": "train", "activations_dir": "a", "k": 7, "tf32": False}
    sections = paper_config()["commands"]
    assert sections, "configs/paper.yaml has no commands"
    for command, values in sections.items():
        assert command in COMMANDS
        fields = {f.name: field_default(f) for f in dataclasses.fields(config_class(command))}
        for key, value in values.items():
            assert key in fields and fields[key] == value, (command, key)
