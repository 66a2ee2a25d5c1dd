"""`bentoml build` into a temporary store, what the Bento contains, and the Bento served from the store."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from conftest import ROOT, VENV_BIN, start_server, stop_server


@pytest.fixture(scope="module")
def built_bento(model_store, tmp_path_factory):
    home = tmp_path_factory.mktemp("build") / "home"
    shutil.copytree(model_store, home)
    result = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", ".", "--output", "tag"],
        cwd=ROOT,
        env={**os.environ, "BENTOML_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [bento_dir] = [d for d in (home / "bentos" / "embedding-server").iterdir() if d.is_dir() and d.name != "latest"]
    return home, bento_dir


def test_bento_contains_models_code_requirements_and_a_cuda_image(built_bento):
    home, bento = built_bento
    manifest = yaml.safe_load((bento / "bento.yaml").read_text())
    # The Bento names each model service's model by tag; `bentoml containerize` copies them from the store into
    # the image, so the tags must be the ones in the store.
    models = {s["name"]: [m["tag"] for m in s["models"]] for s in manifest["services"]}
    for service, name in (
        ("text_model", "sentence-transformers--all-minilm-l6-v2"),
        ("image_model", "openai--clip-vit-base-patch32"),
    ):
        [tag] = models[service]
        assert tag.split(":")[0] == name
        assert (home / "models" / name / tag.split(":")[1] / "model.safetensors").is_file()
    assert models["embedding_api"] == [] and manifest["entry_service"] == "embedding_api"
    for source in ("service.py", "embedding_server/embedder.py", "models/text.py", "models/image.py"):
        assert (bento / "src" / source).is_file(), source
    assert not (bento / "src" / "tests").exists()
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "bentoml==1.4.40" in requirements
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:12.8" in dockerfile and "runtime" in dockerfile
    assert "install.sh" in dockerfile  # the pinned requirements are installed into the image
    assert 'ENV BENTOML_DO_NOT_TRACK="true"' in dockerfile or "BENTOML_DO_NOT_TRACK=true" in dockerfile


def test_built_bento_serves_from_the_store(built_bento, tmp_path):
    home, _ = built_bento
    server = start_server(home, tmp_path / "bento.log", target="embedding-server:latest")
    try:
        assert server.get("/health").json()["models"] == {"text": True, "image": True}
        vector = server.post("/embed/text", json={"texts": ["Hello world"]}).json()["embeddings"][0]
        np.testing.assert_allclose(vector[:3], [-0.0345, 0.0310, 0.0067], atol=1e-4)
    finally:
        stop_server(server)
