"""Compares the server's rows with the raw encoders, judges the targets, and writes the JSON, Markdown and plot.

A row compares with the raw encoder doing the same work: throughput with the raw encoder's best throughput over
batch sizes (for a mixed request, the raw time of its texts plus its images), and the p50 of a lone one-item
request with the raw batch-1 latency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

from bench.bulk import BULK_IMAGES, BULK_TEXTS, raw_files_per_s

matplotlib.use("Agg")  # no display: the plot only goes to a file
import matplotlib.pyplot as plt  # noqa: E402

RSS_LIMIT_MIB = 1536
READY_LIMIT_S = 20


@dataclass
class Target:
    """A goal and whether it was met; `value` None when its row or the raw figure it needs was not measured."""

    name: str
    value: float | None
    limit: float
    at_least: bool  # value ≥ limit passes (else value ≤ limit)

    @property
    def status(self) -> str:
        if self.value is None:
            return "N/A"
        return "PASS" if (self.value >= self.limit if self.at_least else self.value <= self.limit) else "FAIL"


def raw_rows(raw: dict | None, modality: str) -> list[dict]:
    """The raw measurement's rows for one modality, by batch size; none when it was not measured."""
    return sorted(
        (row for row in (raw or {}).get("rows", []) if row["modality"] == modality), key=lambda r: r["batch_size"]
    )


def raw_best(raw: dict | None, modality: str) -> float | None:
    """The raw encoder's best items/s over batch sizes."""
    return max((row["items_per_s"] for row in raw_rows(raw, modality)), default=None)


def raw_batch1_latency(raw: dict | None, modality: str) -> float | None:
    """The raw encoder's p50 latency of one item alone, in ms."""
    return next((row["latency_ms_p50"] for row in raw_rows(raw, modality) if row["batch_size"] == 1), None)


def compare_with_raw(row: dict, raw: dict | None) -> None:
    """Adds `vs_raw` (server throughput ÷ raw throughput of the same work) and, for one client sending one item,
    `p50_minus_raw_ms` (its p50 latency − the raw batch-1 latency) to the row; None where raw figures lack."""
    text_best, image_best = raw_best(raw, "text"), raw_best(raw, "image")  # the mixed rows' short workload
    row["vs_raw"] = row["p50_minus_raw_ms"] = None
    if row["modality"] == "mixed":
        if text_best and image_best:
            raw_requests_per_s = 1 / (row["texts_per_request"] / text_best + row["images_per_request"] / image_best)
            row["vs_raw"] = round(row["requests_per_s"] / raw_requests_per_s, 3)
        return
    best = raw_best(raw, row["modality"])
    if best:
        row["vs_raw"] = round(row["items_per_s"] / best, 3)
    batch1 = raw_batch1_latency(raw, row["modality"])
    if row["clients"] == 1 and row["items_per_request"] == 1 and batch1 is not None and row["latency_ms"]:
        row["p50_minus_raw_ms"] = round(row["latency_ms"]["p50"] - batch1, 2)


def row_value(rows: list[dict], modality: str, clients: int, items: int, key: str) -> float | None:
    """`key` of the row measuring `clients` clients sending `items` items of `modality`; None without that row."""
    for row in rows:
        if (row["modality"], row["clients"], row["items_per_request"]) == (modality, clients, items):
            return row[key]
    return None


