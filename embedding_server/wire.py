"""Vectors as they travel in a response body: JSON numbers, or base64 of their little-endian float32 bytes."""

from __future__ import annotations

import base64

import numpy as np

from embedding_server.schemas import Encoding


def encode_vectors(vectors: np.ndarray, encoding: Encoding) -> list[list[float]] | list[str]:
    """One entry per row: a list of floats, or with `base64` the row's float32 little-endian bytes in base64 (what
    OpenAI's `encoding_format: base64` means: a quarter of the bytes of JSON numbers, and exact)."""
    if encoding == "float":
        return vectors.tolist()
    little_endian = np.ascontiguousarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little_endian]
