"""What each route does between HTTP and the model services: validate, pre-process, call the model, assemble.

Nothing here knows BentoML: a model service is reached through a `ModelClient` (served_model.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import psutil

from embedding_server import responses
from embedding_server.errors import ApiError, ErrorCode
from embedding_server.image_urls import ImageFetcher, looks_like_url
from embedding_server.images import decode_image
from embedding_server.limits import check_text_length
from embedding_server.model_store import Modality
from embedding_server.observability import IMAGE_DECODE_SECONDS, TEXTS_TRUNCATED
from embedding_server.openai_compat import OpenAIEmbeddings
from embedding_server.process_memory import tree_rss_bytes
from embedding_server.responses import EmbeddedTexts
from embedding_server.schemas import (
    BatchItem,
    BatchResult,
    ClassifyImageRequest,
    ClassifyImageResponse,
    EmbedBatchRequest,
    EmbedBatchResponse,
    EmbedImageRequest,
    EmbedImageResponse,
    EmbedTextRequest,
    EmbedTextResponse,
    Encoding,
    HealthResponse,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
    OpenAIModelList,
)
from embedding_server.served_model import Model
from embedding_server.settings import Settings, usable_cores
from embedding_server.tei_compat import TeiApi
from embedding_server.wire import encode_vectors
from models.clip_text import zero_shot_probabilities
from models.preprocess import ImagePreprocessor
from models.tokenizer import TextTokenizer, TokenizedText

Result = TypeVar("Result")
DECODE_POOL = ThreadPoolExecutor(usable_cores(), thread_name_prefix="decode")
"""Where images decode: a pool of their own, so that a request of many images queues in it, not in the default
pool ahead of other requests' tokenising."""
INLINE_TOKENIZE_CHARS = 2_000
"""Texts this short in all are tokenised on the event loop: it takes ~50 µs, as long as handing them to a worker
thread and back; longer ones go to a thread, so that a 100 KB text does not hold up the other requests."""


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
        self.openai = OpenAIEmbeddings(self)
        self.tei = TeiApi(self)
        self.started = time.monotonic()

    # --- routes -----------------------------------------------------------------------------------------------

    async def embed_text(self, request: EmbedTextRequest) -> EmbedTextResponse:
        return await self._embed_text_with(self.text, request)

    async def embed_image_text(self, request: EmbedTextRequest) -> EmbedTextResponse:
        """Texts as vectors in CLIP's image space: compare a query text with stored image vectors."""
        return await self._embed_text_with(self.image_text, request)

    async def embed_image(self, request: EmbedImageRequest) -> EmbedImageResponse:
        started = time.perf_counter()
        vectors = await self.embed_images(request.images, request.normalize)
        return responses.image_response(vectors, self.image, request.encoding, started)

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
        return responses.classification_response(
            probabilities, request.labels, request.top_k, labels, self.image, started
        )

    async def embed_batch(self, request: EmbedBatchRequest) -> EmbedBatchResponse:
        started = time.perf_counter()
        items = request.items
        reject_duplicate_ids(items)
        results: list[BatchResult | None] = [None] * len(items)
        prepare_text = functools.partial(self._prepare_batch_text, truncate=request.truncate)
        embed_part = functools.partial(
            self._embed_batch_part, items=items, results=results, normalize=request.normalize, encoding=request.encoding
        )
        await asyncio.gather(
            embed_part(self.text, [i for i, item in enumerate(items) if item.type == "text"], prepare=prepare_text),
            embed_part(self.image, [i for i, item in enumerate(items) if item.type == "image"], self._prepare_image),
        )
        return responses.batch_response(results, items, started)

    async def openai_embeddings(self, request: OpenAIEmbeddingRequest) -> OpenAIEmbeddingResponse:
        return await self.openai.embeddings(request)

    def openai_models(self) -> OpenAIModelList:
        return self.openai.models()

    async def health(self, stopping: bool = False) -> HealthResponse:
        """`stopping`: the server has been asked to stop and is finishing its requests."""
        models = [m for m in (self.text, self.image) if m.enabled]
        problems = await asyncio.gather(*(m.health_problem() for m in models))
        rss, processes = tree_rss_bytes(psutil.Process(os.getppid()))  # the `bentoml serve` that started this worker
        return HealthResponse(
            status="stopping" if stopping else "ok" if all(p is None for p in problems) else "unavailable",
            models={m.modality.value: problem is None for m, problem in zip(models, problems, strict=True)},
            problems={m.modality.value: p for m, p in zip(models, problems, strict=True) if p is not None},
            memory={"rss_total": round(rss / 2**20, 1), "processes": float(processes)},
            uptime=round(time.monotonic() - self.started, 3),
        )

    # --- stages -----------------------------------------------------------------------------------------------

    async def embed_images(self, images: Sequence[str | bytes], normalize: bool) -> np.ndarray:
        return await self.image.embed(await self._prepare_images(images), normalize)

    async def _embed_text_with(self, model: Model, request: EmbedTextRequest) -> EmbedTextResponse:
        started = time.perf_counter()
        embedded = await self.embed_texts(model, request.texts, request.normalize, request.truncate)
        return responses.text_response(embedded, model, request.encoding, started)

    async def embed_texts(
        self, model: Model, texts: Sequence[str], normalize: bool, truncate: bool, side: str = "right"
    ) -> EmbeddedTexts:
        """Texts through `model`'s tokenizer and model service; a text over the token limit is cut at its `side`
        (and reported) or, without `truncate`, a 422 naming it."""
        model.require()
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            tokenized = self._tokenize(model, texts, truncate, side=side)
        else:
            tokenized = await asyncio.to_thread(self._tokenize, model, texts, truncate, side=side)
        vectors = await model.embed([t.ids for t in tokenized], normalize)
        if truncated := sum(t.truncated for t in tokenized):
            TEXTS_TRUNCATED.labels(model.name).inc(truncated)
        return EmbeddedTexts(vectors, tokenized)

    def _tokenize(
        self, model: Model, texts: Sequence[str], truncate: bool, first_index: int = 0, side: str = "right"
    ) -> list[TokenizedText]:
        tokenizer = self.tokenizers[model.name]
        tokenized = tokenizer.tokenize(texts, side)
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
        request), then the images decoded at once, each in a worker thread (the first bad one, by index, fails the
        request)."""
        self.image.require()
        fetched = await self.fetcher.fetch(url_contents(images, range(len(images))), fail_fast=True)
        contents = [fetched.get(i, content) for i, content in enumerate(images)]
        prepared = await in_threads(self._prepare_image, [(content, i) for i, content in enumerate(contents)])
        if errors := [result for result in prepared if isinstance(result, ApiError)]:
            raise errors[0]
        return np.stack(prepared)

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
        check_text_length(content, index)
        return self._tokenize(self.text, [content], truncate, first_index=index)[0].ids

    async def _embed_batch_part(
        self,
        model: Model,
        indexes: list[int],
        prepare: Callable[[str | bytes, int], object],
        items: Sequence[BatchItem],
        results: list[BatchResult | None],
        normalize: bool,
        encoding: Encoding,
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

        def prepare_item(index: int, content: str | bytes | ApiError) -> object:
            model.require(index)
            if isinstance(content, ApiError):
                raise content
            return prepare(content, index)

        work = [(index, fetched.get(index, items[index].content)) for index in indexes]
        if model.modality is Modality.IMAGE:
            prepared = await in_threads(prepare_item, work)
        else:  # tokenising a text takes less than a thread's hand-over: all in one thread
            prepared = await asyncio.to_thread(lambda: [caught(prepare_item, *args) for args in work])
        ready, inputs = [], []
        for index, result in zip(indexes, prepared, strict=True):
            if isinstance(result, ApiError):
                results[index] = responses.failed_item(items[index], result)
            else:
                ready.append(index)
                inputs.append(result)
        if not ready:
            return
        try:
            vectors = await model.embed(np.stack(inputs) if model.modality is Modality.IMAGE else inputs, normalize)
        except ApiError as error:
            for index in ready:
                results[index] = responses.failed_item(items[index], error)
            return
        for index, vector in zip(ready, encode_vectors(vectors, encoding), strict=True):
            results[index] = responses.embedded_item(items[index], vector)


def caught(function: Callable[..., Result], *args: object) -> Result | ApiError:
    """`function(*args)`, or the ApiError it raised."""
    try:
        return function(*args)
    except ApiError as error:
        return error


async def in_threads(function: Callable[..., Result], calls: Sequence[tuple]) -> list[Result | ApiError]:
    """`function(*args)` for each of `calls`, all at once in DECODE_POOL, in order; an ApiError is returned in its
    place. Decoding and resizing release the GIL, so a request's images decode on every core while the model
    computes."""
    loop = asyncio.get_running_loop()
    calls_in_pool = (loop.run_in_executor(DECODE_POOL, functools.partial(caught, function, *args)) for args in calls)
    return list(await asyncio.gather(*calls_in_pool))


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
