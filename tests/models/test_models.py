"""Hook capture against each model's own outputs (``output_hidden_states``, ``image_embeds``,
``pooler_output``, open_clip's ``forward_intermediates``)."""

import pytest
import torch

from saevlm.errors import UserError
from saevlm.models import load_encoder
from saevlm.models.base import HookPoint, TokenSelection

ATOL = 1e-5


def test_transformers_is_the_version_this_run_is_for():
    """`make test-tf4` sets SAEVLM_EXPECT_TRANSFORMERS: these tests must really run on that
    version (a path mistake would silently test 5.x twice)."""
    import os

    import transformers

    expected = os.environ.get("SAEVLM_EXPECT_TRANSFORMERS")
    if expected:
        assert transformers.__version__ == expected
    else:
        assert transformers.__version__.split(".")[0] in ("4", "5")


def _pixels(encoder, image_folder, n=5):
    from PIL import Image
    files = sorted(image_folder.rglob("*.png"))[:n]
    return torch.stack([encoder.preprocess(Image.open(f).convert("RGB")) for f in files])


def _hf_reference(encoder, pixels):
    with torch.no_grad():
        out = encoder.model(pixel_values=pixels, output_hidden_states=True)
    hidden = [h for h in out.hidden_states]
    if hasattr(out, "image_embeds"):
        pooled = out.image_embeds
    else:
        pooled = out.pooler_output
    return hidden, pooled


@pytest.fixture(params=["clip", "siglip", "dinov2"])
def hf_encoder(request, tiny_clip_dir, tiny_siglip_dir, tiny_dinov2_dir):
    path = {"clip": tiny_clip_dir, "siglip": tiny_siglip_dir, "dinov2": tiny_dinov2_dir}[request.param]
    return load_encoder(str(path))


def test_block_outputs_equal_hidden_states(hf_encoder, image_folder):
    pixels = _pixels(hf_encoder, image_folder)
    hidden, pooled = _hf_reference(hf_encoder, pixels)
    n = hf_encoder.num_layers
    points = [HookPoint("post_mlp_residual", layer) for layer in range(n)] + [HookPoint("post_projection", -1)]
    got = hf_encoder.capture(pixels, points)
    for layer in range(n):
        torch.testing.assert_close(got[points[layer]], hidden[layer + 1], atol=ATOL, rtol=0)
    torch.testing.assert_close(got[points[-1]], pooled, atol=ATOL, rtol=0)


def test_token_selection_rows(hf_encoder, image_folder):
    """CLS row, mean, random rows and all rows equal the corresponding slices of hidden_states."""
    pixels = _pixels(hf_encoder, image_folder)
    hidden, _ = _hf_reference(hf_encoder, pixels)
    layer = 2
    acts = hf_encoder.capture(pixels, [HookPoint("post_mlp_residual", layer)])[HookPoint("post_mlp_residual", layer)]
    ref = hidden[layer + 1]
    image_ids = [10, 11, 12, 13, 14]
    rows, idx = TokenSelection("cls").select(acts, image_ids)
    torch.testing.assert_close(rows, ref[:, 0], atol=ATOL, rtol=0)
    assert idx.tolist() == [[i, 0] for i in image_ids]
    rows, idx = TokenSelection("mean").select(acts, image_ids)
    torch.testing.assert_close(rows, ref.mean(1), atol=ATOL, rtol=0)
    assert idx[:, 1].tolist() == [-1] * 5
    sel = TokenSelection("random_k", k=3, seed=7)
    rows, idx = sel.select(acts, image_ids)
    assert rows.shape == (15, ref.shape[2])
    for r in range(15):
        b = image_ids.index(int(idx[r, 0]))
        torch.testing.assert_close(rows[r], ref[b, int(idx[r, 1])], atol=ATOL, rtol=0)
    tokens_per_image = idx[:, 1].reshape(5, 3)
    assert all(len(set(t.tolist())) == 3 for t in tokens_per_image)  # distinct tokens
    rows, idx = TokenSelection("all").select(acts, image_ids)
    torch.testing.assert_close(rows, ref.reshape(-1, ref.shape[2]), atol=ATOL, rtol=0)


def test_random_tokens_depend_only_on_seed_and_image():
    sel = TokenSelection("random_k", k=2, seed=3)
    assert sel.token_indices(42, 50) == sel.token_indices(42, 50)
    assert sel.token_indices(42, 50) != TokenSelection("random_k", k=2, seed=4).token_indices(42, 50) or \
        sel.token_indices(43, 50) != sel.token_indices(42, 50)
    draws = {tuple(sel.token_indices(i, 50)) for i in range(100)}
    assert len(draws) > 50  # not the same tokens for every image


def test_several_points_one_pass_equal_separate_passes(hf_encoder, image_folder):
    pixels = _pixels(hf_encoder, image_folder)
    points = [HookPoint("post_mlp_residual", 0), HookPoint("post_mlp_residual", 2),
              HookPoint("post_projection", -1)]
    together = hf_encoder.capture(pixels, points)
    for p in points:
        alone = hf_encoder.capture(pixels, [p])[p]
        assert torch.equal(together[p], alone)


