"""import-sae / export-sae against the other libraries themselves (SAELens 6.x, sparsify).

Each SAE is created and saved BY THE LIBRARY (random weights, non-zero biases, thresholds set),
imported with ``saevlm import-sae``, loaded as every command loads an SAE (``load_sae``), and its
codes compared with the library's own ``encode`` on the same inputs; exports are loaded back by the
library. The libraries are test-only dependencies that ``make test`` installs into ``.test-libs/``
(requirements-interop.txt).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, run_cli

TEST_LIBS = REPO / ".test-libs"
if TEST_LIBS.is_dir() and str(TEST_LIBS) not in sys.path:
    sys.path.append(str(TEST_LIBS))  # last: never shadows the project's own packages


def _library(name: str):
    try:
        return __import__(name)
    except ImportError:
        if os.environ.get("SAEVLM_REQUIRE_INTEROP"):
            raise
        pytest.skip(f"{name} is not installed: `make test` installs the test-only SAE libraries into .test-libs/ "
                    f"(requirements-interop.txt)")


@pytest.fixture(scope="module")
def sae_lens():
    return _library("sae_lens")


@pytest.fixture(scope="module")
def sparsify():
    return _library("sparsify")


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Every parameter random (non-zero biases), as a trained SAE's would be."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def inputs(d: int, n: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 2.0 + 0.5


def ours(trainer: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes, reconstruction) of an imported SAE, loaded as every saevlm command loads it."""
    from saevlm.sae.checkpoint import load_sae
    from saevlm.sae.inference import encode_batch

    sae = load_sae(str(trainer))
    with torch.no_grad():
        codes = encode_batch(sae, x)
        return codes, sae.ae.decode(codes)


def import_sae(src: Path, dst: Path, *extra) -> None:
    assert run_cli("import-sae", "--sae_path", src, "--output_dir", dst, *extra) == 0


def assert_codes_equal(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-5) -> None:
    assert got.shape == want.shape
    assert (got != 0).sum() > 0, "no code is active: the comparison would prove nothing"
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------- SAELens -> saevlm
def _saelens_sae(sae_lens, arch: str, d: int, f: int, seed: int, **cfg):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    cls, cfg_cls = {"standard": (StandardSAE, StandardSAEConfig), "topk": (TopKSAE, TopKSAEConfig),
                    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig)}[arch]
    sae = cls(cfg_cls(d_in=d, d_sae=f, **cfg))
    randomize(sae, seed)
    if arch == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(f, generator=torch.Generator().manual_seed(seed + 7)) * 0.5)
    return sae


@pytest.mark.parametrize("arch, d, f, cfg", [
    ("standard", 16, 48, {"apply_b_dec_to_input": True}),
    ("standard", 16, 48, {"apply_b_dec_to_input": False}),
    ("standard", 16, 16, {}),  # F = D: a wrong transpose would still have the right shapes
    ("topk", 16, 48, {"k": 5}),
    ("topk", 16, 16, {"k": 4, "rescale_acts_by_decoder_norm": True}),
    ("jumprelu", 16, 48, {"apply_b_dec_to_input": True}),
    ("jumprelu", 16, 48, {"apply_b_dec_to_input": False}),
    ("jumprelu", 16, 16, {"apply_b_dec_to_input": True}),
])
def test_saelens_sae_imports_with_the_librarys_codes(sae_lens, tmp_path, arch, d, f, cfg):
    sae = _saelens_sae(sae_lens, arch, d, f, seed=3, **cfg)
    sae.save_model(tmp_path / "src")
    import_sae(tmp_path / "src", tmp_path / "ours")
    x = inputs(d)
    with torch.no_grad():
        want = sae.encode(x)
        want_recon = sae.decode(want)
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want)
    torch.testing.assert_close(recon, want_recon, atol=1e-4, rtol=1e-4)
    record = json.loads((tmp_path / "ours" / "imported.json").read_text())
    assert record["format"] == "saelens" and "sae_weights.safetensors" in record["files"]


@pytest.mark.parametrize("matryoshka", [False, True])
def test_saelens_batchtopk_and_matryoshka_come_back_as_ours(sae_lens, tmp_path, matryoshka):
    """SAELens saves BatchTopK / Matryoshka as jumprelu with the threshold repeated per latent;
    they import as saevlm's BatchTopK / Matryoshka (k, groups) with the same codes."""
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    from saevlm.sae.checkpoint import load_sae

    d, f = 12, 40
    if matryoshka:
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d, d_sae=f, k=6, matryoshka_widths=[4, 12, 40]))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d, d_sae=f, k=6))
    randomize(sae, 5)
    sae.topk_threshold = torch.tensor(0.4)
    sae.save_inference_model(tmp_path / "src")
    from sae_lens import SAE
    lib = SAE.load_from_disk(tmp_path / "src")  # the file as SAELens itself reads it back
    import_sae(tmp_path / "src", tmp_path / "ours")
    loaded = load_sae(str(tmp_path / "ours"))
    assert loaded.arch == ("matryoshka_batch_top_k" if matryoshka else "batch_top_k") and loaded.k == 6
    assert loaded.group_sizes() == ([4, 8, 28] if matryoshka else None)
    x = inputs(d)
    with torch.no_grad():
        want = lib.encode(x)
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want)
    with torch.no_grad():
        torch.testing.assert_close(recon, lib.decode(want), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("per_dim", [False, True])
def test_an_input_normalisation_is_folded_exactly(sae_lens, tmp_path, per_dim):
    """With --input_norm, saevlm's codes of raw x equal the library's codes of (x - mean) / std, and
    its reconstruction is the library's mapped back (x_hat * std + mean)."""
    d, f = 16, 48
    sae = _saelens_sae(sae_lens, "topk", d, f, seed=9, k=6)
    sae.save_model(tmp_path / "src")
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(d, generator=g)
    std = torch.rand(d, generator=g) * 3 + 0.5 if per_dim else torch.tensor(2.5)
    np.savez(tmp_path / "stats.npz", mean=mean.numpy(), std=std.numpy())
    import_sae(tmp_path / "src", tmp_path / "ours", "--input_norm", f"stats:{tmp_path / 'stats.npz'}")
    x = inputs(d) * 3 + 1
    with torch.no_grad():
        want = sae.encode((x - mean) / std)
        want_recon = sae.decode(want) * std + mean
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want, atol=1e-4)
    torch.testing.assert_close(recon, want_recon, atol=1e-3, rtol=1e-4)


