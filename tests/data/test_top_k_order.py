"""The order of every top-k list (by latent, value descending, lower row first), written once in
data/topimages.latent_value_row_order, checked against Python's sort for each place that uses it:
the shards' merge, top-images on a code store and the running top-k on dense blocks."""

import numpy as np

from saevlm.data.topimages import latent_value_row_order, merge_top_k


def _brute_top_k(rows_mc: np.ndarray, values_mc: np.ndarray, k: int):
    """Per column, the k best entries by (value desc, row asc), empty places (row -1) last."""
    out_r, out_v = [], []
    for c in range(rows_mc.shape[1]):
        entries = sorted(zip(rows_mc[:, c].tolist(), values_mc[:, c].tolist()),
                         key=lambda e: (e[0] < 0, -e[1], e[0]))[:k]
        out_r.append([e[0] for e in entries])
        out_v.append([e[1] for e in entries])
    return np.array(out_r).T, np.array(out_v, dtype=np.float32).T


def test_the_order_is_latent_then_value_descending_then_row():
    rng = np.random.default_rng(0)
    lat, val, row = rng.integers(0, 4, 300), rng.integers(0, 3, 300).astype(np.float32), rng.permutation(300)
    got = latent_value_row_order(lat, val, row)
    want = sorted(range(300), key=lambda i: (lat[i], -val[i], row[i]))
    assert got.tolist() == want


def test_merged_shard_lists_are_the_brute_force_top_k():
    rng = np.random.default_rng(1)
    for trial in range(50):
        k, columns = 4, 6
        rows = [rng.choice(1000, size=(k, columns)) for _ in range(3)]
        values = [rng.integers(0, 3, size=(k, columns)).astype(np.float32) for _ in range(3)]
        if trial % 2:  # a shard with fewer than k rows: empty places
            rows[0][-2:], values[0][-2:] = -1, -np.inf
        got_r, got_v = merge_top_k(rows, values, k)
        want_r, want_v = _brute_top_k(np.concatenate(rows), np.concatenate(values), k)
        np.testing.assert_array_equal(got_r, want_r)
        np.testing.assert_array_equal(got_v, want_v)


def test_code_store_and_dense_top_k_agree_with_the_order():
    """top-images' two paths (CSR chunks of codes, dense blocks on the device) give the brute-force
    top-k, ties included (values drawn from three levels, so most entries tie)."""
    from saevlm.data.codes import CSRChunk, dense_to_csr
    from saevlm.metrics.top_images import top_k_csr, top_k_dense

    rng = np.random.default_rng(2)
    codes = (rng.integers(0, 3, size=(40, 7)) * (rng.random((40, 7)) < 0.5)).astype(np.float32)
    k = 5
    want_r, want_v = _brute_top_k(np.broadcast_to(np.arange(40)[:, None], codes.shape), codes, k)
    dense_r, dense_v = top_k_dense([(0, codes[:15]), (15, codes[15:])], 7, k)
    np.testing.assert_array_equal(dense_r.T, want_r)
    np.testing.assert_array_equal(dense_v.T, want_v)
    chunks = [CSRChunk(start, *dense_to_csr(part), 7) for start, part in ((0, codes[:15]), (15, codes[15:]))]
    csr_r, csr_v = top_k_csr(chunks, 7, 40, k)
    positive = want_v.T > 0  # past its non-zeros a latent's list is padded with zero-activation images
    np.testing.assert_array_equal(csr_r[positive], want_r.T[positive])
    np.testing.assert_array_equal(csr_v, want_v.T)
