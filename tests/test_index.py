"""client/index.py and the grouping of client/duplicates.py, without a server: the exact method against brute force,
the indexed method against the exact one (the index forced on a few thousand vectors), the bounded-memory grouping,
and the nearest neighbours of `search`."""

from __future__ import annotations

import numpy as np
import pytest

import client.index
from bench.duplicates import clustered
from client.duplicates import find_groups
from client.index import Pairs, components, exact_pairs, indexed_pairs, nearest, normalized
from client.store import Modality


def brute_force_groups(vectors: np.ndarray, threshold: float) -> dict[frozenset[int], float]:
    """Connected components of the graph of pairs at or over the threshold, with their weakest pair."""
    similarities = vectors @ vectors.T
    adjacent = (similarities >= threshold) & ~np.eye(len(vectors), dtype=bool)
    seen, groups = set(), {}
    for start in range(len(vectors)):
        if start in seen or not adjacent[start].any():
            continue
        component, frontier = {start}, [start]
        while frontier:
            for neighbour in np.nonzero(adjacent[frontier.pop()])[0]:
                if int(neighbour) not in component:
                    component.add(int(neighbour))
                    frontier.append(int(neighbour))
        seen |= component
        members = sorted(component)
        block = similarities[np.ix_(members, members)]
        groups[frozenset(members)] = float(block[np.triu(adjacent[np.ix_(members, members)], 1)].min())
    return groups


def small_clusters() -> np.ndarray:
    """200 unit vectors: ten clusters of 2 to 11 among unrelated ones, spread over the rows."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 16))
    clusters = [
        center + rng.normal(scale=0.05, size=(size, 16)) for center, size in zip(centers, range(2, 12), strict=True)
    ]
    vectors = np.concatenate([rng.normal(size=(135, 16)), *clusters])
    vectors = vectors[rng.permutation(len(vectors))]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def pair_set(chunks, vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """The pairs, after checking that each comes once, as i < j, at or over the threshold, with the similarity of its
    vectors' dot product."""
    found: list[tuple[int, int]] = []
    for pairs in chunks:
        assert (pairs.i < pairs.j).all() and (pairs.similarity >= threshold).all()
        dots = np.einsum("ij,ij->i", vectors[pairs.i], vectors[pairs.j])
        np.testing.assert_allclose(pairs.similarity, dots, atol=1e-5)
        found += zip(pairs.i.tolist(), pairs.j.tolist(), strict=True)
    assert len(set(found)) == len(found), "a pair came twice"
    return set(found)


def groups_of(labels: np.ndarray, weakest: np.ndarray) -> dict[frozenset[int], float]:
    members: dict[int, set[int]] = {}
    for node, label in enumerate(labels.tolist()):
        members.setdefault(label, set()).add(node)
    return {frozenset(nodes): float(weakest[label]) for label, nodes in members.items() if len(nodes) > 1}


def test_exact_pairs_in_any_tiling_give_the_brute_force_groups():
    vectors = small_clusters()
    expected = brute_force_groups(vectors, 0.95)
    assert len(expected) >= 10
    for block in (7, 64, 1024):
        pairs = list(exact_pairs(vectors, 0.95, block))
        assert pair_set(pairs, vectors, 0.95) == {
            (i, j)
            for members in expected
            for i in members
            for j in members
            if i < j and vectors[i] @ vectors[j] >= 0.95
        }
        found = groups_of(*components(len(vectors), pairs))
        assert found.keys() == expected.keys()
        for members, weakest in expected.items():
            assert found[members] == pytest.approx(weakest, abs=1e-5)
    # In parts, as the benchmark computes the exact pairs of a million: the same pairs.
    parts = [exact_pairs(vectors, 0.95, 64, rows=(start, start + 64)) for start in range(0, 200, 64)]
    assert pair_set([p for part in parts for p in part], vectors, 0.95) == pair_set(
        exact_pairs(vectors, 0.95, 64), vectors, 0.95
    )


