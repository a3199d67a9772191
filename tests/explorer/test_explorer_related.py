"""Related latents by what they fire on (metrics/coactivation.py): the co-activation neighbours and
near-duplicate clusters of a planted store, against a brute-force Jaccard over the dense codes."""

import json
from pathlib import Path

import numpy as np
import pytest

from saevlm import api


def _planted_sae(path: Path, acts: np.ndarray, dict_size: int = 48) -> dict:
    """A BatchTopK SAE (threshold 0) whose latents 3, 5, 7 have the same encoder row and bias (the
    same active images: Jaccard 1) but unrelated decoder rows, latent 11 the same row with a lower
    bias (a subset of their images), latent 20 dead (bias -1e6) with latent 3's decoder row."""
    import torch
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE

    d = acts.shape[1]
    torch.manual_seed(0)
    sae = BatchTopKSAE(d, dict_size, k=8)
    centred = acts - acts.mean(0)
    with torch.no_grad():
        sae.threshold.fill_(0.0)
        sae.b_dec.copy_(torch.from_numpy(acts.mean(0)))
        w = torch.randn(dict_size, d)
        proj = centred @ w.numpy().T  # [N, K]
        sae.encoder.weight.copy_(w)
        sae.encoder.bias.copy_(torch.from_numpy(-np.median(proj, axis=0)))  # about half the images each
        for j in (5, 7, 11):
            sae.encoder.weight[j] = w[3]
            sae.encoder.bias[j] = sae.encoder.bias[3]
        sae.encoder.bias[11] -= float(np.std(proj[:, 3])) * 0.5
        sae.encoder.bias[20] = -1e6
        dec = torch.randn(d, dict_size)
        dec[:, 20] = dec[:, 3]
        sae.decoder.weight.copy_(dec)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(sae.state_dict(), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {"dict_class": "BatchTopKSAE", "activation_dim": d,
                                                              "dict_size": dict_size}}))
    return {"duplicates": (3, 5, 7), "subset": 11, "dead": 20}


def _brute_jaccard(dense: np.ndarray) -> np.ndarray:
    a = dense > 0
    inter = a.T.astype(np.int64) @ a.astype(np.int64)
    union = a.sum(0)[:, None] + a.sum(0)[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0), inter


@pytest.fixture(scope="module")
def planted_run(explorer_run, tmp_path_factory):
    from saevlm.data.store import ActivationStore

    root = tmp_path_factory.mktemp("planted")
    store = ActivationStore(explorer_run / "acts" / "post_mlp_residual_1")
    plan = _planted_sae(root / "sae", store.read(0, store.num_rows))
    assert api.run("encode", sae_path=root / "sae", activations_dir=store.path, output_dir=root / "run" / "codes",
                   no_progress=True) == 0
    return root / "run", plan


def test_co_activation_neighbours_and_duplicates_match_brute_force(planted_run):
    from scipy.sparse.csgraph import connected_components

    from saevlm.data.codes import CodeStore
    from saevlm.explorer.app import Explorer
    from saevlm.metrics.coactivation import DUPLICATE_JACCARD

    run, plan = planted_run
    dense = CodeStore(run / "codes").read(0, CodeStore(run / "codes").num_rows)
    jac, inter = _brute_jaccard(dense)
    K = dense.shape[1]
    ex = Explorer(run, log=lambda *a: None)
    view = ex.sae("codes")
    rel = view.related
    assert rel.basis == "active images"
    for i in range(K):  # the first 8 by Jaccard, then shared images, then id: the same lists
        cands = sorted((-jac[i, j], -inter[i, j], j) for j in range(K) if j != i and inter[i, j] > 0)[:8]
        assert [j for _, _, j in cands] == [int(x) for x in rel.ids_kn[i] if x >= 0], i
        np.testing.assert_allclose(rel.jaccard_kn[i][:len(cands)], [-c[0] for c in cands], rtol=1e-6)
    # the planted near-duplicates are one cluster; clusters are the brute-force components
    dup = jac >= DUPLICATE_JACCARD
    np.fill_diagonal(dup, False)
    n, labels = connected_components(dup, directed=False)
    expected = [c for c in range(n) if (labels == c).sum() > 1]
    assert rel.num_clusters == len(expected) >= 1
    a, b, c = plan["duplicates"]
    assert rel.cluster_k[a] == rel.cluster_k[b] == rel.cluster_k[c] >= 0
    assert set(rel.ids_kn[a][:2].tolist()) == {b, c} and rel.jaccard_kn[a][0] == 1.0
    # pages: the duplicates flagged on latent 3's page, the dead latent marked in the decoder list,
    # the cluster count on the SAE page
    page = ex.latent_page("codes", a)
    related = page[page.index('id="related"'):page.index("</ol>", page.index('id="related"'))]
    assert f'href="{b}.html"' in related and f'href="{c}.html"' in related and "near-duplicate" in related
    assert "Near-duplicate cluster with" in page
    nearest = page[page.index('id="nearest"'):page.index("</ol>", page.index('id="nearest"'))]
    dead_item = next(li for li in nearest.split("<li>") if f'href="{plan["dead"]}.html"' in li)
    assert "dead (never active)" in dead_item
    alive_items = [li for li in nearest.split("<li>")[1:] if f'href="{plan["dead"]}.html"' not in li]
    assert alive_items and not any("dead (never active)" in li for li in alive_items)
    table = ex.table_page("codes")
    assert f"{len(expected)} near-duplicate cluster" in table


