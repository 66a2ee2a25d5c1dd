"""The BentoML services: a text model, an image model, and the API that composes them.

POST /embed/text    texts -> vectors (all-MiniLM-L6-v2 by default)
POST /embed/image   images as data URLs -> vectors (CLIP ViT-B/32 by default)
POST /embed/batch   mixed text and image items with ids -> vectors in input order, bad items failing alone
GET  /health        models loaded and answering, memory, uptime (503 when a configured model is not)
"""

from __future__ import annotations

import logging

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from embedding_server.batching import BatchQueue, in_own_thread
from embedding_server.core import Embedder, Model, ModelClient
from embedding_server.errors import ApiError
from embedding_server.middleware import ErrorBodyMiddleware
from embedding_server.model_service import RUNNER_CONNECTION, load_encoder, remote_client
from embedding_server.model_store import Modality, bento_model_reference
from embedding_server.schemas import (
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
)
from embedding_server.settings import get_settings

settings = get_settings()
logging.getLogger("embedding_server").setLevel(settings.log_level.upper())

# Half a GPU each: with one GPU both model services share it; without one they run on the CPU.
MODEL_SERVICE = {
    "resources": {"gpu": 0.5},
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
            self.batches = BatchQueue(in_own_thread(self.encoder.embed_token_ids), settings.text_max_batch_size)

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
    """CLIP ViT-B/32 (or IMAGE_MODEL_NAME): uint8 pixels in, projected image features out."""

    bento_model = bento_model_reference(settings.image_model_name)

    def __init__(self) -> None:
        from models.image import ImageEncoder

        self.encoder = load_encoder(Modality.IMAGE, settings.image_model_name, ImageEncoder.load, settings)
        if self.encoder is not None:
            self.batches = BatchQueue(in_own_thread(self.encoder.embed_pixels), settings.image_max_batch_size)

    @bentoml.api
    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        return await self.batches.submit(pixels)

    @bentoml.api
    async def is_loaded(self) -> bool:
        return self.encoder is not None

    def __is_ready__(self) -> bool:
        return self.encoder is not None


async def health(_: Request) -> JSONResponse:
    report = await bentoml.get_current_service().embedder.health()
    return JSONResponse(report.model_dump(), status_code=200 if report.status == "ok" else 503)


# BentoML's own APIs answer POST only; GET /health is a plain Starlette route mounted beside them.
health_app = Starlette(routes=[Route("/health", health, methods=["GET"])])


@bentoml.service(name="embedding_api", http={"port": settings.port, "host": settings.host}, workers=1)
@bentoml.asgi_app(health_app, path="/")
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
                Modality.TEXT, settings.text_model_name, self._client("text_model", settings.text_max_batch_size)
            ),
            Model.configure(
                Modality.IMAGE, settings.image_model_name, self._client("image_model", settings.image_max_batch_size)
            ),
        )

    def _client(self, dependency: str, max_batch_size: int) -> ModelClient | None:
        service = getattr(self, dependency, None)
        return remote_client(service, max_batch_size) if service is not None else None

    @bentoml.api(route="/embed/text", input_spec=EmbedTextRequest, output_spec=EmbedTextResponse)
    async def embed_text(self, **request) -> EmbedTextResponse | JSONResponse:
        return await answer(self.embedder.embed_text(EmbedTextRequest.model_construct(**request)))

    @bentoml.api(route="/embed/image", input_spec=EmbedImageRequest, output_spec=EmbedImageResponse)
    async def embed_image(self, **request) -> EmbedImageResponse | JSONResponse:
        return await answer(self.embedder.embed_image(EmbedImageRequest.model_construct(**request)))

    @bentoml.api(route="/embed/batch", input_spec=EmbedBatchRequest, output_spec=EmbedBatchResponse)
    async def embed_batch(self, **request) -> EmbedBatchResponse | JSONResponse:
        return await answer(self.embedder.embed_batch(EmbedBatchRequest.model_construct(**request)))

    async def __is_ready__(self) -> bool:
        return (await self.embedder.health()).status == "ok"


async def answer(work):
    """The route's response, or its ApiError as this API's JSON error body and status."""
    try:
        return await work
    except ApiError as error:
        return error.to_response()


EmbeddingAPI.add_asgi_middleware(ErrorBodyMiddleware, routes=frozenset({"/embed/text", "/embed/image", "/embed/batch"}))
