"""Smoke test of the benchmark harness: `python -m bench.run --quick` against the test suite's model store.

Checks that every stage runs and the report is written; no timing is asserted (that is the benchmark's job).
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_writes_its_report(model_store, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.run", "--quick", "--bentoml-home", str(model_store)]
    command += ["--work", str(tmp_path / "work"), "--out", str(out), "--label", "smoke"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = json.loads((out / "smoke.json").read_text())
    assert {row["modality"] for row in report["raw"]["rows"]} == {"text", "file text", "image", "photo"}
    assert [(row["modality"], row["clients"]) for row in report["rows"]] == [
        ("text", 1),
        ("text", 8),
        ("image", 1),
        ("mixed", 8),
        ("file text", 8),
        ("photo", 1),
    ]
    assert [(row["modality"], row["clients"]) for row in report["mixed"]] == [("file text", 16), ("text", 4)]
    for row in [*report["rows"], *report["mixed"]]:
        assert row["errors"] == 0, row
        assert row["requests"] > 0 and row["min_requests_per_client"] >= 1, row
    assert report["server"]["ready_s"] > 0 and report["server"]["rss_mib"]["peak"] > 0
    assert {target["status"] for target in report["targets"]} <= {"PASS", "FAIL", "N/A"}
    assert (out / "smoke.png").stat().st_size > 0
    assert "| /embed/text |" in (out / "smoke.md").read_text()
