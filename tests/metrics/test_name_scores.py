"""The detection score of every latent's name (issue: names with scores): can the name's CLIP
text pick the latent's held-out activating images from random images where it is silent (AUROC),
against a random other latent's name. Planted embeddings, where the right answer is known."""

import json

import numpy as np
import pytest

from helpers import run_cli
from saevlm import api

WORDS = ["otter", "pencil", "violin", "tulip"]
N, D = 400, 16


def auroc_brute(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def test_auroc_equals_the_pairwise_count_with_ties():
    from saevlm.metrics.naming import auroc

    rng = np.random.default_rng(0)
    for _ in range(50):
        pos = rng.integers(0, 5, rng.integers(1, 20)).astype(float)  # many ties
        neg = rng.integers(0, 5, rng.integers(1, 20)).astype(float)
        assert auroc(pos, neg) == pytest.approx(auroc_brute(pos, neg), abs=1e-12)
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0 and auroc([0.0], [1.0]) == 0.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """400 images of 4 classes; image embeddings = the class prototype + noise; text embeddings =
    the prototypes. Latents 0-3 fire on every image of class j (monosemantic), latents 4-7 on a
    random quarter of all images (a mixture)."""
    from saevlm.data.codes import CodeStoreWriter, CSRParts
    from saevlm.data.writer import StoreWriter

    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), N // 4)
    protos = np.eye(4, D, dtype=np.float32)
    prov = {"model": {"name": "planted", "source": "planted"}, "hook": {"attachment_point": "x", "layer": -1},
            "tokens": {"selection": "pooled"},
            "dataset": {"name": "planted", "split": "val", "paths_sha256": "planted", "num_selected": N}}
    rows = np.stack([np.arange(N), -np.ones(N, np.int64)], 1)
    emb = StoreWriter(root / "emb", kind="embeddings", dim=D, dtype="fp32", images_per_shard=N, num_images=N,
                      provenance=prov, software={})
    emb.write_shard(0, (protos[labels] + 0.3 * rng.standard_normal((N, D))).astype(np.float32), rows, 0, N)
    emb.finalize()
    codes = np.zeros((N, 8), np.float32)
    for j in range(4):
        codes[labels == j, j] = rng.exponential(1.0, N // 4) + 0.1
    for j in range(4, 8):
        on = rng.random(N) < 0.25
        codes[on, j] = rng.exponential(1.0, int(on.sum())) + 0.1
    w = CodeStoreWriter(root / "codes", encode=None, input_dim=D, kind="codes", dim=8, dtype="fp32",
                        images_per_shard=N, num_images=N, provenance=prov, software={})
    nz = codes != 0
    w.write_shard(0, CSRParts([(np.concatenate([[0], np.cumsum(nz.sum(1))]).astype(np.int64),
                             np.nonzero(nz)[1].astype(np.int32), codes[nz])]), rows, 0, N)
    w.finalize()
    np.save(root / "protos.npy", protos)
    (root / "vocab.txt").write_text("\n".join(WORDS))
    assert api.run("top-images", activations_dir=root / "codes", k=16, no_progress=True) == 0
    return root, codes, protos[labels] + 0  # (the embeddings are read back from the store below)


def _name(root, out, *extra):
    return run_cli("name", "--codes_dir", root / "codes", "--embeddings_path", root / "emb", "--text_embeddings",
                   root / "protos.npy", "--vocab", root / "vocab.txt", "--output", out, "--no_progress", *extra)


def test_detection_score_equals_brute_force_and_separates_right_names(planted, tmp_path):
    from saevlm.data.store import ActivationStore

    root, codes, _ = planted
    # every held-out activating image and every silent image: the score is then exact, not sampled
    assert _name(root, tmp_path / "names.json", "--score_positives", "100000", "--score_negatives", "100000") == 0
    names = json.loads((tmp_path / "names.json").read_text())["latents"]
    emb = ActivationStore(root / "emb").read(0, N)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    text = np.load(root / "protos.npy")
    top = np.load(root / "codes" / "top_images_16.npy")
    for j, rec in enumerate(names):
        word = rec["names"][0][0]
        active = codes[:, j] > 0
        held = active.copy()
        held[top[j]] = False
        silent = ~active
        t = text[WORDS.index(word)]
        assert rec["detection_n"] == [int(held.sum()), int(silent.sum())]
        assert rec["detection"] == pytest.approx(auroc_brute(emb[held] @ t, emb[silent] @ t), abs=1e-4)
        other = rec["detection_baseline_of"]
        assert other != j
        t_other = text[WORDS.index(names[other]["names"][0][0])]
        assert rec["detection_baseline"] == pytest.approx(auroc_brute(emb[held] @ t_other, emb[silent] @ t_other),
                                                          abs=1e-4)
    # the planted answer: monosemantic latents named right pick their images; mixtures do not
    for j in range(4):
        assert names[j]["names"][0][0] == WORDS[j]
        assert names[j]["detection"] > 0.95 and names[j]["detection"] - names[j]["detection_baseline"] > 0.3
    assert all(0.3 < names[j]["detection"] < 0.75 for j in range(4, 8)), [names[j]["detection"] for j in range(4, 8)]


def test_sampled_detection_score_is_close_and_weak_names_are_flagged(planted, tmp_path):
    """The default sample (32 positives, 256 negatives) gives nearly the exhaustive score, and
    the explorer flags the mixtures' names as weak (score near the baseline) but not the others."""
    from saevlm.explorer.app import Explorer

    root, _, _ = planted
    assert _name(root, tmp_path / "exact.json", "--score_positives", "100000", "--score_negatives", "100000") == 0
    assert _name(root, root / "codes" / "names.json") == 0
    exact = json.loads((tmp_path / "exact.json").read_text())["latents"]
    sampled = json.loads((root / "codes" / "names.json").read_text())["latents"]
    for a, b in zip(exact, sampled):
        assert b["detection_n"] == [32, min(256, a["detection_n"][1])]
        assert b["detection"] == pytest.approx(a["detection"], abs=0.12)
    ex = Explorer(root, cache_dir=tmp_path / "cache", log=lambda *x: None)
    flagged = []
    for j, rec in enumerate(sampled):
        page = ex.latent_page("codes", j)
        assert f"detection AUROC {rec['detection']:.2f} on 32 held-out activating" in page
        weak = "detection AUROC near the baseline" in page
        # the rule: within 0.1 of a random other name's score, or within two standard errors of it
        gap = rec["detection"] - rec["detection_baseline"]
        assert weak == (gap < max(0.1, 2 * rec["detection_se"])), (j, rec)
        flagged.append(weak)
    assert flagged[:4] == [False] * 4 and sum(flagged[4:]) >= 3, flagged  # the mixtures (a 2.6-SE draw escapes)
