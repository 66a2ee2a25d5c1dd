"""The CPU image, built by deploy/image.py (`make container`) from the test store and run as a container: with buildah's
chroot isolation here, where no OCI runtime can start one (such a process shares the host's network)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import psutil
import pytest
import requests
import yaml
from conftest import (
    data_url,
    free_port,
    image_bytes,
    rendered_manifests,
    service_worker,
    start_server,
    stop_server,
)

from deploy import image as deploy_image

TEST_IMAGE = "embedding-server-test"
READY_WITHIN_S = 30
TEXTS = ["Hello world", "a photo of a dog on the beach"]
IMAGES = [data_url(image_bytes()), data_url(image_bytes("JPEG", (300, 200), color=(10, 120, 200)))]


@pytest.fixture(scope="module")
def built(model_store, tmp_path_factory):
    cpu_home = tmp_path_factory.mktemp("cpu-image") / "bentoml-home"
    return deploy_image.build("cpu", model_store, image=TEST_IMAGE, cpu_home=cpu_home), cpu_home


@dataclass
class Container:
    url: str
    name: str
    process: subprocess.Popen
    log: str
    ready_s: float = 0.0
    """Seconds from the start until /readyz answered 200."""

    def server_process(self) -> psutil.Process:
        """The image's main process, the one `docker run` starts as PID 1 (`bentoml serve`, exec'd by the
        entrypoint)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for process in psutil.Process(self.process.pid).children(recursive=True):
                if "serve" in process.cmdline()[1:3]:
                    return process
            time.sleep(0.1)
        raise LookupError("no bentoml serve process in the container")

    def log_text(self) -> str:
        with open(self.log, errors="replace") as log:
            return log.read()[-4000:]


