"""Soak test: the real server at steady load for minutes, with valid and invalid requests mixed (`make soak`).

    python -m bench.soak                                   # 5 minutes, real MiniLM + full-size random CLIP
    python -m bench.soak --seconds 30 --warmup 10 --bentoml-home STORE --out DIR   # the CI form (tests/test_soak.py)

It starts `bentoml serve .` with small request limits (SOAK_LIMITS, so that the invalid bodies stay small), then
`--clients` closed-loop clients send requests for `--seconds` (the first `--warmup` of them are the warm-up), each
client at most `--rate / --clients` requests per second and never more than one in flight, so the load stays well
under the server's capacity. The requests cycle through 23 kinds (`make_kinds`) in fixed proportions; every kind
has one expected status and, for errors, one expected error code, and a 200 is checked for its content. Anything
else (another status or code, a malformed answer, a timeout, a connection error) is an unexpected answer, recorded
with its kind, status and the start of its body.

Every second it samples the resident memory (RSS), the open file descriptors and the pids of all the server's
processes. After the warm-up and at the end the clients close their connections and the server idles for
IDLE_PAUSE_S; the baseline and the end are measured then. The criteria (exit status 1 when one fails):

- no unexpected answer, warm-up included;
- RSS growth, (the peak over the last 20 % of the run, under load) ÷ (the baseline, idle) − 1, under 10 %;
- open file descriptors at the end ≤ the baseline + FD_SLACK;
- the same server processes (pids) at the end as at the baseline: no worker died and was restarted.

Writes soak.json (figures, samples, the unexpected answers) and soak.png (RSS and fds over time) into `--out`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
from pathlib import Path

from bench.run import BENCH_ENV, git_state, machine, models_stored, prepare_store
from bench.server import start_server, stop_server
from bench.soak_clients import Tally, drive, kind_rows
from bench.soak_criteria import FD_SLACK, RSS_GROWTH_LIMIT, TAIL_FRACTION, criteria
from bench.soak_kinds import SOAK_LIMITS, Kind, Mix, make_kinds
from bench.soak_report import log_exceptions, plot, tables
from harness.processes import Sampler, snapshot
from harness.servers import ROOT, server_home

DEFAULT_SECONDS = 300.0
DEFAULT_WARMUP_S = 30.0
DEFAULT_CLIENTS = 8
# Requests per second over all clients. A round of the mix (27 requests) embeds 6 images and about 20 texts: at 16
# requests/s ~3.6 images/s, a quarter of what the full-size CLIP does on 2 CPU cores (~15/s), and ~12 texts/s against
# ~300/s. Well under capacity, so that no queue fills up and no deadline passes: only leaks and faults can fail it.
DEFAULT_RATE = 16.0
SAMPLE_INTERVAL_S = 1.0
IDLE_PAUSE_S = 2.0  # after the clients close their connections, before the baseline and the end are measured


class PhaseSampler(Sampler[dict]):
    """Every SAMPLE_INTERVAL_S: seconds since `started`, the phase, RSS sum (MiB), fds sum and the number of the
    server's processes (harness.processes.snapshot)."""

    def __init__(self, root_pid: int, started: float, phase: str) -> None:
        super().__init__(self._sample, SAMPLE_INTERVAL_S)
        self.root_pid, self.started, self.phase = root_pid, started, phase

    def _sample(self) -> dict:
        now = snapshot(self.root_pid)
        at = round(time.monotonic() - self.started, 2)
        return {
            "t": at,
            "phase": self.phase,
            "rss_mib": now["rss_mib"],
            "fds": now["fds"],
            "processes": len(now["pids"]),
        }


