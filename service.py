"""The BentoML services: a text model, an image model, and the API that composes them.

POST /embed/text        texts -> vectors (all-MiniLM-L6-v2 by default)
POST /embed/image       images as data URLs or multipart files -> vectors (CLIP ViT-B/32 by default)
POST /embed/batch       mixed text and image items with ids (JSON or multipart) -> vectors in input order, bad items
                        failing alone
POST /embed/image-text  texts -> vectors in the image space (CLIP's text tower), to search images by text
POST /classify/image    images and candidate labels -> each image's labels by probability (CLIP zero-shot)
POST /v1/embeddings     the OpenAI embeddings API; GET /v1/models lists what it serves
GET  /health            models loaded and answering, memory, uptime (503 when a configured model is not)
GET  /metrics           Prometheus: BentoML's series and this server's (embedding_server/observability.py)
"""

from __future__ import annotations

import logging
import os

import bentoml
import numpy as np
from bentoml._internal.context import server_context
from bentoml._internal.utils.analytics import usage_stats
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embedding_server.access import PROBE_PATHS, ApiKeyMiddleware
from embedding_server.batching import ForwardThread
from embedding_server.body_limit import BodyLimitMiddleware
from embedding_server.core import Embedder, Model, ModelClient
from embedding_server.deadline import RequestDeadlineMiddleware
from embedding_server.draining import after, api_gone_or_after, delay_exit, shutdown_requested, sibling_alive
from embedding_server.errors import ApiError
from embedding_server.middleware import ErrorBodyMiddleware
from embedding_server.model_service import (
    RUNNER_CONNECTION,
    LoadedOnFirstUse,
    batched_forward,
    load_encoder,
    remote_client,
)
from embedding_server.model_store import Modality, bento_model_reference
from embedding_server.observability import BENTOML_ENDPOINT_LOGGER, ClientErrorTracebacks, RequestLogMiddleware
from embedding_server.openai_compat import OpenAIEmbeddings
from embedding_server.openapi import OpenAPIDocumentMiddleware
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
from embedding_server.settings import get_settings
from embedding_server.uploads import UploadMiddleware

# BentoML's usage tracking stays off unless the operator opts in with BENTOML_DO_NOT_TRACK=false. The `bentoml` CLI
# read the variable (and cached it) before it imported this file, hence the cache reset.
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
usage_stats.do_not_track.cache_clear()

settings = get_settings()
for logger_name in ("embedding_server", "models"):
    logging.getLogger(logger_name).setLevel(settings.log_level)
logging.getLogger(BENTOML_ENDPOINT_LOGGER).addFilter(ClientErrorTracebacks())

API_SERVICE_NAME = "embedding_api"
# BentoML's own deadline (504 with its own body) is set past REQUEST_TIMEOUT_S, so that this server's comes first.
TRAFFIC = {"timeout": settings.request_timeout_s + 5}
# Half a GPU each: with one GPU both model services share it; without one they run on the CPU.
MODEL_SERVICE = {
    "resources": {"gpu": 0.5},
    "traffic": TRAFFIC,
    "workers": 1,
    "runner_connection": RUNNER_CONNECTION,
    # One line per inner call costs the model process CPU that the forward pass needs; the API logs every request.
    "logging": {"access": {"enabled": False}},
}


@bentoml.service(name="text_model", **MODEL_SERVICE)
class TextModel:
    """all-MiniLM-L6-v2 (or TEXT_MODEL_NAME): token ids in, mean-pooled vectors out."""

    bento_model = bento_model_reference(settings.text_model_name)

    def __init__(self) -> None:
        from models.text import TextEncoder  # the model code is loaded by the model processes only

        self.encoder = load_encoder(Modality.TEXT, settings.text_model_name, TextEncoder.load, settings)
        if self.encoder is not None:
            self.batches = batched_forward(
                "text", self.encoder.embed_token_ids, ForwardThread(), settings.text_max_batch_size, settings
            )

    @bentoml.api
    async def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        return await self.batches.submit(token_ids)

    @bentoml.api
    async def is_loaded(self) -> bool:
        return self.encoder is not None

    def __is_ready__(self) -> bool:
        return self.encoder is not None


