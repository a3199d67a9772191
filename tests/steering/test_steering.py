"""SAE interventions in a tiny random LLaVA (transformers 5.x tree) and a 4.x-style tree."""

import pytest
import torch

from helpers import assert_results_read_back, run_cli, save_identity_sae, save_random_sae, save_tiny_llava
from saevlm import api
from saevlm.errors import UserError
from saevlm.sae.checkpoint import load_sae
from saevlm.steering.intervention import sae_intervention
from saevlm.models.mllm import load_image, load_mllm

PROMPT = "What is shown in this image? Use exactly one word!"


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load_mllm(str(save_tiny_llava(tmp_path_factory.mktemp("llava") / "llava")))


@pytest.fixture(scope="module")
def image():
    from PIL import Image
    import numpy as np
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))


def _hooks(llava):
    """The forward hooks on the vision blocks (transformers 5.x installs some of its own)."""
    return [tuple(b._forward_hooks) for b in llava.vision_blocks]


def test_error_preserving_with_nothing_clamped_is_exact(llava, image, tmp_path):
    sae = load_sae(str(save_random_sae(tmp_path / "sae", 64, 256)))
    ref = llava.logits(PROMPT, image)
    with sae_intervention(llava, sae, 1, {}, mode="error-preserving"):
        got = llava.logits(PROMPT, image)
    # x + decode(c) - decode(c) can differ from x by rounding only
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    with sae_intervention(llava, sae, 1, {}, mode="reconstruct"):
        lossy = llava.logits(PROMPT, image)
    assert not torch.allclose(lossy, ref, atol=1e-3)  # a random SAE's reconstruction is not exact


def test_exact_inverse_sae_in_reconstruct_mode_keeps_the_generation(llava, image, tmp_path):
    sae = load_sae(str(save_identity_sae(tmp_path / "id", 64)))
    ref_text = llava.prompt(PROMPT, image, 8)
    ref_logits = llava.logits(PROMPT, image)
    with sae_intervention(llava, sae, 2, {}, mode="reconstruct"):
        assert llava.prompt(PROMPT, image, 8) == ref_text
        assert torch.equal(llava.logits(PROMPT, image), ref_logits)


def test_clamping_a_latent_changes_the_generation(llava, image, tmp_path):
    sae = load_sae(str(save_identity_sae(tmp_path / "id", 64)))
    ref = llava.prompt(PROMPT, image, 8)
    before = _hooks(llava)
    with sae_intervention(llava, sae, 1, {5: 50.0}, mode="reconstruct"):
        steered = llava.prompt(PROMPT, image, 8)
    with sae_intervention(llava, sae, 1, {5: 50.0}, mode="error-preserving"):
        steered_ep = llava.prompt(PROMPT, image, 8)
    assert steered != ref and steered_ep != ref
    assert _hooks(llava) == before


def test_hook_removed_after_exception_and_bad_requests(llava, image, tmp_path):
    sae = load_sae(str(save_identity_sae(tmp_path / "id", 64)))
    llava.logits(PROMPT, image)
    before = _hooks(llava)
    with pytest.raises(RuntimeError, match="boom"):
        with sae_intervention(llava, sae, 1, {3: 1.0}):
            assert len(_hooks(llava)[1]) == len(before[1]) + 1
            raise RuntimeError("boom")
    assert _hooks(llava) == before
    assert llava.last_read_block() == 2  # vision_feature_layer -2 of 4 blocks
    with pytest.raises(UserError, match="cannot change what it generates"):
        with sae_intervention(llava, sae, 3, {}):
            pass
    with pytest.raises(UserError, match="out of range"):
        with sae_intervention(llava, sae, 1, {1000: 1.0}):
            pass
    small = load_sae(str(save_random_sae(tmp_path / "s32", 32, 64)))
    with pytest.raises(UserError, match="32-d inputs"):
        with sae_intervention(llava, small, 1, {}):
            pass
    assert _hooks(llava) == before


