"""Steering MLLMs beyond LLaVA-1.5 through their vision towers (LLaVA-NeXT, LLaVA-OneVision,
Qwen2.5-VL, Gemma-3), on tiny random models of each family saved and loaded back; and extracting
from the tower inside an MLLM."""

import json

import numpy as np
import pytest
import torch

from helpers import MLLM_FAMILIES, run_cli, save_identity_sae, save_random_sae, save_tiny_mllm
from saevlm import api
from saevlm.errors import UserError
from saevlm.sae.checkpoint import load_sae
from saevlm.steering.intervention import sae_intervention
from saevlm.models.mllm import load_mllm

PROMPT = "What is shown in this image? Use exactly one word!"
# the block each family's language model reads, for 4 vision blocks
READ_BLOCK = {"llava_next": 2, "llava_onevision": 3, "qwen2_5_vl": 3, "gemma3": 3}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllms")
    return {f: save_tiny_mllm(f, root / f) for f in MLLM_FAMILIES}


@pytest.fixture(scope="module")
def image():
    from PIL import Image
    # not square: LLaVA-NeXT / OneVision cut it into tiles, Qwen2.5-VL gives it a 4 x 8 patch grid
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8))


def _block_outputs(mllm, block, fn):
    """Run ``fn`` and return what the language model's side of ``block`` received (a hook added
    after ours sees the steered output)."""
    seen = []
    handle = block.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).clone()))
    try:
        fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", MLLM_FAMILIES)
def test_steering_at_the_read_block_of_each_family(family, saved, image, tmp_path):
    mllm = load_mllm(str(saved[family]))
    read = mllm.last_read_block()
    assert read == READ_BLOCK[family] and mllm.family.label in mllm.read_rule()
    sae = load_sae(str(save_random_sae(tmp_path / "sae", 64, 256, layer=read)))
    ref = mllm.logits(PROMPT, image)  # the first forward (transformers may install hooks of its own)
    hooks_before = [tuple(b._forward_hooks) for b in mllm.vision_blocks]
    steered = {}
    for latent in (3, 7):  # two latents in a row, one model object
        with sae_intervention(mllm, sae, read, {latent: 30.0}):
            steered[latent] = mllm.logits(PROMPT, image)
    for got in steered.values():
        assert (got - ref).abs().max() > 1e-2
    assert (steered[3] - steered[7]).abs().max() > 1e-2
    assert [tuple(b._forward_hooks) for b in mllm.vision_blocks] == hooks_before
    torch.testing.assert_close(mllm.logits(PROMPT, image), ref, atol=0, rtol=0)  # hook gone

    # every token of the block is steered: every tile (NeXT / OneVision), every patch before Qwen's merger
    block = mllm.vision_blocks[read]
    plain = _block_outputs(mllm, block, lambda: mllm.logits(PROMPT, image))[0]
    with sae_intervention(mllm, sae, read, {3: 30.0}):
        hit = _block_outputs(mllm, block, lambda: mllm.logits(PROMPT, image))[0]
    rows_plain, rows_hit = plain.reshape(-1, 64), hit.reshape(-1, 64)
    assert bool(((rows_hit - rows_plain).abs().max(dim=1).values > 1e-3).all())
    inputs = mllm.build_inputs(PROMPT, image)
    if family in ("llava_next", "llava_onevision"):
        assert inputs["pixel_values"].shape[1] > 1 and plain.shape[0] == inputs["pixel_values"].shape[1]
    if family == "qwen2_5_vl":
        assert rows_plain.shape[0] == int(inputs["image_grid_thw"].prod())  # 32 patches, 8 tokens after merging


@pytest.mark.parametrize("family", MLLM_FAMILIES)
def test_exact_inverse_sae_keeps_generation_bit_identical(family, saved, image, tmp_path):
    mllm = load_mllm(str(saved[family]))
    sae = load_sae(str(save_identity_sae(tmp_path / "id", 64)))
    ref_text, ref_logits = mllm.generate(PROMPT, image, 6), mllm.logits(PROMPT, image)
    with sae_intervention(mllm, sae, mllm.last_read_block(), {}, mode="reconstruct"):
        assert mllm.generate(PROMPT, image, 6) == ref_text
        assert torch.equal(mllm.logits(PROMPT, image), ref_logits)


def test_blocks_past_the_read_block_and_other_towers_are_refused(saved, tmp_path):
    nxt = load_mllm(str(saved["llava_next"]))
    sae = load_sae(str(save_identity_sae(tmp_path / "id", 64)))
    with pytest.raises(UserError, match=r"LLaVA-NeXT reads vision_feature_layer=-2, the output of block 2; "
                                        r"a hook on block 3 cannot change what it generates"):
        with sae_intervention(nxt, sae, 3, {}):
            pass
    qwen = load_mllm(str(saved["qwen2_5_vl"]))
    with pytest.raises(UserError, match="the vision tower has 4 blocks"):
        with sae_intervention(qwen, sae, 4, {}):
            pass
    with pytest.raises(UserError, match="not a supported MLLM; supported: LLaVA-1.5, LLaVA-NeXT"):
        from helpers import save_tiny_clip
        load_mllm(str(save_tiny_clip(tmp_path / "clip")))


