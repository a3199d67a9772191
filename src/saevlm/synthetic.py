"""``saevlm synthetic``: a ground-truth world of "activations" with known concepts.

The generative process (documented in docs/synthetic.md):

1. **Concept tree.** ``--branching b1 b2 ... bL`` builds a tree: b1 top-level concepts, each with b2
   children, and so on; every node but the root is a concept (C = b1 + b1*b2 + ...). Leaves are
   the classes; a leaf's taxonomy path is the names of its ancestors from the top level down.
2. **Samples.** Each sample holds one main object (its class label) plus Poisson(``--extra_objects``)
   more. An object is a leaf drawn from a Zipf(``--zipf``) distribution over leaves (ranks
   shuffled over the tree), so concept usage is sparse and heavy-tailed. An object activates its
   leaf and every ancestor: coefficient U(0.5, 1.5) times ``--ancestor_scale`` per level above
   the leaf (ancestors are weaker). Concepts shared by two objects take the larger coefficient.
3. **Activations.** x = z @ D + offset + ``--noise`` * N(0, I), with D the C x d ground-truth
   directions (random unit vectors, C > d: superposition) and a fixed random offset.
4. **Image embeddings** (the stand-in for DINOv2 in the MS): e = z @ G + ``--embed_noise`` * N(0, I)
   with G an independent random C x e map, so samples sharing concepts have similar embeddings.

Outputs under ``--output_dir``: stores ``train/``, ``val/`` (activations), ``embeddings_train/``,
``embeddings_val/`` (same images, same order), each with labels.npy and classes.json (taxonomy);
``directions.npy`` (C x d), ``concepts_{train,val}.npz`` (the sparse z, CSR arrays) and
``world.json`` (parameters and the concept table).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from saevlm.commandline import CommandConfig, opt
from saevlm.data import artifacts as A
from saevlm.data.concepts import load_concepts  # noqa: F401 (re-exported)
from saevlm.errors import UserError


@dataclass(frozen=True)
class WorldParams:
    branching: tuple[int, ...] = (6, 4, 4)
    dim: int = 64
    embed_dim: int = 32
    num_train: int = 40_000
    num_val: int = 8_000
    zipf: float = 1.1
    extra_objects: float = 0.3
    ancestor_scale: float = 0.6
    noise: float = 0.05
    embed_noise: float = 0.05
    seed: int = 0


@dataclass
class ConceptTree:
    """Nodes in breadth-first order; ``parent[c]`` is -1 for top-level concepts."""

    parent: np.ndarray
    level: np.ndarray  # 1 = top level
    names: list[str]
    leaves: np.ndarray  # concept ids of the leaves, in class order
    ancestors: list[list[int]] = field(default_factory=list)  # per leaf: top-level ... leaf

    @property
    def num_concepts(self) -> int:
        return len(self.parent)

    def taxonomy(self) -> list[list[str]]:
        return [[self.names[c] for c in path] for path in self.ancestors]


def build_tree(branching: tuple[int, ...]) -> ConceptTree:
    parent, level, names = [], [], []
    frontier = [(-1, "")]
    for depth, b in enumerate(branching, start=1):
        nxt = []
        for p, pname in frontier:
            for j in range(b):
                cid = len(parent)
                parent.append(p)
                level.append(depth)
                name = f"{pname}.{j}" if pname else f"c{j}"
                names.append(name)
                nxt.append((cid, name))
        frontier = nxt
    parent_a = np.asarray(parent, dtype=np.int64)
    leaves = np.asarray([c for c, _ in frontier], dtype=np.int64)
    ancestors = []
    for leaf in leaves:
        path, c = [], int(leaf)
        while c >= 0:
            path.append(c)
            c = int(parent_a[c])
        ancestors.append(path[::-1])
    return ConceptTree(parent_a, np.asarray(level, dtype=np.int64), names, leaves, ancestors)


def _sample_concepts(p: WorldParams, tree: ConceptTree, n: int, rng: np.random.Generator):
    """-> (labels [n], dense z [n, C] float32)."""
    num_leaves = len(tree.leaves)
    ranks = rng.permutation(num_leaves)
    probs = 1.0 / (ranks + 1.0) ** p.zipf
    probs /= probs.sum()
    labels = rng.choice(num_leaves, size=n, p=probs)
    extra = rng.poisson(p.extra_objects, size=n)
    owners = np.concatenate([np.arange(n), np.repeat(np.arange(n), extra)])
    objects = np.concatenate([labels, rng.choice(num_leaves, size=int(extra.sum()), p=probs)])
    depth = len(p.branching)
    paths = np.asarray(tree.ancestors, dtype=np.int64)  # [leaves, depth]
    z = np.zeros((n, tree.num_concepts), dtype=np.float32)
    base = rng.uniform(0.5, 1.5, size=(len(objects), depth)).astype(np.float32)
    scale = (p.ancestor_scale ** np.arange(depth - 1, -1, -1)).astype(np.float32)  # top ... leaf
    coef = base * scale[None]
    for level in range(depth):
        np.maximum.at(z, (owners, paths[objects, level]), coef[:, level])
    return labels.astype(np.int64), z


def generate(p: WorldParams) -> dict:
    """The whole world in memory (the defaults take about a second)."""
    if p.dim < 2 or p.embed_dim < 2:
        raise UserError("--dim and --embed_dim must be at least 2")
    if not p.branching or any(b < 1 for b in p.branching):
        raise UserError(f"--branching {' '.join(map(str, p.branching))}: positive integers expected")
    tree = build_tree(p.branching)
    rng = np.random.default_rng(p.seed)
    directions = rng.standard_normal((tree.num_concepts, p.dim)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offset = rng.standard_normal(p.dim).astype(np.float32) / np.sqrt(p.dim)
    embed_map = (rng.standard_normal((tree.num_concepts, p.embed_dim)) / np.sqrt(p.embed_dim)).astype(np.float32)
    out = {"tree": tree, "directions": directions, "offset": offset, "embed_map": embed_map}
    for split, n in (("train", p.num_train), ("val", p.num_val)):
        labels, z = _sample_concepts(p, tree, n, rng)
        x = z @ directions + offset + p.noise * rng.standard_normal((n, p.dim)).astype(np.float32)
        e = z @ embed_map + p.embed_noise * rng.standard_normal((n, p.embed_dim)).astype(np.float32)
        out[split] = {"labels": labels, "z": z, "acts": x.astype(np.float32), "embeds": e.astype(np.float32)}
    return out


def _sample_hashes(world_id: str, split: str, z: np.ndarray) -> np.ndarray:
    """(index, content hash) per sample, as extract records for images."""
    from saevlm.data.decode import content_hash

    prefix = f"{world_id}/{split}/".encode()
    hashes = [content_hash(prefix + np.ascontiguousarray(row).tobytes()) for row in z]
    return np.stack([np.arange(len(z)), np.asarray(hashes, dtype=np.int64)], 1)


def write_world(p: WorldParams, output_dir: str | Path, overwrite: bool = False, log=print) -> Path:
    from saevlm.data.atomic import atomic_save_npy, atomic_save_npz, atomic_write_json
    from saevlm.data.writer import StoreWriter

    out = Path(output_dir)
    world = generate(p)
    tree: ConceptTree = world["tree"]
    params = {**asdict(p), "branching": list(p.branching)}
    world_id = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    classes = {"classes": [tree.names[c] for c in tree.leaves],
               "taxonomy_levels": [f"level{i + 1}" for i in range(len(p.branching))],
               "taxonomy": tree.taxonomy()}
    import saevlm
    software = {"saevlm": saevlm.__version__, "numpy": np.__version__}
    for split in ("train", "val"):
        data = world[split]
        n = len(data["labels"])
        dataset = {"name": "synthetic", "root": str(out.resolve()), "split": split,
                   "num_images_in_split": n, "num_classes": len(tree.leaves), "take_every": 1,
                   "max_images": None, "num_selected": n,
                   "paths_sha256": hashlib.sha256(f"{world_id}/{split}".encode()).hexdigest()}
        rows = np.stack([np.arange(n), -np.ones(n, dtype=np.int64)], 1)
        for kind, name, arr in (("activations", split, data["acts"]),
                                ("embeddings", f"embeddings_{split}", data["embeds"])):
            prov = {"model": {"name": "synthetic", "source": f"synthetic:{world_id[:16]}",
                              "backend": "synthetic", "params": params},
                    "hook": {"attachment_point": "synthetic" if kind == "activations" else "embedding",
                             "layer": -1},
                    "tokens": {"selection": "pooled"}, "dataset": dataset,
                    "run": {"batch_size": n, "autocast": "none"}}
            w = StoreWriter(out / name, kind=kind, dim=arr.shape[1], dtype="fp32",
                            images_per_shard=max(n, 1), num_images=n, provenance=prov,
                            software=software, overwrite=overwrite,
                            extra_files={A.LABELS: data["labels"]},
                            extra_json={A.CLASSES: classes}, field="output_dir")
            if w.already_complete:
                log(f"{out / name}: complete already, skipped")
                continue
            # the "picture" of a synthetic sample is its concept vector: its content hash
            w.write_shard(0, arr, rows, 0, n, images_n2=_sample_hashes(world_id, split, data["z"]))
            w.finalize()
        z = data["z"]
        nz_rows, nz_cols = np.nonzero(z)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(nz_rows, minlength=n))]).astype(np.int64)
        atomic_save_npz(out / f"concepts_{split}.npz", indptr=indptr, indices=nz_cols.astype(np.int32),
                        values=z[nz_rows, nz_cols], shape=np.array(z.shape))
    atomic_save_npy(out / A.WORLD_DIRECTIONS, world["directions"])
    atomic_write_json(out / A.WORLD_JSON, {
        "params": params, "world_id": world_id, "num_concepts": tree.num_concepts,
        "concepts": [{"id": i, "name": tree.names[i], "level": int(tree.level[i]),
                      "parent": int(tree.parent[i])} for i in range(tree.num_concepts)],
        "leaves": tree.leaves.tolist(),
        "files": {"train": "train", "val": "val", "embeddings_train": "embeddings_train",
                  "embeddings_val": "embeddings_val", "directions": A.WORLD_DIRECTIONS,
                  "concepts_train": "concepts_train.npz", "concepts_val": "concepts_val.npz"}})
    return out


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig(CommandConfig):
    """`saevlm synthetic`: a synthetic ground-truth world of activations and embeddings."""

    COMMAND: ClassVar[str] = "synthetic"

    output_dir: str = opt()
    """where the world's stores and files go"""
    branching: list[int] = opt([6, 4, 4])
    """children per node, level by level (default: %(default)s -> 126 concepts)"""
    dim: int = opt(64)
    """activation width d (default: %(default)s)"""
    embed_dim: int = opt(32)
    """width of the image-embedding stand-in (default: %(default)s)"""
    num_train: int = opt(40000)
    """training samples (default: %(default)s)"""
    num_val: int = opt(8000)
    """evaluation samples (default: %(default)s)"""
    zipf: float = opt(1.1)
    """Zipf exponent of leaf usage (default: %(default)s)"""
    extra_objects: float = opt(0.3)
    """mean number of extra objects per sample (Poisson; default: %(default)s)"""
    ancestor_scale: float = opt(0.6)
    """coefficient factor per level above the leaf (default: %(default)s)"""
    noise: float = opt(0.05)
    """activation noise std (default: %(default)s)"""
    embed_noise: float = opt(0.05)
    """embedding noise std (default: %(default)s)"""
    seed: int = opt(0)
    """(default: %(default)s)"""
    overwrite: bool = opt(False)
    """replace a world written with other settings"""


CONFIG = SyntheticConfig


def run(args: SyntheticConfig) -> int:
    for flag in ("num_train", "num_val"):
        if getattr(args, flag) < 2:
            raise UserError(f"--{flag} {getattr(args, flag)}: at least 2 samples expected")
    params = WorldParams(branching=tuple(args.branching), dim=args.dim, embed_dim=args.embed_dim,
                         num_train=args.num_train, num_val=args.num_val, zipf=args.zipf,
                         extra_objects=args.extra_objects, ancestor_scale=args.ancestor_scale,
                         noise=args.noise, embed_noise=args.embed_noise, seed=args.seed)
    t0 = time.time()
    out = write_world(params, args.output_dir, overwrite=args.overwrite,
                      log=lambda m: print(m, file=sys.stderr))
    tree = build_tree(params.branching)
    print(f"synthetic world: {tree.num_concepts} concepts in {params.dim} dims, "
          f"{len(tree.leaves)} classes, {params.num_train} train / {params.num_val} val samples "
          f"({time.time() - t0:.1f} s)")
    print(f"wrote {out.resolve()} (train/, val/, embeddings_train/, embeddings_val/, directions.npy, world.json)")
    return 0
