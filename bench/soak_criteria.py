"""The soak's criteria, each with its limit: no unexpected answer, the RSS growth after the warm-up, the open file
descriptors and the server's processes (see bench.soak)."""

from __future__ import annotations

TAIL_FRACTION = 0.2  # RSS growth takes the peak over this last part of the run after the warm-up
RSS_GROWTH_LIMIT = 0.10
# Open descriptors are counted with no client connected (after bench.soak.IDLE_PAUSE_S). What may differ without a
# leak: the pooled connections between the API and the two model services (2 fds each, one per side) when the run
# reached a higher concurrency than the warm-up, and a log or metrics file rotated meanwhile. A leak of one fd per
# 1,000 requests (~5 in the 5-minute run) or worse fails.
FD_SLACK = 4


def criteria(results: dict) -> list[dict]:
    """Each criterion with what was measured, its limit and whether it passed."""
    memory, fds = results["memory"], results["fds"]
    pids = results["pids"]
    requests_ = sum(row["requests"] for row in results["kinds"])
    return [
        {
            "criterion": "unexpected answers",
            "value": results["unexpected_total"],
            "limit": f"0 of {requests_:,}",
            "passed": results["unexpected_total"] == 0 and all(row["requests"] > 0 for row in results["kinds"]),
        },
        {
            "criterion": "RSS growth after warm-up",
            "value": f"{memory['growth_pct']:+.1f} % "
            f"({memory['baseline_mib']:,.0f} → {memory['tail_peak_mib']:,.0f} MiB)",
            "limit": f"< {RSS_GROWTH_LIMIT:.0%}",
            "passed": memory["growth"] < RSS_GROWTH_LIMIT,
        },
        {
            "criterion": "open file descriptors",
            "value": f"{fds['end'] - fds['baseline']:+d} ({fds['baseline']} → {fds['end']})",
            "limit": f"≤ +{FD_SLACK}",
            "passed": fds["end"] <= fds["baseline"] + FD_SLACK,
        },
        {
            "criterion": "server processes unchanged",
            "value": f"{len(pids['baseline'])} → {len(pids['end'])}, "
            + ("same pids" if pids["same"] else "pids differ"),
            "limit": "same pids",
            "passed": pids["same"],
        },
    ]