def test_related_latents_of_token_codes_count_images_not_tokens():
    """A token-level store: a latent active on three tokens of one image is active on one image."""
    import scipy.sparse as sp

    from saevlm.data.codes import CSRChunk
    from saevlm.metrics.coactivation import activity_matrix, related_latents

    # 2 images x 3 tokens; latent 0 on every token of image 0, latent 1 on one token of each image
    dense = np.array([[1, 1], [1, 0], [1, 0], [0, 1], [0, 0], [0, 0]], np.float32)
    csr = sp.csr_matrix(dense)
    chunk = CSRChunk(0, csr.indptr, csr.indices, csr.data, 2)
    b = activity_matrix([chunk], 2, np.repeat([0, 1], 3))
    assert b.shape == (2, 2) and b.toarray().tolist() == [[1, 1], [0, 1]]
    rel = related_latents(b)
    assert rel.active_k.tolist() == [1, 2] and rel.jaccard_kn[0, 0] == pytest.approx(0.5)
    assert rel.shared_kn[0, 0] == 1


def test_ms_baseline_quantiles_hold_for_fresh_random_sets():
    """The baseline's set score is the MS of a latent at 1 on the set and 0 elsewhere (brute force
    over pairs, Eq. 5-9), and fresh random sets exceed its 95th percentile about 5 % of the time."""
    from saevlm.explorer.stats import baseline_at, ms_baseline

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 24))
    e = centres[rng.integers(0, 5, 600)] + 0.8 * rng.standard_normal((600, 24))
    u = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)
    base = ms_baseline(u, seed=0)
    size, q50, q95 = baseline_at(base, 16)
    assert size == 16 and q50 < q95

    def brute(pick):  # the authors' definition with ã = 1 on the set: mean cosine over distinct pairs
        s = [float(u[a] @ u[b]) for i, a in enumerate(pick) for b in pick[i + 1:]]
        return sum(s) / len(s)

    fresh = np.array([brute(list(rng.choice(600, 16, replace=False))) for _ in range(600)])
    assert 0.02 <= (fresh > q95).mean() <= 0.09, (fresh > q95).mean()
    assert 0.4 <= (fresh <= q50).mean() <= 0.6
    # a set of one cluster is far above chance
    one = np.flatnonzero(np.argmax(e @ centres.T, axis=1) == 0)[:16].tolist()
    assert brute(one) > q95


def test_ms_baseline_and_density_plot_on_the_pages(explorer_run, tmp_path):
    """The latent page places its MS against random sets of its size; the SAE page's density plot
    lists, on a click, exactly the latents of that cell (in the browser)."""
    import re
    import threading

    from saevlm.explorer.app import Explorer
    from saevlm.explorer.server import make_server
    from cdp import dump_dom
    from test_explorer import parse

    ex = Explorer(explorer_run, tmp_path / "cache")
    view = ex.sae("codes")
    ms, _ = view.ms
    j = int(np.nanargmax(ms))
    page = ex.latent_page("codes", j)
    assert 'id="msbase"' in page and f"(it is active on {int(view.stats['active'][j])})" in page
    # its own 95 % interval over images (ms writes scores_ci95.npy)
    ci = np.load(next((explorer_run / "codes").glob("ms_*/scores_ci95.npy")))[j]
    assert f"95 % interval over images [{ci[0]:.3f}, {ci[1]:.3f}]" in page
    table = ex.table_page("codes")
    cell = re.search(r'<a href="#(f_lo=[^"]+)" class="cell"><rect[^>]*><title>(\d+) latents', table)
    assert cell, "no density cell"
    q, n = cell.group(1), int(cell.group(2))
    params = dict(p.split("=") for p in q.split("&"))
    freq, mean = np.asarray(view.stats["freq"]), np.asarray(view.stats["mean"])
    expected = int(((freq >= float(params["f_lo"]) * 0.99999) & (freq <= float(params["f_hi"]) * 1.00001)
                    & (mean >= float(params["a_lo"]) * 0.99999) & (mean <= float(params["a_hi"]) * 1.00001)).sum())
    assert expected >= n >= 1
    srv = make_server(ex, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        dom = dump_dom(f"http://127.0.0.1:{srv.server_address[1]}/sae/codes/index.html#{q}&per=500")
        assert f"{expected} of {view.num_latents} latents" in dom and len(parse(dom).rows) == expected
    finally:
        srv.shutdown()
        srv.server_close()