@bentoml.service(name="image_model", **MODEL_SERVICE)
class ImageModel:
    """CLIP ViT-B/32 (or IMAGE_MODEL_NAME): uint8 pixels in, projected image features out; and CLIP's text tower,
    token ids in, projected text features out, from the same stored model."""

    bento_model = bento_model_reference(settings.image_model_name)

    def __init__(self) -> None:
        from models.clip_text import ClipTextEncoder
        from models.image import ImageEncoder

        self.encoder = load_encoder(Modality.IMAGE, settings.image_model_name, ImageEncoder.load, settings)
        if self.encoder is not None:
            thread = ForwardThread()
            self.batches = batched_forward(
                "image", self.encoder.embed_pixels, thread, settings.image_max_batch_size, settings
            )
            self.text_batches = LoadedOnFirstUse(
                lambda: load_encoder(Modality.IMAGE, settings.image_model_name, ClipTextEncoder.load, settings),
                lambda text_encoder: batched_forward(
                    "image_text", text_encoder.embed_token_ids, thread, settings.text_max_batch_size, settings
                ),
                thread,
            )
            if settings.clip_text_tower == "eager":
                self.text_batches.preload()

    @bentoml.api
    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        return await self.batches.submit(pixels)

    @bentoml.api
    async def embed_text(self, token_ids: list[list[int]]) -> np.ndarray:
        return await self.text_batches.submit(token_ids)

    @bentoml.api
    async def is_loaded(self) -> bool:
        return self.encoder is not None

    def __is_ready__(self) -> bool:
        return self.encoder is not None


async def health(_: Request) -> JSONResponse:
    report = await bentoml.get_current_service().embedder.health(stopping=shutdown_requested.is_set())
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


async def list_models(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().openai.models().model_dump())


# BentoML's own APIs answer POST only; the GET routes are a plain Starlette app mounted beside them.
get_routes = Starlette(
    routes=[Route("/health", health, methods=["GET"]), Route("/v1/models", list_models, methods=["GET"])]
)