@pytest.mark.parametrize("dimension", [384, 512])
def test_the_index_finds_the_exact_pairs_and_no_false_one(dimension):
    vectors = normalized(clustered(4000, dimension)[0])
    for threshold in (0.95, 0.9):
        exact = pair_set(exact_pairs(vectors, threshold), vectors, threshold)
        indexed = pair_set(indexed_pairs(vectors, threshold), vectors, threshold)
        assert len(exact) > 1000
        assert indexed <= exact  # every pair it reports is at or over the threshold, as computed exactly
        assert len(indexed) >= 0.99 * len(exact), (threshold, len(exact) - len(indexed))


def test_duplicates_through_the_index_agree_with_the_exact_method():
    vectors, digests = clustered(3000, 384)
    assert len(np.unique(digests)) < len(digests)  # exact copies among them
    modality = Modality([f"f{i:04d}" for i in range(len(vectors))], [f"h{d}" for d in digests], vectors)
    exact = find_groups({"text": modality}, 0.95, "exact")
    indexed = find_groups({"text": modality}, 0.95, "indexed")
    assert [g for g in exact if g.kind == "exact"] == [g for g in indexed if g.kind == "exact"]
    near = {tuple(g.paths) for g in exact if g.kind == "near"}
    assert len(near) > 50
    # A missed pair can split a group: at most two groups differ.
    assert len(near & {tuple(g.paths) for g in indexed if g.kind == "near"}) >= len(near) - 2


def test_the_grouping_folds_pairs_in_bounded_batches(monkeypatch):
    vectors = small_clusters()
    pairs = [
        Pairs(p.i[k : k + 1], p.j[k : k + 1], p.similarity[k : k + 1])
        for p in exact_pairs(vectors, 0.9, 16)
        for k in range(len(p.i))
    ]
    labels, weakest = components(len(vectors), pairs)
    monkeypatch.setattr(client.index, "PAIRS_BEFORE_FOLDING", 3)
    folded_labels, folded_weakest = components(len(vectors), iter(pairs))
    assert groups_of(folded_labels, folded_weakest) == groups_of(labels, weakest)
    assert len(groups_of(labels, weakest)) >= 10


def test_exact_groups_join_near_groups_whole_within_a_modality():
    base = np.array([1.0, 0.0, 0.0])
    near = np.array([0.99, 0.141, 0.0])  # cosine 0.99 with base
    other = np.array([0.0, 1.0, 0.0])
    modalities = {
        "image": Modality(
            ["a.png", "a-copy.png", "a-small.jpg", "b.png", "b-copy.png"],
            ["x", "x", "y", "z", "z"],
            np.array([base, base, near, other, other], dtype=np.float32),
        ),
        "text": Modality(["a.txt"], ["t"], np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)),
    }
    for method in ("exact", "indexed"):
        groups = [(g.kind, g.modality, g.paths, g.similarity) for g in find_groups(modalities, 0.95, method)]
        # b and its copy are only an exact group: copies alone make no near group.
        assert groups == [
            ("exact", "image", ["a-copy.png", "a.png"], 1.0),
            ("exact", "image", ["b-copy.png", "b.png"], 1.0),
            ("near", "image", ["a-copy.png", "a-small.jpg", "a.png"], pytest.approx(0.99, abs=1e-3)),
        ]


def test_nearest_ranks_by_similarity_and_leaves_a_row_out():
    vectors = small_clusters()
    query = vectors[5]
    expected = np.argsort(-(vectors @ query), kind="stable")
    found = nearest(vectors, query, 10)
    assert [row for row, _ in found] == expected[:10].tolist() and found[0] == (5, pytest.approx(1.0))
    assert [row for row, _ in nearest(vectors, query, 10, leave_out=5)] == expected[1:11].tolist()
    assert len(nearest(vectors, query, 500)) == 200 and nearest(vectors[:1], query, 3, leave_out=0) == []
