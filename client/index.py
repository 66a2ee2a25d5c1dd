"""Which pairs of unit vectors are at least a threshold similar, which vectors are nearest a query, and the groups
that similar pairs join: the index code of `duplicates` and `search`.

Two ways to find the pairs, with the same result up to the index's misses:

- exact: every pair, BLOCK×BLOCK similarities at a time (a matrix product per tile). Its cost grows with n²: at a
  million 512-d vectors that is some 5×10¹¹ pairs, about an hour on 2 cores.
- indexed: an inverted-file index. faiss's spherical k-means cuts the vectors into about √n·LISTS_PER_ROOT lists
  around centroids; each vector lives in the list of its nearest centroid and is compared with the members of the
  PROBES lists whose centroids are nearest to it. Two vectors at cosine 0.9 or more are close enough that one of
  them nearly always falls into a list the other probes: at PROBES = 4 the pairs missed were under 0.01 % in
  bench/duplicates.py's measurements. Every vector is a query here, so the comparisons are batched by list: all the
  vectors that probe a list, against its members, in one matrix product (faiss's own per-query scan took several
  times longer). The similarities are the float32 dot products of the vectors themselves, as in the exact method (no
  compressed codes): every reported pair is checked exactly, and none is below the threshold.

Up to EXACT_UP_TO vectors the exact method is as fast or faster (the k-means costs more than it saves; measured by
bench/duplicates.py's crossover rows) and `auto` uses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

Method = Literal["auto", "exact", "indexed"]

BLOCK = 2048
EXACT_UP_TO = 5_000
LISTS_PER_ROOT = 1.0
PROBES = 4
# faiss's k-means trains on at most this many vectors per centroid (its own default is 256): a sample is enough to
# place the centroids, and the training costs samples × lists.
TRAINING_POINTS_PER_LIST = 32
KMEANS_ITERATIONS = 10
# Vectors compared with a list's members at a time, and members at a time: a block of similarities is at most
# QUERY_BLOCK² (64 MiB).
QUERY_BLOCK = 4096
# Pairs held before the grouping folds them into its forest: bounds memory when a low threshold makes many pairs.
PAIRS_BEFORE_FOLDING = 8_000_000


@dataclass(frozen=True)
class Pairs:
    """Pairs of rows i < j and their cosine similarity, as parallel arrays."""

    i: np.ndarray
    j: np.ndarray
    similarity: np.ndarray


def normalized(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as C-contiguous float32 rows of unit length (a zero row stays zero), in place when they already are
    float32, contiguous and writable."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not vectors.flags.writeable:
        vectors = vectors.copy()
    for start in range(0, len(vectors), 65536):  # a block at a time: no second copy of a large matrix
        rows = vectors[start : start + 65536]
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return vectors


def similar_pairs(vectors: np.ndarray, threshold: float, method: Method = "auto") -> Iterator[Pairs]:
    """Every pair of rows of `vectors` (unit length, float32, C-contiguous) whose dot product is at least `threshold`,
    each once, in chunks; the indexed method may miss a few (see the module's docstring)."""
    if method == "exact" or (method == "auto" and len(vectors) <= EXACT_UP_TO):
        return exact_pairs(vectors, threshold)
    return indexed_pairs(vectors, threshold)


def exact_pairs(
    vectors: np.ndarray, threshold: float, block: int = BLOCK, rows: tuple[int, int] | None = None
) -> Iterator[Pairs]:
    """The pairs whose first row is in `rows` (start, stop; all by default), so that a long comparison can run in
    parts; `start` a multiple of `block`."""
    n = len(vectors)
    start, stop = rows or (0, n)
    for top in range(start, min(stop, n), block):
        row_vectors = vectors[top : top + block]
        for left in range(top, n, block):  # the tiles on and right of the diagonal: each pair once
            column_vectors = vectors[left : left + block]
            similarities = row_vectors @ column_vectors.T
            # flatnonzero on the flat array: several times faster than nonzero on the 2-D one.
            i, j = np.divmod(np.flatnonzero(similarities >= threshold), len(column_vectors))
            upper = top + i < left + j
            i, j = i[upper], j[upper]
            if len(i):
                yield Pairs(top + i, left + j, similarities[i, j])


def list_count(n: int) -> int:
    return max(1, round(LISTS_PER_ROOT * np.sqrt(n)))


def indexed_pairs(
    vectors: np.ndarray, threshold: float, lists: int | None = None, probes: int = PROBES, seed: int = 0
) -> Iterator[Pairs]:
    """The pairs at or over `threshold` that the inverted-file index finds (the module's docstring says how), each
    once; the same for the same vectors and seed."""
    import faiss  # only here: the exact method and `search` do without it

    n, dimension = vectors.shape
    if n < 2:
        return
    lists = min(lists or list_count(n), n)
    probes = min(probes, lists)
    # The lists are cut around the vectors' mean: real embeddings fill a cone, not the sphere, and around the origin
    # a centroid near the cone's axis is among the nearest of most vectors, a list that nearly all probe (measured:
    # 8 times the work, with 0.8 of the million vectors probing one list).
    mean = vectors.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, lists * TRAINING_POINTS_PER_LIST), replace=False))
    kmeans = faiss.Kmeans(
        dimension,
        lists,
        niter=KMEANS_ITERATIONS,
        spherical=True,
        seed=seed,
        max_points_per_centroid=TRAINING_POINTS_PER_LIST,
        min_points_per_centroid=1,  # small sets have fewer points than faiss likes: no warning about it
    )
    kmeans.train(normalized(vectors[sample] - mean))
    centroids = faiss.IndexFlatIP(dimension)
    centroids.add(kmeans.centroids)
    probed = np.concatenate(  # (n, probes) lists, nearest first
        [centroids.search(vectors[start : start + QUERY_BLOCK] - mean, probes)[1] for start in range(0, n, QUERY_BLOCK)]
    )
    home = probed[:, 0]
    members = np.argsort(home, kind="stable")
    member_bounds = np.searchsorted(home[members], np.arange(lists + 1))
    visits = np.argsort(probed.ravel(), kind="stable")
    visit_bounds = np.searchsorted(probed.ravel()[visits], np.arange(lists + 1))
    visitors = visits // probes
    for list_ in range(lists):
        listed = members[member_bounds[list_] : member_bounds[list_ + 1]]
        visiting = visitors[visit_bounds[list_] : visit_bounds[list_ + 1]]
        # Blocks of both sides: memory stays bounded even when the k-means leaves one huge list.
        for left in range(0, len(listed), QUERY_BLOCK):
            columns = listed[left : left + QUERY_BLOCK]
            column_vectors = vectors[columns]
            for top in range(0, len(visiting), QUERY_BLOCK):
                queries = visiting[top : top + QUERY_BLOCK]
                similarities = vectors[queries] @ column_vectors.T
                row, column = np.divmod(np.flatnonzero(similarities >= threshold), len(columns))
                a, b = queries[row], columns[column]
                # A pair comes from list home[b] when a probes it, and again from list home[a] when b probes that:
                # keep the one with a < b, or the only one there is.
                once = (a != b) & ((a < b) | ~(probed[b] == home[a][:, None]).any(axis=1))
                if once.any():
                    a, b, similarity = a[once], b[once], similarities[row[once], column[once]]
                    yield Pairs(np.minimum(a, b), np.maximum(a, b), similarity)


