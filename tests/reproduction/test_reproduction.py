"""Fidelity to the authors' protocol (ExplainableML/sae-for-vlm @ 69e211d): their commands one to
one, their checkpoints, their definitions (checked against ports of their functions or independent
brute-force references, never against saevlm's own fast path)."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from authors_invocations import INVOCATIONS, SCRIPT_TO_COMMAND
from helpers import run_cli
from saevlm.data.store import ActivationStore


def _parse(script: str, argv: list[str]):
    from saevlm.cli import parse_command_line
    return parse_command_line([SCRIPT_TO_COMMAND[script], *argv])


def test_all_28_authors_invocations_parse():
    assert len(INVOCATIONS) == 28
    parsed = 0
    for _, script, argv in INVOCATIONS:
        _parse(script, argv)  # argparse exits (SystemExit) on any unknown flag or bad value
        parsed += 1
    assert parsed == 28


def test_authors_flags_keep_their_meaning():
    from saevlm.sae.train import checkpoint_steps
    from saevlm.steering.score import output_dir_of

    by_script = {}
    for _, script, argv in INVOCATIONS:
        by_script.setdefault(script, []).append(_parse(script, argv))
    tr = by_script["sae_train.py"][0]
    # --save_steps 20000 = every 20,000 steps: range(0, 110000, 20000), so ae_100000.pt exists
    assert checkpoint_steps(tr.steps, tr.save_steps, tr.save_at) == [0, 20000, 40000, 60000, 80000, 100000]
    assert tr.sae_model == ["matroyshka_batch_top_k"] and tr.layout == "auto" and tr.decay_start == 109999
    no_steer, steer = by_script["steering_score.py"][:2]
    assert no_steer.steer is False and steer.steer is True and steer.zero_others is False
    assert steer.clip_model == "clip-vit-base-patch32" and steer.llava_model == "llava-hf/llava-1.5-7b-hf"
    assert steer.neurons == 10 and steer.protocol == "authors" and steer.images == "./images_imagenet/"
    assert output_dir_of(steer) == Path("./llava_results_dir/1000/steering")  # os.path.dirname, as theirs
    q = by_script["steering_qualitative.py"][0]  # their hard-coded values are saevlm steer's defaults
    assert (q.neuron, q.alpha, q.prompt, q.max_new_tokens) == ([39], [0, 30, 40, 50], "Write me a short love poem", 60)
    assert q.sae_path.endswith("trainer_0/checkpoints/ae_100000.pt")
    b = by_script["similarity_baseline.py"][0]
    assert b.images == "./images_imagenet" and b.clip_model == "clip-vit-base-patch32"
    sub = by_script["imagenet_subset.py"][0]
    assert sub.imagenet_root == "/data/imagenet" and sub.output_dir == "./images_imagenet"
    fh = by_script["find_hai_indices.py"][0]
    assert fh.k == 16 and fh.chunk_size == 1000 and fh.split == "train"
    vis = by_script["visualize_neurons.py"][0]
    assert vis.top_k == 16 and vis.group_fractions == [0.0625, 0.125, 0.25, 0.5625]


def _authors_checkpoint(root: Path, dim: int, dict_size: int, k: int, groups: list[int]) -> tuple[Path, object]:
    """A trainer directory as the authors' vendored trainer writes it: their class and trainer
    names, the same state-dict keys, ae.pt and checkpoints/ae_<step>.pt."""
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE

    torch.manual_seed(0)
    ae = MatryoshkaBatchTopKSAE(dim, dict_size, k, groups)
    with torch.no_grad():
        ae.W_enc.normal_()
        ae.b_enc.normal_(0, 0.5)
        ae.b_dec.normal_(0, 0.1)
        ae.threshold.fill_(0.7)
    d = root / "trainer_0"
    (d / "checkpoints").mkdir(parents=True)
    state = {k_: v.clone() for k_, v in ae.state_dict().items()}
    assert sorted(state) == sorted(["W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"])
    torch.save(state, d / "ae.pt")
    torch.save(state, d / "checkpoints" / "ae_20.pt")
    (d / "config.json").write_text(json.dumps({"trainer": {
        "trainer_class": "MatroyshkaBatchTopKTrainer", "dict_class": "MatroyshkaBatchTopKSAE",
        "activation_dim": dim, "dict_size": dict_size, "k": k, "group_sizes": groups}}))
    return d, ae


def test_authors_matroyshka_checkpoint_loads_and_encodes_identically(tmp_path):
    from saevlm.sae.inference import encode_batch
    from saevlm.sae.checkpoint import load_sae

    d, ref = _authors_checkpoint(tmp_path, 16, 64, 4, [8, 16, 40])
    x = torch.randn(300, 16)
    for path in (d, d / "ae.pt", d / "checkpoints" / "ae_20.pt"):
        sae = load_sae(str(path))
        assert sae.arch == "matryoshka_batch_top_k" and sae.group_sizes() == [8, 16, 40]
        with torch.no_grad():
            assert torch.equal(encode_batch(sae, x), ref.encode(x))
    # the trainer name alone (no dict_class) is enough too
    cfg = json.loads((d / "config.json").read_text())
    del cfg["trainer"]["dict_class"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert load_sae(str(d)).arch == "matryoshka_batch_top_k"


def _authors_validation_r2(ae, val_nd: np.ndarray, batch_size: int, norm_factor: float, use_threshold: bool) -> float:
    """Port of the authors' training.validation: per batch (DataLoader, shuffle=False) of
    normalised activations, 1 - sum var(x - x_hat) / sum var(x), averaged over batches."""
    fracs = []
    for s in range(0, len(val_nd), batch_size):
        act = torch.from_numpy(val_nd[s:s + batch_size]).float() / norm_factor
        with torch.no_grad():
            f = ae.encode(act, use_threshold=use_threshold)
            e = act - ae.decode(f)
        fracs.append((1 - torch.var(e, dim=0).sum() / torch.var(act, dim=0).sum()).item())
    return float(torch.mean(torch.tensor(fracs)))


def test_train_authors_command_layout_save_steps_and_r2(tmp_path):
    """The authors' sae_train.py command (reduced sizes): --sae_model matroyshka_batch_top_k and
    --save_steps N write <ck>/<store>_<arch>_<k>_x<E>/trainer_0/checkpoints/ae_0 ... as theirs, and
    eval.json carries their batch-averaged R² (with and without threshold) beside saevlm's."""
    from saevlm.sae.checkpoint import load_sae

    w = tmp_path / "world"
    assert run_cli("synthetic", "--output_dir", w) == 0
    ck = tmp_path / "checkpoints_dir" / "matroyshka_batch_top_k_4_x2"
    assert run_cli("train", "--sae_model", "matroyshka_batch_top_k", "--activations_dir", w / "train",
                   "--val_activations_dir", w / "val", "--checkpoints_dir", ck, "--expansion_factor", "2",
                   "--steps", "110", "--save_steps", "20", "--log_steps", "50", "--batch_size", "256", "--k", "4",
                   "--auxk_alpha", "0.03", "--decay_start", "109", "--group_fractions", "0.25", "0.75",
                   "--warmup_steps", "5", "--threshold_start_step", "10", "--val_rows", "1000",
                   "--device", "cpu", "--no_progress") == 0
    d = ck / "train_matroyshka_batch_top_k_4_x2" / "trainer_0"
    assert sorted(int(p.stem.split("_")[1]) for p in (d / "checkpoints").glob("ae_*.pt")) == [0, 20, 40, 60, 80, 100]
    ev = json.loads((d / "checkpoints" / "ae_100_eval.json").read_text())
    sae = load_sae(str(d / "checkpoints" / "ae_100.pt"))
    norm = json.loads((d / "config.json").read_text())["trainer"]["norm_factor"]
    ae = sae.ae
    ae.scale_biases(1 / norm)  # the authors validate the in-training (normalised) SAE
    val = ActivationStore(w / "val").read(0, 1000)
    for key, thr in (("r2_authors", True), ("r2_authors_no_threshold", False)):
        assert abs(ev[key] - _authors_validation_r2(ae, val, 256, norm, thr)) < 1e-5, key
    assert ev["r2_authors_batches"] == math.ceil(1000 / 256)
    # the authors' next command reads their checkpoint path unchanged
    assert run_cli("encode", "--sae_path", d / "checkpoints" / "ae_100.pt", "--activations_dir", w / "val",
                   "--output_dir", tmp_path / "codes", "--no_progress") == 0


