"""What each route does between HTTP and the model services: validate, pre-process, call the model, assemble.

Nothing here knows BentoML: a model service is reached through a `ModelClient`, two async callables.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from embedding_server.batching import QueueFull
from embedding_server.errors import ApiError, ErrorCode
from embedding_server.image_urls import ImageFetcher, looks_like_url
from embedding_server.images import decode_image
from embedding_server.model_store import Modality, find_stored, import_hint
from embedding_server.observability import IMAGE_DECODE_SECONDS, ITEM_ERRORS, TEXTS_TRUNCATED, record_items
from embedding_server.schemas import (
    BatchItem,
    BatchResult,
    ClassifyImageMetadata,
    ClassifyImageRequest,
    ClassifyImageResponse,
    EmbedBatchMetadata,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedImageMetadata,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedTextMetadata,
    EmbedTextRequest,
    EmbedTextResponse,
    Encoding,
    HealthResponse,
    ImageClassification,
    ItemError,
    LabelProbability,
)
from embedding_server.settings import Settings
from embedding_server.wire import encode_vectors
from models.clip_text import zero_shot_probabilities
from models.preprocess import ImagePreprocessor
from models.tokenizer import TextTokenizer, TokenizedText
from models.vectors import l2_normalize

logger = logging.getLogger("embedding_server")

HEALTH_PROBE_TIMEOUT_S = 2.0


class ModelUnavailable(Exception):
    """The model service could not be reached, or is not ready."""


class ModelFailed(Exception):
    """The model service answered with an error: the forward pass raised."""


@dataclass(frozen=True)
class ModelClient:
    """How the API reaches one model service."""

    embed: Callable[[object], Awaitable[np.ndarray]]
    """Raw (un-normalised) vectors for token ids or uint8 pixels; raises ModelUnavailable."""
    is_loaded: Callable[[], Awaitable[bool]]


@dataclass
class Model:
    """One model as the API sees it: its stored files, its client, or why it can't be used.

    Three of them: the text model, CLIP's image tower and CLIP's text tower; the two CLIP towers are one stored
    model served by one model service."""

    name: str
    """text, image or image_text: the metrics label and the word in messages."""
    modality: Modality
    model_id: str
    client: ModelClient | None
    path: Path | None = None
    dimension: int = 0
    metadata: dict = field(default_factory=dict)
    created: int = 0
    """When the model was imported, in Unix seconds."""
    problem: str | None = None

    @classmethod
    def configure(cls, name: str, modality: Modality, model_id: str, client: ModelClient | None) -> Model:
        if not model_id or client is None:
            return cls(
                name,
                modality,
                model_id,
                None,
                problem=f"{modality.value} model is disabled ({modality.value.upper()}_MODEL_NAME is empty)",
            )
        stored = find_stored(model_id)
        if stored is None:
            return cls(name, modality, model_id, client, problem=import_hint(modality, model_id))
        metadata = dict(stored.info.metadata)
        model = cls(
            name,
            modality,
            model_id,
            client,
            Path(stored.path),
            int(metadata["dimension"]),
            metadata,
            int(stored.info.creation_time.timestamp()),
        )
        if name == "image_text" and not ((model.path / "tokenizer.json").is_file() and "logit_scale" in metadata):
            model.problem = (
                f"the stored CLIP model {stored.tag} was imported without its text tower's tokenizer and logit scale; "
                "import it again with `python import_models.py --force`"
            )
        return model

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def require(self, index: int | None = None) -> ModelClient:
        if self.problem is not None or self.client is None:
            raise ApiError(ErrorCode.MODEL_UNAVAILABLE, self.problem or "model is not available", index)
        return self.client

    async def embed(self, inputs: object, normalize: bool) -> np.ndarray:
        try:
            vectors = await self.require().embed(inputs)
        except ModelUnavailable as exc:
            raise ApiError(ErrorCode.MODEL_UNAVAILABLE, f"{self.modality.value} model service failed: {exc}") from exc
        except ModelFailed as exc:
            raise ApiError(ErrorCode.MODEL_ERROR, f"{self.modality.value} model failed on this batch: {exc}") from exc
        except QueueFull as exc:
            raise ApiError(
                ErrorCode.OVERLOADED, f"the {self.modality.value} model is busy ({exc}); retry after a second"
            ) from exc
        record_items(self.name, len(vectors))
        return l2_normalize(vectors) if normalize else vectors

    async def is_healthy(self) -> bool:
        if self.problem is not None or self.client is None:
            return False
        try:
            return await asyncio.wait_for(self.client.is_loaded(), HEALTH_PROBE_TIMEOUT_S)
        except Exception:  # unreachable, restarting or hung: all mean "not answering"
            return False


@dataclass(frozen=True)
class EmbeddedTexts:
    vectors: np.ndarray
    tokenized: list[TokenizedText]

    @property
    def truncated(self) -> list[int]:
        return [i for i, t in enumerate(self.tokenized) if t.truncated]

    @property
    def tokens(self) -> int:
        return sum(len(t.ids) for t in self.tokenized)


class Embedder:
    """The API's work, route by route."""

    def __init__(self, settings: Settings, text: Model, image: Model, image_text: Model) -> None:
        self.settings = settings
        self.text = text
        self.image = image
        self.image_text = image_text
        self.tokenizers = {
            model.name: TextTokenizer.from_dir(model.path)
            for model in (text, image_text)
            if model.path is not None and model.problem is None
        }
        self.preprocessor = ImagePreprocessor.from_dir(image.path) if image.path else None
        self.fetcher = ImageFetcher(settings)
        self.started = time.monotonic()

    # --- routes -----------------------------------------------------------------------------------------------

    async def embed_text(self, request: EmbedTextRequest, model: Model | None = None) -> EmbedTextResponse:
        """Texts as vectors of the text model, or of `model` (CLIP's text tower for /embed/image-text)."""
        started = time.perf_counter()
        model = model or self.text
        embedded = await self.embed_texts(model, request.texts, request.normalize, request.truncate)
        return EmbedTextResponse(
            embeddings=encode_vectors(embedded.vectors, request.encoding),
            metadata=EmbedTextMetadata(
                count=len(embedded.vectors),
                dimension=model.dimension,
                duration=elapsed_ms(started),
                model=model.model_id,
                truncated=embedded.truncated,
                tokens=embedded.tokens,
            ),
        )

    async def embed_image(self, request: EmbedImageRequest) -> EmbedImageResponse:
        started = time.perf_counter()
        vectors = await self.image.embed(await self._prepare_images(request.images), request.normalize)
        return EmbedImageResponse(
            embeddings=encode_vectors(vectors, request.encoding),
            metadata=EmbedImageMetadata(
                count=len(vectors),
                dimension=self.image.dimension,
                duration=elapsed_ms(started),
                model=self.image.model_id,
            ),
        )

    async def classify_image(self, request: ClassifyImageRequest) -> ClassifyImageResponse:
        """Zero-shot classification: each image's labels by CLIP's probability, as `CLIPModel` computes it."""
        started = time.perf_counter()
        self.image_text.require()
        pixels, labels = await asyncio.gather(
            self._prepare_images(request.images),
            self.embed_texts(self.image_text, request.labels, normalize=True, truncate=True),
        )
        image_vectors = await self.image.embed(pixels, normalize=True)
        probabilities = zero_shot_probabilities(
            image_vectors, labels.vectors, float(self.image_text.metadata["logit_scale"])
        )
        top_k = request.top_k or len(request.labels)
        return ClassifyImageResponse(
            results=[
                ImageClassification(
                    labels=[
                        LabelProbability(label=request.labels[i], probability=float(row[i]))
                        for i in np.argsort(-row, kind="stable")[:top_k]
                    ]
                )
                for row in probabilities
            ],
            metadata=ClassifyImageMetadata(
                count=len(probabilities),
                duration=elapsed_ms(started),
                model=self.image.model_id,
                truncated=labels.truncated,
            ),
        )

    async def embed_batch(self, request: EmbedBatchRequest) -> EmbedBatchResponse:
        started = time.perf_counter()
        items = request.items
        reject_duplicate_ids(items)
        results: list[BatchResult | None] = [None] * len(items)
        texts = [i for i, item in enumerate(items) if item.type == "text"]
        images = [i for i, item in enumerate(items) if item.type == "image"]
        prepare_text = functools.partial(self._prepare_batch_text, truncate=request.truncate)
        embed_part = functools.partial(
            self._embed_batch_part, items=items, results=results, normalize=request.normalize, encoding=request.encoding
        )
        await asyncio.gather(
            embed_part(self.text, texts, prepare=prepare_text),
            embed_part(self.image, images, prepare=self._prepare_image),
        )
        return EmbedBatchResponse(
            results=results,
            metadata=EmbedBatchMetadata(
                total=len(items),
                text=len(texts),
                image=len(images),
                failed=sum(r.error is not None for r in results),
                duration=elapsed_ms(started),
            ),
        )

    async def health(self, stopping: bool = False) -> HealthResponse:
        """`stopping`: the server has been asked to stop and is finishing its requests."""
        models = [m for m in (self.text, self.image) if m.enabled]
        healthy = await asyncio.gather(*(m.is_healthy() for m in models))
        return HealthResponse(
            status="stopping" if stopping else "ok" if all(healthy) else "unavailable",
            models={m.modality.value: ok for m, ok in zip(models, healthy, strict=True)},
            problems={
                m.modality.value: m.problem or "model service is not answering"
                for m, ok in zip(models, healthy, strict=True)
                if not ok
            },
            memory=server_memory_mb(),
            uptime=round(time.monotonic() - self.started, 3),
        )

    # --- stages -----------------------------------------------------------------------------------------------

    async def embed_texts(self, model: Model, texts: Sequence[str], normalize: bool, truncate: bool) -> EmbeddedTexts:
        """Texts through `model`'s tokenizer and model service; a text over the token limit is cut (and reported)
        or, without `truncate`, a 422 naming it."""
        model.require()
        tokenized = await asyncio.to_thread(self._tokenize, model, texts, truncate)
        vectors = await model.embed([t.ids for t in tokenized], normalize)
        if truncated := sum(t.truncated for t in tokenized):
            TEXTS_TRUNCATED.labels(model.name).inc(truncated)
        return EmbeddedTexts(vectors, tokenized)

    def _tokenize(
        self, model: Model, texts: Sequence[str], truncate: bool, first_index: int = 0
    ) -> list[TokenizedText]:
        tokenizer = self.tokenizers[model.name]
        tokenized = tokenizer.tokenize(texts)
        if not truncate:
            for index, t in enumerate(tokenized, start=first_index):
                if t.truncated:
                    raise ApiError(
                        ErrorCode.TOO_MANY_TOKENS,
                        f"text {index} has {t.token_count} tokens, more than the model's {tokenizer.max_tokens}; "
                        "send truncate: true to embed its beginning",
                        index,
                    )
        return tokenized

    async def _prepare_images(self, images: Sequence[str | bytes]) -> np.ndarray:
        """The images' pixels: URLs fetched first, all at once, in the fetch pool (the first refusal fails the
        request), then every image decoded in a worker thread."""
        self.image.require()
        fetched = await self.fetcher.fetch(url_contents(images, range(len(images))), fail_fast=True)
        contents = [fetched.get(i, content) for i, content in enumerate(images)]
        return await asyncio.to_thread(lambda: np.stack([self._prepare_image(c, i) for i, c in enumerate(contents)]))

    def _prepare_image(self, content: str | bytes, index: int) -> np.ndarray:
        """Decoded and pre-processed; image URLs have been fetched before (`ImageFetcher`), off this thread."""
        started = time.perf_counter()
        image = decode_image(
            content, self.settings.max_image_bytes, self.settings.max_image_pixels, index, self.preprocessor.size
        )
        pixels = self.preprocessor(image)
        IMAGE_DECODE_SECONDS.observe(time.perf_counter() - started)
        return pixels

    def _prepare_batch_text(self, content: str | bytes, index: int, truncate: bool) -> list[int]:
        if isinstance(content, bytes):  # an uploaded text file
            try:
                content = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ApiError(ErrorCode.NOT_UTF8, f"text file is not UTF-8 (byte {exc.start})", index) from None
        if len(content) > self.settings.max_text_chars:
            raise ApiError(
                ErrorCode.TEXT_TOO_LONG,
                f"text has {len(content)} characters, more than {self.settings.max_text_chars}",
                index,
            )
        return self._tokenize(self.text, [content], truncate, first_index=index)[0].ids

    async def _embed_batch_part(
        self,
        model: Model,
        indexes: list[int],
        items: Sequence[BatchItem],
        results: list[BatchResult | None],
        normalize: bool,
        encoding: Encoding,
        prepare: Callable[[str | bytes, int], object],
    ) -> None:
        """Embeds one modality's items of a batch; an item that fails gets its error in its place, the rest go on."""
        if not indexes:
            return
        fetched: dict[int, bytes | ApiError] = {}
        if model.modality is Modality.IMAGE and model.problem is None and model.enabled:
            # Fetched first, all at once; a URL that fails fails its item only.
            fetched = await self.fetcher.fetch(
                url_contents([items[i].content for i in indexes], indexes), fail_fast=False
            )

        def prepare_all() -> tuple[list[int], list[object]]:
            ready, inputs = [], []
            for index in indexes:
                try:
                    model.require(index)
                    content = fetched.get(index, items[index].content)
                    if isinstance(content, ApiError):
                        raise content
                    inputs.append(prepare(content, index))
                    ready.append(index)
                except ApiError as error:
                    results[index] = failed_item(items[index], error)
            return ready, inputs

        ready, inputs = await asyncio.to_thread(prepare_all)
        if not ready:
            return
        try:
            vectors = await model.embed(np.stack(inputs) if model.modality is Modality.IMAGE else inputs, normalize)
        except ApiError as error:
            for index in ready:
                results[index] = failed_item(items[index], error)
            return
        for index, vector in zip(ready, encode_vectors(vectors, encoding), strict=True):
            results[index] = BatchResult(id=items[index].id, embedding=vector)


def url_contents(contents: Sequence[str | bytes], indexes: Sequence[int]) -> dict[int, str]:
    """The contents that are URLs (to fetch), by their item's index."""
    return {
        index: content
        for index, content in zip(indexes, contents, strict=True)
        if isinstance(content, str) and looks_like_url(content)
    }


def reject_duplicate_ids(items: Sequence[BatchItem]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise ApiError(
                ErrorCode.DUPLICATE_ID, f"id {item.id!r} of item {index} is already used by item {seen[item.id]}", index
            )
        seen[item.id] = index


def failed_item(item: BatchItem, error: ApiError) -> BatchResult:
    ITEM_ERRORS.labels(error.code.value).inc()
    return BatchResult(id=item.id, error=ItemError(code=error.code.value, message=error.message))


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def server_memory_mb() -> dict[str, float]:
    """RSS of the whole server: the `bentoml serve` process that started this worker and every process under it."""
    server = psutil.Process(os.getppid())
    processes = [server, *server.children(recursive=True)]
    rss = 0
    for process in processes:
        try:
            rss += process.memory_info().rss
        except psutil.Error:  # a worker that exited between the listing and the reading
            continue
    return {"rss_total": round(rss / 2**20, 1), "processes": float(len(processes))}
