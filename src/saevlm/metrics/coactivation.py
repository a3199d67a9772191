"""Latents related by what they fire on: the Jaccard overlap of their active image sets.

Decoder cosine says which latents write similar directions; it misses latents that fire on exactly
the same images with unrelated directions (on the real run, four latents share all 16 images of a
brick latent at decoder cosines -0.04 to 0.09). Here every pair is scored by the images themselves:

    J(i, j) = |A_i ∩ A_j| / |A_i ∪ A_j|,   A_i = the images where latent i is active (> 0)

computed for all pairs at once from the sparse code matrix B (images x latents, B = 1 where
active): the intersections are the non-zeros of B^T B, one sparse product, and |A_i ∪ A_j| =
|A_i| + |A_j| - |A_i ∩ A_j|. Only pairs that share an image are ever formed, so the cost follows
the co-activations (at k active latents per image, at most N k^2 products), not K^2. For stores
that hold only top images, A_i is latent i's top-k set (the same formula on top-k sets).

For a Matryoshka SAE the same product walks its hierarchy. Latent i's **parents** are latents of
coarser groups that fire on most of its images: those active on at least ``PARENT_COVER`` of them,
C(i -> j) = |A_i ∩ A_j| / |A_i| >= 1/2, come first, ranked by Jaccard, so the most specific
superset leads (a parent before a grandparent, which covers i as well but fires on far more
images); the rest follow by C(i -> j). Its **children** are latents of finer groups ranked the
same way with the roles swapped (C(j -> i), the share of the child's images that i covers).
Ranking by cover alone put the grandparent first for most latents of the synthetic world (a finer
latent absorbs part of its parent's images; tests/metrics/test_hierarchy.py gives the rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

DUPLICATE_JACCARD = 0.8  # pairs at or above it are flagged as near-duplicates
PARENT_COVER = 0.5  # a parent fires on at least this share of its child's images


@dataclass
class Related:
    """The ``n`` best co-activation neighbours of every latent (-1 / 0 where there are fewer)."""

    ids_kn: np.ndarray  # int64 [K, n]
    jaccard_kn: np.ndarray  # float32 [K, n]
    shared_kn: np.ndarray  # int64 [K, n]: images both are active on
    active_k: np.ndarray  # int64 [K]: images each is active on
    cluster_k: np.ndarray  # int64 [K]: near-duplicate cluster id, -1 for latents in none
    basis: str  # "active images" or "top-k images"
    # Matryoshka only (empty [K, 0] otherwise): parents in coarser groups, children in finer ones
    parents_kp: np.ndarray | None = None  # int64 [K, p], -1 where there are fewer
    parent_share_kp: np.ndarray | None = None  # float32: share of this latent's images the parent fires on
    children_kc: np.ndarray | None = None
    child_share_kc: np.ndarray | None = None  # float32: share of the child's images this latent fires on

    @property
    def num_clusters(self) -> int:
        return int(len(np.unique(self.cluster_k[self.cluster_k >= 0])))

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"ids": self.ids_kn, "jaccard": self.jaccard_kn, "shared": self.shared_kn, "active": self.active_k,
               "cluster": self.cluster_k, "basis": np.array(self.basis)}
        if self.parents_kp is not None:
            out.update(parents=self.parents_kp, parent_share=self.parent_share_kp, children=self.children_kc,
                       child_share=self.child_share_kc)
        return out

    @classmethod
    def from_arrays(cls, z) -> "Related":
        extra = [z[k] for k in ("parents", "parent_share", "children", "child_share")] if "parents" in z else []
        return cls(z["ids"], z["jaccard"], z["shared"], z["active"], z["cluster"], str(z["basis"]), *extra)

    def cluster_of(self, j: int) -> list[int] | None:
        """The other latents of latent ``j``'s near-duplicate cluster (None when it is in none)."""
        if self.cluster_k[j] < 0:
            return None
        return [int(k) for k in np.flatnonzero(self.cluster_k == self.cluster_k[j]) if k != j]

    def cluster_sizes(self) -> np.ndarray:
        """The number of latents in each near-duplicate cluster."""
        c = self.cluster_k[self.cluster_k >= 0]
        return np.bincount(np.unique(c, return_inverse=True)[1]) if len(c) else np.zeros(0, np.int64)


