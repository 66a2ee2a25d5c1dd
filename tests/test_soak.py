"""The soak's short form (about 45 s): `python -m bench.soak --seconds 30 --warmup 10` against the tests' model store.

The real server at steady load with every kind of valid and invalid request mixed: every answer must be the one its
kind expects, the memory must not grow past 10 % after the warm-up, no file descriptor may leak and no server
process may die. The 5-minute form with the full-size models is `make soak` (README, Performance).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from bench.soak_criteria import FD_SLACK, RSS_GROWTH_LIMIT
from bench.soak_kinds import make_kinds

SECONDS, WARMUP_S = 30, 10


@pytest.mark.timeout(240)  # ~45 s: 30 s of load, the server's start and stop, two idle pauses
def test_short_soak_has_no_unexpected_answer_no_growth_and_no_leak(model_store, tmp_path):
    out = tmp_path / "soak"
    command = [sys.executable, "-m", "bench.soak", "--seconds", str(SECONDS), "--warmup", str(WARMUP_S)]
    command += ["--bentoml-home", str(model_store), "--out", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=200)
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report

    results = json.loads((out / "soak.json").read_text())
    assert results["passed"] and all(criterion["passed"] for criterion in results["criteria"]), report
    assert results["unexpected_total"] == 0 and results["unexpected"] == [], results["unexpected"]
    kinds = {row["kind"]: row for row in results["kinds"]}
    assert set(kinds) == {kind.name for kind in make_kinds()}
    for row in kinds.values():  # every kind, in the warm-up and in the measured run, all answered as expected
        assert row["warmup_requests"] >= 1 and row["requests"] > row["warmup_requests"], row
        assert row["unexpected"] == 0, row
    assert {row["expected"].split()[0] for row in kinds.values()} == {"200", "400", "404", "413", "422"}
    # steady load: the clients kept to the planned rate (16 requests/s) within a fifth
    assert results["achieved_rate"] > 0.8 * results["settings"]["rate"], report

    memory, fds, pids = results["memory"], results["fds"], results["pids"]
    assert memory["growth"] < RSS_GROWTH_LIMIT, memory
    assert memory["baseline_mib"] > 100 and memory["tail_peak_mib"] >= memory["end_mib"] > 0, memory
    assert fds["end"] <= fds["baseline"] + FD_SLACK, fds
    assert pids["same"] and len(pids["end"]) >= 4, pids  # the serve process, the API and both model services
    assert {sample["phase"] for sample in results["samples"]} >= {"warmup", "run", "idle"}
    assert len(results["samples"]) >= SECONDS * 0.8
    assert (out / "soak.png").stat().st_size > 0
