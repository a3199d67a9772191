"""Matryoshka hierarchy: LCA depths against a direct computation, and the paper's claim in
miniature."""

import json

import numpy as np

from saevlm import api
from saevlm.metrics.hierarchy import hierarchy_table, lca_depths, level_codes, majority


def test_lca_depth_definition():
    tax = [["A", "a1", "x"], ["A", "a1", "y"], ["A", "a2", "z"], ["B", "b1", "w"]]
    codes = level_codes(tax)
    d = lca_depths(np.array([[0, 1, 2, 3]]), codes)[0]
    # pairs in triu order: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)
    assert d.tolist() == [2, 1, 0, 1, 0, 0]
    assert majority(np.array([[0, 0, 1, 1, 2]])).tolist() == [0]  # tie -> shallower
    # same leaf twice: full depth
    assert lca_depths(np.array([[0, 0]]), codes)[0].tolist() == [3]


def test_hierarchy_table_groups_and_near_dead():
    tax = [["A", "a"], ["A", "b"], ["B", "c"]]
    labels = np.array([0, 0, 1, 2, 2, 2])
    top = np.array([[0, 1], [0, 2], [3, 4], [4, 5]])  # images per neuron
    kth = np.array([1.0, 1.0, 0.0, 1.0])  # neuron 2 near-dead
    t = hierarchy_table(top, kth, labels, tax, [2, 2], ms_k=np.array([0.5, 0.7, np.nan, 0.9]))
    g0, g1 = t["groups"]
    assert g0["lca_depth_mean_rounded"] == 1.5  # neuron0: depth 2; neuron1: depth 1
    assert g1["neurons_scored"] == 1 and g1["left_out_near_dead"] == 0.5
    assert g1["lca_depth_mean_rounded"] == 2.0 and g1["ms_mean"] == 0.9


def _best_concepts(sae_dir, world):
    """The planted concept each latent's decoder direction is closest to."""
    from saevlm.sae.checkpoint import load_sae
    ae = load_sae(str(sae_dir)).ae
    w = ae.W_dec.detach().numpy() if hasattr(ae, "W_dec") else ae.decoder.weight.detach().numpy().T
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.abs(w @ np.load(world / "directions.npy").T).argmax(1)


def _best_concept_levels(sae_dir, world):
    from saevlm.sae.checkpoint import load_sae
    sae = load_sae(str(sae_dir))
    ae = sae.ae
    w = ae.W_dec.detach().numpy() if hasattr(ae, "W_dec") else ae.decoder.weight.detach().numpy().T
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    truth = np.load(world / "directions.npy")
    levels = np.array([c["level"] for c in json.loads((world / "world.json").read_text())["concepts"]])
    return levels[np.abs(w @ truth.T).argmax(1)]


def test_matryoshka_early_groups_hold_coarser_concepts(tmp_path, capsys):
    """The paper's iNat claim in miniature (App. E.3).

    World: a 6/4/4 concept tree, leaves used uniformly and ancestors nearly as strong as leaves
    (--zipf 0 --ancestor_scale 0.9), so coarse concepts carry the most variance. Groups sized
    like the tree levels (6 / 24 / 98 latents). A perfect hierarchy would give ground-truth
    levels 1 / 2 / 3; a calibration run gave 1.00 / 2.25 / 2.91 and LCA depths 1.17 / 1.58 / 2.00,
    against 2.74 and 1.82 for every slice of a BatchTopK SAE of the same size. We require the
    levels and depths to rise with the group index, group 0 at most 1.5 and the last group at
    least 2.5 (half the ideal separation), and an LCA rise of at least 0.4 from first to last.
    """
    w = tmp_path / "w"
    assert api.run("synthetic", output_dir=w, zipf=0, ancestor_scale=0.9) == 0
    assert api.run("train", layout="trainers", activations_dir=w / "train", checkpoints_dir=tmp_path / "ck",
                   sae_model=["matryoshka_batch_top_k", "batch_top_k"], expansion_factor=[2], k=4, steps=2000,
                   batch_size=1024, warmup_steps=100, threshold_start_step=200, log_steps=2000, val_rows=2000,
                   group_fractions=[0.046875, 0.1875, 0.765625], device="cpu", no_progress=True) == 0
    results = {}
    for name, trainer in (("matryoshka", "trainer_0"), ("batch_top_k", "trainer_1")):
        codes = tmp_path / f"codes_{name}"
        assert api.run("encode", sae_path=tmp_path / "ck" / trainer, activations_dir=w / "val", output_dir=codes,
                       no_progress=True) == 0
        assert api.run("top-images", activations_dir=codes, device="cpu", no_progress=True) == 0
        assert api.run("hierarchy", activations_dir=codes, group_fractions=[0.046875, 0.1875, 0.765625]) == 0
        table = json.loads((codes / "hierarchy_16.json").read_text())
        lca = [g["lca_depth_mean_rounded"] for g in table["groups"]]
        levels = _best_concept_levels(tmp_path / "ck" / trainer, w)
        gl = [levels[a:b].mean() for a, b in ((0, 6), (6, 30), (30, 128))]
        results[name] = (gl, lca)
    with capsys.disabled():
        print(f"\nhierarchy on the synthetic world: ground-truth level per group / LCA depth per group: "
              f"{ {k: ([round(x, 2) for x in v[0]], v[1]) for k, v in results.items()} }")
    gl, lca = results["matryoshka"]
    assert gl[0] < gl[1] < gl[2] and gl[0] <= 1.5 and gl[2] >= 2.5, results
    assert lca[0] < lca[1] < lca[2] and lca[2] - lca[0] >= 0.4, results

    # the explorer walks the planted hierarchy: a latent's first parent (the most co-active latent
    # of a coarser group) stands for the planted parent of the concept the latent stands for
    from saevlm.explorer.app import Explorer

    view = Explorer(tmp_path / "codes_matryoshka", log=lambda *a: None).sae("store")
    rel = view.related
    concept = _best_concepts(tmp_path / "ck" / "trainer_0", w)
    parent = np.array([c["parent"] for c in json.loads((w / "world.json").read_text())["concepts"]])
    groups = view.groups()
    # latents of finer groups that stand for a concept below the top level, and fire at all
    asked = [j for j in range(view.num_latents) if groups[j] > 0 and parent[concept[j]] >= 0 and rel.active_k[j] > 0]
    found = [j for j in asked if rel.parents_kp[j, 0] >= 0 and concept[rel.parents_kp[j, 0]] == parent[concept[j]]]
    rate = len(found) / len(asked)
    with capsys.disabled():
        print(f"explorer parents = planted parents for {len(found)} of {len(asked)} latents ({rate:.0%})")
    assert len(asked) >= 60 and rate >= 0.6, (len(found), len(asked))
    page = Explorer(tmp_path / "codes_matryoshka", log=lambda *a: None).latent_page("store", found[0])
    assert 'id="parents"' in page and f'href="{rel.parents_kp[found[0], 0]}.html"' in page
    table = Explorer(tmp_path / "codes_matryoshka", log=lambda *a: None).table_page("store")
    assert 'id="tree"' in table