def test_transformers_4x_tree_and_tuple_outputs(tmp_path):
    """4.x keeps the tower's blocks at model.vision_tower.vision_model.encoder.layers and blocks
    return tuples; the resolver finds them and the hook returns a tuple."""
    from types import SimpleNamespace

    from saevlm.models.mllm import MLLM as Llava

    class Block(torch.nn.Module):
        def forward(self, x):
            return (x * 1.0,)

    root = torch.nn.Module()
    root.model = torch.nn.Module()
    root.model.vision_tower = torch.nn.Module()
    root.model.vision_tower.vision_model = torch.nn.Module()
    root.model.vision_tower.vision_model.encoder = torch.nn.Module()
    root.model.vision_tower.vision_model.encoder.layers = torch.nn.ModuleList([Block() for _ in range(4)])
    root.config = SimpleNamespace(vision_feature_layer=-2, vision_config=SimpleNamespace(hidden_size=8))
    fake = Llava(root, None, torch.device("cpu"), torch.float32, "fake")
    assert len(fake.vision_blocks) == 4
    sae = load_sae(str(save_identity_sae(tmp_path / "id8", 8)))
    x = torch.randn(2, 5, 8)
    with sae_intervention(fake, sae, 0, {2: 7.0}):
        out = fake.vision_blocks[0](x)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    # latent 2 is relu(x_2), clamped to 7; its partner latent 10 = relu(-x_2) still subtracts
    assert torch.allclose(out[0][..., 2], 7.0 - torch.relu(-x[..., 2]))
    assert torch.equal(out[0][..., 3], x[..., 3])


def test_steer_command(tmp_path, capsys):
    model = save_tiny_llava(tmp_path / "llava")
    sae = save_random_sae(tmp_path / "sae", 64, 128, layer=1)
    rc = run_cli("steer", "--sae_path", sae, "--model_name", model, "--neuron", "3", "--alpha", "0", "30",
                 "--prompt", "Write me a short love poem", "--image", "white", "--device", "cpu")
    out = capsys.readouterr().out
    assert rc == 0 and "unsteered:" in out and "latent 3 = 30:" in out and "block 1" in out
    assert run_cli("steer", "--sae_path", sae, "--model_name", model, "--neuron", "3", "--layer", "3",
                   "--device", "cpu") == 2
    assert "cannot change what it" in capsys.readouterr().err


