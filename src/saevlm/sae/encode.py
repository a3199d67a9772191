"""``saevlm encode``: an SAE applied to an activation store gives a sparse code store.

Chunked (one code shard per activation shard, encoded in sub-batches), so stores larger than RAM
work; an interrupted run resumes shard by shard. ``saevlm extract --sae_path`` writes the same
store straight from images (the authors' flow); both routes share the encoder below.
"""

from __future__ import annotations

import argparse
import sys
import time

from saevlm.device import DEVICE_HELP
from saevlm.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sae_path", required=True,
                   help="trainer directory (ae.pt + config.json), an .pt file, or a hub path "
                        "owner/repo/sub/dir when online")
    p.add_argument("--activations_dir", required=True, help="activation store to encode")
    p.add_argument("--output_dir", required=True, help="code store directory to write")
    p.add_argument("--encode_rows", type=int, default=1024,
                   help="rows per SAE forward (bounds memory for wide SAEs; default: %(default)s)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (default: auto)")
    p.add_argument("--allow_mismatch", action="store_true",
                   help="encode even when the SAE was trained on another model or hook point")
    p.add_argument("--overwrite", action="store_true", help="replace an existing code store")
    p.add_argument("--allow_nonfinite", action="store_true",
                   help="encode activations holding NaN / inf instead of refusing them")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")


def make_encoder(sae, device, flag: str = "--sae_path"):
    """numpy float32 [n, d] -> dense torch codes [n, K] on CPU, at inference settings."""
    import torch

    from saevlm.sae.registry import encode_batch

    def encode(acts_nd):
        with torch.no_grad():
            x = torch.as_tensor(acts_nd, dtype=torch.float32).to(device)
            return encode_batch(sae, x).float().cpu()
    return encode


def check_sae_matches(sae, provenance: dict, allow_mismatch: bool, what: str) -> None:
    """Refuse an SAE whose width, or recorded model / hook, differs from the activations'."""
    width = provenance.get("_dim")
    if width is not None and sae.activation_dim != width:
        raise UserError(f"--sae_path {sae.path}: the SAE takes {sae.activation_dim}-d inputs, {what} "
                        f"has {width}-d activations")
    trained_on = sae.config.get("saevlm", {}).get("provenance")
    if not trained_on or allow_mismatch:
        return
    for key, sub in (("model", "source"), ("hook", None)):
        a = trained_on.get(key, {})
        b = provenance.get(key, {})
        a, b = (a.get(sub), b.get(sub)) if sub else (a, b)
        if a != b:
            raise UserError(f"--sae_path {sae.path}: trained on {key} {a!r}, but {what} is {key} {b!r}; "
                            f"pass --allow_mismatch to encode anyway")


def dataset_files(store) -> dict:
    """The source store's labels.npy / classes.json, to be copied beside the codes."""
    import json

    import numpy as np

    files = store.manifest.get("files", {})
    out: dict = {"extra_files": {}, "extra_json": {}}
    for name in files.values():
        path = store.path / name
        if name.endswith(".npy") and path.is_file():
            out["extra_files"][name] = np.load(path)
        elif name.endswith(".json") and path.is_file():
            out["extra_json"][name] = json.loads(path.read_text())
    return out


def code_provenance(provenance: dict, sae) -> dict:
    return {**{k: v for k, v in provenance.items() if not k.startswith("_")}, "sae": sae.describe()}


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from saevlm.data.codes import CodeStore, CodeStoreWriter
    from saevlm.data.store import ActivationStore
    from saevlm.device import resolve_device
    from saevlm.sae.registry import load_sae

    t0 = time.time()
    device = resolve_device(args.device)
    store = ActivationStore(args.activations_dir, flag="--activations_dir", allow_nonfinite=args.allow_nonfinite)
    sae = load_sae(args.sae_path, device=device)
    check_sae_matches(sae, {**store.provenance, "_dim": store.dim}, args.allow_mismatch,
                      f"--activations_dir {store.path}")
    if args.encode_rows < 1:
        raise UserError(f"--encode_rows {args.encode_rows}: expected a positive integer")
    writer = CodeStoreWriter(
        args.output_dir, encode=make_encoder(sae, device), input_dim=store.dim,
        encode_rows=args.encode_rows,
        kind="codes", dim=sae.dict_size, dtype="fp32",
        images_per_shard=int(store.manifest["images_per_shard"]),
        num_images=int(store.provenance.get("dataset", {}).get("num_selected", store.manifest["num_images"])),
        provenance=code_provenance(store.provenance, sae),
        software=store.manifest.get("software", {}), overwrite=args.overwrite,
        flag="--output_dir", allow_nonfinite=args.allow_nonfinite, **dataset_files(store))
    if writer.already_complete:
        print(f"{args.output_dir}: complete already, skipped", file=sys.stderr)
    else:
        todo = writer.shard_ranges()
        by_first = {sh.first_image: i for i, sh in enumerate(store.shards)}
        with tqdm(total=sum(store.shards[by_first[first]].num_rows for _, first, _ in todo), unit="row",
                  disable=args.no_progress, desc="encode", dynamic_ncols=True, file=sys.stderr) as bar:
            for idx, first, _stop in todo:
                i = by_first[first]  # the activation shard holding the same images
                sh = store.shards[i]
                acts = store.read(sh.row_start, sh.row_start + sh.num_rows)
                skipped = store.manifest["shards"][i].get("skipped_images", [])
                writer.write_shard(idx, acts, store.shard_rows(i), sh.first_image, sh.num_images, skipped,
                                   store.shard_images(i))
                bar.update(sh.num_rows)
        writer.finalize()
    codes = CodeStore(args.output_dir)
    print(f"wrote {codes.path}  ({codes.num_rows} rows x {codes.dict_size} latents, "
          f"{codes.nnz / max(codes.num_rows, 1):.2f} non-zero per row, {time.time() - t0:.1f} s)")
    return 0


