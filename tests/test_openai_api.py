"""POST /v1/embeddings and GET /v1/models through the official `openai` client, against the real server."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
import requests

TEXTS = ["Hello world", "A cat sits on the mat.", "Quarterly revenue grew by four percent."]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="not-checked-without-API_KEY", max_retries=0)


def native_vectors(server, texts, route="/embed/text") -> np.ndarray:
    response = server.post(route, json={"texts": texts})
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32)


def test_default_base64_request_gives_the_native_vectors(server, client):
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS)  # the client asks for base64
    assert result.object == "list" and result.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert [d.index for d in result.data] == [0, 1, 2] and all(d.object == "embedding" for d in result.data)
    vectors = np.array([d.embedding for d in result.data], dtype=np.float32)
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(vectors, native_vectors(server, TEXTS), atol=1e-6)
    # Real token counts: [CLS] hello world [SEP] is 4 tokens.
    native = server.post("/embed/text", json={"texts": TEXTS}).json()["metadata"]["tokens"]
    assert result.usage.prompt_tokens == result.usage.total_tokens == native
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="Hello world")
    assert single.usage.prompt_tokens == 4


def test_base64_is_little_endian_float32_and_float_format_matches(server):
    body = {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": TEXTS[:2]}
    as_base64 = server.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    as_float = server.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    decoded = np.array(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in as_base64["data"]], dtype=np.float32
    )
    np.testing.assert_array_equal(decoded, np.array([d["embedding"] for d in as_float["data"]], dtype=np.float32))


def test_model_is_matched_by_id_or_short_name_in_any_case(client):
    for name in ("sentence-transformers/all-MiniLM-L6-v2", "ALL-MINILM-L6-V2"):
        assert client.embeddings.create(model=name, input="hi").model == "sentence-transformers/all-MiniLM-L6-v2"


def test_clip_text_tower_is_served_by_its_name(server, client):
    result = client.embeddings.create(model="clip-vit-base-patch32", input=["a photo of a cat"])
    assert result.model == "openai/clip-vit-base-patch32"
    np.testing.assert_allclose(
        [result.data[0].embedding], native_vectors(server, ["a photo of a cat"], "/embed/image-text"), atol=1e-6
    )


def test_models_lists_what_is_served(client):
    ids = {model.id for model in client.models.list()}
    assert ids == {"sentence-transformers/all-MiniLM-L6-v2", "openai/clip-vit-base-patch32"}


def test_unknown_model_is_a_404_in_openai_shape(client):
    with pytest.raises(openai.NotFoundError) as raised:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    error = raised.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "all-MiniLM-L6-v2" in error["message"]


def test_dimensions_other_than_the_models_own_are_refused(client):
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        client.embeddings.create(model="all-MiniLM-L6-v2", input="hi", dimensions=128)
    assert raised.value.body["param"] == "dimensions" and "not trained" in raised.value.body["message"]
    assert len(client.embeddings.create(model="all-MiniLM-L6-v2", input="hi", dimensions=384).data[0].embedding) == 384


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        # Token ids are cl100k_base's (tests/test_compat_apis.py); this one is outside its vocabulary.
        ({"model": "all-MiniLM-L6-v2", "input": [[101, 100300]]}, 422, "invalid_token_ids", "input"),
        ({"model": "all-MiniLM-L6-v2", "input": []}, 422, "empty_input", "input"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"] * 9}, 422, "too_many_items", "input"),
        ({"model": "all-MiniLM-L6-v2", "input": ["ok", "x" * 5001]}, 422, "text_too_long", "input"),
        ({"model": "all-MiniLM-L6-v2"}, 422, "missing_field", "input"),
        ({"model": "all-MiniLM-L6-v2", "input": "hi", "encoding_format": "int8"}, 422, "invalid_request", None),
    ],
)
def test_bad_requests_get_the_openai_error_body(server, body, status, code, param):
    response = server.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param


def test_a_non_text_input_is_named_by_its_index(server):
    response = server.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a", 3, "b"]})
    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith("input 1 is not a text")


def test_a_body_that_is_no_json_is_a_400_in_openai_shape(server):
    response = requests.post(server.url + "/v1/embeddings", data=b"{not json", timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