def _brute_force_mean_codes(tiny_clip_dir, image_folder, sae_dir, tmp_path) -> np.ndarray:
    """All tokens of block 1 (no SAE) -> dictionary_learning's encode of every token -> mean per image."""
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    assert run_cli("extract", "--model_name", tiny_clip_dir, "--layer", "1", "--dataset_name", "imagefolder",
                   "--data_path", image_folder, "--output_dir", tmp_path / "all", "--batch_size", "8",
                   "--num_workers", "0", "--device", "cpu", "--no_progress") == 0
    store = ActivationStore(tmp_path / "all" / "post_mlp_residual_1")
    rows = store.row_index()
    ae = BatchTopKSAE.from_pretrained(str(sae_dir / "ae.pt"))
    with torch.no_grad():
        codes = ae.encode(torch.from_numpy(store.read(0, store.num_rows)), use_threshold=True).numpy()
    n = int(rows[:, 0].max()) + 1
    return np.stack([codes[rows[:, 0] == i].mean(0) for i in range(n)])


def test_sae_mean_pool_is_mean_of_token_codes_and_top_k_matches(tiny_clip_dir, image_folder, tmp_path, capsys):
    from saevlm.data.codes import CodeStore
    from helpers import save_random_sae

    sae = save_random_sae(tmp_path / "sae", 64, 128, k=8, layer=1)
    ref = _brute_force_mean_codes(tiny_clip_dir, image_folder, sae, tmp_path)
    common = ["--model_name", tiny_clip_dir, "--layer", "1", "--mean_pool", "--sae_path", sae,
              "--sae_model", "batch_top_k", "--dataset_name", "imagefolder", "--data_path", image_folder,
              "--batch_size", "8", "--num_workers", "0", "--device", "cpu", "--no_progress", "--allow_mismatch"]
    assert run_cli("extract", *common, "--output_dir", tmp_path / "pooled", "--save_every", "100") == 0
    codes = CodeStore(tmp_path / "pooled" / "post_mlp_residual_1_codes")
    assert np.allclose(codes.read(0, codes.num_rows), ref, atol=1e-5)
    assert not np.allclose(ref.max(1), 0)
    # --top_k 16: the running top-16 equals argsort of the brute-force pooled codes
    assert run_cli("extract", *common, "--top_k", "16", "--output_dir", tmp_path / "top") == 0
    d = tmp_path / "top" / "post_mlp_residual_1_codes"
    top, vals = np.load(d / "top_images_16.npy"), np.load(d / "top_images_16_values.npy")
    for j in range(ref.shape[1]):
        order = np.lexsort((np.arange(len(ref)), -ref[:, j]))[:16]  # value desc, lower image first
        assert np.allclose(vals[j], ref[order, j], atol=1e-5)
        assert np.array_equal(top[j], order) or np.allclose(ref[top[j], j], ref[order, j], atol=1e-5)
    assert np.array_equal(np.load(d / "hai_indices_16.npy"), top[:, ::-1])  # the authors' order
    # the authors' next steps on that directory: find_hai_indices (nothing left to do), visualize
    assert run_cli("top-images", "--activations_dir", tmp_path / "top", "--dataset_name", "imagefolder",
                   "--data_path", image_folder, "--k", "16", "--chunk_size", "1000") == 0
    assert "computed during extraction" in capsys.readouterr().out
    assert run_cli("visualize", "--output_dir", d, "--top_k", "16", "--hai_indices_path", d / "hai_indices_16.npy",
                   "--neurons", "0", "1") == 0
    assert (d / "tree" / "neuron_000000.png").is_file()
    # a dataset that is not the store's is refused
    assert run_cli("top-images", "--activations_dir", d, "--dataset_name", "inat") == 2


