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
from embedding_server.schemas import (
    ClassifyImageRequest,
    ClassifyImageResponse,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
)
from embedding_server.uploads import BATCH_UPLOAD, IMAGE_UPLOAD, UploadForm

OPENAI_PREFIX = "/v1/"
HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"
DOCS_PATH = "/docs.json"
PROBE_PATHS = frozenset({HEALTH_PATH, "/livez", "/readyz", "/metrics"})
"""Health probes and the metrics scrape: they carry no key, have no deadline, and are not logged."""


def openai_errors(path: str) -> bool:
    """Whether `path` answers errors in OpenAI's body: the OpenAI-compatible routes, under /v1/."""
    return path.startswith(OPENAI_PREFIX)


@dataclass(frozen=True)
class ApiRoute:
    """A POST route of the API."""

    path: str
    request: type[BaseModel]
    response: type[BaseModel]
    handle: Callable[[Embedder, Any], Awaitable[BaseModel]]
    upload: UploadForm | None = None
    """The multipart form it also takes, beside its JSON body."""

    @property
    def openai(self) -> bool:
        return openai_errors(self.path)

    @property
    def bentoml(self) -> dict[str, Any]:
        """What `@bentoml.api` declares of it."""
        return {"route": self.path, "input_spec": self.request, "output_spec": self.response}


EMBED_TEXT = ApiRoute("/embed/text", EmbedTextRequest, EmbedTextResponse, Embedder.embed_text)
EMBED_IMAGE = ApiRoute("/embed/image", EmbedImageRequest, EmbedImageResponse, Embedder.embed_image, IMAGE_UPLOAD)
EMBED_BATCH = ApiRoute("/embed/batch", EmbedBatchRequest, EmbedBatchResponse, Embedder.embed_batch, BATCH_UPLOAD)
EMBED_IMAGE_TEXT = ApiRoute("/embed/image-text", EmbedTextRequest, EmbedTextResponse, Embedder.embed_image_text)
CLASSIFY_IMAGE = ApiRoute("/classify/image", ClassifyImageRequest, ClassifyImageResponse, Embedder.classify_image)
OPENAI_EMBEDDINGS = ApiRoute(
    "/v1/embeddings", OpenAIEmbeddingRequest, OpenAIEmbeddingResponse, Embedder.openai_embeddings
)

API_ROUTES: dict[str, ApiRoute] = {
    route.path: route
    for route in (EMBED_TEXT, EMBED_IMAGE, EMBED_BATCH, EMBED_IMAGE_TEXT, CLASSIFY_IMAGE, OPENAI_EMBEDDINGS)
}