def judge(results: dict) -> list[Target]:
    """The benchmark's targets, judged on `results` (rows already compared with raw)."""
    rows, server = results["rows"], results["server"]
    raw_file_text = raw_best(results["raw"], "file text")
    return [
        Target("text 32 clients × 8 texts: items/s ÷ raw best", row_value(rows, "text", 32, 8, "vs_raw"), 0.90, True),
        Target(
            "text 1 client × 1 text: p50 − raw batch-1 latency (ms)",
            row_value(rows, "text", 1, 1, "p50_minus_raw_ms"),
            3,
            False,
        ),
        Target("text 64 clients × 1 text: items/s ÷ raw best", row_value(rows, "text", 64, 1, "vs_raw"), 0.80, True),
        Target(
            "images 16 clients × 4 images: items/s ÷ raw best", row_value(rows, "image", 16, 4, "vs_raw"), 0.85, True
        ),
        Target(
            "file texts 32 clients × 8: items/s ÷ raw best", row_value(rows, "file text", 32, 8, "vs_raw"), 0.90, True
        ),
        Target(
            "file texts 32 clients × 8, QUANTIZE=int8: items/s ÷ fp32 raw best",
            ratio(row_value(results.get("int8_rows") or [], "file text int8", 32, 8, "items_per_s"), raw_file_text),
            1.6,
            True,
        ),
        Target(
            "photos 16 clients × 4: items/s ÷ raw best (decode included)",
            row_value(rows, "photo", 16, 4, "vs_raw"),
            0.90,
            True,
        ),
        Target(
            "bulk client over a folder: files/s ÷ raw encoders' files/s",
            (results.get("bulk") or {}).get("vs_raw"),
            0.85,
            True,
        ),
        Target(
            "errors over all rows",
            sum(row["errors"] for row in [*rows, *(results.get("mixed") or []), *(results.get("int8_rows") or [])])
            if rows
            else None,
            0,
            False,
        ),
        Target("peak RSS of the server's processes (MiB)", server["rss_mib"]["peak"], RSS_LIMIT_MIB, False),
        Target("ready: start to first 200 on /health (s)", server["ready_s"], READY_LIMIT_S, False),
    ]


