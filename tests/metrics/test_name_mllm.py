"""Names written by an MLLM (issue: names with scores, item 4) and names given by the user, each
scored like CLIP-word names: the plumbing on tiny random MLLMs of every family steering supports,
the resume per latent, and the one-line refusals."""

import json

import numpy as np
import pytest

from helpers import MLLM_FAMILIES, assert_results_read_back, run_cli, save_tiny_mllm
from saevlm import api


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """24 images, a tiny CLIP (text + vision) that extracts and embeds them, a random SAE's codes
    and their top-16 images."""
    from helpers import make_clip_named_run

    root = tmp_path_factory.mktemp("mllm_names")
    clip = make_clip_named_run(root, dict_size=24, k=6)
    return root, clip


def _name(root, out, *extra):
    return run_cli("name", "--codes_dir", root / "codes", "--embeddings_path", root / "emb", "--device", "cpu",
                   "--output", out, "--no_progress", *extra)


def test_names_from_an_mllm(clip_run, tmp_path, monkeypatch):
    """LLaVA-1.5 (tiny, random) describes each active latent's grid: every stored name is what
    the model answers when called directly on the same grid and prompt; similarity is the cosine of
    the name's CLIP text with the latent's mean image embedding; an interrupted run resumes at the
    next latent (the model is asked only about the latents not yet described)."""
    from saevlm.data.store import ActivationStore
    from saevlm.metrics import naming
    from saevlm.metrics.figures import open_store_images
    from saevlm.models.clip import ClipEncoder
    from saevlm.models.mllm import MLLM, load_mllm

    root, clip = clip_run
    llava = save_tiny_mllm("llava", tmp_path / "llava")
    args = ["--explainer", "mllm", "--mllm_model", llava, "--max_new_tokens", "3"]
    assert _name(root, tmp_path / "names.json", *args) == 0
    names = json.loads((tmp_path / "names.json").read_text())
    assert assert_results_read_back(tmp_path) == [tmp_path / "names.json"]
    assert names["explainer"] == "mllm" and names["mllm_model"] == str(llava) and names["prompt"] == naming.MLLM_PROMPT
    top = np.load(root / "codes" / "top_images_16.npy")
    values = np.load(root / "codes" / "top_images_16_values.npy")
    from saevlm.data.open import open_any_store
    images = open_store_images(open_any_store(root / "codes", "codes_dir"))
    model = load_mllm(str(llava))
    encoder = ClipEncoder(str(clip), "cpu")
    emb = ActivationStore(root / "emb").read(0, 24)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    named = [r for r in names["latents"] if r["names"]]
    assert len(named) == int((values[:, 0] > 0).sum()) > 5
    for rec in named[:3]:
        j = rec["id"]
        grid = naming._grid(images, [int(i) for i in top[j][values[j] > 0]])
        direct = " ".join(model.prompt(naming.MLLM_PROMPT, grid, 3).split())
        assert rec["names"][0][0] == direct and rec["margin"] is None
        m = emb[top[j][values[j] > 0]].mean(0)
        t = encoder.text([direct])[0]
        assert rec["names"][0][1] == pytest.approx(float(t @ (m / np.linalg.norm(m))), abs=1e-4)
    # resume: the answers file cut after two latents; only the others are asked again
    partial = tmp_path / "names.mllm.jsonl"
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # header, 2 latents, a cut-off line
    asked = []
    real_batch = MLLM.prompt_batch
    monkeypatch.setattr(MLLM, "prompt_batch",
                        lambda self, q, grids, n: asked.extend(grids) or real_batch(self, q, grids, n))
    (tmp_path / "names.json").unlink()
    assert _name(root, tmp_path / "names.json", *args, "--mllm_batch_size", "3") == 0
    assert len(asked) == len(named) - 2
    again = json.loads((tmp_path / "names.json").read_text())
    assert [r["names"] for r in again["latents"]] == [r["names"] for r in names["latents"]]


@pytest.mark.parametrize("family", MLLM_FAMILIES)
def test_every_mllm_family_can_name(clip_run, tmp_path, family):
    """Each family names every active latent, in batches of 4 grids of different sizes (so prompts
    of different token counts are padded together), and each batched answer is the answer the
    model gives that grid alone."""
    from saevlm.data.open import open_any_store
    from saevlm.metrics import naming
    from saevlm.metrics.figures import open_store_images
    from saevlm.models.mllm import load_mllm

    root, _ = clip_run
    model = save_tiny_mllm(family, tmp_path / family)
    assert _name(root, tmp_path / "names.json", "--explainer", "mllm", "--mllm_model", model,
                 "--max_new_tokens", "3", "--mllm_batch_size", "4") == 0
    names = json.loads((tmp_path / "names.json").read_text())
    named = [r for r in names["latents"] if r["names"]]
    assert named and all(isinstance(r["names"][0][0], str) and r["names"][0][0] for r in named)
    images = open_store_images(open_any_store(root / "codes", "codes_dir"))
    top = np.load(root / "codes" / "top_images_16.npy")
    grids = [naming._grid(images, [int(i) for i in top[0][:n]]) for n in (16, 4, 9)]  # 448, 224, 336 px
    mllm = load_mllm(str(model))
    alone = [mllm.prompt(naming.MLLM_PROMPT, g, 3) for g in grids]
    assert mllm.prompt_batch(naming.MLLM_PROMPT, grids, 3) == alone