def activity_matrix(chunks: Iterable, num_latents: int, row_image: np.ndarray | None = None):
    """scipy CSR (images x latents, int32 ones where active > 0) from a code store's CSR chunks.
    ``row_image``: the image of every code row (token-level stores hold many rows per image; an
    image counts as active where any of its tokens is)."""
    import scipy.sparse as sp

    parts = []
    for chunk in chunks:
        values = np.asarray(chunk.values)
        rows = chunk.start + np.repeat(np.arange(chunk.num_rows), np.diff(np.asarray(chunk.indptr)))
        keep = values > 0
        parts.append((rows[keep], np.asarray(chunk.indices, dtype=np.int64)[keep]))
    if not parts:
        return sp.csr_matrix((0, num_latents), dtype=np.int32)
    rows = np.concatenate([r for r, _ in parts])
    cols = np.concatenate([c for _, c in parts])
    if row_image is not None:
        rows = np.asarray(row_image, dtype=np.int64)[rows]
    num_rows = int(rows.max()) + 1 if len(rows) else 0
    b = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(num_rows, num_latents))
    b.data[:] = 1  # tokens of one image active for the same latent were summed
    return b


def top_sets_matrix(top_ids_kk: np.ndarray, top_values_kk: np.ndarray, num_images: int):
    """scipy CSR (images x latents): latent j's top images where it is active."""
    import scipy.sparse as sp

    K, k = top_ids_kk.shape
    keep = top_values_kk > 0
    cols = np.repeat(np.arange(K), k).reshape(K, k)[keep]
    return sp.csr_matrix((np.ones(int(keep.sum()), np.int32), (top_ids_kk[keep], cols)), shape=(num_images, K))


def _top_per_row(i, j, keys, K: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row i, the first ``n`` j in the order given by ``keys`` (np.lexsort keys, last = primary
    after i): (ids [K, n] with -1 padding, the position of each kept pair)."""
    order = np.lexsort((*keys, i))
    i_sorted = i[order]
    first = np.searchsorted(i_sorted, np.arange(K))
    rank = np.arange(len(i_sorted)) - first[i_sorted]
    take = rank < n
    ids = np.full((K, n), -1, np.int64)
    ids[i_sorted[take], rank[take]] = j[order][take]
    return ids, (i_sorted[take], rank[take], order[take])


def related_latents(b_nk, n: int = 8, basis: str = "active images", groups_k: np.ndarray | None = None,
                    n_parents: int = 4, n_children: int = 8) -> Related:
    """The ``n`` latents of highest Jaccard with each latent (ties: more shared images, then lower id),
    and the near-duplicate clusters (connected components of pairs with J >= DUPLICATE_JACCARD).
    With ``groups_k`` (a Matryoshka SAE's group of each latent), parents and children too."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    b_nk = sp.csr_matrix(b_nk, dtype=np.int32)
    K = b_nk.shape[1]
    active = np.asarray(b_nk.sum(axis=0)).ravel().astype(np.int64)
    inter = (b_nk.T @ b_nk).tocoo()  # |A_i ∩ A_j| for every pair that shares an image
    off = inter.row != inter.col
    i, j, shared = inter.row[off].astype(np.int64), inter.col[off].astype(np.int64), inter.data[off].astype(np.int64)
    jac = shared / (active[i] + active[j] - shared)
    # per latent i, its neighbours by Jaccard, then shared count, then id
    ids, (r, c, src) = _top_per_row(i, j, (j, -shared, -jac), K, n)
    jaccard = np.zeros((K, n), np.float32)
    shared_kn = np.zeros((K, n), np.int64)
    jaccard[r, c] = jac[src]
    shared_kn[r, c] = shared[src]
    hierarchy = []
    if groups_k is not None:
        groups_k = np.asarray(groups_k, dtype=np.int64)
        share_i = shared / active[i]  # C(i -> j): the share of i's images where j fires too
        coarser = groups_k[j] < groups_k[i]
        pi, pj = i[coarser], j[coarser]
        rank_p = np.where(share_i >= PARENT_COVER, 1.0 + jac, share_i)[coarser]
        parents, (r, c, src) = _top_per_row(pi, pj, (pj, -rank_p), K, n_parents)
        parent_share = np.zeros((K, n_parents), np.float32)
        parent_share[r, c] = share_i[coarser][src]
        # children of i: finer latents j, by the share of j's images where i fires (C(j -> i))
        share_j = shared / active[j]
        finer = groups_k[j] > groups_k[i]
        ci, cj = i[finer], j[finer]
        rank_c = np.where(share_j >= PARENT_COVER, 1.0 + jac, share_j)[finer]
        children, (r, c, src) = _top_per_row(ci, cj, (cj, -shared[finer], -rank_c), K, n_children)
        child_share = np.zeros((K, n_children), np.float32)
        child_share[r, c] = share_j[finer][src]
        hierarchy = [parents, parent_share, children, child_share]
    dup = jac >= DUPLICATE_JACCARD
    graph = sp.coo_matrix((np.ones(int(dup.sum())), (i[dup], j[dup])), shape=(K, K))
    _, labels = connected_components(graph, directed=False)
    in_pair = np.zeros(K, bool)
    in_pair[i[dup]] = True
    cluster = np.where(in_pair, labels, -1).astype(np.int64)
    return Related(ids, jaccard, shared_kn, active, cluster, basis, *hierarchy)
