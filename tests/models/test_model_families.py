"""The encoder families beyond CLIP / SigLIP / DINOv2 (AIMv2, DINOv3 with registers, SigLIP2 NaFlex
with padding, ViT and ViT-MAE as WebSSL ships them): tiny random models saved and loaded back, each
stored token compared with the model's own ``hidden_states``."""

import numpy as np
import pytest
import torch

from helpers import make_mixed_aspect_folder, run_cli, save_tiny_family
from saevlm.data.store import ActivationStore
from saevlm.models import load_encoder
from saevlm.models.base import HookPoint, stack_pixels

FAMILIES = ["aimv2", "dinov3", "siglip2", "vit", "vit_mae"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_mixed_aspect_folder(tmp_path_factory.mktemp("mixed") / "imgs")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save_tiny_family(f, root / f) for f in FAMILIES}


def _images(folder):
    from PIL import Image
    return [Image.open(p).convert("RGB") for p in sorted(folder.rglob("*.png"))]


def _reference(encoder, inputs):
    """The model's own forward: hidden states and pooled output (ViT-MAE with the same
    order-keeping noise saevlm passes; a random one would shuffle the patches)."""
    model = encoder.model
    kwargs = dict(inputs) if isinstance(inputs, dict) else {"pixel_values": inputs}
    if encoder.info["model_type"] == "vit_mae":
        n = model.config.image_size // model.config.patch_size
        kwargs["noise"] = torch.arange(n * n, dtype=torch.float32).expand(inputs.shape[0], -1)
    with torch.no_grad():
        out = model(**kwargs, output_hidden_states=True)
    pooled = getattr(out, "pooler_output", None)
    return out.hidden_states, pooled if pooled is not None else out.last_hidden_state[:, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_equals_the_models_hidden_states_and_pooled_output(family, models, folder):
    enc = load_encoder(str(models[family]), warn=lambda m: None)
    images = _images(folder)
    inputs = stack_pixels([enc.preprocess(im) for im in images])
    points = [HookPoint("post_mlp_residual", layer) for layer in range(4)] + [HookPoint("post_projection")]
    got = enc.capture(inputs, points)
    hidden, pooled = _reference(enc, inputs)
    for layer in range(4):
        assert torch.equal(got[points[layer]], hidden[layer + 1])
    torch.testing.assert_close(got[points[-1]], pooled, atol=1e-6, rtol=0)
    valid = enc.valid_tokens(inputs, hidden[1].shape[1])
    if family == "dinov3":  # [CLS, 4 registers, 16 patches]: the registers never count
        assert enc.has_cls and valid.sum(1).tolist() == [17] * len(images) and not valid[:, 1:5].any()
    elif family == "siglip2":  # the wide and tall images are padded
        counts = valid.sum(1).tolist()
        assert max(counts) == 16 and min(counts) < 16 and not enc.has_cls and enc.variable_tokens
    else:
        assert valid is None
    assert enc.provenance()["family"] and len(enc.provenance()["block0_sample"]) == 64


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_stores_only_valid_tokens_equal_to_hidden_states(family, models, folder, tmp_path):
    """All tokens, mean pool, 2 random tokens (and CLS where there is one) through `saevlm extract`:
    every stored row is the model's hidden state at its (image, token); registers and padding
    never appear; a mean is over valid tokens only."""
    enc = load_encoder(str(models[family]), warn=lambda m: None)
    images = _images(folder)
    inputs = stack_pixels([enc.preprocess(im) for im in images])
    hidden, _ = _reference(enc, inputs)
    ref = hidden[3]  # block 2
    valid = enc.valid_tokens(inputs, ref.shape[1])
    valid = torch.ones(ref.shape[:2], dtype=torch.bool) if valid is None else valid
    common = ["--model_name", models[family], "--dataset_name", "imagefolder", "--data_path", folder, "--layer", "2",
              "--batch_size", "3", "--num_workers", "0", "--device", "cpu", "--no_progress"]
    modes = {"all": [], "mean": ["--mean_pool"], "random": ["--random_k", "2"], "cls": ["--cls_only"],
             "patches": ["--patches_only"], "mean_patches": ["--mean_pool", "--patches_only"]}
    for mode, flags in modes.items():
        assert run_cli("extract", *common, *flags, "--output_dir", tmp_path / mode) == 0, mode
        store = ActivationStore(tmp_path / mode / "post_mlp_residual_2")
        rows, acts = store.row_index(), store.read(0, store.num_rows)
        if mode == "mean_patches":  # the mean over patch tokens alone (no CLS, no registers)
            w = valid.float()[..., None].clone()
            if enc.has_cls:
                w[:, 0] = 0
            np.testing.assert_allclose(acts, ((ref * w).sum(1) / w.sum(1)).numpy(), atol=1e-5)
            assert store.manifest.provenance.tokens.selection == ("mean_patches" if enc.has_cls else "mean")
            continue
        if mode == "mean":
            w = valid.float()[..., None]
            expect = (ref * w).sum(1) / w.sum(1)
            np.testing.assert_allclose(acts, expect.numpy(), atol=1e-5)
            continue
        assert all(bool(valid[i, t]) for i, t in rows), f"{mode}: a register or padding token was stored"
        for r, (i, t) in enumerate(rows):
            np.testing.assert_allclose(acts[r], ref[i, t].numpy(), atol=1e-5)
        if mode == "all":
            assert len(rows) == int(valid.sum())
        if mode == "patches":  # every valid token but CLS: what saev / visaebench SAEs read
            assert len(rows) == int(valid.sum()) - (len(images) if enc.has_cls else 0)
            assert (rows[:, 1] > 0).all() if enc.has_cls else True
            prov = store.manifest.provenance.tokens
            assert prov.selection == "patches"
            if not enc.variable_tokens:
                assert prov.tokens_per_image * len(images) == len(rows)
        if mode == "random" or (mode == "cls" and not enc.has_cls):  # no CLS: the 2-random-tokens convention
            assert len(rows) == 2 * len(images)
        if mode == "cls" and enc.has_cls:
            assert rows[:, 1].tolist() == [0] * len(images)
    if family == "siglip2":
        prov = ActivationStore(tmp_path / "all" / "post_mlp_residual_2").manifest.provenance
        assert prov.tokens.tokens_per_image is None and "padding" in prov.tokens.extra["excluded_tokens"]


def test_unsupported_type_and_mismatched_weights_are_one_line(tmp_path, capsys):
    import json

    from saevlm.errors import UserError

    bad = save_tiny_family("vit", tmp_path / "vit")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["model_type"] = "swin"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as err:
        load_encoder(str(bad))
    assert "'swin' is not supported" in str(err.value) and "DINOv3" in str(err.value) and "\n" not in str(err.value)
    odd = save_tiny_family("dinov3", tmp_path / "d3")
    cfg = json.loads((odd / "config.json").read_text())
    cfg["hidden_size"] = 96  # the weights are 64-wide
    (odd / "config.json").write_text(json.dumps(cfg))
    rc = run_cli("extract", "--model_name", odd, "--dataset_name", "imagefolder", "--data_path",
                 make_mixed_aspect_folder(tmp_path / "imgs"), "--layer", "1", "--output_dir", tmp_path / "o",
                 "--device", "cpu", "--num_workers", "0", "--no_progress")
    err_text = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err_text
    # one line (after transformers' own loading bars), naming the class and the first mismatch
    line = err_text.splitlines()[-1]
    assert line.startswith("saevlm extract: error: --model_name") and "do not fit DINOv3ViTModel" in line
    import re
    assert re.search(r"size mismatch for \S+: checkpoint \([^)]*64[^)]*\), model \([^)]*96[^)]*\)", line), line
