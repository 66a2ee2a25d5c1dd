"""Sentence embeddings with sentence-transformers semantics: mean pooling over the attention mask, optional L2 norm."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from models.onnx_backend import export_forward, model_export
from models.runtime import Runtime
from models.tokenizer import TextTokenizer
from models.vectors import l2_normalize

FORWARD_CHUNK = 32
"""Most texts in one forward pass: past this size throughput stops growing and padding only grows."""


class TextEncoder:
    """A transformer encoder with mean pooling, on torch, ONNX Runtime or OpenVINO.

    `encode` equals `SentenceTransformer.encode(normalize_embeddings=True)`."""

    def __init__(
        self, forward: Callable[..., np.ndarray], tokenizer: TextTokenizer, dimension: int, runtime: Runtime
    ) -> None:
        self._forward = forward
        self.runtime = runtime
        self.tokenizer = tokenizer
        self.dimension = dimension

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> TextEncoder:
        path = Path(path)
        if runtime.runs_export:
            forward = export_forward(model_export(path, runtime), runtime)
        else:
            from models.torch_backend import load_text_module, torch_forward

            forward = torch_forward(load_text_module(path), runtime)
        tokenizer = TextTokenizer.from_dir(path)
        # The output's width, whatever the architecture's config calls it (hidden_size, dim, d_model...).
        dimension = forward(*pad_token_ids([[tokenizer.pad_token_id]], tokenizer.pad_token_id)).shape[1]
        return cls(forward, tokenizer, dimension, runtime)

    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean-pooled, un-normalised float32 vectors, shape (len(batch), dimension), in the order given."""
        vectors = np.zeros((len(batch), self.dimension), dtype=np.float32)
        for rows, inputs in self.forward_inputs(batch):
            vectors[rows] = self._forward(*inputs)
        return vectors

    def forward_inputs(self, batch: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], tuple[np.ndarray, ...]]]:
        """The forward passes that embed `batch`: the rows of `batch` each computes, and its model inputs."""
        # Texts of similar length go through together, so that a short text does not pay for padding to a long one.
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        for start in range(0, len(order), FORWARD_CHUNK):
            rows = order[start : start + FORWARD_CHUNK]
            yield rows, pad_token_ids([batch[i] for i in rows], self.tokenizer.pad_token_id)

    def encode(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        """Embeds texts (cut to `tokenizer.max_tokens`); float32, shape (len(texts), dimension)."""
        vectors = self.embed_token_ids([t.ids for t in self.tokenizer.tokenize(texts)])
        return l2_normalize(vectors) if normalize else vectors


def pad_token_ids(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 input ids padded to the longest text with `pad_id`, and the attention mask; both (len(batch), longest)."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
    return input_ids, attention
