"""docs/python-api.md runs as written, and the Python entry point behaves like the CLI."""

import os
import re

import pytest

from helpers import REPO
from saevlm import api
from saevlm.errors import UserError

DOC = REPO / "docs" / "python-api.md"


def test_python_api_doc_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/python-api.md has no python block"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__doc_example__"}
    for code in blocks:  # one notebook: later blocks continue the earlier ones
        exec(compile(code, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert re.search(r"MS mean \d\.\d{3} over \d+ of 128 latents", out)
    assert (tmp_path / "runs" / "api" / "codes" / "ms_synthetic" / "ms.json").is_file()
    # the typed-config block: train() wrote an SAE; the provenance printed is the codes' own
    assert (tmp_path / "runs" / "api" / "sae_b" / "train_batch_top_k_4_x2" / "trainer_0" / "ae.pt").is_file()
    assert re.search(r"codes of matryoshka_batch_top_k groups \(\d+, \d+", out)
    assert "differs from the training split in: dataset paths_sha256:" in out


def _cli_error(capsys, *argv) -> str:
    from helpers import run_cli

    with pytest.raises(SystemExit) as exit_info:  # argparse's own exit for a bad flag value
        run_cli(*argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_api_errors_are_the_cli_messages(tmp_path, capsys):
    """A config built in Python converts and checks its values exactly as the command line: the
    same conversions, and the same message for a wrong type, an unknown choice or a missing field."""
    from saevlm.metrics.top_images import TopImagesConfig
    from saevlm.sae.train import TrainConfig

    with pytest.raises(UserError, match="no flag --activatons_dir"):
        api.run("train", activatons_dir="x")
    # conversions: "7" is 7 (never the string '7'), 7.0 is 7, a Path is its string
    assert TopImagesConfig(activations_dir="x", k="7").k == 7
    assert api.config("top-images", activations_dir=tmp_path, k=7.0).k == 7
    assert api.config("top-images", activations_dir=tmp_path).activations_dir == str(tmp_path)
    assert api.config("train", activations_dir="x", expansion_factor=2).expansion_factor == [2]
    assert TrainConfig(activations_dir="x", sae_model=["matryoshka_batch_top_k"],
                       group_fractions=["0.5", 0.5]).group_fractions == [0.5, 0.5]
    cases = [  # (what Python is given, the same on the command line)
        (lambda: TopImagesConfig(activations_dir="x", k="seven"), ["top-images", "--activations_dir", "x", "--k", "seven"]),
        (lambda: api.config("train", activations_dir="x", sae_model=["nope"]),
         ["train", "--activations_dir", "x", "--sae_model", "nope"]),
        (lambda: api.run("train", steps=3), ["train", "--steps", "3"]),
        (lambda: TrainConfig(activations_dir="x", steps="1e3"), ["train", "--activations_dir", "x", "--steps", "1e3"]),
    ]
    for build, argv in cases:
        with pytest.raises(UserError) as err:
            build()
        cli = _cli_error(capsys, *argv)
        assert cli.endswith(str(err.value)), (cli, str(err.value))
    with pytest.raises(UserError, match="invalid int value: 7.5"):
        TopImagesConfig(activations_dir="x", k=7.5)
    with pytest.raises(UserError, match="invalid int value: True"):
        TopImagesConfig(activations_dir="x", k=True)
    with pytest.raises(UserError, match="--lr -1"):
        api.run("train", activations_dir=tmp_path, lr=-1)
    args = api.command_args("train", activations_dir=tmp_path, expansion_factor=2)
    assert args.expansion_factor == [2] and args.k == 20 and args.activations_dir == str(tmp_path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_help_is_generated_from_the_configs_and_fast():
    """Each field's docstring is its --help text; --help imports no torch."""
    import subprocess
    import sys

    from saevlm.commandline import field_docs
    from saevlm.metrics.top_images import TopImagesConfig

    doc = field_docs(TopImagesConfig)["k"]
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "saevlm", "top-images", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert " ".join(doc.replace("%(default)s", "16").split()) in " ".join(r.stdout.split())
    assert not re.search(r"\|\s+torch$", r.stderr, re.M), "--help imported torch"


def test_config_file_then_explicit_fields(tmp_path, capsys):
    """``--config FILE`` (and ``api.config(config=FILE)``): the file's values replace the paper's,
    fields given explicitly replace the file's, even when equal to the paper's default."""
    from saevlm.cli import parse_command_line

    cfg = tmp_path / "c.yaml"
    cfg.write_text("commands:\n  train:\n    k: 7\n    steps: 123\n    activations_dir: from_file\n")
    assert api.config("train", config=cfg).k == 7 and api.config("train", config=cfg).activations_dir == "from_file"
    assert api.config("train", config=cfg, k=20).k == 20
    made = parse_command_line(["train", "--k", "20", "--config", str(cfg)])
    assert (made.k, made.steps, made.activations_dir) == (20, 123, "from_file")
