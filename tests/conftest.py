"""Fixtures: a tiny random CLIP, a model store filled by import_models.py, real `bentoml serve` processes."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image

# The tests import the harness's helpers from here, with the fixtures: free_port, service_worker, TEXT_SOURCE and
# run_import are not used in this file.
from harness.processes import service_worker  # noqa: F401
from harness.random_clip import TINY, save_random_clip
from harness.servers import ROOT, Server, free_port, serve, server_home, stop, wait_ready  # noqa: F401
from harness.stores import TEXT_SOURCE, import_both, run_import  # noqa: F401

VENV_BIN = Path(sys.executable).parent

# Nothing in the tests may reach the Hugging Face hub or BentoML's usage tracking.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

# Small limits, so that the tests can cross each one with small bodies.
TEST_LIMITS = {
    "MAX_ITEMS_PER_REQUEST": "8",
    "MAX_TEXT_CHARS": "5000",
    "MAX_IMAGE_BYTES": "300000",
    "MAX_IMAGE_PIXELS": "1000000",
    "MAX_REQUEST_BYTES": "4000000",
}
READY_TIMEOUT_S = 120
READY_INTERVAL_S = 0.5


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), TINY)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, clip_dir) -> Path:
    """A BENTOML_HOME with both models, imported by import_models.py from local folders."""
    home = tmp_path_factory.mktemp("bentoml-home")
    result = import_both(home, clip_dir)
    assert result.returncode == 0, result.stderr
    return home


def start_server(
    bentoml_home: Path, log: Path, target: str = ".", ready_path: str = "/readyz", **env: str | None
) -> Server:
    """`bentoml serve` with the test limits and `env` (a None value removes that variable), on the models of
    `bentoml_home`, ready when `ready_path` answers 200 or 503 and /readyz 200."""
    port = free_port()
    home = server_home(bentoml_home, log.parent / f"bentoml-home-{port}")
    process = serve(target, port, {**os.environ, "BENTOML_HOME": str(home), **TEST_LIMITS, **env}, log)
    server = Server(f"http://127.0.0.1:{port}", process, log)

    def ready() -> bool | None:
        try:
            if server.get(ready_path).status_code in (200, 503) and (
                ready_path != "/readyz" or server.get("/readyz").ok
            ):
                return True
        except requests.ConnectionError:
            pass
        return None

    wait_ready(process, log, ready, READY_TIMEOUT_S, READY_INTERVAL_S)
    return server


def stop_server(server: Server) -> None:
    stop(server.process)


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