def test_given_names_are_scored(clip_run, tmp_path):
    root, _ = clip_run
    (tmp_path / "mine.json").write_text(json.dumps({"0": "a striped pattern", "3": "red things"}))
    assert _name(root, tmp_path / "names.json", "--explainer", "given", "--names_file", tmp_path / "mine.json",
                 "--score_positives", "100000", "--score_negatives", "100000") == 0
    names = json.loads((tmp_path / "names.json").read_text())
    by_id = {r["id"]: r for r in names["latents"]}
    values = np.load(root / "codes" / "top_images_16_values.npy")
    for j, text in ((0, "a striped pattern"), (3, "red things")):
        if values[j, 0] > 0:
            assert by_id[j]["names"][0][0] == text
    assert all(not r["names"] for r in names["latents"] if r["id"] not in (0, 3))
    assert names["explainer"] == "given"


def test_mllm_refusals_are_one_line_before_any_work(clip_run, tmp_path, capsys):
    root, clip = clip_run
    assert _name(root, tmp_path / "n.json", "--explainer", "mllm") == 2
    assert "--explainer mllm: needs --mllm_model" in capsys.readouterr().err
    assert _name(root, tmp_path / "n.json", "--explainer", "mllm", "--mllm_model", clip, "--mllm_batch_size", "0") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("saevlm name: error: --mllm_batch_size 0")
    assert _name(root, tmp_path / "n.json", "--explainer", "mllm") == 2
    assert "--explainer mllm: needs --mllm_model" in capsys.readouterr().err
    assert _name(root, tmp_path / "n.json", "--explainer", "mllm", "--mllm_model", clip) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("saevlm name: error: --mllm_model") and "is not a supported MLLM" in err, err
    assert _name(root, tmp_path / "n.json", "--explainer", "mllm", "--mllm_model", "nobody/no-such-mllm") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("saevlm name: error: --mllm_model") and "Traceback" not in err, err
    assert not (tmp_path / "n.json").exists() and not (tmp_path / "n.mllm.jsonl").exists()


def test_token_level_stores_show_the_mllm_the_heatmap(tmp_path, tiny_clip_dir, monkeypatch):
    """Codes of every token: each grid tile is the explorer's overlay (the latent's activation per
    patch in red), not the plain image; the MLLM is shown exactly those tiles."""
    from helpers import make_small_run, save_tiny_clip_model
    from saevlm.data.open import open_any_store
    from saevlm.metrics import naming
    from saevlm.metrics.figures import open_store_images
    from saevlm.models.mllm import MLLM

    run = make_small_run(tmp_path, tiny_clip_dir, all_tokens=True)
    clip = save_tiny_clip_model(tmp_path / "clipmodel")
    images_dir = tmp_path / "images"
    assert api.run("embed", model_name=clip, embeddings_path=tmp_path / "emb", dataset_name="imagefolder",
                   data_path=images_dir, num_workers=0, device="cpu", no_progress=True) == 0
    shown = []
    real_batch = MLLM.prompt_batch
    monkeypatch.setattr(MLLM, "prompt_batch", lambda self, q, grids, n: shown.extend(grids) or real_batch(self, q, grids, n))
    llava = save_tiny_mllm("llava", tmp_path / "llava")
    assert api.run("name", codes_dir=run / "codes", embeddings_path=tmp_path / "emb", device="cpu", no_progress=True,
                   no_score=True, explainer="mllm", mllm_model=llava, max_new_tokens=2) == 0
    store = open_any_store(run / "codes", "codes_dir")
    top = np.load(run / "codes" / "top_images_16.npy")
    values = np.load(run / "codes" / "top_images_16_values.npy")
    first = int(np.flatnonzero(values[:, 0] > 0)[0])
    ids = [int(i) for i in top[first][values[first] > 0]]
    tiles, why = naming.heatmap_tiles(store, None, tmp_path / "cache")
    assert tiles is not None, why
    expected = naming._grid(None, ids, tile=lambda i: tiles(first, i))
    plain = naming._grid(open_store_images(store), ids)
    got = shown[0]
    assert np.array_equal(np.asarray(got), np.asarray(expected))
    assert not np.array_equal(np.asarray(got), np.asarray(plain))
