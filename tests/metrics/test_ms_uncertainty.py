"""The MS's uncertainty over images (metrics/monosemanticity.py MSJackknife): the closed-form
delete-one jackknife against literally deleting each image and recomputing the authors' MS, and
the 95 % intervals' coverage on the synthetic world."""

import json

import numpy as np
import pytest

from saevlm import api
from saevlm.data.codes import dense_to_csr
from saevlm.metrics.monosemanticity import MSAccumulator, jackknife_interval
from test_ms import ms_brute_force


def _jackknife_brute(a: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(SE per neuron, change of the mean over scored neurons per deleted image), literally."""
    full = ms_brute_force(a, e)
    N = len(a)
    reps = np.stack([ms_brute_force(np.delete(a, n, 0), np.delete(e, n, 0)) for n in range(N)])  # [N, K]
    se = np.sqrt((N - 1) / N * ((reps - reps.mean(0)) ** 2).sum(0))
    scored = ~np.isnan(full)
    deltas = np.nan_to_num(reps[:, scored] - full[scored]).sum(1) / scored.sum()
    return se, deltas


def _ours(a, e, sparse: bool, chunk: int = 7):
    acc = MSAccumulator(a.shape[1], e.shape[1])
    parts = [(a[s:s + chunk], e[s:s + chunk]) for s in range(0, len(a), chunk)]
    for x, y in parts:
        if sparse:
            acc.add_csr(*dense_to_csr(x), y, rows_per_block=3)
        else:
            acc.add_dense(x, y)
    jk = acc.jackknife()
    for x, y in parts:
        if sparse:
            jk.add_csr(*dense_to_csr(x), y)
        else:
            jk.add_dense(x, y)
    return acc.scores(), jk.result()


def test_closed_form_jackknife_equals_deleting_each_image():
    rng = np.random.default_rng(0)
    N, K, d = 30, 12, 6
    e = rng.standard_normal((N, d))
    # sparse codes, each latent off on at least two images (its minimum, 0, never moves)
    codes = np.maximum(rng.standard_normal((N, K)) * 2, 0) * (rng.random((N, K)) < 0.5)
    codes[:2] = 0
    codes = codes.astype(np.float32)  # as code stores hold them
    scores, unc = _ours(codes, e, sparse=True)
    se, deltas = _jackknife_brute(codes, e)
    ok = ~np.isnan(scores) & np.isfinite(unc["se"])
    assert ok.sum() >= 8
    np.testing.assert_allclose(unc["se"][ok], se[ok], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(unc["image_deltas"], deltas, rtol=1e-7, atol=1e-12)
    assert np.allclose(unc["ci95"][ok, 0], np.clip(scores[ok] - 1.96 * se[ok], -1, 1))
    # dense raw neurons with a tied minimum (two images at it: deleting one keeps the minimum)
    a = rng.standard_normal((N, K)) * 3 + 5
    a[[3, 11]] = a.min(0) - 1
    scores_d, unc_d = _ours(a, e, sparse=False)
    se_d, deltas_d = _jackknife_brute(a, e)
    np.testing.assert_allclose(unc_d["se"], se_d, rtol=1e-7)
    np.testing.assert_allclose(unc_d["image_deltas"], deltas_d, rtol=1e-6, atol=1e-12)
    # a latent active on two images: undefined without either, said as an infinite SE
    two = np.zeros((N, 1))
    two[[4, 9], 0] = [1.0, 2.0]
    s2, u2 = _ours(two, e, sparse=True)
    assert np.isfinite(s2[0]) and np.isinf(u2["se"][0]) and u2["ci95"][0].tolist() == [-1.0, 1.0]


def test_intervals_cover_the_ms_of_fresh_image_draws(tmp_path):
    """The synthetic world's concepts as latents, scored on 1,500 images with 95 % intervals; the
    "truth" is each concept's MS on 15,000 fresh images of the same world, drawn in the same split
    (its own noise is a third of the interval's or less). Coverage over the concepts active on at
    least 16 of the 1,500 images."""
    from saevlm.synthetic import WorldParams, generate

    w = generate(WorldParams(branching=(6, 4, 3), num_train=10, num_val=16_500, zipf=0.6, embed_noise=0.3, seed=2))
    z, emb = w["val"]["z"], w["val"]["embeds"]
    small_z, small_e, big_z, big_e = z[:1500], emb[:1500], z[1500:], emb[1500:]
    scores, unc = _ours(small_z, small_e, sparse=True, chunk=512)
    acc = MSAccumulator(big_z.shape[1], big_e.shape[1])
    acc.add_csr(*dense_to_csr(big_z), big_e)
    truth = acc.scores()
    active = (small_z > 0).sum(0)
    ok = ~np.isnan(scores) & ~np.isnan(truth) & (active >= 16) & np.isfinite(unc["se"])
    lo, hi = unc["ci95"][ok, 0], unc["ci95"][ok, 1]
    covered = (lo <= truth[ok]) & (truth[ok] <= hi)
    rate = covered.mean()
    print(f"\n95 % intervals cover the fresh-draw MS for {covered.sum()} of {ok.sum()} concepts ({rate:.1%})")
    assert ok.sum() >= 60
    assert 0.90 <= rate <= 0.98, rate


def test_ms_command_writes_intervals_without_moving_the_score(tmp_path):
    w = tmp_path / "w"
    assert api.run("synthetic", output_dir=w, num_train=2000, num_val=300) == 0
    out = tmp_path / "ms"
    assert api.run("ms", activations_dir=w / "val", embeddings_path=w / "embeddings_val", output_dir=out,
                   no_progress=True) == 0
    from saevlm.data.store import ActivationStore

    a = ActivationStore(w / "val").read(0, 300)
    e = ActivationStore(w / "embeddings_val").read(0, 300)
    scores = np.load(out / "scores.npy")
    np.testing.assert_allclose(scores, ms_brute_force(a, e), rtol=1e-9)  # the point estimate, unchanged
    se, ci = np.load(out / "scores_se.npy"), np.load(out / "scores_ci95.npy")
    assert se.shape == scores.shape and ci.shape == (len(scores), 2) and (se > 0).all()
    rec = json.loads((out / "ms.json").read_text())
    u = rec["uncertainty"]
    deltas = np.load(out / "image_deltas.npy")
    assert len(deltas) == 300 and u["mean_se"] == pytest.approx(jackknife_interval(deltas))
    assert u["mean_ci95"][0] < rec["mean"] < u["mean_ci95"][1]
    assert set(rec["files"]) >= {"scores.npy", "scores_se.npy", "scores_ci95.npy", "image_deltas.npy"}
    assert "jackknife" in (out / "metric_stats.txt").read_text()
    # --no-uncertainty: one pass, no interval files
    out2 = tmp_path / "ms2"
    assert api.run("ms", activations_dir=w / "val", embeddings_path=w / "embeddings_val", output_dir=out2,
                   no_progress=True, uncertainty=False) == 0
    assert not (out2 / "scores_se.npy").exists() and "uncertainty" not in json.loads((out2 / "ms.json").read_text())


def test_report_gives_intervals_and_paired_differences(tmp_path):
    """Two SAEs (x1, x2) and the raw neurons scored on the same 150 images: the report's mean MS
    carries the jackknife interval, and 'x2 - x1' is paired over images; both equal literally
    deleting each image and recomputing the means."""
    import re

    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore

    run = tmp_path / "run"
    w = run / "world"
    assert api.run("synthetic", output_dir=w, num_train=1500, num_val=150) == 0
    assert api.run("train", layout="trainers", activations_dir=w / "train", checkpoints_dir=run / "ck",
                   expansion_factor=[1, 2], k=4, steps=60, batch_size=128, warmup_steps=5, threshold_start_step=10,
                   device="cpu", no_progress=True) == 0
    codes = {}
    for t, x in (("trainer_0", 1), ("trainer_1", 2)):
        codes[x] = run / f"codes_x{x}"
        assert api.run("encode", sae_path=run / "ck" / t, activations_dir=w / "val", output_dir=codes[x],
                       no_progress=True) == 0
    for store in (w / "val", codes[1], codes[2]):
        assert api.run("ms", activations_dir=store, embeddings_path=w / "embeddings_val", device="cpu",
                       no_progress=True) == 0
    assert api.run("report", run_dir=run, no_grids=True) == 0
    text = (run / "report" / "report.md").read_text() if (run / "report" / "report.md").is_file() else \
        next(run.rglob("report.md")).read_text()
    e = ActivationStore(w / "embeddings_val").read(0, 150)
    dense = {x: CodeStore(codes[x]).read(0, 150) for x in (1, 2)}

    def mean_ms(a, e):
        s = ms_brute_force(a, e)
        return np.nanmean(s), ~np.isnan(s)

    full = {x: mean_ms(dense[x], e) for x in (1, 2)}
    reps = {x: [] for x in (1, 2)}
    for n in range(150):
        for x in (1, 2):
            s = ms_brute_force(np.delete(dense[x], n, 0), np.delete(e, n, 0))[full[x][1]]
            reps[x].append(np.nanmean(s))
    diff_reps = np.array(reps[2]) - np.array(reps[1])
    se = np.sqrt(149 / 150 * ((diff_reps - diff_reps.mean()) ** 2).sum())
    diff = full[2][0] - full[1][0]
    row = next(line for line in text.splitlines() if "x2 - x1" in line)
    got = [float(v) for v in re.findall(r"[+-]\d\.\d{3}", row)[:3]]
    assert got == pytest.approx([diff, diff - 1.96 * se, diff + 1.96 * se], abs=1.5e-3), (row, diff, se)
    assert ("| yes |" in row) == (diff - 1.96 * se > 0 or diff + 1.96 * se < 0) or abs(abs(diff) - 1.96 * se) < 2e-3
    # the mean cells carry an interval, not only ± std
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \(n=", text)
