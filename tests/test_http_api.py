"""The HTTP contract, against a real `bentoml serve` process with the real MiniLM and a tiny random CLIP."""

from __future__ import annotations

import base64
import io
import math

import bentoml
import numpy as np
import pytest
from conftest import TEXT_SOURCE, data_url, image_bytes
from PIL import Image
from sentence_transformers import SentenceTransformer

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_MODEL = "openai/clip-vit-base-patch32"


def error_of(response, status: int, code: str, index: int | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    assert error.get("index") == index, error
    return error


def image_bytes_of(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def norms(vectors) -> np.ndarray:
    return np.linalg.norm(np.array(vectors), axis=1)


# --- /embed/text ---------------------------------------------------------------------------------------------------


def test_embed_text(server):
    texts = ["Hello world", "a photo of a dog"]
    response = server.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    meta = body["metadata"]
    assert meta["count"] == 2 and meta["dimension"] == 384 and meta["model"] == TEXT_MODEL
    assert meta["truncated"] == [] and 0 < meta["duration"] < 60_000
    reference = SentenceTransformer(str(TEXT_SOURCE), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(body["embeddings"], reference, atol=1e-5)


def test_embed_text_unnormalised_and_truncation_report(server):
    long_text = "word " * 600
    response = server.post("/embed/text", json={"texts": ["short", long_text], "normalize": False})
    body = response.json()
    assert body["metadata"]["truncated"] == [1]
    assert not np.allclose(norms(body["embeddings"]), 1.0)


def test_text_over_the_token_limit_without_truncation_is_named(server):
    response = server.post("/embed/text", json={"texts": ["fine", "word " * 600], "truncate": False})
    error = error_of(response, 422, "too_many_tokens", index=1)
    assert "602 tokens" in error["message"] and "256" in error["message"]


def test_semantic_sanity_through_the_server(server):
    texts = ["a photo of a dog", "a picture of a puppy", "quarterly tax report"]
    dog, puppy, tax = np.array(server.post("/embed/text", json={"texts": texts}).json()["embeddings"])
    assert dog @ puppy > dog @ tax + 0.3


# --- /embed/image --------------------------------------------------------------------------------------------------

FORMATS = {
    "PNG": ("image/png", {}),
    "JPEG": ("image/jpeg", {}),
    "WEBP": ("image/webp", {}),
    "GIF": ("image/gif", {}),
    "BMP": ("image/bmp", {}),
    "TIFF": ("image/tiff", {}),
}


def test_embed_image_in_every_accepted_format(server):
    images = [data_url(image_bytes(fmt), mime) for fmt, (mime, _) in FORMATS.items()]
    response = server.post("/embed/image", json={"images": images})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["count"] == len(images) and body["metadata"]["dimension"] == 24
    assert body["metadata"]["model"] == IMAGE_MODEL
    np.testing.assert_allclose(norms(body["embeddings"]), 1.0, atol=1e-5)
    # Lossless formats of the same picture give the same vector.
    png, bmp, tiff = (body["embeddings"][i] for i in (0, 4, 5))
    np.testing.assert_allclose(png, bmp, atol=1e-6)
    np.testing.assert_allclose(png, tiff, atol=1e-6)


def test_bare_base64_equals_data_url(server):
    png = image_bytes()
    a, b = server.post("/embed/image", json={"images": [data_url(png), base64.b64encode(png).decode()]}).json()[
        "embeddings"
    ]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_exif_orientation_is_applied(server):
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = (255, 0, 0)
    upright = Image.fromarray(pixels)
    # The same picture stored turned a quarter, with EXIF saying "turn it back" (orientation 6 = 90° clockwise).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    response = server.post(
        "/embed/image", json={"images": [data_url(image_bytes_of(upright)), data_url(buffer.getvalue())]}
    )
    a, b = response.json()["embeddings"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_first_frame_of_an_animated_gif(server):
    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    response = server.post(
        "/embed/image", json={"images": [data_url(buffer.getvalue()), data_url(image_bytes_of(frames[0], "GIF"))]}
    )
    a, b = response.json()["embeddings"]
    np.testing.assert_allclose(a, b, atol=1e-6)


# --- /embed/batch --------------------------------------------------------------------------------------------------


def test_batch_mixed_items_in_input_order_with_a_bad_item(server):
    png = data_url(image_bytes())
    items = [
        {"id": "file1", "type": "text", "content": "Hello world"},
        {"id": "file2", "type": "image", "content": png},
        {"id": "broken", "type": "image", "content": data_url(b"definitely not an image")},
        {"id": "file4", "type": "text", "content": "a photo of a dog"},
    ]
    response = server.post("/embed/batch", json={"items": items})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["id"] for r in body["results"]] == ["file1", "file2", "broken", "file4"]
    assert body["metadata"] | {"duration": 0} == {"total": 4, "text": 2, "image": 2, "failed": 1, "duration": 0}
    assert body["results"][2] == {"id": "broken", "error": body["results"][2]["error"]}
    assert body["results"][2]["error"]["code"] == "not_an_image"
    text = server.post("/embed/text", json={"texts": ["Hello world", "a photo of a dog"]}).json()["embeddings"]
    image = server.post("/embed/image", json={"images": [png]}).json()["embeddings"]
    np.testing.assert_allclose(body["results"][0]["embedding"], text[0], atol=1e-6)
    np.testing.assert_allclose(body["results"][3]["embedding"], text[1], atol=1e-6)
    np.testing.assert_allclose(body["results"][1]["embedding"], image[0], atol=1e-6)


def test_batch_item_errors_are_per_item(server):
    items = [
        {"id": "long", "type": "text", "content": "x" * 5001},
        {"id": "tokens", "type": "text", "content": "word " * 600},
        {"id": "ok", "type": "text", "content": "fine"},
    ]
    body = server.post("/embed/batch", json={"items": items, "truncate": False}).json()
    assert [r.get("error", {}).get("code") for r in body["results"]] == ["text_too_long", "too_many_tokens", None]
    assert body["metadata"]["failed"] == 2 and len(body["results"][2]["embedding"]) == 384


def test_batch_duplicate_ids_are_rejected(server):
    items = [{"id": "same", "type": "text", "content": "a"}, {"id": "same", "type": "text", "content": "b"}]
    error_of(server.post("/embed/batch", json={"items": items}), 422, "duplicate_id", index=1)


# --- bad input -----------------------------------------------------------------------------------------------------

NOISY_JPEG = image_bytes_of(
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)), "JPEG"
)
BAD_REQUESTS = [
    ("/embed/text", "not json at all", 400, "invalid_json", None),
    ("/embed/text", {"texts": "a string, not a list"}, 422, "invalid_request", None),
    ("/embed/text", {"texts": ["ok", 3]}, 422, "invalid_request", 1),
    ("/embed/text", {}, 422, "missing_field", None),
    ("/embed/text", {"texts": []}, 422, "empty_input", None),
    ("/embed/text", {"texts": ["a"] * 9}, 422, "too_many_items", None),
    ("/embed/text", {"texts": ["ok", "x" * 5001]}, 422, "text_too_long", 1),
    ("/embed/text", {"texts": ["a"], "normalize": "perhaps"}, 422, "invalid_request", None),
    ("/embed/image", {"images": ["ok?", "%%% not base64 %%%"]}, 422, "invalid_base64", 0),
    ("/embed/image", {"images": [data_url(b"GIF89a but then nothing")]}, 422, "not_an_image", 0),
    ("/embed/image", {"images": ["data:image/png,rawbytes"]}, 422, "invalid_base64", 0),
    (
        "/embed/image",
        {"images": [data_url(image_bytes(), "image/png"), data_url(NOISY_JPEG[: len(NOISY_JPEG) // 2])]},
        422,
        "truncated_image",
        1,
    ),
    ("/embed/image", {"images": [data_url(image_bytes("JPEG", (1100, 1000)))]}, 413, "too_many_pixels", 0),
    ("/embed/image", {"images": [data_url(np.random.default_rng(0).bytes(400_000))]}, 413, "image_too_large", 0),
    ("/embed/image", {"images": []}, 422, "empty_input", None),
    ("/embed/batch", {"items": [{"id": "a", "type": "video", "content": "x"}]}, 422, "unknown_item_type", 0),
    ("/embed/batch", {"items": [{"id": "a", "content": "x"}]}, 422, "missing_field", 0),
    ("/embed/batch", {"items": []}, 422, "empty_input", None),
    ("/embed/batch", [1, 2, 3], 422, "invalid_request", None),
]


@pytest.mark.parametrize(("route", "body", "status", "code", "index"), BAD_REQUESTS)
def test_bad_input_is_a_named_4xx(server, route, body, status, code, index):
    if isinstance(body, str):
        response = server.post(route, data=body, headers={"Content-Type": "application/json"})
    else:
        response = server.post(route, json=body)
    error_of(response, status, code, index)


def test_a_png_bomb_is_refused_before_decoding(server):
    # 6000x6000 of one colour compresses to a few kB; decoded it would be 108 MB.
    bomb = image_bytes("PNG", (6000, 6000), color=(0, 0, 0))
    assert len(bomb) < 300_000
    error_of(server.post("/embed/image", json={"images": [data_url(bomb)]}), 413, "too_many_pixels", 0)


def test_body_without_json_content_type_is_read_as_json(server):
    response = server.post("/embed/text", data='{"texts": ["curl -d sends form-urlencoded"]}')
    assert response.status_code == 200, response.text


def test_server_keeps_answering_after_bad_input(server):
    for route, body, *_ in BAD_REQUESTS:
        server.post(route, json=body) if not isinstance(body, str) else server.post(route, data=body)
    assert server.post("/embed/text", json={"texts": ["still here"]}).status_code == 200
    assert server.get("/health").json()["status"] == "ok"


# --- health, readiness, docs ---------------------------------------------------------------------------------------


def test_health_ok(server):
    response = server.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["models"] == {"text": True, "image": True}
    assert body["memory"]["rss_total"] > 100 and body["memory"]["processes"] >= 3
    assert body["uptime"] > 0
    assert server.get("/readyz").status_code == 200


def test_openapi_documents_the_routes_and_limits(server):
    spec = server.get("/docs.json").json()
    assert {"/embed/text", "/embed/image", "/embed/batch"} <= set(spec["paths"])
    text_schema = spec["components"]["schemas"]
    assert "EmbedTextRequest" in str(text_schema) or "texts" in str(spec["paths"]["/embed/text"])


# --- clients -------------------------------------------------------------------------------------------------------


def test_bentoml_python_client(server):
    with bentoml.SyncHTTPClient(server.url, timeout=60) as client:
        body = client.embed_text(texts=["Hello world"])
        image = client.embed_image(images=[data_url(image_bytes())], normalize=False)
        batch = client.embed_batch(items=[{"id": "a", "type": "text", "content": "Hello world"}])
    result = body if isinstance(body, dict) else body.model_dump()
    assert result["metadata"]["dimension"] == 384
    assert math.isclose(result["embeddings"][0][0], -0.0345, abs_tol=1e-4)
    image = image if isinstance(image, dict) else image.model_dump()
    assert len(image["embeddings"][0]) == 24
    batch = batch if isinstance(batch, dict) else batch.model_dump()
    np.testing.assert_allclose(batch["results"][0]["embedding"], result["embeddings"][0], atol=1e-6)