def _sae_trained_on(store_dir, path, layer):
    """An SAE whose config records the provenance of ``store_dir`` (what `saevlm train` writes)."""
    from saevlm.data.store import ActivationStore

    sae_dir = save_random_sae(path, 64, 256, layer=layer)
    cfg = json.loads((sae_dir / "config.json").read_text())
    cfg["saevlm"] = {"provenance": ActivationStore(store_dir).manifest.provenance.to_json()}
    (sae_dir / "config.json").write_text(json.dumps(cfg))
    return sae_dir


def test_extract_through_an_mllm_tower_gives_what_steering_sees(saved, image, tmp_path, capsys):
    """`extract --model_name <LLaVA-NeXT dir>` reads the tower inside it: the stored tokens equal
    the tower's block output for the base tile in the MLLM's own forward; an SAE with that
    provenance steers this MLLM and is refused on another tower of the same width."""
    from helpers import make_mixed_aspect_folder
    from saevlm.data.store import ActivationStore

    folder = make_mixed_aspect_folder(tmp_path / "imgs", sizes=((40, 64),), per_size=1)
    image.save(next(folder.rglob("*.png")))  # the fixture image, so both sides see the same pixels
    src = saved["llava_next"]
    assert api.run("extract", model_name=src, dataset_name="imagefolder", data_path=folder, layer=[2],
                   output_dir=tmp_path / "acts", device="cpu", num_workers=0, no_progress=True) == 0
    store = ActivationStore(tmp_path / "acts" / "post_mlp_residual_2")
    prov = store.manifest.provenance
    assert prov.model.extra["mllm"] == "LLaVA-NeXT" and prov.model.extra["read_block"] == 2
    mllm = load_mllm(str(src))
    block = mllm.vision_blocks[2]
    seen = _block_outputs(mllm, block, lambda: mllm.logits(PROMPT, image))[0]  # [tiles, 17, 64]
    np.testing.assert_allclose(store.read(0, store.num_rows), seen[0].numpy(), atol=1e-5)
    assert store.row_index()[:, 1].tolist() == list(range(17))

    sae_dir = _sae_trained_on(tmp_path / "acts" / "post_mlp_residual_2", tmp_path / "sae", 2)
    sae = load_sae(str(sae_dir))
    with sae_intervention(mllm, sae, 2, {3: 30.0}):
        pass  # the same tower: accepted
    other = load_mllm(str(save_tiny_mllm("llava_next", tmp_path / "other", seed=1)))
    with pytest.raises(UserError, match="whose vision blocks are not LLaVA-NeXT's tower"):
        with sae_intervention(other, sae, 2, {3: 30.0}):
            pass
    rc = run_cli("steer", "--sae_path", sae_dir, "--llava_model", saved["llava_onevision"], "--neuron", "3",
                 "--alpha", "30", "--image", "white", "--device", "cpu", "--layer", "2")
    assert rc == 2 and "not LLaVA-OneVision's tower" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["gemma3", "llava_onevision"])
def test_extract_from_siglip_towers(family, saved, image, tmp_path):
    """Gemma-3 and OneVision: the stored tokens equal the tower's output in the MLLM's forward."""
    from helpers import make_mixed_aspect_folder
    from saevlm.data.store import ActivationStore

    folder = make_mixed_aspect_folder(tmp_path / "imgs", sizes=((40, 64),), per_size=1)
    image.save(next(folder.rglob("*.png")))
    assert api.run("extract", model_name=saved[family], dataset_name="imagefolder", data_path=folder, layer=[1],
                   output_dir=tmp_path / "acts", device="cpu", num_workers=0, no_progress=True) == 0
    store = ActivationStore(tmp_path / "acts" / "post_mlp_residual_1")
    mllm = load_mllm(str(saved[family]))
    seen = _block_outputs(mllm, mllm.vision_blocks[1], lambda: mllm.logits(PROMPT, image))[0]
    np.testing.assert_allclose(store.read(0, store.num_rows), seen[0].numpy(), atol=1e-5)


