"""Text-to-image search (/embed/image-text) and zero-shot classification (/classify/image) through the real server,
against `CLIPModel` on the tiny random CLIP that the server imported."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import data_url, start_server, stop_server
from PIL import Image
from test_http_api import error_of
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

LABELS = ["a photo of a cat", "a photo of a dog", "a red square", "word " * 100]  # the last: over 77 tokens


@pytest.fixture(scope="module")
def clip(clip_dir) -> CLIPModel:
    return CLIPModel.from_pretrained(clip_dir).eval()


def noise_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(count)]


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return data_url(buffer.getvalue())


def clip_text_features(clip_dir, clip: CLIPModel, texts: list[str]) -> np.ndarray:
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        features = clip.get_text_features(**tokens)
    features = getattr(features, "pooler_output", features)
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def test_image_text_vectors_equal_clip_text_features(server, clip_dir, clip):
    response = server.post("/embed/image-text", json={"texts": LABELS})
    assert response.status_code == 200, response.text
    body = response.json()
    np.testing.assert_allclose(body["embeddings"], clip_text_features(clip_dir, clip, LABELS), atol=1e-4)
    assert body["metadata"]["dimension"] == 24
    assert body["metadata"]["model"] == "openai/clip-vit-base-patch32"
    assert body["metadata"]["truncated"] == [3]


def test_image_text_without_truncation_names_the_long_text(server):
    error = error_of(
        server.post("/embed/image-text", json={"texts": LABELS, "truncate": False}), 422, "too_many_tokens", 3
    )
    assert "77" in error["message"]


def test_a_text_query_finds_images_in_the_image_space(server, clip_dir, clip):
    images = noise_images(3)
    image_vectors = np.array(
        server.post("/embed/image", json={"images": [png_data_url(i) for i in images]}).json()["embeddings"]
    )
    query = np.array(server.post("/embed/image-text", json={"texts": ["a photo of a cat"]}).json()["embeddings"])
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(images, return_tensors="pt")
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(["a photo of a cat"], return_tensors="pt")
    with torch.no_grad():
        expected = clip(**pixels, **tokens).logits_per_text.numpy() / clip.logit_scale.exp().item()
    np.testing.assert_allclose(query @ image_vectors.T, expected, atol=1e-3)


def test_classify_image_equals_clip_models_softmax(server, clip_dir, clip):
    images = noise_images(2)
    response = server.post("/classify/image", json={"images": [png_data_url(i) for i in images], "labels": LABELS})
    assert response.status_code == 200, response.text
    body = response.json()
    pixels = CLIPImageProcessorPil.from_pretrained(clip_dir)(images, return_tensors="pt")
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(LABELS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = clip(**pixels, **tokens).logits_per_image.softmax(dim=-1).numpy()
    assert len(body["results"]) == 2
    for result, row in zip(body["results"], expected, strict=True):
        probabilities = [entry["probability"] for entry in result["labels"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert sorted(entry["label"] for entry in result["labels"]) == sorted(LABELS)
        got = {entry["label"]: entry["probability"] for entry in result["labels"]}
        np.testing.assert_allclose([got[label] for label in LABELS], row, atol=1e-4)
    assert body["metadata"]["count"] == 2
    assert body["metadata"]["truncated"] == [3]


def test_classify_image_top_k(server):
    body = server.post(
        "/classify/image", json={"images": [png_data_url(noise_images(1)[0])], "labels": LABELS, "top_k": 2}
    ).json()
    full = server.post("/classify/image", json={"images": [png_data_url(noise_images(1)[0])], "labels": LABELS}).json()
    assert body["results"][0]["labels"] == full["results"][0]["labels"][:2]


@pytest.mark.parametrize(
    ("body", "code", "index"),
    [
        ({"images": ["%%%"], "labels": ["a"]}, "invalid_base64", 0),
        ({"images": [png_data_url(noise_images(1)[0])], "labels": []}, "empty_input", None),
        ({"images": [png_data_url(noise_images(1)[0])], "labels": ["a", "x" * 5001]}, "text_too_long", 1),
        ({"images": [png_data_url(noise_images(1)[0])], "labels": ["a"], "top_k": 0}, "invalid_request", None),
        ({"labels": ["a"]}, "missing_field", None),
    ],
)
def test_classify_image_bad_input_is_a_named_4xx(server, body, code, index):
    error_of(server.post("/classify/image", json=body), 422, code, index)


@pytest.mark.parametrize("when", ["lazy", "eager"])
def test_the_text_tower_is_loaded_when_the_setting_says(model_store, tmp_path, when):
    """Lazy (the default): a server that never embeds text into the image space does not hold the tower's memory."""

    server = start_server(model_store, tmp_path / "tower.log", TEXT_MODEL_NAME="", CLIP_TEXT_TOWER=when)
    try:
        assert server.post("/embed/image", json={"images": [png_data_url(noise_images(1)[0])]}).status_code == 200
        assert ("loaded as ClipTextEncoder" in server.log.read_text()) == (when == "eager")
        response = server.post("/embed/image-text", json={"texts": ["a photo of a cat"]})
        assert response.status_code == 200, response.text
        assert server.log.read_text().count("loaded as ClipTextEncoder") == 1
    finally:
        stop_server(server)
