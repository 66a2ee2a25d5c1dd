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


def peer_results(servers: list[tuple[str, float, float, float]]) -> dict:
    """A bench.peers result with one server per (name, short 32 × 8 items/s, file 32 × 8 items/s, short 1 × 1 p50)."""

    def row(name: str, items_per_s: float, p50: float) -> dict:
        return {"row": name, "requests": 10, "items_per_s": items_per_s, "errors": 0, "latency_ms": {"p50": p50}}

    return {
        "date": "2026-12-03T00:00:00+00:00",
        "machine": {"cpu_count": 2, "cpu_model": "test"},
        "git": {"commit": "0" * 40, "dirty": False},
        "settings": {"seconds": 1.0, "peer_versions": {"infinity-emb": "0.0.78"}},
        "servers": [
            {
                "name": name,
                "ours": name.startswith("ours"),
                "env": {},
                "error": None,
                "rows": [
                    row("short texts 1 × 1", 1000 / p50, p50),
                    row("short texts 32 × 8", short, 500.0),
                    row("file texts 32 × 8", files, 9000.0),
                ],
            }
            for name, short, files, p50 in servers
        ],
    }


def test_peer_report_compares_our_best_setup_with_the_best_peer_setup_of_each_row(tmp_path):
    from bench.peers import report

    results = peer_results(
        [
            ("ours", 450.0, 20.0, 8.0),
            ("ours b", 400.0, 30.0, 9.0),
            ("infinity a", 300.0, 12.0, 20.0),
            ("infinity b", 200.0, 24.0, 15.0),
        ]
    )
    report(results, tmp_path)

    targets = {t["name"].split(":")[0]: t for t in results["targets"]}
    assert [targets[row]["ours_setup"] for row in targets] == ["ours", "ours b", "ours"]
    assert (targets["short texts 32 × 8"]["peer_setup"], targets["short texts 32 × 8"]["value"]) == ("infinity a", 1.5)
    assert targets["short texts 32 × 8"]["status"] == "PASS"
    assert (targets["file texts 32 × 8"]["peer_setup"], targets["file texts 32 × 8"]["value"]) == ("infinity b", 1.25)
    assert targets["file texts 32 × 8"]["status"] == "FAIL"
    assert (targets["short texts 1 × 1"]["peer_setup"], targets["short texts 1 × 1"]["value"]) == ("infinity b", 0.533)
    assert targets["short texts 1 × 1"]["status"] == "FAIL"
    assert json.loads((tmp_path / "peers.json").read_text())["targets"] == results["targets"]
    assert "| file texts 32 × 8 | infinity b | 24.0 |" in (tmp_path / "peers.md").read_text()