def test_each_convention_flipped_gives_other_codes(sae_lens, tmp_path):
    """The comparisons above can fail: each single convention flipped (orientation of an F = D SAE,
    centring, normalisation, the threshold compared with > rather than >=) changes the codes."""
    from dataclasses import replace

    from saevlm.sae import interop

    d = f = 16
    sae = _saelens_sae(sae_lens, "jumprelu", d, f, seed=11, apply_b_dec_to_input=True)
    sae.save_model(tmp_path / "src")
    w = interop.read_saelens(tmp_path / "src")
    x = inputs(d)
    with torch.no_grad():
        want = sae.encode(x)
    assert_codes_equal(w.encode(x), want)
    flips = {"orientation": replace(w, W_enc=w.W_enc.T.contiguous()),
             "centring": replace(w, centred=False),
             "normalisation": interop.fold_input_norm(w, None, 2.0)}
    for name, flipped in flips.items():
        assert not torch.allclose(flipped.encode(x), want, atol=1e-3), name
    # threshold: exact arithmetic (integer weights and inputs), pre-activations equal to the threshold
    eye = _saelens_sae(sae_lens, "jumprelu", 4, 4, seed=0, apply_b_dec_to_input=True)
    with torch.no_grad():
        eye.W_enc.copy_(torch.eye(4))
        eye.W_dec.copy_(torch.eye(4))
        eye.b_enc.zero_()
        eye.b_dec.zero_()
        eye.threshold.fill_(2.0)
    eye.save_model(tmp_path / "eye")
    import_sae(tmp_path / "eye", tmp_path / "eye_ours")
    x = torch.tensor([[2.0, 3.0, 1.0, 2.0]])
    codes, _ = ours(tmp_path / "eye_ours", x)
    with torch.no_grad():
        assert torch.equal(codes, eye.encode(x)) and torch.equal(codes, torch.tensor([[0.0, 3.0, 0.0, 0.0]]))


# ----------------------------------------------------------------------------- sparsify -> saevlm
@pytest.mark.parametrize("d, f, k", [(16, 48, 5), (16, 16, 3)])
def test_sparsify_sae_imports_with_the_librarys_codes(sparsify, tmp_path, d, f, k):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=f, k=k, normalize_decoder=False))
    randomize(sae, 13)
    sae.save_to_disk(tmp_path / "src")
    import_sae(tmp_path / "src", tmp_path / "ours")
    x = inputs(d)
    with torch.no_grad():
        out = sae.encode(x)
        want = torch.zeros(len(x), f).scatter_(1, out.top_indices, out.top_acts)
        want_recon = sae.decode(out.top_acts, out.top_indices)
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want)
    torch.testing.assert_close(recon, want_recon, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- saevlm -> libraries
def _our_sae(arch: str, d: int, f: int, path: Path, seed: int = 21) -> Path:
    """A dictionary_learning SAE of ``arch`` with random weights, biases and threshold, saved as a
    trainer folder."""
    from saevlm.sae.archs import dict_class

    cls = dict_class(arch)
    ae = {"top_k": lambda: cls(d, f, 5), "batch_top_k": lambda: cls(d, f, 5),
          "matryoshka_batch_top_k": lambda: cls(d, f, 5, [8, f - 8])}.get(arch, lambda: cls(d, f))()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if hasattr(ae, "threshold"):
            ae.threshold.copy_(torch.rand(ae.threshold.shape, generator=g) * 0.3 + 0.05)
    path.mkdir(parents=True)
    torch.save(ae.state_dict(), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": type(ae).__name__,
                                                              "activation_dim": d, "dict_size": f}}))
    return path


@pytest.mark.parametrize("arch, f", [("standard", 40), ("top_k", 40), ("batch_top_k", 40), ("matryoshka_batch_top_k", 40),
                                     ("jumprelu", 40), ("top_k", 16), ("jumprelu", 16)])
def test_export_to_saelens_loads_there_with_our_codes(sae_lens, tmp_path, arch, f):
    from sae_lens import SAE

    src = _our_sae(arch, 16, f, tmp_path / "trainer_0")
    assert run_cli("export-sae", "--sae_path", src, "--format", "saelens", "--output_dir", tmp_path / "out") == 0
    lib = SAE.load_from_disk(tmp_path / "out")
    x = inputs(16)
    codes, recon = ours(src, x)
    with torch.no_grad():
        assert_codes_equal(lib.encode(x), codes)
        torch.testing.assert_close(lib.decode(codes), recon, atol=1e-4, rtol=1e-4)
    # and back: import of the export is the same SAE
    import_sae(tmp_path / "out", tmp_path / "back")
    assert_codes_equal(ours(tmp_path / "back", x)[0], codes)


