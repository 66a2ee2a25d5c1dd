"""Smoke test of `make bench-duplicates`: its quick form on small sets of 64-d vectors runs and writes its report.
No timing is asserted; the recall is (it does not depend on the machine)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


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
    assert "| vectors | dim |" in (tmp_path / "out" / "duplicates-quick.md").read_text()