def test_steering_score_pipeline_end_to_end(tmp_path, capsys):
    """make-eval-folder -> CLIP embeddings -> pooled top images -> steering-score (steered and not)
    -> similarity-baseline, on tiny models; outputs well-formed and consistent."""
    import csv
    import json

    import numpy as np

    from helpers import make_image_folder
    from saevlm.data.store import ActivationStore
    from saevlm.models.clip import ClipEncoder
    from helpers import save_tiny_clip_model

    data = make_image_folder(tmp_path / "imgs" / "train", num_classes=4, per_class=6,
                             class_names=["n01", "n02", "n03", "n04"])
    llava = save_tiny_llava(tmp_path / "llava")
    clip = save_tiny_clip_model(tmp_path / "clip")
    common = ["--dataset_name", "imagefolder", "--data_path", data, "--batch_size", "8", "--num_workers", "0",
              "--device", "cpu", "--no_progress"]
    assert api.run("make-eval-folder", dataset_name="imagefolder", data_path=tmp_path / "imgs", split="train",
                   output_dir=tmp_path / "eval") == 0
    assert sorted(p.parent.name for p in (tmp_path / "eval").rglob("*.png")) == ["n01", "n02", "n03", "n04"]
    assert run_cli("embed", "--model_name", clip, "--embeddings_path", tmp_path / "clip_emb", *common) == 0
    assert run_cli("extract", "--model_name", clip, "--layer", "1", "--random_k", "2",
                   "--output_dir", tmp_path / "acts", *common) == 0
    sae = save_random_sae(tmp_path / "sae", 64, 128, layer=1)
    assert api.run("encode", sae_path=sae, activations_dir=tmp_path / "acts" / "post_mlp_residual_1",
                   output_dir=tmp_path / "codes", allow_mismatch=True, no_progress=True) == 0
    assert api.run("top-images", activations_dir=tmp_path / "codes", pool="mean", device="cpu", no_progress=True) == 0
    top = tmp_path / "codes" / "top_images_16.npy"
    base = ["--sae_path", sae, "--llava_model", llava, "--top_images", top, "--clip_embeddings",
            tmp_path / "clip_emb", "--clip_model", clip, "--device", "cpu"]
    assert run_cli("steering-score", *base, "--neurons", "3", "--images", tmp_path / "eval",
                   "--alpha", "50", "--output_dir", tmp_path / "steered", "--protocol", "saevlm") == 0
    assert run_cli("steering-score", *base, "--neuron_list", "0", "2", "--images", "white", "--no_steer",
                   "--output_dir", tmp_path / "plain") == 0
    rows = list(csv.DictReader(open(tmp_path / "steered" / "labels.csv")))
    assert len(rows) == 3 * 4 and {r["neuron"] for r in rows} == {"0", "1", "2"}
    summary = json.loads((tmp_path / "steered" / "steering_score.json").read_text())
    assert summary["neurons"] == 3 and summary["images"] == 4 and summary["steered"] and summary["layer"] == 1
    scores = {int(r["neuron"]): float(r["score"]) for r in csv.DictReader(open(tmp_path / "steered" / "scores.csv"))}
    assert abs(np.mean(list(scores.values())) - summary["mean"]) < 1e-6
    # one similarity recomputed by hand: CLIP text of the word vs mean unit image embedding of the top 16
    import torch
    enc = ClipEncoder(str(clip), torch.device("cpu"))
    r = rows[5]
    emb = ActivationStore(tmp_path / "clip_emb").read(0, 24)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    target = emb[np.load(top)[int(r["neuron"])]].mean(0)
    expect = float(enc.text([r["word"] or "nothing"])[0] @ target / np.linalg.norm(target))  # a cosine
    assert abs(expect - float(r["similarity"])) < 1e-5
    plain = list(csv.DictReader(open(tmp_path / "plain" / "labels.csv")))
    assert len(plain) == 2 and plain[0]["answer"] == plain[1]["answer"]  # unsteered: same answer

    # the authors' protocol (the default), in their flags: word = the decoded sequence's text after
    # 'ASSISTANT: ' up to the first space, as is; target = mean of RAW embeddings; std over all pairs
    assert run_cli("steering-score", "--sae_path", sae, "--llava_model", llava, "--hai_indices_path",
                   tmp_path / "codes" / "hai_indices_16.npy", "--embeddings_path", tmp_path / "clip_emb",
                   "--model_name", clip, "--images_path", tmp_path / "eval", "--no-pre_zero", "--neuron_prefix", "2",
                   "--steer", "--alpha", "50", "--output_path", f"{tmp_path / 'auth'}/", "--device", "cpu") == 0
    arows = list(csv.DictReader(open(tmp_path / "auth" / "labels.csv")))
    asum = json.loads((tmp_path / "auth" / "steering_score.json").read_text())
    for run in ("steered", "plain", "auth"):
        assert [p.name for p in assert_results_read_back(tmp_path / run)] == ["steering_score.json"]
    assert asum["protocol"] == "authors" and len(arows) == 2 * 4
    sims = np.array([float(r["similarity"]) for r in arows])
    assert abs(asum["std"] - sims.std(ddof=1)) < 1e-6 and abs(asum["mean"] - sims.mean()) < 1e-6
    raw = ActivationStore(tmp_path / "clip_emb").read(0, 24).astype(np.float64)
    for r in (arows[0], arows[5]):
        target = raw[np.load(top)[int(r["neuron"])]].mean(0)
        t = enc.text([r["word"]])[0]
        expect = float(t @ target / np.linalg.norm(target))
        assert abs(expect - float(r["similarity"])) < 1e-5

    assert run_cli("similarity-baseline", "--images", tmp_path / "eval", "--clip_model", clip,
                   "--device", "cpu") == 2  # the authors' protocol needs their class-name strings
    names = tmp_path / "names.json"
    names.write_text(json.dumps({str(i): [c, f"thing_{i}"] for i, c in enumerate(["n01", "n02", "n03", "n04"])}))
    assert api.run("similarity-baseline", images=tmp_path / "eval", clip_model=clip, class_names=names, device="cpu") == 0
    bounds = json.loads((tmp_path / "eval" / "similarity_baseline.json").read_text())
    assert bounds["images"] == 4 and -1 <= bounds["shuffled_class_names"]["mean"] <= 1
    assert bounds["protocol"] == "authors"
    assert [p.name for p in assert_results_read_back(tmp_path / "eval")] == ["similarity_baseline.json"]
    img = enc.images([__import__("PIL.Image").Image.open(f).convert("RGB")
                      for f in sorted((tmp_path / "eval").rglob("*.png"))])
    true = (img * enc.text([f"thing_{i}" for i in range(4)])).sum(1)
    assert abs(bounds["true_class_names"]["mean"] - true.mean()) < 1e-5
    assert abs(bounds["true_class_names"]["std"] - true.std(ddof=1)) < 1e-5


def test_fp16_model_with_fp32_sae(tmp_path, image):
    """The SAE runs in fp32 beside an fp16 model; the block output keeps the model's dtype."""
    ll = load_mllm(str(save_tiny_llava(tmp_path / "l")), torch.device("cpu"), "fp16")
    sae = load_sae(str(save_identity_sae(tmp_path / "s", 64)))
    ref = ll.logits(PROMPT, image)
    assert ref.dtype == torch.float16
    with sae_intervention(ll, sae, 1, {}, "reconstruct"):
        assert torch.equal(ll.logits(PROMPT, image), ref)
    assert next(sae.ae.parameters()).dtype == torch.float32


