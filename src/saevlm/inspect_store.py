"""``saevlm inspect``: summarise a store and verify that its files match its manifest."""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="a store directory (holding manifest.json)")
    p.add_argument("--allow_incomplete", action="store_true",
                   help="also open a store whose writer has not finished")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")


def run(args: argparse.Namespace) -> int:
    from saevlm.data.store import ActivationStore

    store = ActivationStore(args.store, allow_incomplete=args.allow_incomplete, flag="store")
    if args.json:
        print(json.dumps(store.manifest, indent=1))
        return 0
    prov = store.provenance
    for i in range(len(store.shards)):  # opens every shard: shape checked against the manifest
        store.shard_array(i)
    print(f"store      {store.path}")
    print(f"kind       {store.manifest.get('kind')}   complete: {store.manifest.get('complete')}")
    print(f"shape      {store.num_rows} x {store.dim} ({store.dtype}), {len(store.shards)} shard(s)")
    print(f"model      {prov.get('model', {}).get('name')} ({prov.get('model', {}).get('source')})")
    print(f"hook       {prov.get('hook')}")
    print(f"tokens     {prov.get('tokens')}")
    ds = prov.get("dataset", {})
    print(f"dataset    {ds.get('name')}/{ds.get('split')} at {ds.get('root')}: "
          f"{store.manifest.get('num_images')} images stored of {ds.get('num_selected')} selected")
    skipped = store.manifest.get("skipped_images", [])
    if skipped:
        print(f"skipped    {len(skipped)} unreadable image(s), e.g. {skipped[0]['path']}")
    return 0