def components(n: int, chunks: Iterable[Pairs]) -> tuple[np.ndarray, np.ndarray]:
    """The connected components of the graph of `n` nodes and the pairs' edges: each node's component label
    (0..components-1) and each component's weakest edge similarity (inf for a component without edges). Pairs are
    folded in PAIRS_BEFORE_FOLDING at a time, so that memory stays bounded however many pairs come."""
    labels = np.arange(n)
    weakest = np.full(n, np.inf, dtype=np.float32)
    held: list[Pairs] = []
    held_count = 0
    for pairs in chunks:
        held.append(pairs)
        held_count += len(pairs.i)
        if held_count >= PAIRS_BEFORE_FOLDING:
            labels, weakest = fold(labels, weakest, held)
            held, held_count = [], 0
    return fold(labels, weakest, held)


def fold(labels: np.ndarray, weakest: np.ndarray, held: list[Pairs]) -> tuple[np.ndarray, np.ndarray]:
    """The components of the graph whose edges are the held pairs and, for each node, a link to the first node of
    its current component: the components so far, merged by the held pairs."""
    first = np.unique(labels, return_index=True)[1]
    i = np.concatenate([np.arange(len(labels))] + [pairs.i for pairs in held])
    j = np.concatenate([first[labels]] + [pairs.j for pairs in held])
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(labels), len(labels)))
    count, merged = connected_components(graph, directed=False)
    merged_weakest = np.full(count, np.inf, dtype=np.float32)
    np.minimum.at(merged_weakest, merged[first], weakest)
    for pairs in held:
        np.minimum.at(merged_weakest, merged[pairs.i], pairs.similarity)
    return merged, merged_weakest


def nearest(
    vectors: np.ndarray, query: np.ndarray, count: int, leave_out: int | None = None
) -> list[tuple[int, float]]:
    """The rows of `vectors` nearest `query` by dot product, most similar first, at most `count`, `leave_out` (a
    row) not among them. Exact: one matrix-vector product, some 0.1 s for a million 512-d rows, far less than
    building the index would cost."""
    similarities = vectors @ query
    if leave_out is not None:
        similarities[leave_out] = -np.inf
    count = min(count, len(vectors) - (leave_out is not None))
    if count <= 0:
        return []
    best = np.argpartition(-similarities, count - 1)[:count]
    best = best[np.argsort(-similarities[best], kind="stable")]
    return [(int(row), float(similarities[row])) for row in best]
