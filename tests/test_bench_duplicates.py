"""Smoke test of `make bench-duplicates`: its quick form on small sets of 64-d vectors runs and writes its report.
No timing is asserted; the recall is (it does not depend on the machine). And the sampled exact pairs that the
million's recall is measured against are the exact method's pairs that involve the sampled rows."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from conftest import ROOT

from bench.duplicates import clustered, pair_keys, partners
from client.index import exact_pairs, normalized


def test_quick_duplicates_benchmark_writes_its_report(tmp_path):
    command = [sys.executable, "-m", "bench.duplicates", "--quick", "--dimensions", "64"]
    command += ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((tmp_path / "out" / "duplicates-quick.json").read_text())
    [row] = report["timings"]
    assert row["vectors"] == 2000 and row["indexed"]["seconds"] > 0 and row["exact"]["peak_rss_mib"] > 0
    assert row["indexed"]["near_groups"] > 10 and row["near_groups_identical"].endswith(
        f"of {row['indexed']['near_groups']}"
    )
    assert [(r["threshold"], r["false"]) for r in report["recall"]] == [(0.95, 0), (0.9, 0)]
    assert all(r["recall"] >= 0.99 and r["exact_pairs"] > 100 for r in report["recall"])
    assert [r["vectors"] for r in report["crossover"]] == [1000, 2000]
    sampled = report["million_recall"]
    assert [(r["vectors"], r["sampled_rows"], r["threshold"], r["false"]) for r in sampled] == [
        (20000, 500, 0.95, 0),
        (20000, 500, 0.9, 0),
    ]
    assert all(r["recall"] >= 0.99 and r["exact_pairs"] > 100 for r in sampled)
    assert "| vectors | dim |" in (tmp_path / "out" / "duplicates-quick.md").read_text()


def test_sampled_partners_are_the_exact_pairs_of_the_sampled_rows():
    n, threshold = 3000, 0.9
    vectors = normalized(clustered(n, 32)[0])
    rows = np.random.default_rng(0).choice(n, 300, replace=False)
    everything = pair_keys(exact_pairs(vectors, threshold, block=512), n, vectors, threshold)
    involved = np.isin(everything // n, rows) | np.isin(everything % n, rows)

    keys, similarities = partners(vectors, np.sort(rows), threshold)

    assert len(keys) > 50 and np.array_equal(keys, everything[involved])
    assert np.allclose(similarities, np.einsum("ij,ij->i", vectors[keys // n], vectors[keys % n]), atol=1e-5)
