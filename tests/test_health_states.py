"""/health and /readyz in each state: a text-only server, and a server whose image model is not in the store."""

from __future__ import annotations

import pytest
from conftest import copy_store, data_url, image_bytes, start_server, stop_server


@pytest.fixture(scope="module")
def text_only_server(model_store, tmp_path_factory):
    running = start_server(model_store, tmp_path_factory.mktemp("logs") / "text-only.log", IMAGE_MODEL_NAME="")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def server_missing_image_model(model_store, tmp_path_factory):
    home = copy_store(model_store, tmp_path_factory.mktemp("partial") / "home", keep="sentence-transformers")
    running = start_server(home, tmp_path_factory.mktemp("logs") / "missing.log", ready_path="/health")
    yield running
    stop_server(running)


def test_text_only_server_is_healthy(text_only_server):
    health = text_only_server.get("/health")
    assert health.status_code == 200 and health.json()["models"] == {"text": True}
    assert text_only_server.get("/readyz").status_code == 200
    assert text_only_server.post("/embed/text", json={"texts": ["hi"]}).status_code == 200
    response = text_only_server.post("/embed/image", json={"images": [data_url(image_bytes())]})
    assert response.status_code == 503 and "disabled" in response.json()["error"]["message"]


def test_missing_model_answers_503_with_how_to_import(server_missing_image_model):
    server = server_missing_image_model
    health = server.get("/health")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] != "ok" and body["models"] == {"text": True, "image": False}
    assert "import_models.py" in body["problems"]["image"]
    assert server.get("/readyz").status_code == 503  # BentoML's readiness agrees with /health

    response = server.post("/embed/image", json={"images": [data_url(image_bytes())]})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_unavailable" and "import_models.py" in error["message"]

    assert server.post("/embed/text", json={"texts": ["the text model still works"]}).status_code == 200
    batch = server.post(
        "/embed/batch",
        json={"items": [{"id": "t", "type": "text", "content": "hi"}, {"id": "i", "type": "image", "content": "x"}]},
    ).json()
    assert "embedding" in batch["results"][0] and batch["results"][1]["error"]["code"] == "model_unavailable"


def test_clip_stored_before_its_text_tower_was_imported(model_store, tmp_path):
    """A CLIP model imported by an earlier version (no logit scale, no text export): images are still embedded, the
    text-tower routes answer 503 with the command that fixes it."""
    home = copy_store(model_store, tmp_path / "home", keep="")
    (model_file,) = (home / "models").glob("openai--clip-vit-base-patch32/*/model.yaml")
    model_file.write_text(model_file.read_text().replace("  logit_scale:", "  unrelated_key:"))
    (model_file.parent / "onnx" / "text_model.onnx").unlink()
    server = start_server(home, tmp_path / "old-clip.log", TEXT_MODEL_NAME="")
    try:
        assert server.post("/embed/image", json={"images": [data_url(image_bytes())]}).status_code == 200
        for route, body in [
            ("/embed/image-text", {"texts": ["a cat"]}),
            ("/classify/image", {"images": [data_url(image_bytes())], "labels": ["a cat", "a dog"]}),
        ]:
            response = server.post(route, json=body)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "model_unavailable" and "import_models.py --force" in error["message"]
    finally:
        stop_server(server)


def test_a_stored_model_that_fails_to_load_answers_503_naming_the_load_error(model_store, tmp_path):
    """The text model is in the store but its ONNX file is corrupt: every route that needs it, and every batch item,
    says so (503 model_unavailable with the load error), /health names it, and the image model goes on."""
    home = copy_store(model_store, tmp_path / "home", keep="")
    (onnx_file,) = (home / "models").glob("sentence-transformers--all-minilm-l6-v2/*/onnx/model.onnx")
    onnx_file.write_bytes(b"not an ONNX model")
    server = start_server(home, tmp_path / "corrupt.log", ready_path="/health")
    try:
        health = server.get("/health")
        assert health.status_code == 503 and health.json()["models"] == {"text": False, "image": True}
        problem = health.json()["problems"]["text"]
        assert "failed to load" in problem and "model.onnx" in problem, problem
        assert server.get("/readyz").status_code == 503

        for route, body in [
            ("/embed/text", {"texts": ["hi"]}),
            ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "hi"}),
        ]:
            response = server.post(route, json=body)
            assert response.status_code == 503, response.text
            error = response.json()["error"]
            assert error["code"] == "model_unavailable" and error["message"] == problem, error
        batch = server.post(
            "/embed/batch",
            json={
                "items": [
                    {"id": "t", "type": "text", "content": "hi"},
                    {"id": "i", "type": "image", "content": data_url(image_bytes())},
                ]
            },
        ).json()
        assert batch["results"][0]["error"] == {"code": "model_unavailable", "message": problem}
        assert "embedding" in batch["results"][1]
    finally:
        stop_server(server)
