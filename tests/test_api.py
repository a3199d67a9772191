"""docs/python-api.md runs as written, and the Python entry point behaves like the CLI."""

import os
import re
from pathlib import Path

import pytest

from saevlm import api
from saevlm.errors import UserError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


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


def test_api_errors_are_the_cli_messages(tmp_path):
    with pytest.raises(UserError, match="no flag --activatons_dir"):
        api.run("train", activatons_dir="x")
    with pytest.raises(UserError, match="--activations_dir is required"):
        api.run("train", steps=3)
    with pytest.raises(UserError, match="--lr -1"):
        api.run("train", activations_dir=tmp_path, lr=-1)
    args = api.command_args("train", activations_dir=tmp_path, expansion_factor=2)
    assert args.expansion_factor == [2] and args.k == 20 and args.activations_dir == str(tmp_path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