def ratio(value: float | None, reference: float | None) -> float | None:
    return round(value / reference, 3) if value is not None and reference else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def tables(results: dict, targets: list[Target]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (title, header, rows of cells), shared by the text and the Markdown renderings."""
    raw = results["raw"]
    raw_cells = [
        [row["modality"], str(row["batch_size"]), fmt(row["items_per_s"]), fmt(row["latency_ms_p50"])]
        for modality in ("text", "file text", "image", "photo", "text int8", "file text int8", "photo int8")
        for row in raw_rows(raw, modality)
    ]
    backend = (raw or {}).get("backend", {})
    raw_title = "Raw encoders in process" + (f" (backend: {json.dumps(backend)})" if backend else "")
    server_cells = []
    for row in [*results["rows"], *(results.get("int8_rows") or [])]:
        latency = row["latency_ms"] or {}
        server_cells.append(
            [
                f"/embed/{row['route']}"
                + (f" ({row['modality']}s)" if row["modality"] in ("file text", "photo") else "")
                + (" (file texts, QUANTIZE=int8)" if row["modality"] == "file text int8" else ""),
                str(row["clients"]),
                f"{row['texts_per_request']}+{row['images_per_request']}"
                if row["modality"] == "mixed"
                else str(row["items_per_request"]),
                fmt(row["items_per_s"]),
                *(fmt(latency.get(p)) for p in ("p50", "p90", "p99")),
                str(row["errors"]),
                "–" if row["vs_raw"] is None else f"{row['vs_raw']:.2f}×",
                "–" if row["p50_minus_raw_ms"] is None else f"{row['p50_minus_raw_ms']:+.1f}",
            ]
        )
    target_cells = [
        [
            t.name,
            fmt(t.value, 0 if isinstance(t.value, int) else 2),
            f"{'≥' if t.at_least else '≤'} {t.limit:g}",
            t.status,
        ]
        for t in targets
    ]
    server = results["server"]
    bulk = results.get("bulk")
    bulk_table = (
        [
            (
                f"Bulk client (`python -m client embed`, {bulk['files']} files: {BULK_TEXTS} file texts, "
                f"{BULK_IMAGES} photos and screenshots)",
                ["files/s", "raw files/s", "÷ raw", "seconds", "exit status"],
                [
                    [
                        fmt(bulk["files_per_s"]),
                        fmt(bulk["raw_files_per_s"]),
                        "–" if bulk["vs_raw"] is None else f"{bulk['vs_raw']:.2f}×",
                        fmt(bulk["seconds"]),
                        str(bulk["exit_status"]),
                    ]
                ],
            )
        ]
        if bulk
        else []
    )
    alone = {row["modality"]: row for row in results["rows"] if (row["clients"], row["items_per_request"]) == (1, 1)}
    mixed_cells = [
        [
            row["scenario"],
            fmt(row["items_per_s"]),
            *(fmt((row["latency_ms"] or {}).get(p)) for p in ("p50", "p99")),
            fmt((alone.get(row["modality"], {}).get("latency_ms") or {}).get("p50")),
            str(row["errors"]),
        ]
        for row in results.get("mixed") or []
    ]
    mixed_table = (
        [
            (
                "Mixed workload (both at once)",
                ["load", "items/s", "p50 ms", "p99 ms", "p50 ms of 1 × 1 alone", "errors"],
                mixed_cells,
            )
        ]
        if mixed_cells
        else []
    )
    return [
        (raw_title, ["modality", "batch", "items/s", "latency ms"], raw_cells),
        (
            f"Server (ready in {fmt(server['ready_s'])} s; RSS {fmt(server['rss_mib']['at_ready'], 0)} MiB at ready, "
            f"{fmt(server['rss_mib']['peak'], 0)} MiB peak)",
            [
                "route",
                "clients",
                "items/req",
                "items/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "errors",
                "÷ raw",
                "p50 − raw b1 ms",
            ],
            server_cells,
        ),
        *mixed_table,
        *bulk_table,
        ("Targets", ["target", "value", "goal", "result"], target_cells),
    ]


def render_text(title: str, header: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(
            c.rjust(w) if c[:1].isdigit() or c[:1] in "-+–" else c.ljust(w) for c, w in zip(line, widths, strict=True)
        )
        for line in cells
    ]
    return "\n".join(lines)


def render_markdown(title: str, header: list[str], cells: list[list[str]]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Items/s against concurrent clients, one panel per modality, one line per items-per-request, and the raw
    encoder's best throughput as a dashed line."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for axis, modality in zip(axes, ("text", "image"), strict=True):
        rows = [row for row in results["rows"] if row["modality"] == modality]
        for items in sorted({row["items_per_request"] for row in rows}):
            line = sorted((row["clients"], row["items_per_s"]) for row in rows if row["items_per_request"] == items)
            axis.plot(*zip(*line, strict=True), marker="o", label=f"{modality} × {items} per request")
        best = raw_best(results["raw"], modality)
        if best:
            axis.axhline(best, linestyle="--", color="grey", label=f"raw best {best:,.0f}/s")
        axis.set_xscale("log", base=2)
        clients = sorted({row["clients"] for row in rows})
        axis.set_xticks(clients, [str(c) for c in clients])
        axis.set_ylim(bottom=0)
        axis.set(title=f"/embed/{modality}", xlabel="concurrent clients", ylabel="items/s")
        axis.legend(loc="best")
    figure.suptitle(f"Embedding server throughput ({results['label']}, {results['machine']['cpu_count']} CPUs)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(results: dict, out: Path) -> str:
    """Compares rows with raw, judges the targets (both added to `results`), writes `<label>.json`, `.md` and `.png`
    into `out`; returns the report as printable text."""
    for row in [*results["rows"], *(results.get("int8_rows") or [])]:
        compare_with_raw(row, results["raw"])
    if results.get("bulk"):
        bulk = results["bulk"]
        bulk["raw_files_per_s"] = raw_files_per_s(
            raw_best(results["raw"], "file text"), raw_best(results["raw"], "photo")
        )
        bulk["vs_raw"] = ratio(bulk["files_per_s"], bulk["raw_files_per_s"])
    targets = judge(results)
    results["targets"] = [{**asdict(t), "status": t.status} for t in targets]
    parts = tables(results, targets)

    out.mkdir(parents=True, exist_ok=True)
    label = results["label"]
    (out / f"{label}.json").write_text(json.dumps(results, indent=1) + "\n")
    machine, settings = results["machine"], results["settings"]
    heading = (
        f"Benchmark `{label}`: {results['date']}, commit {results['git']['commit'][:12]}"
        f"{' (dirty)' if results['git']['dirty'] else ''}, {machine['cpu_count']} CPUs, {machine['platform']}; "
        f"{settings['seconds']} s per row."
    )
    markdown = [heading, *(render_markdown(*part) for part in parts), f"![throughput]({label}.png)"]
    (out / f"{label}.md").write_text("\n\n".join(markdown) + "\n")
    plot(results, out / f"{label}.png")
    return "\n\n".join([heading, *(render_text(*part) for part in parts)])
