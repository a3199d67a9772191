"""SAE codes pooled over an image's tokens, the authors' steering protocol (arXiv 2504.02821,
Sec. 4.3): the SAE sits inside the vision block and encodes EVERY token, then the codes are
mean-pooled per image, ``mean_t encode(x_t)``; images are ranked per latent by that mean.

``encode(mean_t x_t)`` would be another quantity (the codes of the mean activation): a
BatchTopK SAE keeps about K latents of the mean, but up to T x K distinct latents are active
across an image's T tokens.

Two outputs, both from the extraction pass (``saevlm extract --sae_path --mean_pool``):

- a sparse code store of the pooled codes (one row per image), or
- with ``--top_k k``, only a running top-k per latent, written as a *top-images store*
  (``format: saevlm-top-images``: a manifest plus ``top_images_<k>.npy``,
  ``top_images_<k>_values.npy``, ``top_images_<k>_kth_value.npy`` and the authors'
  ``hai_indices_<k>.npy`` / ``hai_indices_<k>_worst.npy``). At ImageNet-train size the pooled
  codes would be 1.28 M x 65,536 = 335 GB dense; the running top-k holds 2 x k x 65,536 numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from saevlm.errors import UserError

if TYPE_CHECKING:
    from saevlm.data.manifest import Provenance

from saevlm.data.topimages import TOP_IMAGES_FORMAT, TopImagesStore  # noqa: F401 (re-exported)


def mean_codes(acts_btd, encode_rows, rows_per_forward: int = 4096):
    """``mean_t encode(x_t)`` per image: acts [B, T, d] -> float32 codes [B, K] (torch).

    ``encode_rows`` maps a float32 [n, d] tensor to dense codes [n, K]; tokens are encoded in
    slices of ``rows_per_forward`` rows so that [rows, K] stays bounded (65,536 latents x 4096
    rows = 1 GiB), and summed per image in float32 in token order.
    """
    import torch

    b, t, d = acts_btd.shape
    flat = acts_btd.reshape(b * t, d).float()
    image_of_row = torch.arange(b, device=flat.device).repeat_interleave(t)
    sums = None
    for s in range(0, b * t, rows_per_forward):
        codes = encode_rows(flat[s:s + rows_per_forward]).float()
        if sums is None:
            sums = torch.zeros(b, codes.shape[1], dtype=torch.float32, device=codes.device)
        sums.index_add_(0, image_of_row[s:s + rows_per_forward].to(codes.device), codes)
    return sums / t


class RunningTopK:
    """The k largest values per column over a stream of row blocks, with their row ids.

    Order: value descending, then lower row first (a stable rule, the same as ``top-images``).
    """

    def __init__(self, num_columns: int, k: int, device="cpu"):
        import torch

        self.k = k
        self.values = torch.full((k, num_columns), float("-inf"), dtype=torch.float32, device=device)
        self.rows = torch.full((k, num_columns), -1, dtype=torch.int64, device=device)

    def update(self, start_row: int, block_nk) -> None:
        import torch

        a = torch.as_tensor(block_nk, dtype=torch.float32, device=self.values.device)
        kk = min(self.k, len(a))
        v, r = torch.topk(a, kk, dim=0, sorted=True)
        cand_v = torch.cat([self.values, v])
        cand_r = torch.cat([self.rows, r + start_row])
        # order by (value desc, row asc): sort by row, then a stable sort by value
        o = torch.argsort(cand_r, dim=0, stable=True)
        cand_v, cand_r = cand_v.gather(0, o), cand_r.gather(0, o)
        o = torch.argsort(cand_v, dim=0, descending=True, stable=True)[: self.k]
        self.values, self.rows = cand_v.gather(0, o), cand_r.gather(0, o)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [K, k], values [K, k]), highest first."""
        if bool((self.rows < 0).any()):
            raise UserError(f"fewer than k = {self.k} rows were seen")
        return self.rows.T.cpu().numpy(), self.values.T.cpu().numpy()

    def state(self) -> dict:
        return {"values": self.values.cpu().numpy(), "rows": self.rows.cpu().numpy()}

    def load(self, state: dict) -> None:
        import torch

        self.values = torch.as_tensor(state["values"], device=self.values.device)
        self.rows = torch.as_tensor(state["rows"], device=self.rows.device)


def write_top_images(out: Path, k: int, image_ids_k: np.ndarray, values_k: np.ndarray,
                     source: dict | None = None) -> list[str]:
    """saevlm's files (highest first) and the authors' ``find_hai_indices.py`` files:
    ``hai_indices_<k>.npy`` in THEIR order (``argsort(a)[-k:]``: the k-th highest first, the
    highest last) and ``hai_indices_<k>_worst.npy`` (the k-th highest value). ``source`` (the
    stamp of the store they come from, metrics.results.source_stamp) goes to ``top_images_<k>.json``
    so readers can tell a stale set."""
    from saevlm.data.atomic import atomic_save_npy, atomic_write_json

    kth = values_k[:, -1].copy()
    files = {f"top_images_{k}.npy": image_ids_k, f"top_images_{k}_kth_value.npy": kth,
             f"top_images_{k}_values.npy": values_k,
             f"hai_indices_{k}.npy": np.ascontiguousarray(image_ids_k[:, ::-1]),
             f"hai_indices_{k}_worst.npy": kth.astype(np.float64)}
    for name, arr in files.items():
        atomic_save_npy(out / name, arr)
    names = list(files)
    if source is not None:
        atomic_write_json(out / f"top_images_{k}.json", {"k": k, "neurons": int(len(image_ids_k)), "source": source})
        names.append(f"top_images_{k}.json")
    return names


