"""CLIP image embeddings: the projected image features of `CLIPModel`, with CLIP's own pre-processing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from models.onnx_backend import export_forward, model_export
from models.preprocess import ImagePreprocessor
from models.runtime import Runtime
from models.vectors import l2_normalize

FORWARD_CHUNK = 16
"""Most images in one forward pass: on a CPU larger passes are no faster and hold more activation memory."""


class ImageEncoder:
    """CLIP's vision tower and projection on torch, ONNX Runtime or OpenVINO.

    `encode` equals `CLIPModel.get_image_features` (L2-normalised by default)."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        preprocessor: ImagePreprocessor,
        dimension: int,
        runtime: Runtime,
    ) -> None:
        self._forward = forward
        self.runtime = runtime
        self.preprocessor = preprocessor
        self.dimension = dimension

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> ImageEncoder:
        path = Path(path)
        preprocessor = ImagePreprocessor.from_dir(path)
        if runtime.runs_export:
            forward = export_forward(model_export(path, runtime), runtime)
        else:
            from models.torch_backend import load_image_module, torch_forward

            forward = torch_forward(load_image_module(path, preprocessor.mean, preprocessor.std), runtime)
        dimension = int(json.loads((path / "config.json").read_text())["projection_dim"])
        return cls(forward, preprocessor, dimension, runtime)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Un-normalised float32 vectors, shape (N, dimension), from uint8 pixels of shape (N, H, W, 3)."""
        vectors = np.zeros((len(pixels), self.dimension), dtype=np.float32)
        for rows, inputs in self.forward_inputs(pixels):
            vectors[rows] = self._forward(*inputs)
        return vectors

    def forward_inputs(self, pixels: np.ndarray) -> Iterator[tuple[slice, tuple[np.ndarray]]]:
        """The forward passes that embed `pixels`: the rows each computes, and its model input."""
        for start in range(0, len(pixels), FORWARD_CHUNK):
            rows = slice(start, start + FORWARD_CHUNK)
            yield rows, (np.ascontiguousarray(pixels[rows], dtype=np.uint8),)

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The uint8 model input for PIL images, shape (N, H, W, 3)."""
        return np.stack([self.preprocessor(image) for image in images])

    def encode(self, images: Sequence[Image.Image], normalize: bool = True) -> np.ndarray:
        """Embeds PIL images; float32, shape (len(images), dimension)."""
        vectors = self.embed_pixels(self.pixels(images))
        return l2_normalize(vectors) if normalize else vectors