def test_stop_early_skips_later_blocks_and_changes_nothing(hf_encoder, image_folder):
    pixels = _pixels(hf_encoder, image_folder)
    calls = []
    handles = [b.register_forward_hook(lambda m, i, o, j=j: calls.append(j))
               for j, b in enumerate(hf_encoder.blocks)]
    try:
        point = HookPoint("post_mlp_residual", 1)
        early = hf_encoder.capture(pixels, [point], stop_early=True)[point]
        assert calls == [0, 1], f"blocks run with early stop: {calls}"
        calls.clear()
        full = hf_encoder.capture(pixels, [point], stop_early=False)[point]
        assert calls == list(range(hf_encoder.num_layers))
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(early, full)
    # all capture hooks are gone afterwards
    assert all(len(b._forward_hooks) == 0 for b in hf_encoder.blocks)


def test_layer_resolution_and_errors(hf_encoder):
    n = hf_encoder.num_layers
    assert hf_encoder.resolve("post_mlp_residual", -1) == HookPoint("post_mlp_residual", n - 1)
    assert hf_encoder.resolve("post_mlp_residual", -n) == HookPoint("post_mlp_residual", 0)
    with pytest.raises(UserError, match=r"^layer 4: out of range .* 4 blocks"):  # the field; the CLI says --layer
        hf_encoder.resolve("post_mlp_residual", n)
    with pytest.raises(UserError, match="out of range"):
        hf_encoder.resolve("post_mlp_residual", -n - 1)
    with pytest.raises(UserError, match="unknown; expected one of post_mlp_residual, post_projection"):
        hf_encoder.resolve("pre_mlp", 1)


def test_cls_flags(tiny_siglip_dir, tiny_clip_dir):
    from saevlm.models.base import token_selection_from_flags
    warnings = []
    sel = token_selection_from_flags(True, False, None, 0, has_cls=False, model_name="siglip", warn=warnings.append)
    assert sel == TokenSelection("random_k", 2, 0) and "no CLS token" in warnings[0]
    with pytest.raises(UserError, match="--cls_only and --mean_pool"):
        token_selection_from_flags(True, True, None, 0, True, "m", warnings.append)


def test_open_clip_matches_forward_intermediates(image_folder):
    from helpers import register_tiny_open_clip
    name = register_tiny_open_clip()
    encoder = load_encoder(f"open_clip:{name}", warn=lambda m: None)
    assert encoder.backend == "open_clip" and encoder.has_cls and encoder.num_layers == 4
    pixels = _pixels(encoder, image_folder)
    with torch.no_grad():
        ref = encoder.model.visual.forward_intermediates(pixels, indices=None, output_fmt="NLC",
                                                         output_extra_tokens=True)
        embeds = encoder.model.encode_image(pixels)
    points = [HookPoint("post_mlp_residual", i) for i in range(4)] + [HookPoint("post_projection", -1)]
    got = encoder.capture(pixels, points)
    for i in range(4):
        full = torch.cat([ref["image_intermediates_prefix"][i], ref["image_intermediates"][i]], 1)
        torch.testing.assert_close(got[points[i]], full, atol=ATOL, rtol=0)
    torch.testing.assert_close(got[points[-1]], embeds, atol=ATOL, rtol=0)
    torch.testing.assert_close(got[points[-1]], ref["image_features"], atol=ATOL, rtol=0)


def test_transformers_4x_module_tree_is_resolved():
    """transformers 4.x keeps blocks at ``vision_model.encoder.layers`` and returns tuples; the
    resolver and capture handle that tree too (built here by nesting a 5.x model)."""
    from saevlm.models.base import first_tensor
    from saevlm.models.hf import BLOCK_PATHS, get_attr_path

    class Block(torch.nn.Module):
        def forward(self, x):
            return (x + 1,)  # 4.x style tuple output

    root = torch.nn.Module()
    root.vision_model = torch.nn.Module()
    root.vision_model.encoder = torch.nn.Module()
    root.vision_model.encoder.layers = torch.nn.ModuleList([Block(), Block()])
    path, layers = get_attr_path(root, BLOCK_PATHS)
    assert path == "vision_model.encoder.layers" and len(layers) == 2
    assert torch.equal(first_tensor((torch.ones(2),)), torch.ones(2))
    flat = torch.nn.Module()
    flat.encoder = torch.nn.Module()
    flat.encoder.layers = torch.nn.ModuleList([Block()])
    assert get_attr_path(flat, BLOCK_PATHS)[0] == "encoder.layers"


def test_unknown_model_and_offline_hub_errors(tmp_path):
    with pytest.raises(UserError, match="unknown model"):
        load_encoder("not-a-model")
    with pytest.raises(UserError, match="no such directory"):
        load_encoder(str(tmp_path / "missing-dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither config.json"):
        load_encoder(str(tmp_path / "empty"))
    # A short name maps to a hub id; offline, the error names it and says how to provide it.
    with pytest.raises(UserError, match=r"openai/clip-vit-base-patch32.*local directory"):
        load_encoder("clip-vit-base-patch32")


def test_open_clip_local_directory_loads_its_weights(tmp_path, image_folder):
    """A directory with open_clip_config.json + weights loads through the real open_clip path."""
    import json

    import open_clip
    from safetensors.torch import save_file

    from helpers import OPEN_CLIP_TINY, register_tiny_open_clip

    register_tiny_open_clip()
    torch.manual_seed(3)
    model = open_clip.create_model(OPEN_CLIP_TINY)
    d = tmp_path / "oc"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": open_clip.factory._MODEL_CONFIGS[OPEN_CLIP_TINY], "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    encoder = load_encoder(str(d))
    assert encoder.backend == "open_clip"
    pixels = _pixels(encoder, image_folder)
    with torch.no_grad():
        ref = model.eval().encode_image(pixels)
    got = encoder.capture(pixels, [HookPoint("post_projection", -1)])[HookPoint("post_projection", -1)]
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