def extract_pooled_top_k(encoder, images, selected, point, sae, *, k: int, output_dir: Path,
                         provenance: Provenance, batch_size: int, num_workers: int, device, autocast: str,
                         skip_bad_images: bool, overwrite: bool, progress: bool, log=print,
                         checkpoint_images: int = 50_000) -> Path:
    """One pass over the images: block activations -> SAE on every token -> mean per image ->
    running top-k per latent. Resumes from ``.topk_state.npz`` (written atomically every
    ``checkpoint_images`` images, at batch boundaries, so a resumed run equals an uninterrupted one)."""
    import torch
    from tqdm import tqdm

    from saevlm.data.atomic import atomic_save_npy, atomic_write_json
    from saevlm.device import autocast_context
    from saevlm.extraction import handle_bad_images
    from saevlm.sae.inference import encode_batch

    if k < 1 or k > len(selected):
        raise UserError(f"--top_k {k}: expected 1..{len(selected)} (the number of images)")
    autocast_ctx = autocast_context(device, autocast)
    encoder.to(device)
    out = Path(output_dir)
    identity = {"format": TOP_IMAGES_FORMAT, "k": k, "dim": sae.dict_size, "provenance": provenance.to_json(),
                "batch_size": batch_size}
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            old = {}
        same = {key: old.get(key) for key in identity} == json.loads(json.dumps(identity))
        if not same and not overwrite:
            raise UserError(f"--output_dir {out}: holds a top-images store written with other settings; "
                            f"use another directory or --overwrite")
        if same and old.get("complete"):
            log(f"{out}: complete already, skipped")
            return out
        if not same:
            for f in out.iterdir():
                if f.is_file():
                    f.unlink()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(manifest_path, {**identity, "complete": False, "num_images": len(selected)})
    atomic_save_npy(out / "image_ids.npy", np.asarray(selected, dtype=np.int64))
    atomic_save_npy(out / "labels.npy", images.labels)
    atomic_write_json(out / "classes.json", images.classes_json())

    top = RunningTopK(sae.dict_size, k, device=device)
    state_file = out / ".topk_state.npz"
    done, skipped = 0, []
    if state_file.is_file():
        st = np.load(state_file, allow_pickle=False)
        top.load({"values": st["values"], "rows": st["rows"]})
        done = int(st["done"])
        skipped = json.loads(str(st["skipped"]))
        log(f"{out}: resuming after {done}/{len(selected)} images")

    def encode_rows(x):
        return encode_batch(sae, x)

    loader = images.batches(selected[done:], encoder.preprocess, batch_size, num_workers,
                            pin_memory=device.type == "cuda")
    since_ckpt = 0
    with tqdm(total=len(selected), initial=done, unit="img", disable=not progress, dynamic_ncols=True,
              desc=f"extract + SAE mean-pool top-{k}", file=sys.stderr) as bar:
        for good, pixels, bad, _hashes in loader:
            skipped.extend(handle_bad_images(images, bad, skip_bad_images, log))
            if pixels is not None:
                with autocast_ctx:
                    acts = encoder.capture(pixels.to(device, non_blocking=True), [point])[point]
                with torch.no_grad():
                    pooled = mean_codes(acts.float(), encode_rows)
                # rows are positions in `selected`; an unreadable image is simply absent
                pos = torch.as_tensor(np.searchsorted(selected, np.asarray(good)), device=pooled.device)
                block = torch.full((int(pos.max()) - int(pos.min()) + 1, pooled.shape[1]), float("-inf"),
                                   device=pooled.device)
                block[pos - pos.min()] = pooled
                top.update(int(pos.min()), block)
            n = len(good) + len(bad)
            done += n
            since_ckpt += n
            bar.update(n)
            if since_ckpt >= checkpoint_images and done < len(selected):
                _save_state(state_file, top, done, skipped)
                since_ckpt = 0
    rows, values = top.result()
    values = np.where(np.isfinite(values), values, 0).astype(np.float32)
    ids = np.asarray(selected, dtype=np.int64)[rows]
    files = write_top_images(out, k, ids, values)
    atomic_write_json(manifest_path, {**identity, "complete": True, "num_images": len(selected),
                                      "skipped_images": skipped, "files": files})
    state_file.unlink(missing_ok=True)
    return out


def _save_state(path: Path, top: RunningTopK, done: int, skipped: list) -> None:
    from saevlm.data.atomic import atomic_save_npz

    st = top.state()
    atomic_save_npz(path, values=st["values"], rows=st["rows"], done=np.int64(done), skipped=json.dumps(skipped))