def test_steer_and_steering_score_commands_on_qwen(saved, tmp_path, capsys):
    import csv

    from helpers import make_image_folder, save_tiny_clip_model

    sae = save_random_sae(tmp_path / "sae", 64, 256, layer=3)
    assert api.run("steer", sae_path=sae, llava_model=saved["qwen2_5_vl"], neuron=[3], alpha=[0, 30], image="white",
                   device="cpu") == 0
    out = capsys.readouterr().out
    assert "block 3" in out and "latent 3 = 30:" in out
    clip = save_tiny_clip_model(tmp_path / "clip")
    data = make_image_folder(tmp_path / "imgs", num_classes=2, per_class=2)
    assert api.run("embed", model_name=clip, embeddings_path=tmp_path / "emb", dataset_name="imagefolder",
                   data_path=data, device="cpu", num_workers=0, no_progress=True) == 0
    np.save(tmp_path / "top_images_2.npy", np.random.default_rng(0).integers(0, 4, size=(256, 2)))
    assert api.run("steering-score", sae_path=sae, llava_model=saved["qwen2_5_vl"],
                   top_images=tmp_path / "top_images_2.npy", clip_embeddings=tmp_path / "emb", clip_model=clip,
                   neuron_list=[0, 3], images="white", output_dir=tmp_path / "score", device="cpu") == 0
    summary = json.loads((tmp_path / "score" / "steering_score.json").read_text())
    assert summary["mllm_family"] == "Qwen2.5-VL" and summary["layer"] == 3
    rows = list(csv.DictReader(open(tmp_path / "score" / "labels.csv")))
    # no "ASSISTANT: " in Qwen's template: the authors' rule reads the answer's first word
    assert [r["word"] for r in rows] == [r["answer"].split(" ")[0] for r in rows]


def test_extract_from_the_qwen_tower_in_patch_order(saved, tmp_path):
    """Qwen2.5-VL's ViT runs a batch as one windowed sequence; saevlm stores each image's tokens in
    the processor's patch order. Independent check: the model's own merger, fed our last-block
    tokens, gives exactly the model's own merged output (which the model restores to patch order
    itself) -- a wrong window or image order would permute the rows."""
    from helpers import make_mixed_aspect_folder
    from saevlm.data.store import ActivationStore
    from saevlm.models import load_encoder
    from saevlm.models.base import stack_pixels

    folder = make_mixed_aspect_folder(tmp_path / "imgs", sizes=((40, 64), (64, 40), (50, 50)), per_size=1)
    assert api.run("extract", model_name=saved["qwen2_5_vl"], dataset_name="imagefolder", data_path=folder,
                   layer=[3], output_dir=tmp_path / "acts", device="cpu", num_workers=0, batch_size=3,
                   no_progress=True) == 0
    store = ActivationStore(tmp_path / "acts" / "post_mlp_residual_3")
    enc = load_encoder(str(saved["qwen2_5_vl"]))
    from PIL import Image
    inputs = stack_pixels([enc.preprocess(Image.open(p)) for p in sorted(folder.rglob("*.png"))])
    tokens = torch.as_tensor(store.read(0, store.num_rows))
    assert store.num_rows == 3 * 64 and store.manifest.provenance.model.extra["mllm"] == "Qwen2.5-VL"
    with torch.no_grad():
        out = enc.run(inputs)
        merged_ref = getattr(out, "pooler_output", out)  # 4.x returns the merged tokens as a Tensor
        merged = enc.model.merger(tokens)
    torch.testing.assert_close(merged, merged_ref, atol=1e-5, rtol=0)
    assert not torch.allclose(enc.model.merger(tokens.flip(0)), merged_ref, atol=1e-3)  # order matters


def test_block_sample_survives_fp16_and_bf16_but_not_other_weights():
    """An fp32 CLIP and an fp16 / bf16 copy of it (LLaVA's tower) are the same tower; a CLIP of
    another seed is not."""
    import copy

    from transformers import CLIPVisionModel

    from helpers import tiny_clip_config
    from saevlm.models.base import block_sample, same_block

    def vision_blocks(model):  # 5.x: model.encoder; 4.x: model.vision_model.encoder
        return getattr(model, "vision_model", model).encoder.layers

    torch.manual_seed(0)
    a = vision_blocks(CLIPVisionModel(tiny_clip_config()))[0]
    ref = block_sample(a)
    for dtype in (torch.float16, torch.bfloat16):
        assert same_block(ref, block_sample(copy.deepcopy(a).to(dtype)))
    torch.manual_seed(1)
    b = vision_blocks(CLIPVisionModel(tiny_clip_config()))[0]
    assert not same_block(ref, block_sample(b)) and not same_block(ref, ref[:10])


@pytest.mark.parametrize("family", ["llava", *MLLM_FAMILIES])
def test_default_steering_block_is_the_block_each_mllm_reads(family, saved, tmp_path):
    """An SAE that records no hook layer is steered at the block the MLLM reads (22 for
    LLaVA-1.5; the last block for Qwen2.5-VL and Gemma-3), not at a fixed 22."""
    from types import SimpleNamespace

    from helpers import save_tiny_mllm
    from saevlm.steering.options import resolve_layer

    path = saved[family] if family in saved else save_tiny_mllm(family, tmp_path / family)
    mllm = load_mllm(str(path))
    sae = load_sae(str(save_random_sae(tmp_path / "sae", 64, 128)))  # no provenance: no hook layer
    assert resolve_layer(SimpleNamespace(layer=None), sae, mllm) == mllm.last_read_block() == READ_BLOCK.get(family, 2)
    assert resolve_layer(SimpleNamespace(layer=1), sae, mllm) == 1