def test_authors_word_rule():
    """The authors' answer -> word rule: text after the last 'ASSISTANT: ', up to the first space, as is."""
    from saevlm.steering.score import authors_word, first_word
    assert authors_word("USER: \nWhat is shown? ASSISTANT: Pencil.") == "Pencil."
    assert authors_word("USER: x ASSISTANT: ") == ""
    assert authors_word("USER: x ASSISTANT:  two spaces") == ""
    assert authors_word("USER: x ASSISTANT: a ASSISTANT: b c") == "b"
    assert authors_word("no marker here") == "no"
    assert first_word(" Pencil.") == "pencil" and first_word("...") == ""


# --- at the block LLaVA reads (the analogue of block 22), with an SAE that is NOT an exact inverse ---

def _read_block_setup(tmp_path):
    """A fresh tiny LLaVA after one unsteered forward (transformers 5 installs its hidden-state
    recording hooks then), a random SAE trained-on-layer = the block LLaVA reads, and that block."""
    ll = load_mllm(str(save_tiny_llava(tmp_path / "llava")))
    read = ll.last_read_block()
    sae = load_sae(str(save_random_sae(tmp_path / "sae", 64, 256, layer=read)))
    return ll, sae, read


def test_steering_at_the_read_block_takes_effect_every_time(tmp_path, image):
    ll, sae, read = _read_block_setup(tmp_path)
    assert read == 2  # vision_feature_layer -2 of 4 blocks
    ref = ll.logits(PROMPT, image)  # the first forward: transformers installs its own hooks here
    runs = []
    for latent in (3, 7, 3):  # A, B, A in one process and one model object
        with sae_intervention(ll, sae, read, {latent: 30.0}):
            runs.append(ll.logits(PROMPT, image))
    a1, b, a2 = runs
    for got in runs:
        assert (got - ref).abs().max() > 1e-2
    assert torch.equal(a1, a2)
    assert (a1 - b).abs().max() > 1e-2
    # error-preserving: the same, and it still adds exactly nothing when nothing is clamped
    with sae_intervention(ll, sae, read, {7: 30.0}, mode="error-preserving"):
        ep = ll.logits(PROMPT, image)
    assert (ep - ref).abs().max() > 1e-2
    with sae_intervention(ll, sae, read, {}, mode="error-preserving"):
        torch.testing.assert_close(ll.logits(PROMPT, image), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ll.logits(PROMPT, image), ref, atol=0, rtol=0)  # hook gone


def test_steering_hook_stays_first_when_another_hook_is_installed_later(tmp_path, image):
    """A hook another library prepends after ours (inside the block) still sees the steered output."""
    ll, sae, read = _read_block_setup(tmp_path)
    block = ll.vision_blocks[read]
    seen = []
    with sae_intervention(ll, sae, read, {3: 30.0}):
        late = block.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o),
                                           prepend=True)
        try:
            ll.logits(PROMPT, image)
        finally:
            late.remove()
    plain = []
    late = block.register_forward_hook(lambda m, i, o: plain.append(o[0] if isinstance(o, tuple) else o))
    try:
        ll.logits(PROMPT, image)
    finally:
        late.remove()
    assert len(seen) == len(plain) == 1 and (seen[0] - plain[0]).abs().max() > 1e-2


def test_steer_command_alpha_sweep_at_the_read_block(tmp_path, capsys, monkeypatch):
    """`saevlm steer --alpha 0 30 40 50` at the block LLaVA reads: the logits behind every answer
    differ from the unsteered ones and from each other (recorded by wrapping Llava.prompt, so the
    command's own hook handling is what runs)."""
    from saevlm.models.mllm import MLLM as Llava

    model = save_tiny_llava(tmp_path / "llava")
    sae = save_random_sae(tmp_path / "sae", 64, 256, layer=2)
    recorded = []
    real_prompt = Llava.prompt

    def recording_prompt(self, text, im, max_new_tokens=5):
        recorded.append(self.logits(text, im))
        return real_prompt(self, text, im, max_new_tokens)

    monkeypatch.setattr(Llava, "prompt", recording_prompt)
    rc = run_cli("steer", "--sae_path", sae, "--model_name", model, "--neuron", "3", "--alpha", "0", "30", "40",
                 "50", "--prompt", "Write me a short love poem", "--image", "white", "--device", "cpu",
                 "--max_new_tokens", "6")
    out = capsys.readouterr().out
    assert rc == 0 and "block 2" in out and "latent 3 = 50:" in out
    assert len(recorded) == 5  # unsteered + 4 alphas
    unsteered, steered = recorded[0], recorded[1:]
    for i, a in enumerate(steered):
        assert (a - unsteered).abs().max() > 1e-2
        for b in steered[i + 1:]:
            assert (a - b).abs().max() > 1e-2