@bentoml.service(
    name=API_SERVICE_NAME,
    http={"port": settings.port, "host": settings.host},
    traffic=TRAFFIC,
    workers=1,
    # RequestLogMiddleware writes the access log, with the items of each request.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(get_routes, path="/")
class EmbeddingAPI:
    # A model whose name is empty gets no service process at all.
    if settings.text_model_name:
        text_model = bentoml.depends(TextModel)
    if settings.image_model_name:
        image_model = bentoml.depends(ImageModel)

    def __init__(self) -> None:
        self.embedder = Embedder(
            settings,
            Model.configure(
                "text",
                Modality.TEXT,
                settings.text_model_name,
                self._client("text_model", "embed", settings.text_max_batch_size),
            ),
            Model.configure(
                "image",
                Modality.IMAGE,
                settings.image_model_name,
                self._client("image_model", "embed", settings.image_max_batch_size),
            ),
            Model.configure(
                "image_text",
                Modality.IMAGE,
                settings.image_model_name,
                self._client("image_model", "embed_text", settings.text_max_batch_size),
            ),
        )
        self.openai = OpenAIEmbeddings(self.embedder)

    def _client(self, dependency: str, method: str, max_batch_size: int) -> ModelClient | None:
        service = getattr(self, dependency, None)
        return remote_client(service, max_batch_size, settings.max_queued_items, method) if service else None

    @bentoml.api(route="/embed/text", input_spec=EmbedTextRequest, output_spec=EmbedTextResponse)
    async def embed_text(self, **request) -> EmbedTextResponse | JSONResponse:
        return await answer(self.embedder.embed_text(EmbedTextRequest.model_construct(**request)))

    @bentoml.api(route="/embed/image", input_spec=EmbedImageRequest, output_spec=EmbedImageResponse)
    async def embed_image(self, **request) -> EmbedImageResponse | JSONResponse:
        return await answer(self.embedder.embed_image(EmbedImageRequest.model_construct(**request)))

    @bentoml.api(route="/embed/batch", input_spec=EmbedBatchRequest, output_spec=EmbedBatchResponse)
    async def embed_batch(self, **request) -> EmbedBatchResponse | JSONResponse:
        return await answer(self.embedder.embed_batch(EmbedBatchRequest.model_construct(**request)))

    @bentoml.api(route="/embed/image-text", input_spec=EmbedTextRequest, output_spec=EmbedTextResponse)
    async def embed_image_text(self, **request) -> EmbedTextResponse | JSONResponse:
        """Texts as vectors in CLIP's image space: compare a query text with stored image vectors."""
        request = EmbedTextRequest.model_construct(**request)
        return await answer(self.embedder.embed_text(request, self.embedder.image_text))

    @bentoml.api(route="/classify/image", input_spec=ClassifyImageRequest, output_spec=ClassifyImageResponse)
    async def classify_image(self, **request) -> ClassifyImageResponse | JSONResponse:
        return await answer(self.embedder.classify_image(ClassifyImageRequest.model_construct(**request)))

    @bentoml.api(route="/v1/embeddings", input_spec=OpenAIEmbeddingRequest, output_spec=OpenAIEmbeddingResponse)
    async def openai_embeddings(self, **request) -> OpenAIEmbeddingResponse | JSONResponse:
        return await answer(self.openai.embeddings(OpenAIEmbeddingRequest.model_construct(**request)), openai=True)

    async def __is_ready__(self) -> bool:
        return not shutdown_requested.is_set() and (await self.embedder.health()).status == "ok"


async def answer(work, openai: bool = False):
    """The route's response, or its ApiError as this API's JSON error body (OpenAI's on /v1) and status."""
    try:
        return await work
    except ApiError as error:
        return error.to_response(openai)


# The first added is the outermost: the log sees every answer, CORS headers reach even a 401.
EmbeddingAPI.add_asgi_middleware(RequestLogMiddleware, quiet_paths=PROBE_PATHS)
if settings.cors_origin_list:
    # Any request header: browser clients add their own (the OpenAI JS client sends x-stainless-*).
    EmbeddingAPI.add_asgi_middleware(
        CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST"], allow_headers=["*"]
    )
if settings.api_key:
    EmbeddingAPI.add_asgi_middleware(ApiKeyMiddleware, api_key=settings.api_key)
EmbeddingAPI.add_asgi_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
EmbeddingAPI.add_asgi_middleware(
    RequestDeadlineMiddleware, timeout_s=settings.request_timeout_s, exempt_paths=PROBE_PATHS
)
EmbeddingAPI.add_asgi_middleware(UploadMiddleware, embedder=lambda: bentoml.get_current_service().embedder)
EmbeddingAPI.add_asgi_middleware(
    ErrorBodyMiddleware,
    routes=frozenset({"/embed/text", "/embed/image", "/embed/batch", "/embed/image-text", "/classify/image"}),
    openai_routes=frozenset({"/v1/embeddings"}),
)
# /docs.json: BentoML's OpenAPI document with this API's error bodies, unions, GET routes and uploads.
EmbeddingAPI.add_asgi_middleware(OpenAPIDocumentMiddleware, service=EmbeddingAPI)


def stop_condition():
    """On SIGTERM the API stays up, not ready, for SHUTDOWN_DELAY_S; a model service serves until the API has finished
    its requests and exited (draining.py)."""
    if server_context.service_type == "service":  # a model service, not the API ("entry_service")
        return api_gone_or_after(sibling_alive(API_SERVICE_NAME), settings.shutdown_delay_s + TRAFFIC["timeout"])
    return after(settings.shutdown_delay_s)


delay_exit(stop_condition)
