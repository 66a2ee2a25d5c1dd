"""The BentoML services: a text model, an image model, and the API that composes them.

POST /embed/text        texts -> vectors (all-MiniLM-L6-v2 by default)
POST /embed/image       images as data URLs or multipart files -> vectors (CLIP ViT-B/32 by default)
POST /embed/batch       mixed text and image items with ids (JSON or multipart) -> vectors in input order, bad items
                        failing alone
POST /embed/image-text  texts -> vectors in the image space (CLIP's text tower), to search images by text
POST /classify/image    images and candidate labels -> each image's labels by probability (CLIP zero-shot)
POST /v1/embeddings     the OpenAI embeddings API (texts, or cl100k_base token ids); GET /v1/models lists what it serves
POST /embeddings        infinity's multimodal form of it (`modality`: text or image)
POST /embed, POST /     text-embeddings-inference's API, with /tokenize, /decode, /similarity and GET /info
                        (routes.py; served by router.py)
GET  /health            models loaded and answering, memory, uptime (503 when a configured model is not)
GET  /metrics           Prometheus: BentoML's series and this server's (embedding_server/observability.py)
"""

from __future__ import annotations

import logging
from typing import Annotated

import bentoml
import numpy as np
from bentoml.validators import ContentType
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embedding_server import routes
from embedding_server.access import ApiKeyMiddleware
from embedding_server.batching import ForwardThread
from embedding_server.bentoml_internals import (
    MODEL_SERVICE_TYPE,
    sibling_worker_alive,
    stop_usage_tracking_by_default,
)
from embedding_server.body_limit import BodyLimitMiddleware
from embedding_server.deadline import RequestDeadlineMiddleware
from embedding_server.draining import after, api_gone_or_after, delay_exit, shutdown_requested
from embedding_server.embedder import Embedder
from embedding_server.errors import ApiError
from embedding_server.model_service import (
    RUNNER_CONNECTION,
    LoadedOnFirstUse,
    counted_forward,
    load_encoder,
    remote_client,
)
from embedding_server.model_store import Modality, bento_model_reference
from embedding_server.observability import RequestLogMiddleware
from embedding_server.openapi import OpenAPIDocumentMiddleware
from embedding_server.router import ApiRouter
from embedding_server.schemas import (
    ClassifyImageResponse,
    EmbedBatchResponse,
    EmbedImageResponse,
    EmbedTextResponse,
    OpenAIEmbeddingResponse,
)
from embedding_server.served_model import Model, ModelClient
from embedding_server.settings import get_settings

stop_usage_tracking_by_default()

settings = get_settings()
for logger_name in ("embedding_server", "models"):
    logging.getLogger(logger_name).setLevel(settings.log_level)

API_SERVICE_NAME = "embedding_api"
# What a model service answers the API with: vectors, pickled by BentoML's client and server. Naming the content
# type spares BentoML deriving it from the type's JSON schema on every answer (a millisecond of the model process
# per call, on a one-text request's path).
Vectors = Annotated[np.ndarray, ContentType("application/vnd.bentoml+pickle")]
# REQUEST_TIMEOUT_S is this server's deadline (deadline.py: its own error body, and the work stops when the client
# leaves). BentoML's own cannot be turned off (its config wants a timeout > 0), so it is set past ours as a backstop.
TRAFFIC = {"timeout": settings.request_timeout_s + 5}
# BentoML's OpenTelemetry middleware makes a span for every request, and for every message of it, even when no
# exporter is configured; excluding every URL is its public way to skip that.
TRACING = {} if settings.tracing else {"excluded_urls": [".*"]}
# Half a GPU each: with one GPU both model services share it; without one they run on the CPU.
MODEL_SERVICE = {
    "resources": {"gpu": 0.5},
    "traffic": TRAFFIC,
    "tracing": TRACING,
    "workers": 1,
    "runner_connection": RUNNER_CONNECTION,
    # One line per inner call costs the model process CPU that the forward pass needs; the API logs every request.
    "logging": {"access": {"enabled": False}},
}


def stop_condition():
    """On SIGTERM the API stays up, not ready, for SHUTDOWN_DELAY_S; a model service serves until the API has finished
    its requests and exited (draining.py)."""
    if bentoml.server_context.service_type == MODEL_SERVICE_TYPE:
        alive = sibling_worker_alive(API_SERVICE_NAME)
        return api_gone_or_after(alive, settings.shutdown_delay_s + TRAFFIC["timeout"])
    return after(settings.shutdown_delay_s)


