"""--config files and configs/paper.yaml as flag defaults; --help fast and without torch."""


import pytest
from helpers import REPO, run_python


def test_help_is_fast_and_imports_no_torch():
    r = run_python("""
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
    from saevlm.cli import main, parse_command_line

    cfg = tmp_path / "c.yaml"
    cfg.write_text("commands:\n  train:\n    k: 7\n    steps: 123\n    sae_model: top_k\n")
    args = parse_command_line(["train", "--activations_dir", "x", "--steps", "5",
                                                         "--config", str(cfg)])
    assert (args.k, args.steps, args.sae_model) == (7, 5, ["top_k"])
    # the packaged paper config gives the defaults otherwise
    import yaml
    paper = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    plain = parse_command_line(["train", "--activations_dir", "x"])
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

    from saevlm import paper
    numbers = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())["numbers"]
    assert paper.BEST_MS["batch_top_k"][22] == tuple(numbers["best_ms"]["batch_top_k"][22])
    assert paper.paper_value(paper.BEST_MS, "matryoshka_batch_top_k", "last", 64) == \
        numbers["best_ms"]["matryoshka_batch_top_k"]["last"][-1]
    assert paper.STEERING["bound_true_names"] == str(numbers["steering"]["bound_true_names"])


@pytest.mark.parametrize("word,expect", [("false", False), ("no", False), ("off", False), ("0", False),
                                         ("'False'", False), ("'off'", False),
                                         ("true", True), ("yes", True), ("on", True), ("1", True), ("'YES'", True)])
def test_config_booleans_mean_what_they_say(tmp_path, word, expect):
    """A switch set to false in --config stays off (it once turned ON: [False] is truthy), and
    true turns it on, in every spelling YAML users write; store_false and --x/--no-x switches too."""
    from saevlm.cli import parse_command_line

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"commands:\n  train:\n    no_normalize: {word}\n  ms:\n    overwrite: {word}\n"
                   f"  steering-score:\n    steer: {word}\n    pre_zero: {word}\n")
    train = parse_command_line(["train", "--activations_dir", "x", "--config", str(cfg)])
    assert train.no_normalize is expect
    ms = parse_command_line(["ms", "--activations_dir", "x", "--embeddings_path", "y",
                                                    "--config", str(cfg)])
    assert ms.overwrite is expect
    sc = parse_command_line(
        ["steering-score", "--sae_path", "s", "--top_images", "t", "--clip_embeddings", "c", "--output_dir", "o",
         "--config", str(cfg)])
    assert sc.steer is expect and sc.zero_others is expect
    # an explicit flag still wins over the file
    train = parse_command_line(["train", "--activations_dir", "x", "--no_normalize",
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
    from saevlm.cli import parse_command_line

    cfg = tmp_path / "c.yaml"
    cfg.write_text("commands:\n  train:\n    steps: 20.0\n    k: '7'\n    lr: 1\n")
    args = parse_command_line(["train", "--activations_dir", "x", "--config", str(cfg)])
    assert (args.steps, args.k) == (20, 7) and args.lr == 1.0 and isinstance(args.lr, float)


def test_config_keys_may_be_flag_names(tmp_path):
    """``pre_zero`` (the flag; its destination is zero_others) and ``no_steer`` (a store_false
    flag of destination steer) mean the flag given or not."""
    from saevlm.cli import parse_command_line

    cfg = tmp_path / "c.yaml"
    base = ["steering-score", "--sae_path", "s", "--top_images", "t", "--clip_embeddings", "c", "--output_dir", "o",
            "--config", str(cfg)]
    for body, steer, zero in [("no_steer: true\n    pre_zero: true", False, True),
                              ("no_steer: false\n    pre_zero: false", True, False),
                              ("no_pre_zero: true", True, False)]:
        cfg.write_text(f"commands:\n  steering-score:\n    {body}\n")
        args = parse_command_line(base)
        assert (args.steer, args.zero_others) == (steer, zero), body
