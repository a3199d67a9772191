"""``saevlm encode``: an SAE applied to an activation store gives a sparse code store.

Chunked (one code shard per activation shard, encoded in sub-batches), so stores larger than RAM
work; an interrupted run resumes shard by shard. ``saevlm extract --sae_path`` writes the same
store straight from images (the authors' flow); both routes share the encoder below.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, DeviceOption, ProgressOption, opt
from saevlm.errors import UserError
from saevlm.sae.apply import check_sae_matches, code_provenance, dataset_files, make_encoder  # noqa: F401


@dataclass(frozen=True, kw_only=True)
class EncodeConfig(CommandConfig, DeviceOption, ProgressOption):
    """`saevlm encode`: apply an SAE to an activation store -> sparse code store."""

    COMMAND: ClassVar[str] = "encode"

    sae_path: str = opt()
    """trainer directory (ae.pt + config.json), an .pt file, or a hub path owner/repo/sub/dir when online"""
    activations_dir: str = opt()
    """activation store to encode"""
    output_dir: str = opt()
    """code store directory to write"""
    encode_rows: int = opt(1024)
    """rows per SAE forward (bounds memory for wide SAEs; default: %(default)s)"""
    allow_mismatch: bool = opt(False)
    """encode even when the SAE was trained on another model or hook point"""
    overwrite: bool = opt(False)
    """replace an existing code store"""
    allow_nonfinite: bool = opt(False)
    """encode activations holding NaN / inf instead of refusing them"""


CONFIG = EncodeConfig


def run(args: EncodeConfig) -> int:
    from saevlm.data.atomic import check_not_own_input
    from saevlm.data.codes import CodeStoreWriter
    from saevlm.data.store import ActivationStore
    from saevlm.device import resolve_device
    from saevlm.sae.checkpoint import load_sae

    t0 = time.time()
    check_not_own_input(args.output_dir, "output_dir", [("activations_dir", args.activations_dir),
                                                          ("sae_path", args.sae_path)])
    device = resolve_device(args.device)
    if args.encode_rows < 1:
        raise UserError(f"--encode_rows {args.encode_rows}: expected a positive integer")
    store = ActivationStore(args.activations_dir, field="activations_dir", allow_nonfinite=args.allow_nonfinite)
    images_per_shard = int(store.manifest.images_per_shard or max(store.manifest.num_images or 1, 1))
    if not args.overwrite and _complete_already(args, store, images_per_shard):
        print(f"{args.output_dir}: complete already, skipped", file=sys.stderr)
        return _report(args.output_dir, t0)
    sae = load_sae(args.sae_path, device=device)
    check_sae_matches(sae, store.provenance, store.dim, args.allow_mismatch,
                      f"--activations_dir {store.path}")
    writer = CodeStoreWriter(
        args.output_dir, encode=make_encoder(sae, device), input_dim=store.dim,
        encode_rows=args.encode_rows,
        kind="codes", dim=sae.dict_size, dtype="fp32", images_per_shard=images_per_shard,
        num_images=int(store.provenance.dataset.num_selected if store.provenance.dataset.num_selected is not None
                       else store.manifest.num_images),
        provenance=code_provenance(store.provenance, sae),
        software=dict(store.manifest.software), overwrite=args.overwrite,
        field="output_dir", allow_nonfinite=args.allow_nonfinite, **dataset_files(store))
    if writer.already_complete:
        print(f"{args.output_dir}: complete already, skipped", file=sys.stderr)
    else:
        _encode_shards(writer, store, args.no_progress)
    return _report(args.output_dir, t0)


def _encode_shards(writer, store, no_progress: bool) -> None:
    """Encode each activation shard still to do into the code shard of the same images; finish the store."""
    from tqdm import tqdm

    todo = writer.shard_ranges()
    by_first = {sh.first_image: i for i, sh in enumerate(store.shards)}
    with tqdm(total=sum(store.shards[by_first[first]].num_rows for _, first, _ in todo), unit="row",
              disable=no_progress, desc="encode", dynamic_ncols=True, file=sys.stderr) as bar:
        for idx, first, _stop in todo:
            i = by_first[first]  # the activation shard holding the same images
            sh = store.shards[i]
            acts = store.read(sh.row_start, sh.row_start + sh.num_rows)
            skipped = list(store.manifest.shards[i].skipped_images)
            writer.write_shard(idx, acts, store.shard_rows(i), sh.first_image, sh.num_images, skipped,
                               store.shard_images(i))
            bar.update(sh.num_rows)
    writer.finalize()


def _complete_already(args: EncodeConfig, store, images_per_shard: int) -> bool:
    """Whether ``--output_dir`` holds the complete codes of this SAE on these activations, checked
    from the checkpoint's weights alone (:func:`describe_checkpoint`): a rerun of a finished step
    then skips without building the SAE, i.e. without importing dictionary_learning."""
    from pathlib import Path

    from saevlm.data.artifacts import MANIFEST
    from saevlm.data.codes import CodeStoreWriter
    from saevlm.sae.checkpoint import describe_checkpoint

    if not (Path(args.output_dir) / MANIFEST).is_file():
        return False  # nothing there yet: the checkpoint is read (and its checksum checked) once, by load_sae
    sae = describe_checkpoint(args.sae_path)
    identity = CodeStoreWriter.identity("codes", sae["dict_size"], "fp32", images_per_shard,
                                        store.provenance.with_sae(sae))
    return CodeStoreWriter.complete_there(args.output_dir, identity)


def _report(output_dir: str, t0: float) -> int:
    from saevlm.data.codes import CodeStore

    codes = CodeStore(output_dir)
    print(f"wrote {codes.path}  ({codes.num_rows} rows x {codes.dict_size} latents, "
          f"{codes.nnz / max(codes.num_rows, 1):.2f} non-zero per row, {time.time() - t0:.1f} s)")
    return 0


