"""The `duplicates` command: groups of files that are the same (same bytes) or nearly so (similar vectors).

Exact groups are files with the same sha256. Near groups are files of one type (texts with texts, images with images:
the two models' vectors live in different spaces) whose cosine similarity is at least the threshold, joined
transitively: A~B and B~C make one group of A, B and C even when A and C are further apart. The copies of a file join
its near group with it, so that an exact group joins a near group whole. The pairs come from
client/index.py: compared exactly for small sets, through an inverted-file index for large ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from client.index import Method, Pairs, components, normalized, similar_pairs
from client.store import Modality


@dataclass(frozen=True)
class Group:
    kind: str
    """exact or near"""
    modality: str
    similarity: float
    """1 for an exact group; for a near group the lowest similarity among its pairs at or over the threshold."""
    paths: list[str]


def find_groups(modalities: dict[str, Modality], threshold: float, method: Method = "auto") -> list[Group]:
    """The exact groups, then the near groups, each list by type and first path. Normalises the vectors in place."""
    exact, near = [], []
    for kind, modality in sorted(modalities.items()):
        # Each distinct digest a number, in order of first appearance.
        digest_of_row = pa.array(modality.sha256, pa.string()).dictionary_encode().indices.to_numpy()
        first_row = np.unique(digest_of_row, return_index=True)[1][digest_of_row]
        paths = np.array(modality.paths, dtype=object)
        copied = np.flatnonzero(np.bincount(digest_of_row)[digest_of_row] > 1)
        exact += [Group("exact", kind, 1.0, sorted(paths[rows])) for rows in grouped(copied, digest_of_row[copied])]
        # The server's vectors are unit length already; normalising again makes the dot product the cosine for any
        # file of this schema.
        vectors = normalized(modality.vectors)
        pairs = similar_pairs(vectors, threshold, method)
        labels, weakest = components(len(vectors), with_copies_joined(pairs, digest_of_row, first_row))
        near_rows = np.flatnonzero(weakest[labels] < np.inf)
        for rows in grouped(near_rows, labels[near_rows]):
            near.append(Group("near", kind, round(float(weakest[labels[rows[0]]]), 6), sorted(paths[rows])))
    return sorted(exact, key=order) + sorted(near, key=order)


def with_copies_joined(chunks: Iterable[Pairs], digest_of_row: np.ndarray, first_row: np.ndarray) -> Iterator[Pairs]:
    """The pairs of different files, and each copy joined to the first file with its bytes at similarity inf: an
    exact group joins a near group whole, its own pairs do not count as near ones, and a component whose weakest
    pair is inf holds nothing but copies."""
    copies = np.flatnonzero(first_row != np.arange(len(first_row)))
    yield Pairs(first_row[copies], copies, np.full(len(copies), np.inf, dtype=np.float32))
    for pairs in chunks:
        different = digest_of_row[pairs.i] != digest_of_row[pairs.j]
        yield Pairs(pairs.i[different], pairs.j[different], pairs.similarity[different])


def grouped(rows: np.ndarray, keys: np.ndarray) -> list[np.ndarray]:
    """`rows` split by their `keys`, one array per distinct key."""
    if len(rows) == 0:
        return []
    by_key = np.argsort(keys, kind="stable")
    return np.split(rows[by_key], np.flatnonzero(np.diff(keys[by_key])) + 1)


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
