"""Sentence embeddings with sentence-transformers semantics: mean pooling over the attention mask, optional L2 norm."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

from models.runtime import Runtime
from models.tokenizer import TextTokenizer
from models.vectors import l2_normalize


class TextEncoder:
    """A transformer encoder with mean pooling.

    `encode` equals `SentenceTransformer.encode(normalize_embeddings=True)`."""

    def __init__(self, model: torch.nn.Module, tokenizer: TextTokenizer, runtime: Runtime) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.dimension: int = model.config.hidden_size

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> TextEncoder:
        model = AutoModel.from_pretrained(str(path), dtype=runtime.dtype).to(runtime.device).eval()
        return cls(model, TextTokenizer.from_dir(path), runtime)

    @torch.inference_mode()
    def embed_token_ids(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean-pooled, un-normalised float32 vectors, shape (len(batch), dimension), in the order given."""
        if not batch:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Sorting by length before padding keeps short texts from paying for the longest one.
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(order):
            input_ids[row, : len(batch[i])] = torch.tensor(batch[i], dtype=torch.long)
            attention[row, : len(batch[i])] = 1
        input_ids, attention = input_ids.to(self.runtime.device), attention.to(self.runtime.device)
        hidden = self._model(input_ids=input_ids, attention_mask=attention).last_hidden_state.float()
        mask = attention.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        vectors = np.empty((len(batch), self.dimension), dtype=np.float32)
        vectors[order] = pooled.cpu().numpy()
        return vectors

    def encode(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 32) -> np.ndarray:
        """Embeds texts (cut to `tokenizer.max_tokens`); float32, shape (len(texts), dimension)."""
        tokenized = self.tokenizer.tokenize(texts)
        chunks = [
            self.embed_token_ids([t.ids for t in tokenized[start : start + batch_size]])
            for start in range(0, len(tokenized), batch_size)
        ]
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalize(vectors) if normalize else vectors