def test_export_to_sparsify_loads_there_and_batchtopk_is_refused(sparsify, tmp_path, capsys):
    from sparsify import SparseCoder

    src = _our_sae("top_k", 16, 40, tmp_path / "trainer_0")
    assert run_cli("export-sae", "--sae_path", src, "--format", "sparsify", "--output_dir", tmp_path / "out") == 0
    lib = SparseCoder.load_from_disk(tmp_path / "out")
    x = inputs(16)
    codes, recon = ours(src, x)
    with torch.no_grad():
        out = lib.encode(x)
        assert_codes_equal(torch.zeros_like(codes).scatter_(1, out.top_indices, out.top_acts), codes)
        torch.testing.assert_close(lib.decode(out.top_acts, out.top_indices), recon, atol=1e-4, rtol=1e-4)
    bt = _our_sae("batch_top_k", 16, 40, tmp_path / "bt")
    capsys.readouterr()
    assert run_cli("export-sae", "--sae_path", bt, "--format", "sparsify", "--output_dir", tmp_path / "o2") == 2
    err = capsys.readouterr().err
    assert "no threshold inference" in err and "--format saelens" in err and not (tmp_path / "o2").exists()


# ----------------------------------------------------------------------------- bad input
class NotATensor:
    """A pickled object inside an ae.pt: torch.load(weights_only=True) refuses it."""


def _one_line(capsys, *words) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_bad_sources_are_one_line_and_leave_nothing(sae_lens, tmp_path, capsys):
    """Unknown layout, a normalisation the checkpoint does not hold, a truncated file, NaN weights,
    a pickle: exit 2, one line naming the file or flag, nothing written at --output_dir."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "weights.bin").write_bytes(b"\0" * 10)
    cases = [(odd, [], ("--sae_path", "no known SAE layout", "weights.bin"))]
    scaled = _saelens_sae(sae_lens, "standard", 8, 24, seed=1, normalize_activations="expected_average_only_in")
    scaled.save_model(tmp_path / "scaled")
    cases.append((tmp_path / "scaled", [], ("--sae_path", "norm_scaling_factor", "--input_norm scalar:S")))
    trunc = tmp_path / "trunc"
    _saelens_sae(sae_lens, "standard", 8, 24, seed=1).save_model(trunc)
    data = (trunc / "sae_weights.safetensors").read_bytes()
    (trunc / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    cases.append((trunc, [], ("--sae_path", "sae_weights.safetensors", "damaged or truncated")))
    nan = tmp_path / "nan"
    _saelens_sae(sae_lens, "standard", 8, 24, seed=1).save_model(nan)
    state = load_file(nan / "sae_weights.safetensors")
    state["W_dec"][3, 2] = float("nan")
    save_file(state, nan / "sae_weights.safetensors")
    cases.append((nan, [], ("--sae_path", "W_dec holds NaN")))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"W_enc": torch.zeros(2, 2), "note": NotATensor()}, pickled / "ae.pt")
    cases.append((pickled, [], ("--sae_path", "not a readable torch checkpoint")))
    cases.append((tmp_path / "nan", ["--input_norm", "stats:missing.npz"], ("--input_norm", "no such file")))
    for src, extra, words in cases:
        capsys.readouterr()
        assert run_cli("import-sae", "--sae_path", src, "--output_dir", out, *extra) == 2, src
        _one_line(capsys, *words)
        assert not out.exists() and not list(tmp_path.glob(".out.import-*"))


def test_offline_hub_sources_say_what_to_do(tmp_path, capsys, monkeypatch):
    """hf:<owner>/<repo>/<sub> reads the hub cache offline; an uncached repo is one line."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert run_cli("import-sae", "--sae_path", "hf:nobody/no-such-saes/layer_3", "--output_dir", tmp_path / "o") == 2
    _one_line(capsys, "--sae_path hf:nobody/no-such-saes/layer_3", "HF_HUB_OFFLINE")
    # the same repo in the hub cache's layout (refs/main -> snapshots/<commit>/) is found offline
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--nobody--no-such-saes"
    _our_sae("top_k", 8, 16, repo / "snapshots" / commit / "layer_3")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    import_sae("hf:nobody/no-such-saes/layer_3", tmp_path / "o")
    x = inputs(8)
    assert_codes_equal(ours(tmp_path / "o", x)[0], ours(repo / "snapshots" / commit / "layer_3", x)[0])
    # a saev repo at its root: the manifest is read, then only the checkpoint it picks is fetched
    import hashlib
    saev_repo = tmp_path / "cache" / "models--osunlp--SAE_tiny"
    snap = saev_repo / "snapshots" / commit
    f = saev_dump(snap / "layer_5" / "run7" / "sae.pt", _saev_state(8, 24, 4),
                  {"d_model": 8, "d_sae": 24, "activation": {"cls": "Relu", "params": {}}})
    (snap / "manifest.jsonl").write_text(json.dumps({"run_id": "run7", "layer": 5, "l0": 12.0, "mse": 0.1,
                                                     "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
                                                     "path": "layer_5/run7/sae.pt"}) + "\n")
    (saev_repo / "refs").mkdir(parents=True)
    (saev_repo / "refs" / "main").write_text(commit)
    import_sae("hf:osunlp/SAE_tiny", tmp_path / "s", "--layer", "5", "--tokens", "patches")
    assert_codes_equal(ours(tmp_path / "s", x)[0], saev_encode(_saev_state(8, 24, 4), "Relu", 0, False, x))