def test_processor_pil_backend_matches_an_independent_pil_pipeline(tmp_path):
    """CLIP preprocessing as the authors ran it (transformers 4.46, PIL): shortest side to S with
    PIL bicubic, centre crop S x S, /255, CLIP mean/std."""
    from PIL import Image

    from saevlm.models import load_encoder
    from helpers import save_tiny_clip

    model = save_tiny_clip(tmp_path / "clip")
    size = 32
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (57, 83, 3), dtype=np.uint8))
    w, h = im.size
    nw, nh = (int(size * w / h), size) if w > h else (size, int(size * h / w))
    r = np.asarray(im.resize((nw, nh), Image.BICUBIC), dtype=np.float64)
    top, left = (nh - size) // 2, (nw - size) // 2
    r = r[top:top + size, left:left + size] / 255.0
    mean = np.array([0.48145466, 0.4578275, 0.40821073])
    std = np.array([0.26862954, 0.26130258, 0.27577711])
    ref = ((r - mean) / std).transpose(2, 0, 1)
    pil = load_encoder(str(model)).preprocess(im).numpy()
    assert np.abs(pil - ref).max() < 1e-5
    tv = load_encoder(str(model), processor_backend="torchvision").preprocess(im).numpy()
    assert np.abs(tv - ref).max() > 1e-3  # the other backend is really another resize