@bentoml.service(name="text_model", **MODEL_SERVICE)
class TextModel:
    """all-MiniLM-L6-v2 (or TEXT_MODEL_NAME): token ids in, mean-pooled vectors out."""

    bento_model = bento_model_reference(settings.text_model_name)

    def __init__(self) -> None:
        from models.text import TextEncoder  # the model code is loaded by the model processes only

        delay_exit(stop_condition)
        self.loaded = load_encoder(Modality.TEXT, settings.text_model_name, TextEncoder.load, settings)
        if self.loaded.encoder is not None:
            self.forward = counted_forward("text", self.loaded.encoder.embed_token_ids, ForwardThread())

    @bentoml.api
    async def embed(self, token_ids: list[list[int]]) -> Vectors:
        if self.loaded.encoder is None:
            raise bentoml.exceptions.ServiceUnavailable(self.loaded.problem)
        return await self.forward(token_ids)

    @bentoml.api
    async def load_problem(self) -> str:
        """Why no model is loaded; empty when one is."""
        return self.loaded.problem or ""

    def __is_ready__(self) -> bool:
        return self.loaded.encoder is not None


@bentoml.service(name="image_model", **MODEL_SERVICE)
class ImageModel:
    """CLIP ViT-B/32 (or IMAGE_MODEL_NAME): uint8 pixels in, projected image features out; and CLIP's text tower,
    token ids in, projected text features out, from the same stored model."""

    bento_model = bento_model_reference(settings.image_model_name)

    def __init__(self) -> None:
        from models.clip_text import ClipTextEncoder
        from models.image import ImageEncoder

        delay_exit(stop_condition)
        self.loaded = load_encoder(Modality.IMAGE, settings.image_model_name, ImageEncoder.load, settings)
        if self.loaded.encoder is not None:
            thread = ForwardThread()
            self.forward = counted_forward("image", self.loaded.encoder.embed_pixels, thread)
            self.text_forward = LoadedOnFirstUse(
                # The text tower has no int8 export: it is a small part of the work (short texts), left in fp32.
                lambda: load_encoder(
                    Modality.IMAGE, settings.image_model_name, ClipTextEncoder.load, settings, quantize="none"
                ),
                lambda text_encoder: counted_forward("image_text", text_encoder.embed_token_ids, thread),
                thread,
            )
            if settings.clip_text_tower == "eager":
                self.text_forward.preload()

    @bentoml.api
    async def embed(self, pixels: np.ndarray) -> Vectors:
        if self.loaded.encoder is None:
            raise bentoml.exceptions.ServiceUnavailable(self.loaded.problem)
        return await self.forward(pixels)

    @bentoml.api
    async def embed_text(self, token_ids: list[list[int]]) -> Vectors:
        if self.loaded.encoder is None:
            raise bentoml.exceptions.ServiceUnavailable(self.loaded.problem)
        return await self.text_forward(token_ids)

    @bentoml.api
    async def load_problem(self) -> str:
        """Why no model is loaded; empty when one is."""
        return self.loaded.problem or ""

    @bentoml.api
    async def text_load_problem(self) -> str:
        """Why CLIP's text tower could not be loaded (at its first use, or at start when eager); empty otherwise."""
        return self.loaded.problem or (self.text_forward.problem or "")

    def __is_ready__(self) -> bool:
        return self.loaded.encoder is not None


async def health(_: Request) -> JSONResponse:
    report = await bentoml.get_current_service().embedder.health(stopping=shutdown_requested.is_set())
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


async def list_models(_: Request) -> JSONResponse:
    return JSONResponse(bentoml.get_current_service().embedder.openai_models().model_dump())


async def tei_info(_: Request) -> JSONResponse:
    try:
        return JSONResponse(bentoml.get_current_service().embedder.tei.info().model_dump())
    except ApiError as error:
        return error.to_response("tei")


# BentoML's own APIs answer POST only; the GET routes are a plain Starlette app mounted beside them.
get_routes = Starlette(
    routes=[
        Route(routes.HEALTH_PATH, health, methods=["GET"]),
        Route(routes.MODELS_PATH, list_models, methods=["GET"]),
        Route(routes.TEI_INFO_PATH, tei_info, methods=["GET"]),
    ]
)


