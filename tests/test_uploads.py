"""Multipart uploads on /embed/image and /embed/batch, and base64 vectors on the native routes, on the real server."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import numpy as np
import pytest
import requests
from conftest import data_url, image_bytes

RED = image_bytes(color=(200, 30, 40))
BLUE = image_bytes("JPEG", size=(80, 60), color=(20, 40, 220))


def vectors_of(body: dict, key: str = "embeddings") -> np.ndarray:
    return np.array(body[key], dtype=np.float32)


def from_base64(strings: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in strings], dtype=np.float32)


def json_image_vectors(server, images: list[bytes]) -> np.ndarray:
    response = server.post("/embed/image", json={"images": [data_url(i) for i in images]})
    assert response.status_code == 200, response.text
    return vectors_of(response.json())


def test_image_upload_equals_the_json_form(server):
    files = [("images", ("red.png", RED, "image/png")), ("images", ("blue.jpg", BLUE, "image/jpeg"))]
    response = server.post("/embed/image", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["metadata"]["count"] == 2
    np.testing.assert_allclose(vectors_of(body), json_image_vectors(server, [RED, BLUE]), atol=1e-6)


def test_upload_options_part(server):
    files = [("image", ("red.png", RED, "image/png"))]
    options = {"options": (None, json.dumps({"normalize": False, "encoding": "base64"}))}
    response = server.post("/embed/image", files=[*files, *options.items()])
    assert response.status_code == 200, response.text
    unnormalised = from_base64(response.json()["embeddings"])
    expected = server.post("/embed/image", json={"images": [data_url(RED)], "normalize": False}).json()["embeddings"]
    np.testing.assert_allclose(unnormalised, expected, atol=1e-6)
    assert abs(np.linalg.norm(unnormalised) - 1) > 1e-3


@pytest.mark.parametrize(
    ("files", "status", "code", "index"),
    [
        ([("a", ("a.png", RED, "image/png")), ("b", ("b.png", b"not an image", "image/png"))], 422, "not_an_image", 1),
        ([("a", ("big.png", b"\0" * 300_001, "image/png"))], 413, "image_too_large", 0),
        ([("a", ("a.png", RED, "image/png")), ("b", (None, "a text field"))], 422, "invalid_upload", 1),
        ([(f"f{i}", (f"{i}.png", RED, "image/png")) for i in range(9)], 422, "too_many_items", None),
        ([("options", (None, '{"normalize": "maybe"}'))], 422, "invalid_request", None),
        ([("options", (None, "{}"))], 422, "empty_input", None),
        (
            [("a", ("a.png", RED, "image/png")), ("options", ("o.json", b"{}", "application/json"))],
            422,
            "invalid_upload",
            None,
        ),
    ],
)
def test_bad_image_uploads_are_named_4xx(server, files, status, code, index):
    response = server.post("/embed/image", files=files)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error.get("index") == index


def test_batch_upload_ids_from_part_names_and_per_item_errors(server):
    files = [
        ("greeting", (None, "Hello world")),
        ("photo", ("red.png", RED, "image/png")),
        ("notes", ("notes.txt", b"Hello world", "text/plain")),
        ("broken", ("broken.png", b"\x89PNG nope", "image/png")),
        ("latin1", ("old.txt", "café".encode("latin-1"), "text/plain")),
        ("options", (None, json.dumps({"encoding": "base64"}))),
    ]
    response = server.post("/embed/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["greeting", "photo", "notes", "broken", "latin1"]
    text = server.post("/embed/text", json={"texts": ["Hello world"]}).json()["embeddings"]
    np.testing.assert_allclose(from_base64([results[0]["embedding"], results[2]["embedding"]]), text * 2, atol=1e-6)
    np.testing.assert_allclose(from_base64([results[1]["embedding"]]), json_image_vectors(server, [RED]), atol=1e-6)
    assert results[3]["error"]["code"] == "not_an_image"
    assert results[4]["error"]["code"] == "not_utf8"
    assert response.json()["metadata"]["failed"] == 2


@pytest.mark.parametrize("name", ["", "x" * 1025])
def test_batch_upload_part_names_follow_the_id_rules(server, name):
    response = server.post("/embed/batch", files=[("ok", (None, "one")), (name, (None, "two"))])
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_upload" and response.json()["error"]["index"] == 1


def test_multipart_content_type_is_matched_in_any_case(server):
    request = requests.Request(
        "POST", server.url + "/embed/image", files=[("a", ("a.png", RED, "image/png"))]
    ).prepare()
    request.headers["Content-Type"] = request.headers["Content-Type"].replace(
        "multipart/form-data", "Multipart/Form-Data"
    )
    response = requests.Session().send(request, timeout=60)
    assert response.status_code == 200, response.text


def test_batch_upload_duplicate_part_names_are_refused(server):
    files = [("same", (None, "one")), ("same", (None, "two"))]
    response = server.post("/embed/batch", files=files)
    assert response.status_code == 422 and response.json()["error"] == {
        "code": "duplicate_id",
        "message": "id 'same' of item 1 is already used by item 0",
        "index": 1,
    }


@pytest.mark.parametrize("route", ["/embed/text", "/embed/image-text"])
def test_base64_encoding_on_text_routes(server, route):
    texts = ["Hello world", "base64 please"]
    as_float = server.post(route, json={"texts": texts}).json()["embeddings"]
    as_base64 = server.post(route, json={"texts": texts, "encoding": "base64"}).json()["embeddings"]
    assert all(isinstance(s, str) for s in as_base64)
    np.testing.assert_array_equal(from_base64(as_base64), np.array(as_float, dtype=np.float32))


def test_base64_encoding_on_json_image_and_batch_routes(server):
    image = server.post("/embed/image", json={"images": [data_url(RED)], "encoding": "base64"}).json()
    np.testing.assert_allclose(from_base64(image["embeddings"]), json_image_vectors(server, [RED]), atol=1e-6)
    items = [{"id": "t", "type": "text", "content": "Hello world"}, {"id": "i", "type": "image", "content": "bad"}]
    batch = server.post("/embed/batch", json={"items": items, "encoding": "base64"}).json()["results"]
    assert isinstance(batch[0]["embedding"], str) and batch[1]["error"]["code"] == "invalid_base64"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_upload(server, tmp_path):
    (tmp_path / "cat.png").write_bytes(RED)
    (tmp_path / "dog.jpg").write_bytes(BLUE)
    output = subprocess.run(
        ["curl", "-sS", "-F", "images=@cat.png", "-F", "images=@dog.jpg", server.url + "/embed/image"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    np.testing.assert_allclose(vectors_of(json.loads(output)), json_image_vectors(server, [RED, BLUE]), atol=1e-6)


# --- the body limit (MAX_REQUEST_BYTES, 4 MB in the tests) ---------------------------------------------------------


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    files = [("images", (f"{i}.png", b"\0" * 1_500_000, "image/png")) for i in range(3)]
    response = server.post("/embed/image", files=files)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert "4000000" in response.json()["error"]["message"]
    response = server.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["word " * 900_000]})
    assert response.status_code == 413 and response.json()["error"]["type"] == "invalid_request_error"


def test_a_streamed_body_is_cut_off_at_the_limit(server):
    def chunks():  # no Content-Length: chunked transfer, as a streaming client sends it
        yield b'{"texts": ["'
        for _ in range(50):
            yield b"a" * 100_000
        yield b'"]}'

    start = len(server.log.read_text())
    response = server.post("/embed/text", data=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"
    assert server.post("/embed/text", json={"texts": ["still answering"]}).status_code == 200
    assert "Traceback" not in server.log.read_text()[start:]  # the cut body is the client's fault, not a crash