def test_an_imported_sae_carries_its_model_and_hook_through_every_command(sae_lens, tiny_clip_dir, image_folder,
                                                                          tmp_path, capsys):
    """A SAELens SAE on the tiny CLIP's block 1: import with the model, hook and tokens -> extract ->
    encode -> ms -> top-images -> explore; a store of another block is refused, a width that does
    not fit the model is one line naming both."""
    from saevlm.data.codes import CodeStore

    d = 64  # the tiny CLIP's width
    sae = _saelens_sae(sae_lens, "topk", d, 128, seed=2, k=8)
    sae.save_model(tmp_path / "src")
    common = ["--data_path", image_folder, "--device", "cpu", "--num_workers", "0", "--no_progress"]
    import_sae(tmp_path / "src", tmp_path / "sae", "--model_name", tiny_clip_dir, "--layer", "1", "--tokens", "cls")
    for layer in ("1", "2"):
        assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", layer, "--cls_only", "--output_dir",
                       tmp_path / "acts", *common) == 0
    assert run_cli("embed", "--model_name", tiny_clip_dir, "--embeddings_path", tmp_path / "emb", *common) == 0
    codes = tmp_path / "codes"
    assert run_cli("encode", "--sae_path", tmp_path / "sae", "--activations_dir",
                   tmp_path / "acts" / "post_mlp_residual_1", "--output_dir", codes, "--no_progress") == 0
    # the stored codes are SAELens' codes of the stored activations
    from saevlm.data.store import ActivationStore
    acts = torch.as_tensor(np.concatenate([a for _, a in ActivationStore(tmp_path / "acts" / "post_mlp_residual_1")
                                           .iter_chunks(1000)]))
    dense = np.zeros((len(acts), 128), np.float32)
    for chunk in CodeStore(codes).iter_csr(1000):
        for r in range(chunk.num_rows):
            lo, hi = chunk.indptr[r], chunk.indptr[r + 1]
            dense[chunk.start + r, chunk.indices[lo:hi]] = chunk.values[lo:hi]
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(dense), sae.encode(acts), atol=1e-5, rtol=1e-5)
    assert run_cli("ms", "--activations_dir", codes, "--embeddings_path", tmp_path / "emb", "--device", "cpu",
                   "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", codes, "--k", "4", "--device", "cpu", "--no_progress") == 0
    assert run_cli("explore", "--run_dir", tmp_path, "--static", tmp_path / "site", "--latents", "top:3",
                   "--no_progress") == 0
    capsys.readouterr()
    assert run_cli("encode", "--sae_path", tmp_path / "sae", "--activations_dir",
                   tmp_path / "acts" / "post_mlp_residual_2", "--output_dir", tmp_path / "c2", "--no_progress") == 2
    _one_line(capsys, "--sae_path", "trained on hook")
    narrow = _saelens_sae(sae_lens, "topk", 32, 64, seed=2, k=4)
    narrow.save_model(tmp_path / "narrow")
    assert run_cli("import-sae", "--sae_path", tmp_path / "narrow", "--output_dir", tmp_path / "n",
                   "--model_name", tiny_clip_dir, "--layer", "1") == 2
    _one_line(capsys, "32-d inputs", "64-d activations", "post_mlp_residual_1")
    assert not (tmp_path / "n").exists()


