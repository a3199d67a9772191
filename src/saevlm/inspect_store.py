"""``saevlm inspect``: summarise a store and check that its files match its manifest.

Opening a store checks every file's presence, size, ``.npy`` header, dtype and shape against the
manifest; ``--verify`` also reads every byte: CRC-32 checksums, NaN / inf values and, for code
stores, the CSR structure and latent-id range (docs/store-format.md, "Integrity").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from saevlm.commandline import CommandConfig, ProgressOption, opt


@dataclass(frozen=True, kw_only=True)
class InspectConfig(CommandConfig, ProgressOption):
    """`saevlm inspect`: print a store's manifest summary and check its files."""

    COMMAND: ClassVar[str] = "inspect"

    store: str = opt(positional=True)
    """a store directory (activations, embeddings, SAE codes or top images)"""
    verify: bool = opt(False)
    """read every file: checksums, non-finite values, code ranges (exit 2 on damage)"""
    allow_incomplete: bool = opt(False)
    """also open a store whose writer has not finished"""
    allow_nonfinite: bool = opt(False)
    """report NaN / inf values instead of failing on them"""
    json: bool = opt(False)
    """print the whole manifest as JSON"""


CONFIG = InspectConfig


def run(args: InspectConfig) -> int:
    import sys
    import time

    from saevlm.data.codes import CodeStore
    from saevlm.data.manifest import SAEInfo
    from saevlm.data.open import open_any_store
    from saevlm.data.topimages import TopImagesStore

    store = open_any_store(args.store, field="store", allow_incomplete=args.allow_incomplete,
                           allow_nonfinite=args.allow_nonfinite, allow_top_images=True)
    if args.json:
        print(json.dumps(store.manifest if isinstance(store.manifest, dict) else store.manifest.to_json(), indent=1))
        return 0
    if isinstance(store, TopImagesStore):
        m = store.manifest
        print(f"store      {store.path}  (top images per latent, extract --top_k)")
        print(f"latents    {store.dict_size}, k = {m.get('k')}, over {m.get('num_images')} images")
        print(f"files      {', '.join(m.get('files', []))}")
        return 0
    prov = store.provenance
    codes = isinstance(store, CodeStore)
    print(f"store      {store.path}")
    m = store.manifest
    print(f"kind       {m.kind}   complete: {m.complete}")
    if codes:
        sae = prov.sae or SAEInfo()
        print(f"shape      {store.num_rows} x {store.dict_size} latents, {store.nnz} non-zero "
              f"({store.nnz / max(store.num_rows, 1):.2f} per row), {len(store.shards)} shard(s)")
        print(f"sae        {sae.arch} x{sae.expansion_factor or '?'} from {sae.path}")
    else:
        print(f"shape      {store.num_rows} x {store.dim} ({store.dtype}), {len(store.shards)} shard(s)")
    print(f"model      {prov.model.name} ({prov.model.source})")
    print(f"hook       {prov.hook.to_json()}")
    print(f"tokens     {prov.tokens.to_json()}")
    ds = prov.dataset
    print(f"dataset    {ds.name}/{ds.split} at {ds.root}: "
          f"{m.num_images} images stored of {ds.num_selected} selected")
    content = m.content_sha256
    print(f"content    {'sha256 ' + content[:16] + '... over the image bytes' if content else 'no image content hashes (older store)'}")
    skipped = m.skipped_images
    if skipped:
        print(f"skipped    {len(skipped)} unreadable image(s), e.g. {skipped[0]['path']}")
    nonfinite = sum(s.nonfinite for s in m.shards)
    if nonfinite:
        print(f"nonfinite  {nonfinite} NaN/inf values (written with --allow_nonfinite)")
    if not args.verify:
        print("checks     sizes, headers, dtypes and shapes match the manifest (--verify reads every byte)")
        return 0
    if not store.has_checksums:
        print("warning: this store has no checksums (written by an older saevlm): --verify checks values "
              "and structure only", file=sys.stderr)
    t0 = time.time()
    nbytes = store.verify(progress=not args.no_progress)
    dt = max(time.time() - t0, 1e-9)
    print(f"verified   {len(store.shards)} shard(s), {nbytes / 1e6:.1f} MB in {dt:.2f} s "
          f"({nbytes / 1e9 / dt:.2f} GB/s): checksums{', finite values' if not args.allow_nonfinite else ''}"
          f"{', CSR structure and latent ids' if codes else ''} OK")
    return 0