def _brute_force_steered_answers(llava_dir, sae_dir, layer, neurons, image, alpha, max_new_tokens=5):
    """One FRESH LLaVA per latent (its own first forward is steered), as if run one at a time."""
    out = {}
    for n in neurons:
        ll = load_mllm(str(llava_dir))
        sae = load_sae(str(sae_dir))
        with sae_intervention(ll, sae, layer, {n: alpha}):
            out[n] = ll.generate(PROMPT, image, max_new_tokens)
    return out


def test_steering_score_over_several_latents_equals_a_fresh_model_per_latent(tmp_path, capsys):
    import csv

    import numpy as np

    from helpers import make_image_folder, save_tiny_clip_model
    from saevlm.data.store import ActivationStore
    from saevlm.models.clip import ClipEncoder
    from saevlm.steering.score import authors_word

    data = make_image_folder(tmp_path / "imgs", num_classes=2, per_class=4)
    llava = save_tiny_llava(tmp_path / "llava")
    clip = save_tiny_clip_model(tmp_path / "clip")
    assert api.run("embed", model_name=clip, embeddings_path=tmp_path / "emb", dataset_name="imagefolder",
                   data_path=data, device="cpu", num_workers=0, no_progress=True) == 0
    sae = save_random_sae(tmp_path / "sae", 64, 256, layer=2)
    top = np.random.default_rng(0).integers(0, 8, size=(256, 4))
    np.save(tmp_path / "top_images_4.npy", top)
    neurons = [0, 3, 5, 7, 11, 13]
    assert run_cli("steering-score", "--sae_path", sae, "--llava_model", llava, "--top_images",
                   tmp_path / "top_images_4.npy", "--clip_embeddings", tmp_path / "emb", "--clip_model", clip,
                   "--neuron_list", *neurons, "--images", "white", "--alpha", "100", "--output_dir",
                   tmp_path / "score", "--device", "cpu") == 0
    rows = list(csv.DictReader(open(tmp_path / "score" / "labels.csv")))
    assert [int(r["neuron"]) for r in rows] == neurons

    white = load_image("white", 32)
    expect = _brute_force_steered_answers(llava, sae, 2, neurons, white, 100.0)
    plain = load_mllm(str(llava)).generate(PROMPT, white, 5)
    # the brute force itself steers: most latents change the answer (else this test proves nothing)
    assert sum(expect[n][0] != plain[0] for n in neurons[1:]) >= 3
    enc = ClipEncoder(str(clip), torch.device("cpu"))
    raw = ActivationStore(tmp_path / "emb").read(0, 8).astype(np.float64)
    for r in rows:
        n = int(r["neuron"])
        answer, full = expect[n]
        assert r["answer"] == answer
        word = authors_word(full)
        assert r["word"] == word
        target = raw[top[n]].mean(0)
        sim = float(enc.text([word])[0] @ target / np.linalg.norm(target))
        assert abs(float(r["similarity"]) - sim) < 1e-5


def test_steering_commands_use_the_pil_image_processor_by_default(tmp_path):
    import transformers

    from saevlm.models.clip import ClipEncoder
    from helpers import save_tiny_clip_model

    ll = load_mllm(str(save_tiny_llava(tmp_path / "llava")))
    enc = ClipEncoder(str(save_tiny_clip_model(tmp_path / "clip")), torch.device("cpu"))
    tv = load_mllm(str(tmp_path / "llava"), processor_backend="torchvision")
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert type(ll.processor.image_processor).__name__.endswith("Pil")
        assert type(enc.processor.image_processor).__name__.endswith("Pil")
        assert not type(tv.processor.image_processor).__name__.endswith("Pil")
    else:  # 4.x: the slow (PIL) processors have no "Fast" suffix
        assert not type(ll.processor.image_processor).__name__.endswith("Fast")
    with pytest.raises(UserError, match="^processor_backend .cv2.: expected one of pil, torchvision"):
        load_mllm(str(tmp_path / "llava"), processor_backend="cv2")