def soak(url: str, root_pid: int, kinds: list[Kind], args: argparse.Namespace) -> dict:
    """The warm-up, the baseline, the run and the end measurement against a ready server."""
    started = time.monotonic()
    tally, mix = Tally(started), Mix(kinds)
    sampler = PhaseSampler(root_pid, started, phase="warmup")
    sampler.start()
    try:
        print(f"warm-up: {args.warmup:g} s", flush=True)
        asyncio.run(drive(url, mix, args.clients, args.rate, args.warmup, "warmup", tally))
        sampler.phase = "idle"
        time.sleep(IDLE_PAUSE_S)
        baseline = snapshot(root_pid)
        run_seconds = args.seconds - args.warmup
        print(
            f"baseline: {baseline['rss_mib']:,.0f} MiB, {baseline['fds']} fds, {len(baseline['pids'])} processes; "
            f"run: {run_seconds:g} s",
            flush=True,
        )
        sampler.phase = "run"
        run_start = time.monotonic()
        asyncio.run(drive(url, mix, args.clients, args.rate, run_seconds, "run", tally))
        run_end = time.monotonic()
        sampler.phase = "idle"
        time.sleep(IDLE_PAUSE_S)
        end = snapshot(root_pid)
    finally:
        sampler.stop()

    run_start_s, run_end_s = run_start - started, run_end - started
    tail_from = run_end_s - TAIL_FRACTION * (run_end_s - run_start_s)
    tail = [s["rss_mib"] for s in sampler.samples if s["phase"] == "run" and s["t"] >= tail_from]
    tail_peak = max([*tail, end["rss_mib"]])
    growth = tail_peak / baseline["rss_mib"] - 1
    run_requests = sum(stats.requests for stats in tally.stats.get("run", {}).values())
    results = {
        "phases": {
            "run_start_s": round(run_start_s, 2),
            "run_end_s": round(run_end_s, 2),
            "tail_from_s": round(tail_from, 2),
        },
        "achieved_rate": run_requests / (run_end_s - run_start_s),
        "kinds": kind_rows(kinds, tally),
        "unexpected_total": tally.unexpected_total,
        "unexpected": tally.unexpected,
        "memory": {
            "baseline_mib": baseline["rss_mib"],
            "tail_peak_mib": tail_peak,
            "end_mib": end["rss_mib"],
            "peak_mib": max(s["rss_mib"] for s in sampler.samples),
            "growth": growth,
            "growth_pct": round(growth * 100, 2),
        },
        "fds": {
            "baseline": baseline["fds"],
            "end": end["fds"],
            "peak": max(s["fds"] for s in sampler.samples),
        },
        "pids": {"baseline": baseline["pids"], "end": end["pids"], "same": baseline["pids"] == end["pids"]},
        "processes": {"baseline": baseline["processes"], "end": end["processes"]},
        "samples": sampler.samples,
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"seconds of load, warm-up included (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP_S,
        help=f"seconds of warm-up, the baseline after it (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--clients", type=int, default=DEFAULT_CLIENTS, help=f"closed-loop clients (default {DEFAULT_CLIENTS})"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        help=f"requests per second, all clients together (default {DEFAULT_RATE:g})",
    )
    parser.add_argument(
        "--bentoml-home", type=Path, help="an existing model store to use as is (default: build WORK/bentoml-home)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / ".bench", help="the bench store and data (default .bench)")
    parser.add_argument("--out", type=Path, help="where soak.json, soak.png and the server log go (default WORK/soak)")
    args = parser.parse_args()
    if not 0 < args.warmup < args.seconds or args.clients < 1 or args.rate <= 0:
        parser.error("need 0 < --warmup < --seconds, --clients ≥ 1 and --rate > 0")

    work = args.work.resolve()
    store = (args.bentoml_home or work / "bentoml-home").resolve()
    out = (args.out or work / "soak").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.bentoml_home is None and not models_stored(store):
        work.mkdir(parents=True, exist_ok=True)
        prepare_store(store, work)
    home = server_home(store, out / "bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), **BENCH_ENV, **SOAK_LIMITS}
    kinds = make_kinds()

    server = start_server(env, out / "server.log")
    print(f"server ready in {server.ready_s} s ({server.rss_at_ready_mib:,.0f} MiB), log {server.log}", flush=True)
    try:
        results = soak(server.url, server.process.pid, kinds, args)
        results["health_at_end"] = server.health()
    finally:
        stop_server(server)
    log = server.log.read_text(errors="replace")
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(None),
        "git": git_state(),
        "settings": {
            "seconds": args.seconds,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "rate": args.rate,
            "bentoml_home": str(store),
            "limits": SOAK_LIMITS,
            "fd_slack": FD_SLACK,
            "rss_growth_limit": RSS_GROWTH_LIMIT,
            "tail_fraction": TAIL_FRACTION,
        },
        "server_ready_s": server.ready_s,
        "log_exceptions": log_exceptions(log),  # reported, not judged: an answer's status is what counts
        **results,
    }
    results["criteria"] = criteria(results)
    passed = all(c["passed"] for c in results["criteria"])
    results["passed"] = passed
    (out / "soak.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "soak.png")
    print()
    print(tables(results))
    exceptions = results["log_exceptions"]
    listed = ", ".join(f"{name} ×{count}" for name, count in sorted(exceptions.items(), key=lambda item: -item[1]))
    print(f"\nserver log: {sum(exceptions.values())} tracebacks{': ' + listed if listed else ''}")
    for problem in results["unexpected"][:20]:
        print(f"  unexpected: {problem}")
    print(f"\n{'PASS' if passed else 'FAIL'}; wrote {out / 'soak.json'}, {out / 'soak.png'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
