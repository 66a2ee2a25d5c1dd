"""The `duplicates` command: groups of files that are the same (same bytes) or nearly so (similar vectors).

Exact groups are files with the same sha256. Near groups are files of one type (texts with texts, images with images:
the two models' vectors live in different spaces) whose cosine similarity is at least the threshold, joined
transitively: A~B and B~C make one group of A, B and C even when A and C are further apart. One file of each exact
group takes part in the comparison, so that an exact group joins a near group whole. Similarities are computed a tile
of BLOCK×BLOCK pairs at a time, so that memory stays bounded however many files there are.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from client.store import Modality

BLOCK = 1024


@dataclass(frozen=True)
class Group:
    kind: str
    """exact or near"""
    modality: str
    similarity: float
    """1 for an exact group; for a near group the lowest similarity among its pairs at or over the threshold."""
    paths: list[str]


class UnionFind:
    """Disjoint sets of 0..n-1, with the lowest similarity of the pairs that were joined in each."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.weakest = [float("inf")] * n

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression: later finds are a step or two
            self.parent[item], item = root, self.parent[item]
        return root

    def join(self, a: int, b: int, similarity: float) -> None:
        root_a, root_b = self.find(a), self.find(b)
        self.parent[root_b] = root_a
        self.weakest[root_a] = min(self.weakest[root_a], self.weakest[root_b], similarity)

    def sets(self) -> list[list[int]]:
        """The sets of more than one item, each sorted."""
        members: dict[int, list[int]] = defaultdict(list)
        for item in range(len(self.parent)):
            members[self.find(item)].append(item)
        return [items for items in members.values() if len(items) > 1]


def similar_pairs(vectors: np.ndarray, threshold: float, block: int = BLOCK) -> Iterator[tuple[int, int, float]]:
    """Every pair i < j of rows of `vectors` (unit length) whose dot product is at least `threshold`."""
    n = len(vectors)
    for top in range(0, n, block):
        rows = vectors[top : top + block]
        for left in range(top, n, block):  # the tiles on and right of the diagonal: each pair once
            similarities = rows @ vectors[left : left + block].T
            for i, j in zip(*np.nonzero(similarities >= threshold), strict=True):
                if top + i < left + j:
                    yield int(top + i), int(left + j), float(similarities[i, j])


def find_groups(modalities: dict[str, Modality], threshold: float, block: int = BLOCK) -> list[Group]:
    """The exact groups, then the near groups, each list by type and first path."""
    exact, near = [], []
    for kind, modality in sorted(modalities.items()):
        by_hash: dict[str, list[str]] = defaultdict(list)
        first_row: dict[str, int] = {}
        for row, (path, digest) in enumerate(zip(modality.paths, modality.sha256, strict=True)):
            by_hash[digest].append(path)
            first_row.setdefault(digest, row)
        exact += [Group("exact", kind, 1.0, sorted(paths)) for paths in by_hash.values() if len(paths) > 1]
        digests = list(first_row)
        vectors = modality.vectors[list(first_row.values())]
        # The server's vectors are unit length already; normalising again makes the dot product the cosine for any
        # file of this schema.
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        sets = UnionFind(len(digests))
        for i, j, similarity in similar_pairs(vectors, threshold, block):
            sets.join(i, j, similarity)
        for members in sets.sets():
            paths = sorted(path for member in members for path in by_hash[digests[member]])
            near.append(Group("near", kind, round(sets.weakest[sets.find(members[0])], 6), paths))
    return sorted(exact, key=order) + sorted(near, key=order)


def order(group: Group) -> tuple[str, str]:
    return group.modality, group.paths[0]


def format_groups(groups: list[Group], files: int, threshold: float) -> str:
    lines = []
    for group in groups:
        similarity = f", lowest similarity {group.similarity:.4f}" if group.kind == "near" else ""
        lines.append(f"{group.kind} {group.modality}, {len(group.paths)} files{similarity}:")
        lines.extend(f"  {path}" for path in group.paths)
    exact = sum(group.kind == "exact" for group in groups)
    lines.append(
        f"{len(groups)} groups ({exact} exact, {len(groups) - exact} near) among {files} files, threshold {threshold}"
    )
    return "\n".join(lines)


def groups_json(groups: list[Group]) -> str:
    return json.dumps([asdict(group) for group in groups], indent=2)