@bentoml.service(
    name=API_SERVICE_NAME,
    http={"port": settings.port, "host": settings.host},
    traffic=TRAFFIC,
    tracing=TRACING,
    workers=1,
    # RequestLogMiddleware writes the access log, with the items of each request.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(get_routes, path="/")
class EmbeddingAPI:
    """The POST routes are served by router.py, in front of these methods, which declare them (routes.py) for
    BentoML's client and schema and run the same handler when BentoML calls them itself."""

    # A model whose name is empty gets no service process at all.
    if settings.text_model_name:
        text_model = bentoml.depends(TextModel)
    if settings.image_model_name:
        image_model = bentoml.depends(ImageModel)

    def __init__(self) -> None:
        delay_exit(stop_condition)
        # Here, in the API's one worker, so that each note is logged once and not by every process.
        for note in settings.legacy_setting_notes():
            logging.getLogger("embedding_server.settings").warning(note)
        text, image, tokens = settings.text_max_batch_size, settings.image_max_batch_size, settings.max_batch_tokens
        self.embedder = Embedder(
            settings,
            Model.configure(
                "text", Modality.TEXT, settings.text_model_name, self._client("text_model", "embed", text, tokens)
            ),
            Model.configure(
                "image", Modality.IMAGE, settings.image_model_name, self._client("image_model", "embed", image)
            ),
            Model.configure(
                "image_text",
                Modality.IMAGE,
                settings.image_model_name,
                self._client("image_model", "embed_text", text, tokens, problem_method="text_load_problem"),
            ),
        )

    def _client(
        self,
        dependency: str,
        method: str,
        max_batch_size: int,
        max_batch_tokens: int | None = None,
        problem_method: str = "load_problem",
    ) -> ModelClient | None:
        service = getattr(self, dependency, None)
        if service is None:
            return None
        return remote_client(
            service, max_batch_size, settings.max_queued_items, method, problem_method, max_batch_tokens
        )

    @bentoml.api(**routes.EMBED_TEXT.bentoml)
    async def embed_text(self, **request) -> EmbedTextResponse:
        return await self._handle(routes.EMBED_TEXT, request)

    @bentoml.api(**routes.EMBED_IMAGE.bentoml)
    async def embed_image(self, **request) -> EmbedImageResponse:
        return await self._handle(routes.EMBED_IMAGE, request)

    @bentoml.api(**routes.EMBED_BATCH.bentoml)
    async def embed_batch(self, **request) -> EmbedBatchResponse:
        return await self._handle(routes.EMBED_BATCH, request)

    @bentoml.api(**routes.EMBED_IMAGE_TEXT.bentoml)
    async def embed_image_text(self, **request) -> EmbedTextResponse:
        return await self._handle(routes.EMBED_IMAGE_TEXT, request)

    @bentoml.api(**routes.CLASSIFY_IMAGE.bentoml)
    async def classify_image(self, **request) -> ClassifyImageResponse:
        return await self._handle(routes.CLASSIFY_IMAGE, request)

    @bentoml.api(**routes.OPENAI_EMBEDDINGS.bentoml)
    async def openai_embeddings(self, **request) -> OpenAIEmbeddingResponse:
        return await self._handle(routes.OPENAI_EMBEDDINGS, request)

    async def _handle(self, route: routes.ApiRoute, request: dict):
        """BentoML has validated the request already; an ApiError is answered with this API's body."""
        try:
            return await route.handle(self.embedder, route.request.model_construct(**request))
        except ApiError as error:
            return error.to_response(route.errors)

    async def __is_ready__(self) -> bool:
        return not shutdown_requested.is_set() and (await self.embedder.health()).status == "ok"


# The first added is the outermost: the log sees every answer, CORS headers reach even a 401.
EmbeddingAPI.add_asgi_middleware(RequestLogMiddleware, quiet_paths=routes.PROBE_PATHS)
if settings.cors_origin_list:
    # Any request header: browser clients add their own (the OpenAI JS client sends x-stainless-*).
    EmbeddingAPI.add_asgi_middleware(
        CORSMiddleware, allow_origins=settings.cors_origin_list, allow_methods=["GET", "POST"], allow_headers=["*"]
    )
if settings.api_key:
    EmbeddingAPI.add_asgi_middleware(ApiKeyMiddleware, api_key=settings.api_key)
EmbeddingAPI.add_asgi_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
EmbeddingAPI.add_asgi_middleware(
    RequestDeadlineMiddleware, timeout_s=settings.request_timeout_s, exempt_paths=routes.PROBE_PATHS
)
EmbeddingAPI.add_asgi_middleware(ApiRouter, embedder=lambda: bentoml.get_current_service().embedder)
# /docs.json: BentoML's OpenAPI document with this API's error bodies, unions, GET routes and uploads.
EmbeddingAPI.add_asgi_middleware(OpenAPIDocumentMiddleware, service=EmbeddingAPI)