def start_container(tmp_path, **env: str) -> Container:
    """The test image on a free port, once /readyz answers 200."""
    port = free_port()
    log = tmp_path / f"container-{port}.log"
    started = time.monotonic()
    name, process = deploy_image.start(
        f"localhost/{TEST_IMAGE}:cpu", {"PORT": str(port), **env}, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    container = Container(f"http://127.0.0.1:{port}", name, process, str(log))
    while time.monotonic() - started < 120:
        if process.poll() is not None:
            remove(container)
            raise AssertionError(f"the container exited with {process.returncode}:\n{container.log_text()}")
        try:
            if requests.get(container.url + "/readyz", timeout=2).status_code == 200:
                container.ready_s = time.monotonic() - started
                return container
        except requests.RequestException:  # not listening yet, or busy loading the models
            pass
        time.sleep(0.2)
    remove(container)
    raise AssertionError(f"not ready in 120 s:\n{container.log_text()}")


def remove(container: Container) -> None:
    if container.process.poll() is None:
        # The whole tree, gathered before anything dies: a killed parent's children would be re-parented and missed.
        root = psutil.Process(container.process.pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        container.process.wait(10)
    subprocess.run(["buildah", "rm", container.name], capture_output=True)


@pytest.fixture(scope="module")
def container(built, tmp_path_factory):
    running = start_container(tmp_path_factory.mktemp("container"))
    yield running
    remove(running)


def in_image(*command: str) -> subprocess.CompletedProcess:
    name, process = deploy_image.start(
        f"localhost/{TEST_IMAGE}:cpu", {}, list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


def image_config() -> dict:
    return deploy_image.image_config(f"localhost/{TEST_IMAGE}:cpu")


def test_the_image_is_tagged_with_the_bento_version_and_names_its_models(built):
    result, _ = built
    version = result.bento.split(":")[1]
    assert result.images == [f"{TEST_IMAGE}:cpu", f"{TEST_IMAGE}:{version}"]
    config = image_config()
    assert f"localhost/{TEST_IMAGE}:{version}" in config["RepoTags"]
    labels = config["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == version
    assert labels[deploy_image.MODELS_LABEL] == ",".join(f"{s}={t}" for s, t in sorted(result.models.items()))
    assert set(result.models) == {"text_model", "image_model"}
    assert result.size_bytes <= 1.5e9


def test_the_cpu_bento_installs_nothing_but_its_wheels_on_the_slim_base(built):
    result, cpu_home = built
    bento_dir = deploy_image.store_path(cpu_home, f"bentoml.get({result.bento!r}).path")
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "apt-get" not in dockerfile and "build-essential" not in dockerfile
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements
    assert not {"torch", "transformers", "sentence-transformers"} & {
        line.split("==")[0] for line in requirements.splitlines()
    }


def test_the_image_holds_no_torch_and_no_pytorch_weights():
    missing = in_image("python", "-c", "import torch")
    assert missing.returncode != 0 and "No module named 'torch'" in missing.stderr
    found = in_image(
        "python",
        "-c",
        "import importlib.util, glob; "
        "print([m for m in ('torch', 'sentence_transformers', 'transformers', 'nvidia') if importlib.util.find_spec(m)]"
        " + glob.glob('/home/bentoml/bento/models/**/*.safetensors', recursive=True)"
        # CUDA's libraries (bentoml's own nvidia-ml-py, a small NVML binding, loads none of them)
        " + glob.glob('/app/.venv/**/libcu*.so*', recursive=True) + glob.glob('/usr/**/libcu*.so*', recursive=True))",
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
    onnx = in_image("sh", "-c", "ls /home/bentoml/bento/models/*/*/onnx/")
    assert "model.onnx" in onnx.stdout and "text_model.onnx" in onnx.stdout


def test_port_and_user_are_the_ones_the_manifests_name(built):
    result, cpu_home = built
    config = image_config()["Config"]
    [container] = rendered_manifests("cpu")["Deployment"]["spec"]["template"]["spec"]["containers"]
    pod = rendered_manifests("cpu")["Deployment"]["spec"]["template"]["spec"]
    assert f"{container['ports'][0]['containerPort']}/tcp" in config["ExposedPorts"]
    uid = in_image("id", "-u")
    assert uid.returncode == 0 and int(uid.stdout) == pod["securityContext"]["runAsUser"] != 0
    # Without PORT the server binds the port of the Bento's service config: the exposed one.
    bento_dir = deploy_image.store_path(cpu_home, f"bentoml.get({result.bento!r}).path")
    [api] = [
        s for s in yaml.safe_load((bento_dir / "bento.yaml").read_text())["services"] if s["name"] == "embedding_api"
    ]
    assert api["config"]["http"]["port"] == container["ports"][0]["containerPort"]


def test_the_container_is_ready_fast_and_runs_as_a_user(container):
    assert container.ready_s <= READY_WITHIN_S
    health = requests.get(container.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["models"] == {"text": True, "image": True}
    assert requests.get(container.url + "/livez", timeout=10).status_code == 200
    assert container.server_process().uids().real == 1034
    assert all(p.uids().real == 1034 for p in container.server_process().children(recursive=True))


def test_vectors_equal_those_of_bentoml_serve_on_the_same_store(built, container, tmp_path):
    _, cpu_home = built
    server = start_server(cpu_home, tmp_path / "serve.log")
    try:
        for route, body in (("/embed/text", {"texts": TEXTS}), ("/embed/image", {"images": IMAGES})):
            from_container = requests.post(container.url + route, json=body, timeout=60)
            from_serve = server.post(route, json=body)
            assert from_container.status_code == from_serve.status_code == 200, from_container.text
            np.testing.assert_allclose(
                from_container.json()["embeddings"], from_serve.json()["embeddings"], rtol=0, atol=1e-6
            )
    finally:
        stop_server(server)


def test_sigterm_with_requests_in_flight_answers_them_all_and_exits_0(built, tmp_path):
    timeout_s = 40
    running = start_container(tmp_path, REQUEST_TIMEOUT_S=str(timeout_s))
    try:
        # 16 texts of ~240 tokens a request: the first alone takes over half a second of the model's time, so that
        # all eight are in flight at the signal; the eight together, a few seconds, well within the deadline even
        # on a busy machine.
        body = {"texts": [" ".join(["a text long enough to keep the model busy"] * 27)] * 16}
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(requests.post, running.url + "/embed/text", json=body, timeout=60) for _ in range(8)]
            time.sleep(0.5)  # all eight are in the API, two calls at the model
            assert not any(answer.done() for answer in answers), "the requests ended before the signal"
            signalled = time.monotonic()
            running.server_process().send_signal(signal.SIGTERM)  # what `docker stop` sends PID 1
            assert [answer.result().status_code for answer in answers] == [200] * 8
        assert running.process.wait(timeout_s) == 0, running.log_text()
        assert time.monotonic() - signalled < timeout_s
    finally:
        remove(running)


def test_a_killed_model_worker_stops_the_container_with_a_failure(container):
    """BentoML restarts no worker inside a container: the container exits non-zero, and the orchestrator restarts it."""
    service_worker(container.process.pid, "text_model").kill()
    assert container.process.wait(60) != 0, container.log_text()
