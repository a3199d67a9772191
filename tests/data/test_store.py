"""The activation store: round trips, dtypes, reads, atomicity and completeness."""

import json

import numpy as np
import pytest
import torch

from helpers import FIXTURES
from saevlm.data.store import ActivationStore, decode_from_storage, encode_for_storage
from saevlm.data.writer import StoreWriter
from saevlm.errors import UserError


def _write(path, acts, rows_per_shard, dtype="fp32", finalize=True, provenance=None):
    n = len(acts)
    w = StoreWriter(path, kind="activations", dim=acts.shape[1], dtype=dtype,
                    images_per_shard=rows_per_shard, num_images=n,
                    provenance=provenance or {"dataset": {"paths_sha256": "x", "split": "val"}},
                    software={})
    for idx, first, stop in w.shard_ranges():
        rows = np.stack([np.arange(first, stop), -np.ones(stop - first, dtype=np.int64)], 1)
        w.write_shard(idx, acts[first:stop], rows, first, stop - first)
    if finalize:
        w.finalize()
    return w


def test_bf16_encoding_matches_torch():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 100
    x[:3] = [0.0, -0.0, 1e-30]
    ours = encode_for_storage(x, "bfloat16")
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)
    back = decode_from_storage(ours, "bfloat16")
    assert np.array_equal(back, torch.from_numpy(x).to(torch.bfloat16).float().numpy())


@pytest.mark.parametrize("dtype,tol", [("fp32", 0), ("fp16", 1e-3), ("bf16", 1e-2)])
def test_round_trip_and_reads(tmp_path, dtype, tol):
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((103, 7)).astype(np.float32)
    _write(tmp_path / "s", acts, 10, dtype)
    s = ActivationStore(tmp_path / "s")
    assert s.shape == (103, 7) and len(s.shards) == 11
    full = s.read(0, 103)
    np.testing.assert_allclose(full, acts, rtol=tol, atol=tol)
    # the shards, loaded with plain numpy and concatenated in manifest order, are the matrix
    raw = np.concatenate([np.load(tmp_path / "s" / sh["file"], mmap_mode="r")
                          for sh in json.loads((tmp_path / "s" / "manifest.json").read_text())["shards"]])
    assert np.array_equal(decode_from_storage(raw, s.dtype), full)
    assert np.array_equal(np.concatenate([c for _, c in s.iter_chunks(17)]), full)
    assert np.array_equal(s.read(15, 38), full[15:38])
    idx = rng.permutation(103)[:40]
    assert np.array_equal(s.gather(idx), full[idx])
    assert np.array_equal(s.image_ids(), np.arange(103))


def test_random_batches_cover_each_epoch_once_and_resume(tmp_path):
    acts = np.arange(60, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    _write(tmp_path / "s", acts, 16)
    s = ActivationStore(tmp_path / "s")
    it = s.random_batches(batch_size=12, seed=5)
    epoch = [next(it)[:, 0] for _ in range(5)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(60))
    more = [next(it)[:, 0] for _ in range(3)]
    resumed = s.random_batches(batch_size=12, seed=5, start_step=5)
    for b in more:
        assert np.array_equal(next(resumed)[:, 0], b)
    other_seed = next(s.random_batches(batch_size=12, seed=6))[:, 0]
    assert not np.array_equal(other_seed, epoch[0])


def test_incomplete_store_is_refused_and_lists_only_complete_shards(tmp_path):
    acts = np.ones((30, 2), np.float32)
    w = StoreWriter(tmp_path / "s", kind="activations", dim=2, dtype="fp32", images_per_shard=10,
                    num_images=30, provenance={}, software={})
    rows = np.zeros((10, 2), np.int64)
    w.write_shard(0, acts[:10], rows, 0, 10)
    with pytest.raises(UserError, match="incomplete .* Rerun the same command"):
        ActivationStore(tmp_path / "s")
    partial = ActivationStore(tmp_path / "s", allow_incomplete=True)
    assert partial.num_rows == 10
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["complete"] is False and [sh["file"] for sh in manifest["shards"]] == ["acts_00000.npy"]


def test_writer_refuses_other_settings_and_prunes_leftovers(tmp_path):
    acts = np.ones((20, 2), np.float32)
    w = StoreWriter(tmp_path / "s", kind="activations", dim=2, dtype="fp32", images_per_shard=10,
                    num_images=20, provenance={"hook": {"layer": 3}}, software={})
    w.write_shard(0, acts[:10], np.zeros((10, 2), np.int64), 0, 10)
    # A crash after a shard was renamed but before the manifest listed it, and a temp file:
    (tmp_path / "s" / "acts_00001.npy").write_bytes(b"garbage")
    (tmp_path / "s" / ".acts_00002.npy.tmp-999").write_bytes(b"half")
    with pytest.raises(UserError, match=r"different settings .*hook.layer: existing 3, requested 4"):
        StoreWriter(tmp_path / "s", kind="activations", dim=2, dtype="fp32", images_per_shard=10,
                    num_images=20, provenance={"hook": {"layer": 4}}, software={})
    again = StoreWriter(tmp_path / "s", kind="activations", dim=2, dtype="fp32", images_per_shard=10,
                        num_images=20, provenance={"hook": {"layer": 3}}, software={})
    assert again.images_done == 10 and again.shard_ranges() == [(1, 10, 20)]
    assert not (tmp_path / "s" / "acts_00001.npy").exists()
    assert not (tmp_path / "s" / ".acts_00002.npy.tmp-999").exists()


def test_not_a_store_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ActivationStore(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(UserError, match="has no manifest.json"):
        ActivationStore(tmp_path / "d")


def test_stores_written_by_an_earlier_saevlm_still_open():
    """tests/fixtures/stores_v1 was written by saevlm's writers (with checksums and content
    hashes) and is kept as is: every later version must read it, check it and pair it."""

    from saevlm.data.codes import CodeStore
    from saevlm.data.store import ActivationStore, check_same_images

    d = FIXTURES / "stores_v1"
    expected = np.load(d / "expected_acts.npy")
    fp32 = ActivationStore(d / "acts_fp32")
    assert fp32.verify() > 0 and np.array_equal(fp32.read(0, 12), expected)
    bf16 = ActivationStore(d / "acts_bf16")
    bf16.verify()
    np.testing.assert_allclose(bf16.read(0, 12), expected, rtol=2 ** -8)
    codes = CodeStore(d / "codes")
    codes.verify()
    np.testing.assert_allclose(codes.read(0, 12), np.load(d / "expected_codes.npy"), rtol=1e-6)
    check_same_images(fp32, codes)
    check_same_images(fp32, bf16)
    assert list(fp32.image_ids()) == list(range(12))
