"""Response bodies assembled from what the models computed: vectors in the request's encoding, and metadata."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedding_server.errors import ApiError
from embedding_server.observability import ITEM_ERRORS
from embedding_server.schemas import (
    BatchItem,
    BatchResult,
    ClassifyImageMetadata,
    ClassifyImageResponse,
    EmbedBatchMetadata,
    EmbedBatchResponse,
    EmbedImageMetadata,
    EmbedImageResponse,
    EmbedTextMetadata,
    EmbedTextResponse,
    Encoding,
    ImageClassification,
    ItemError,
    LabelProbability,
)
from embedding_server.served_model import Model
from embedding_server.wire import encode_vectors
from models.tokenizer import TokenizedText


@dataclass(frozen=True)
class EmbeddedTexts:
    """Texts' vectors and how they were tokenized."""

    vectors: np.ndarray
    tokenized: list[TokenizedText]

    @property
    def truncated(self) -> list[int]:
        return [i for i, t in enumerate(self.tokenized) if t.truncated]

    @property
    def tokens(self) -> int:
        return sum(len(t.ids) for t in self.tokenized)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def text_response(embedded: EmbeddedTexts, model: Model, encoding: Encoding, started: float) -> EmbedTextResponse:
    return EmbedTextResponse(
        embeddings=encode_vectors(embedded.vectors, encoding),
        metadata=EmbedTextMetadata(
            count=len(embedded.vectors),
            dimension=model.dimension,
            duration=elapsed_ms(started),
            model=model.model_id,
            truncated=embedded.truncated,
            tokens=embedded.tokens,
        ),
    )


def image_response(vectors: np.ndarray, model: Model, encoding: Encoding, started: float) -> EmbedImageResponse:
    return EmbedImageResponse(
        embeddings=encode_vectors(vectors, encoding),
        metadata=EmbedImageMetadata(
            count=len(vectors), dimension=model.dimension, duration=elapsed_ms(started), model=model.model_id
        ),
    )


def classification_response(
    probabilities: np.ndarray,
    labels: Sequence[str],
    top_k: int | None,
    embedded_labels: EmbeddedTexts,
    model: Model,
    started: float,
) -> ClassifyImageResponse:
    """Each image's labels, most probable first (the first `top_k` of them)."""
    top_k = top_k or len(labels)
    return ClassifyImageResponse(
        results=[
            ImageClassification(
                labels=[
                    LabelProbability(label=labels[i], probability=float(row[i]))
                    for i in np.argsort(-row, kind="stable")[:top_k]
                ]
            )
            for row in probabilities
        ],
        metadata=ClassifyImageMetadata(
            count=len(probabilities),
            duration=elapsed_ms(started),
            model=model.model_id,
            truncated=embedded_labels.truncated,
        ),
    )


def embedded_item(item: BatchItem, vector: list[float] | str) -> BatchResult:
    return BatchResult(id=item.id, embedding=vector)


def failed_item(item: BatchItem, error: ApiError) -> BatchResult:
    ITEM_ERRORS.labels(error.code.value).inc()
    return BatchResult(id=item.id, error=ItemError(code=error.code.value, message=error.message))


def batch_response(results: list[BatchResult], items: Sequence[BatchItem], started: float) -> EmbedBatchResponse:
    return EmbedBatchResponse(
        results=results,
        metadata=EmbedBatchMetadata(
            total=len(items),
            text=sum(item.type == "text" for item in items),
            image=sum(item.type == "image" for item in items),
            failed=sum(r.error is not None for r in results),
            duration=elapsed_ms(started),
        ),
    )