def test_authors_hierarchy_script_translated_one_to_one(tiny_clip_dir, tmp_path, monkeypatch):
    """matryoshka_hierarchy.sh's five invocations, run in order with their flags, sizes reduced
    (model, steps, batch, K, group fractions): each step finds what the previous one wrote at the
    authors' paths."""
    from helpers import make_image_folder

    names = [f"{i:05d}_Animalia_Chordata_{c}_Ord{o}_Fam{o}_Gen{i}_sp{i}"
             for i, (c, o) in enumerate([("Aves", 1), ("Aves", 1), ("Aves", 2), ("Mammalia", 3)])]
    inat = tmp_path / "inat"
    make_image_folder(inat / "train", num_classes=4, per_class=8, class_names=names)
    make_image_folder(inat / "val", num_classes=4, per_class=4, class_names=names, seed=5)
    monkeypatch.chdir(tmp_path)
    swaps = {"clip-vit-large-patch14-336": None, "/data/inat2021": str(inat), "110000": "60", "20000": "20",
             "10000": "30", "4096": "16", "109999": "59", "ae_100000.pt": "ae_40.pt", "8": "0"}
    fractions = ["0.002", "0.009", "0.035", "0.189", "0.765"]
    for script, py, argv in [i for i in INVOCATIONS if i[0] == "matryoshka_hierarchy.sh"]:
        args = []
        for a in argv:
            for old, new in swaps.items():
                if old in a and new is not None:
                    a = a.replace(old, new) if not old.isdigit() else (new if a == old else a)
            args.append(a)
        if fractions[0] in args:  # five groups need more latents than a 64-latent SAE has
            i = args.index(fractions[0])
            args[i:i + 5] = ["0.25", "0.75"]
        if py == "sae_train.py":
            args += ["--warmup_steps", "5", "--threshold_start_step", "10", "--device", "cpu", "--no_progress"]
        runs = [args]
        if py == "save_activations.py":
            args += ["--device", "cpu", "--no_progress", "--model_name", str(tiny_clip_dir)]
            if "--sae_path" not in args:  # their step 1 loops over train and val
                runs.append([a.replace("train", "val") for a in args])
        for a in runs:
            assert run_cli(SCRIPT_TO_COMMAND[py], *a) == 0, (py, a)
    h = json.loads(next(Path(tmp_path / "activations_dir").rglob("hierarchy_16.json")).read_text())
    assert [g["size"] for g in h["groups"]] == [16, 48]
