"""The soak's report: the tables printed at the end, the plot of RSS and fds over time, the exceptions of the
server's log."""

from __future__ import annotations

from pathlib import Path

from bench.soak_criteria import RSS_GROWTH_LIMIT


def log_exceptions(log: str) -> dict[str, int]:
    """The exceptions of the tracebacks in the server's log (the line that ends each), with their counts."""
    counts: dict[str, int] = {}
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            last = next((later for later in lines[index + 1 :] if later and not later.startswith(" ")), "?")
            name = last.split(":", 1)[0] if not last.startswith("[") else last[:80]
            counts[name] = counts.get(name, 0) + 1
    return counts


def render(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([title, line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def tables(results: dict) -> str:
    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:,.1f}"

    kinds = [
        [
            row["kind"],
            row["path"],
            row["expected"],
            f"{row['requests']:,}",
            str(row["unexpected"]),
            fmt(row["p50_ms"]),
            fmt(row["p99_ms"]),
        ]
        for row in results["kinds"]
    ]
    total = sum(row["requests"] for row in results["kinds"])
    kinds.append(["total", "", "", f"{total:,}", str(results["unexpected_total"]), "", ""])
    memory, fds = results["memory"], results["fds"]
    figures = [
        [
            "RSS, all processes (MiB)",
            fmt(memory["baseline_mib"]),
            fmt(memory["tail_peak_mib"]),
            fmt(memory["end_mib"]),
            fmt(memory["peak_mib"]),
        ],
        ["open fds, all processes", str(fds["baseline"]), "–", str(fds["end"]), str(fds["peak"])],
    ]
    verdicts = [
        [c["criterion"], str(c["value"]), c["limit"], "PASS" if c["passed"] else "FAIL"] for c in results["criteria"]
    ]
    settings = results["settings"]
    title = (
        f"Soak: {settings['seconds']:g} s ({settings['warmup_s']:g} s warm-up), {settings['clients']} clients, "
        f"{settings['rate']:g} requests/s planned, {results['achieved_rate']:.1f} achieved"
    )
    return "\n\n".join(
        [
            render(title, ["kind", "route", "expected", "requests", "unexpected", "p50 ms", "p99 ms"], kinds),
            render(
                "Server (after warm-up and at the end: idle, no client connected)",
                ["", "after warm-up", "peak, last 20 %", "end", "peak"],
                figures,
            ),
            render("Criteria", ["criterion", "measured", "limit", ""], verdicts),
        ]
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = results["samples"]
    t = [s["t"] for s in samples]
    figure, (rss_axes, fd_axes) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    rss_axes.plot(t, [s["rss_mib"] for s in samples])
    rss_axes.axhline(results["memory"]["baseline_mib"] * (1 + RSS_GROWTH_LIMIT), color="red", ls=":", label="limit")
    rss_axes.set_ylabel("RSS, all processes (MiB)")
    fd_axes.plot(t, [s["fds"] for s in samples])
    fd_axes.set_ylabel("open fds, all processes")
    fd_axes.set_xlabel("seconds since the server was ready")
    for axes in (rss_axes, fd_axes):
        axes.axvline(results["phases"]["run_start_s"], color="grey", ls="--", label="end of warm-up")
        axes.grid(alpha=0.3)
    rss_axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
