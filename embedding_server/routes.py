"""The API's routes, each written once: its path, request and response bodies, error body, handler and upload form.

The BentoML service (service.py), the router that serves them (router.py), the OpenAPI document (openapi.py) and
the error bodies of the middlewares all read this table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from embedding_server.embedder import Embedder
from embedding_server.errors import ErrorBody
from embedding_server.schemas import (
    ClassifyImageRequest,
    ClassifyImageResponse,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
    InfinityEmbeddingRequest,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    TeiDecodeRequest,
    TeiDecodeResponse,
    TeiEmbedRequest,
    TeiEmbedResponse,
    TeiSimilarityRequest,
    TeiSimilarityResponse,
    TeiTokenizeRequest,
    TeiTokenizeResponse,
)
from embedding_server.uploads import BATCH_UPLOAD, IMAGE_UPLOAD, UploadForm

OPENAI_PREFIX = "/v1/"
HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"
TEI_INFO_PATH = "/info"
DOCS_PATH = "/docs.json"
PROBE_PATHS = frozenset({HEALTH_PATH, "/livez", "/readyz", "/metrics"})
"""Health probes and the metrics scrape: they carry no key, have no deadline, and are not logged."""


@dataclass(frozen=True)
class ApiRoute:
    """A POST route of the API."""

    path: str
    request: type[BaseModel]
    response: type[BaseModel]
    handle: Callable[[Embedder, Any], Awaitable[BaseModel]]
    errors: ErrorBody = "api"
    upload: UploadForm | None = None
    """The multipart form it also takes, beside its JSON body."""
    declared: bool = True
    """Declared as a `@bentoml.api` method too (service.py), for BentoML's client; the TEI and infinity routes are for
    their own clients."""

    @property
    def bentoml(self) -> dict[str, Any]:
        """What `@bentoml.api` declares of it."""
        return {"route": self.path, "input_spec": self.request, "output_spec": self.response}


EMBED_TEXT = ApiRoute("/embed/text", EmbedTextRequest, EmbedTextResponse, Embedder.embed_text)
EMBED_IMAGE = ApiRoute("/embed/image", EmbedImageRequest, EmbedImageResponse, Embedder.embed_image, upload=IMAGE_UPLOAD)
EMBED_BATCH = ApiRoute("/embed/batch", EmbedBatchRequest, EmbedBatchResponse, Embedder.embed_batch, upload=BATCH_UPLOAD)
EMBED_IMAGE_TEXT = ApiRoute("/embed/image-text", EmbedTextRequest, EmbedTextResponse, Embedder.embed_image_text)
CLASSIFY_IMAGE = ApiRoute("/classify/image", ClassifyImageRequest, ClassifyImageResponse, Embedder.classify_image)
OPENAI_EMBEDDINGS = ApiRoute(
    "/v1/embeddings", OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, Embedder.openai_embeddings, "openai"
)
INFINITY_EMBEDDINGS = ApiRoute(
    "/embeddings",
    InfinityEmbeddingRequest,
    OpenAIEmbeddingResponse,
    Embedder.openai_embeddings,
    "openai",
    declared=False,
)


def _tei(path: str, request: type[BaseModel], response: type[BaseModel], handle: Callable) -> ApiRoute:
    return ApiRoute(path, request, response, handle, "tei", declared=False)


TEI_ROUTES = (
    _tei("/embed", TeiEmbedRequest, TeiEmbedResponse, lambda embedder, request: embedder.tei.embed(request)),
    # Where huggingface_hub's InferenceClient(base_url=...).feature_extraction() posts.
    _tei("/", TeiEmbedRequest, TeiEmbedResponse, lambda embedder, request: embedder.tei.embed(request)),
    _tei(
        "/tokenize", TeiTokenizeRequest, TeiTokenizeResponse, lambda embedder, request: embedder.tei.tokenize(request)
    ),
    _tei("/decode", TeiDecodeRequest, TeiDecodeResponse, lambda embedder, request: embedder.tei.decode(request)),
    _tei(
        "/similarity",
        TeiSimilarityRequest,
        TeiSimilarityResponse,
        lambda embedder, request: embedder.tei.similarity(request),
    ),
)

API_ROUTES: dict[str, ApiRoute] = {
    route.path: route
    for route in (
        EMBED_TEXT,
        EMBED_IMAGE,
        EMBED_BATCH,
        EMBED_IMAGE_TEXT,
        CLASSIFY_IMAGE,
        OPENAI_EMBEDDINGS,
        INFINITY_EMBEDDINGS,
        *TEI_ROUTES,
    )
}


def error_body(path: str) -> ErrorBody:
    """The error body of `path`: its route's, else OpenAI's under /v1/ (GET /v1/models), else this API's."""
    route = API_ROUTES.get(path)
    if route is not None:
        return route.errors
    if path == TEI_INFO_PATH:
        return "tei"
    return "openai" if path.startswith(OPENAI_PREFIX) else "api"