# ----------------------------------------------------------------------------- saev -> saevlm
def saev_dump(path: Path, state: dict, cfg: dict, schema: int | None = 5) -> Path:
    """A checkpoint written exactly as saev's ``nn.modeling.dump`` writes one: a JSON header line
    (schema, cfg with the activation as {"cls", "params"}), then ``torch.save`` of the state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"schema": schema, "cfg": cfg, "commit": "unknown", "lib": "1.2.0"} if schema is not None else cfg
    with open(path, "wb") as fd:
        fd.write((json.dumps(header) + "\n").encode())
        torch.save(state, fd)
    return path


def saev_encode(state: dict, kind: str, k: int, centred: bool, x: torch.Tensor) -> torch.Tensor:
    """A port of saev's SparseAutoencoder.encode in eval mode (nn/modeling.py): pre-activations
    x @ W_enc + b_enc (x - b_dec first before schema 2), then Relu, TopK (the k largest
    pre-activations kept as they are) or BatchTopK (x where x > threshold, ReLU if it is not positive)."""
    h = (x - state["b_dec"] if centred else x) @ state["W_enc"] + state["b_enc"]
    if kind == "Relu":
        return torch.relu(h)
    if kind == "TopK":
        idx = torch.topk(h, k, dim=-1).indices
        return torch.zeros_like(h).scatter(-1, idx, 1.0) * h
    thr = state["activation.threshold"]
    return torch.where(h > thr, h, torch.zeros_like(h)) if thr > 0 else torch.where(h > 0, h, torch.zeros_like(h))


def _saev_state(d: int, f: int, seed: int, threshold: float | None = None) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {"W_enc": torch.randn(d, f, generator=g) * 0.3, "b_enc": torch.randn(f, generator=g) * 0.3,
             "W_dec": torch.randn(f, d, generator=g) * 0.3, "b_dec": torch.randn(d, generator=g) * 0.3}
    if threshold is not None:
        state["activation.threshold"] = torch.tensor(threshold)
    return state


@pytest.mark.parametrize("kind, schema, d, f", [
    ("Relu", 5, 16, 48), ("TopK", 5, 16, 48), ("BatchTopK", 5, 16, 16), ("Relu", None, 16, 48), ("TopK", 1, 16, 16),
])
def test_saev_checkpoints_import_with_saevs_codes(tmp_path, kind, schema, d, f):
    """Schema 2+ does not centre; older checkpoints (no schema, schema 1) subtract b_dec first.
    saev's TopK keeps negative pre-activations among its top k: saevlm's codes are their ReLU."""
    state = _saev_state(d, f, 7, threshold=0.35 if kind == "BatchTopK" else None)
    act = {"cls": kind, "params": {"top_k": 6} if kind != "Relu" else {}}
    if schema is None:
        cfg = {"d_vit": d, "exp_factor": f // d, "l1_coeff": 4e-4}
    elif schema == 1:
        cfg = {"d_vit": d, "exp_factor": f // d, "top_k": 6}
    else:
        cfg = {"d_model": d, "d_sae": f, "activation": act}
    header_cls = {"cls": kind} if schema == 1 else {}
    src = tmp_path / "layer_11" / "run1" / "sae.pt"
    saev_dump(src, state, cfg, schema)
    if header_cls:  # schema 1A names the activation at the top level
        lines = src.read_bytes().split(b"\n", 1)
        src.write_bytes(json.dumps({**json.loads(lines[0]), **header_cls}).encode() + b"\n" + lines[1])
    import_sae(src, tmp_path / "ours", "--tokens", "patches")
    x = inputs(d)
    want = saev_encode(state, kind, 6, schema is None or schema < 2, x)
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, torch.relu(want))
    torch.testing.assert_close(recon, torch.relu(want) @ state["W_dec"] + state["b_dec"], atol=1e-4, rtol=1e-4)


def test_a_saev_repo_is_picked_by_layer_and_l0_and_checked_by_sha256(tmp_path, capsys):
    """A saev multi-checkpoint repo (layer_<N>/<run>/sae.pt + manifest.jsonl): --layer and --l0 pick
    the checkpoint; one whose bytes differ from its row's SHA-256 is refused."""
    import hashlib

    repo = tmp_path / "SAE_DINOv3_ViT-S-16_IN1K"
    rows = []
    for layer, run, l0, seed in ((10, "aaa", 20.0, 1), (11, "bbb", 15.0, 2), (11, "ccc", 90.0, 3)):
        f = saev_dump(repo / f"layer_{layer}" / run / "sae.pt", _saev_state(8, 32, seed),
                      {"d_model": 8, "d_sae": 32, "activation": {"cls": "Relu", "params": {}}})
        rows.append({"run_id": run, "layer": layer, "l0": l0, "mse": 0.1,
                     "sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "path": f"layer_{layer}/{run}/sae.pt"})
    (repo / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    capsys.readouterr()
    assert run_cli("import-sae", "--sae_path", repo, "--output_dir", tmp_path / "o", "--tokens", "patches") == 2
    _one_line(capsys, "--layer", "--run_id", "3 checkpoints")
    import_sae(repo, tmp_path / "o", "--tokens", "patches", "--layer", "11", "--l0", "80")
    record = json.loads((tmp_path / "o" / "imported.json").read_text())
    assert record["manifest_row"]["run_id"] == "ccc"
    x = inputs(8)
    assert_codes_equal(ours(tmp_path / "o", x)[0], saev_encode(_saev_state(8, 32, 3), "Relu", 0, False, x))
    (repo / "layer_11" / "ccc" / "sae.pt").write_bytes((repo / "layer_11" / "bbb" / "sae.pt").read_bytes())
    assert run_cli("import-sae", "--sae_path", repo, "--output_dir", tmp_path / "o2", "--tokens", "patches",
                   "--run_id", "ccc") == 2
    _one_line(capsys, "SHA-256")
    assert run_cli("import-sae", "--sae_path", repo / "layer_10" / "aaa" / "sae.pt", "--output_dir",
                   tmp_path / "o3") == 2
    _one_line(capsys, "--tokens", "patches")


# ----------------------------------------------------------------------------- visaebench -> saevlm
@pytest.fixture(scope="module")
def visaebench():
    return _library("visaebench")


def _visaebench_folder(path: Path, activation: str, d: int, f: int, seed: int, safetensors: bool = False) -> Path:
    """A checkpoint folder in visaebench's upload format (config.json + sae.pt / model.safetensors)."""
    g = torch.Generator().manual_seed(seed)
    state = {"encoder.weight": torch.randn(f, d, generator=g) * 0.3, "encoder.bias": torch.randn(f, generator=g) * 0.3,
             "decoder.weight": torch.randn(f, d, generator=g) * 0.3, "decoder.bias": torch.randn(d, generator=g) * 0.3}
    cfg = {"activation": activation, "input_dim": d, "hidden_dim": f, "k": 6}
    if activation == "batchtopk":
        cfg["threshold"] = 0.3
    if activation == "jumprelu":
        state["jump_thresholds"] = torch.rand(f, generator=g) * 0.4
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    if safetensors:
        from safetensors.torch import save_file
        save_file(state, str(path / "model.safetensors"))
    else:
        torch.save(state, path / "sae.pt")
    return path


@pytest.mark.parametrize("activation, d, f, safetensors", [
    ("topk", 16, 48, False), ("batchtopk", 16, 48, True), ("batchtopk", 16, 16, False), ("jumprelu", 16, 48, False)])
def test_visaebench_saes_import_with_visaebenchs_codes(visaebench, tmp_path, activation, d, f, safetensors):
    """visaebench's own load_sae / GenericSAE on the same folder; its inputs are normalised by a mean
    [D] and a scalar std that saevlm folds in (--input_norm)."""
    from visaebench.hub import load_sae

    src = _visaebench_folder(tmp_path / f"{activation}_3x_k6", activation, d, f, 17, safetensors)
    lib = load_sae(str(src), device="cpu")
    g = torch.Generator().manual_seed(5)
    mean, std = torch.randn(d, generator=g), 1.7
    np.savez(tmp_path / "stats.npz", mean=mean.numpy(), std=np.float32(std))
    import_sae(src, tmp_path / "ours", "--tokens", "patches", "--input_norm", f"stats:{tmp_path / 'stats.npz'}")
    x = inputs(d) * std + mean
    with torch.no_grad():
        want = lib.encode((x - mean) / std)
        want_recon = lib.decode(want) * std + mean
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want, atol=1e-4)
    torch.testing.assert_close(recon, want_recon, atol=1e-3, rtol=1e-4)


def test_visaebench_needs_its_normalisation_said(visaebench, tmp_path, capsys):
    src = _visaebench_folder(tmp_path / "batchtopk_8x_k6", "batchtopk", 8, 64, 1)
    assert run_cli("import-sae", "--sae_path", src, "--output_dir", tmp_path / "o", "--tokens", "patches") == 2
    _one_line(capsys, "--input_norm", "stats:FILE", "--input_norm none")
    assert not (tmp_path / "o").exists()


def test_visaebench_keeps_codes_equal_to_its_threshold(visaebench, tmp_path):
    """visaebench's BatchTopK keeps codes >= threshold where SAELens and dictionary_learning keep > :
    exact arithmetic (identity weights, integer inputs) puts codes exactly on the threshold."""
    from visaebench.hub import load_sae

    src = tmp_path / "batchtopk_1x_k2"
    src.mkdir()
    torch.save({"encoder.weight": torch.eye(4), "encoder.bias": torch.zeros(4), "decoder.weight": torch.eye(4)},
               src / "sae.pt")
    (src / "config.json").write_text(json.dumps({"activation": "batchtopk", "k": 2, "threshold": 2.0}))
    import_sae(src, tmp_path / "ours", "--tokens", "patches", "--input_norm", "none")
    x = torch.tensor([[2.0, 3.0, 1.0, 2.0]])
    with torch.no_grad():
        want = load_sae(str(src), device="cpu").encode(x)
    codes, _ = ours(tmp_path / "ours", x)
    assert torch.equal(codes, want) and torch.equal(codes, torch.tensor([[2.0, 3.0, 0.0, 2.0]]))


# ----------------------------------------------------------------------------- a trained SAE, out and back
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A synthetic world and two TopK SAEs trained on it by saevlm, encoded and scored."""
    root = tmp_path_factory.mktemp("interop") / "run"
    w = root / "world"
    assert run_cli("synthetic", "--output_dir", w, "--num_train", "3000", "--num_val", "400") == 0
    assert run_cli("train", "--layout", "trainers", "--sae_model", "top_k", "--activations_dir", w / "train",
                   "--checkpoints_dir", root / "sae", "--expansion_factor", "2", "4", "--k", "6", "--steps", "400",
                   "--batch_size", "256", "--warmup_steps", "20", "--device", "cpu", "--no_progress") == 0
    assert run_cli("encode", "--sae_path", root / "sae" / "trainer_0", "--activations_dir", w / "val",
                   "--output_dir", root / "codes" / "trainer_0", "--no_progress") == 0
    assert run_cli("ms", "--activations_dir", root / "codes" / "trainer_0", "--embeddings_path",
                   w / "embeddings_val", "--device", "cpu", "--no_progress") == 0
    return root


def test_check_activations_tells_a_right_import_from_a_wrong_one(sparsify, trained_run, tmp_path, capsys):
    """export (sparsify) -> import with --check_activations: the SAE's own R2 and L0 = k, no warning;
    the same import with a normalisation it was not trained with is warned."""
    sae = trained_run / "sae" / "trainer_0"
    val = trained_run / "world" / "val"
    assert run_cli("export-sae", "--sae_path", sae, "--format", "sparsify", "--output_dir", tmp_path / "sp") == 0
    capsys.readouterr()
    import_sae(tmp_path / "sp", tmp_path / "ok", "--check_activations", val)
    err = capsys.readouterr().err
    check = json.loads((tmp_path / "ok" / "imported.json").read_text())["check"]
    assert check["l0"] == pytest.approx(6.0) and check["r2"] > 0.5 and "warning" not in err, err
    from saevlm.sae.checkpoint import load_sae
    from saevlm.sae.import_sae import check_on_activations
    original = check_on_activations(load_sae(str(sae)), str(val), 4096, None)  # the SAE as trained, same rows
    assert check["r2"] == pytest.approx(original["r2"], abs=1e-5) and check["rows"] == original["rows"]
    import_sae(tmp_path / "sp", tmp_path / "bad", "--check_activations", val, "--input_norm", "scalar:50")
    assert "warning: R2" in capsys.readouterr().err


def test_export_a_run_with_a_model_card_and_manifest(sae_lens, trained_run, tmp_path):
    """--hub_card on a run folder: one SAELens folder per SAE, README.md with the facts and metrics
    that exist (eval.json, ms.json of the codes it encoded), manifest.jsonl with one row per SAE."""
    from sae_lens import SAE

    out = tmp_path / "release"
    assert run_cli("export-sae", "--sae_path", trained_run / "sae", "--format", "saelens", "--output_dir", out,
                   "--hub_card") == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["trainer_0", "trainer_1"] and [r["dict_size"] for r in rows] == [128, 256]
    card = (out / "README.md").read_text()
    ms = json.loads(next((trained_run / "codes" / "trainer_0").glob("ms_*/ms.json")).read_text())
    ev = json.loads((trained_run / "sae" / "trainer_0" / "eval.json").read_text())
    assert f"{ms['mean']:.3f} ({ms['embeddings_model']})" in card and f"{ev['l0']:.1f}" in card
    assert "library_name: saelens" in card
    for r in rows:
        lib = SAE.load_from_disk(out / r["path"])
        assert lib.cfg.metadata.saevlm["arch"] == "top_k" and lib.cfg.k == 6
        import hashlib
        assert hashlib.sha256((out / r["path"] / "sae_weights.safetensors").read_bytes()).hexdigest() == r["sha256"]


# ----------------------------------------------------------------------------- a published SAE, end to end
def _pooled_patch_codes(store_dir: Path, n_latents: int) -> np.ndarray:
    from saevlm.data.codes import CodeStore

    store = CodeStore(store_dir)
    dense = np.zeros((store.num_rows, n_latents), np.float32)
    for chunk in store.iter_csr(10_000):
        for r in range(chunk.num_rows):
            lo, hi = chunk.indptr[r], chunk.indptr[r + 1]
            dense[chunk.start + r, chunk.indices[lo:hi]] = chunk.values[lo:hi]
    return dense


def _hidden_patches(model_dir: Path, folder: Path, layer: int) -> torch.Tensor:
    """[images, patches, d]: the model's own hidden states after block ``layer``, CLS and registers
    dropped (a reference independent of saevlm's token selection)."""
    from saevlm.data.images import open_dataset
    from saevlm.models import load_encoder
    from saevlm.models.base import stack_pixels

    enc = load_encoder(str(model_dir), warn=lambda m: None)
    ds = open_dataset("imagefolder", folder, None)
    from PIL import Image
    pixels = stack_pixels([enc.preprocess(Image.open(ds.path(i)).convert("RGB")) for i in range(len(ds))])
    with torch.no_grad():
        hidden = enc.model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer + 1]
    valid = enc.valid_tokens(pixels, hidden.shape[1])
    keep = torch.ones(hidden.shape[1], dtype=torch.bool) if valid is None else valid[0].clone()
    keep[0] = False  # CLS
    return hidden[:, keep]


def _score_end_to_end(root: Path, sae: Path, model: Path, folder: Path, capsys) -> Path:
    """extract mean-pooled patch codes -> embed -> ms -> top-images -> explore; returns the codes."""
    common = ["--data_path", folder, "--dataset_name", "imagefolder", "--device", "cpu", "--num_workers", "0",
              "--no_progress"]
    codes = root / "codes"
    assert run_cli("extract", "--model_name", model, "--layer", "2", "--mean_pool", "--patches_only", "--sae_path", sae,
                   "--output_dir", codes, *common) == 0
    codes = next(codes.glob("*_codes"))
    assert run_cli("embed", "--model_name", model, "--embeddings_path", root / "emb", *common) == 0
    assert run_cli("ms", "--activations_dir", codes, "--embeddings_path", root / "emb", "--device", "cpu",
                   "--no_progress") == 0
    assert run_cli("top-images", "--activations_dir", codes, "--k", "4", "--device", "cpu", "--no_progress") == 0
    capsys.readouterr()
    assert run_cli("explore", "--run_dir", root, "--static", root / "site", "--latents", "top:3", "--no_progress") == 0
    assert list((root / "site").rglob("latent/*.html"))
    return codes


def test_a_saev_dinov3_repo_scored_end_to_end(tmp_path, image_folder, capsys):
    """A saev multi-checkpoint repo for a (tiny) DINOv3 -> import by layer and L0 with the model ->
    extract mean-pooled patch codes (no CLS, no registers) -> embed -> ms -> top-images -> explore.
    The stored codes are the mean over patches of saev's codes (ReLU'd) of the model's hidden states."""
    import hashlib

    from helpers import save_tiny_family

    model = save_tiny_family("dinov3", tmp_path / "dinov3")
    repo = tmp_path / "SAE_DINOv3_ViT-S-16_IN1K"
    rows = []
    for run, seed, l0 in (("r1", 1, 10.0), ("r2", 2, 40.0)):
        state = _saev_state(64, 256, seed, threshold=0.2)
        f = saev_dump(repo / "layer_2" / run / "sae.pt", state,
                      {"d_model": 64, "d_sae": 256, "activation": {"cls": "BatchTopK", "params": {"top_k": 16}}})
        rows.append({"run_id": run, "layer": 2, "l0": l0, "mse": 0.1, "path": f"layer_2/{run}/sae.pt",
                     "sha256": hashlib.sha256(f.read_bytes()).hexdigest()})
    (repo / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    sae = tmp_path / "run" / "sae"
    import_sae(repo, sae, "--layer", "2", "--l0", "35", "--model_name", model, "--tokens", "patches")
    codes = _score_end_to_end(tmp_path / "run", sae, model, image_folder, capsys)
    patches = _hidden_patches(model, image_folder, 2)
    state = _saev_state(64, 256, 2, threshold=0.2)
    want = saev_encode(state, "BatchTopK", 16, False, patches.reshape(-1, 64)).reshape(patches.shape[0], -1, 256)
    got = _pooled_patch_codes(codes, 256)
    assert (got > 0).sum(1).min() > 0, "an image without any active latent proves little"
    np.testing.assert_allclose(got, want.mean(1).numpy(), atol=1e-5)
    # the imported SAE knows its model: a store of another model's activations is refused
    other = save_tiny_family("dinov3", tmp_path / "other", seed=1)
    assert run_cli("extract", "--model_name", other, "--layer", "2", "--mean_pool", "--patches_only", "--sae_path",
                   sae, "--output_dir", tmp_path / "o", "--data_path", image_folder, "--dataset_name", "imagefolder",
                   "--device", "cpu", "--num_workers", "0", "--no_progress") == 2
    _one_line(capsys, "--sae_path", "trained on model")


def test_a_visaebench_repo_scored_end_to_end(visaebench, tmp_path, tiny_clip_dir, image_folder, capsys):
    """A visaebench repo folder (batchtopk_4x_k8/ + its norm stats) for a (tiny) CLIP -> import with
    --input_norm -> the same pipeline; codes are visaebench's own, of the normalised patch tokens."""
    from visaebench.hub import load_sae

    src = _visaebench_folder(tmp_path / "clip-vitb16-saes" / "batchtopk_4x_k8", "batchtopk", 64, 256, 23)
    patches = _hidden_patches(tiny_clip_dir, image_folder, 2)
    mean, std = patches.reshape(-1, 64).mean(0), float(patches.std())
    torch.save({"mean": mean, "std": torch.tensor(std)}, tmp_path / "norm.pt")
    sae = tmp_path / "run" / "sae"
    import_sae(src, sae, "--model_name", tiny_clip_dir, "--layer", "2", "--tokens", "patches",
               "--input_norm", f"stats:{tmp_path / 'norm.pt'}")
    codes = _score_end_to_end(tmp_path / "run", sae, tiny_clip_dir, image_folder, capsys)
    lib = load_sae(str(src), device="cpu")
    with torch.no_grad():
        want = lib.encode((patches.reshape(-1, 64) - mean) / std).reshape(patches.shape[0], -1, 256)
    got = _pooled_patch_codes(codes, 256)
    assert (got > 0).sum(1).min() > 0, "an image without any active latent proves little"
    np.testing.assert_allclose(got, want.mean(1).numpy(), atol=1e-4)


# ----------------------------------------------------------------------------- overcomplete -> saevlm
@pytest.fixture(scope="module")
def overcomplete_sae():
    """overcomplete's own SAE classes. Its package __init__ imports its visualisation (OpenCV and
    matplotlib's removed cm.get_cmap), so the package is entered below it: the classes and their
    encode / decode are the library's, unchanged."""
    import importlib.util
    import types

    if "overcomplete.sae" not in sys.modules:
        spec = importlib.util.find_spec("overcomplete")
        if spec is None:
            _library("overcomplete")
        pkg = types.ModuleType("overcomplete")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault("overcomplete", pkg)
    import overcomplete.sae
    return overcomplete.sae


@pytest.mark.parametrize("cls_name, extra", [
    ("SAE", []), ("TopKSAE", ["--k", "5"]), ("BatchTopKSAE", ["--k", "5", "--threshold", "THR"]), ("JumpSAE", []),
])
@pytest.mark.parametrize("f", [48, 16])
def test_overcomplete_state_dicts_import_with_its_codes(overcomplete_sae, tmp_path, cls_name, extra, f):
    d = 16
    cls = getattr(overcomplete_sae, cls_name)
    sae = cls(d, f, **({"top_k": 5} if cls_name in ("TopKSAE", "BatchTopKSAE") else {}),
              dictionary_params={"use_multiplier": True})
    randomize(sae, 31)
    if cls_name == "JumpSAE":
        with torch.no_grad():
            sae.thresholds.copy_(torch.log(torch.rand(f, generator=torch.Generator().manual_seed(2)) * 0.4 + 0.05))
    x = inputs(d)
    if cls_name == "BatchTopKSAE":  # its running threshold comes from training batches
        sae.train()
        sae.encode(x[:64])
    sae.eval()
    torch.save(sae.state_dict(), tmp_path / "sae.pt")
    extra = [str(sae.running_threshold.item()) if a == "THR" else a for a in extra]
    import_sae(tmp_path / "sae.pt", tmp_path / "ours", *(["--sae_class", cls_name] if cls_name != "JumpSAE" else []),
               *extra)
    with torch.no_grad():
        _, want = sae.encode(x)
        want_recon = sae.decode(want)
    codes, recon = ours(tmp_path / "ours", x)
    assert_codes_equal(codes, want)
    torch.testing.assert_close(recon, want_recon, atol=1e-4, rtol=1e-4)


def test_overcomplete_says_what_it_needs_and_refuses_nonlinear_encoders(overcomplete_sae, tmp_path, capsys):
    sae = overcomplete_sae.TopKSAE(8, 24, top_k=3)
    torch.save(sae.state_dict(), tmp_path / "topk.pt")
    mlp = overcomplete_sae.TopKSAE(8, 24, top_k=3, encoder_module="mlp_ln_1")
    torch.save(mlp.state_dict(), tmp_path / "mlp.pt")
    for src, extra, words in ((tmp_path / "topk.pt", [], ("--sae_class", "JumpSAE")),
                              (tmp_path / "topk.pt", ["--sae_class", "TopKSAE"], ("--k", "top_k")),
                              (tmp_path / "topk.pt", ["--sae_class", "BatchTopKSAE", "--k", "3"],
                               ("--threshold", "running_threshold")),
                              (tmp_path / "mlp.pt", ["--sae_class", "TopKSAE", "--k", "3"], ("normalisation layer",))):
        capsys.readouterr()
        assert run_cli("import-sae", "--sae_path", src, "--output_dir", tmp_path / "o", *extra) == 2
        _one_line(capsys, *words)
        assert not (tmp_path / "o").exists()


def test_outputs_never_replace_other_files(sae_lens, tmp_path, capsys):
    """--output_dir holding other files is refused even with --overwrite (nothing there is removed);
    an earlier import or export is replaced only with --overwrite."""
    src = _our_sae("top_k", 8, 16, tmp_path / "trainer_0")
    mine = tmp_path / "my_notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    for command, extra in (("import-sae", []), ("export-sae", ["--format", "saelens"])):
        capsys.readouterr()
        assert run_cli(command, "--sae_path", src, "--output_dir", mine, "--overwrite", *extra) == 2
        _one_line(capsys, "--output_dir", "not empty")
        assert (mine / "thesis.tex").read_text() == "precious" and len(list(mine.iterdir())) == 1
    import_sae(src, tmp_path / "imp")
    assert run_cli("import-sae", "--sae_path", src, "--output_dir", tmp_path / "imp") == 2
    _one_line(capsys, "--overwrite")
    import_sae(src, tmp_path / "imp", "--overwrite")


def test_an_imported_sae_steers_an_mllm(sae_lens, tmp_path, capsys):
    """A SAELens SAE imported with the MLLM's own vision tower as its model steers through `steer`
    (its tower is checked by the block-0 weights recorded at import); the same SAE recorded on
    another tower is refused."""
    from helpers import save_tiny_llava

    llava = save_tiny_llava(tmp_path / "llava")
    other = save_tiny_llava(tmp_path / "llava2", seed=1)
    _saelens_sae(sae_lens, "topk", 64, 128, seed=4, k=8).save_model(tmp_path / "src")
    import_sae(tmp_path / "src", tmp_path / "sae", "--model_name", llava, "--layer", "1", "--tokens", "all")
    import_sae(tmp_path / "src", tmp_path / "sae_other", "--model_name", other, "--layer", "1", "--tokens", "all")
    capsys.readouterr()
    assert run_cli("steer", "--sae_path", tmp_path / "sae", "--model_name", llava, "--neuron", "3", "--alpha", "0",
                   "30", "--image", "white", "--device", "cpu", "--max_new_tokens", "2") == 0
    out = capsys.readouterr()
    assert "latent 3 = 30:" in out.out and "records no provenance" not in out.err
    assert run_cli("steer", "--sae_path", tmp_path / "sae_other", "--model_name", llava, "--neuron", "3",
                   "--image", "white", "--device", "cpu", "--max_new_tokens", "2") == 2
    _one_line(capsys, "--sae_path", "block-0 weights differ")
