"""CLIP image embeddings: the projected image features of `CLIPModel`, with CLIP's own pre-processing."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from models.preprocess import ImagePreprocessor
from models.runtime import Runtime
from models.vectors import l2_normalize


class ImageEncoder:
    """CLIP's vision tower and projection; `encode` equals `CLIPModel.get_image_features` (L2-normalised by default)."""

    def __init__(self, model: torch.nn.Module, preprocessor: ImagePreprocessor, runtime: Runtime) -> None:
        self._model = model
        self.preprocessor = preprocessor
        self.runtime = runtime
        self.dimension: int = model.config.projection_dim
        shape = (1, 3, 1, 1)
        self._mean = torch.tensor(preprocessor.mean, dtype=torch.float32).view(shape).to(runtime.device)
        self._std = torch.tensor(preprocessor.std, dtype=torch.float32).view(shape).to(runtime.device)

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> ImageEncoder:
        # Only the vision tower and its projection: the text tower is not needed to embed images. The projection
        # size lives in the top-level CLIP config, which the vision config alone does not carry.
        config = CLIPConfig.from_pretrained(str(path))
        vision_config = config.vision_config
        vision_config.projection_dim = config.projection_dim
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # the text tower's weights, skipped on purpose, are not news
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(path), config=vision_config, dtype=runtime.dtype)
        finally:
            transformers_logging.set_verbosity(verbosity)
        return cls(model.to(runtime.device).eval(), ImagePreprocessor.from_dir(path), runtime)

    @torch.inference_mode()
    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Un-normalised float32 vectors, shape (N, dimension), from uint8 pixels of shape (N, H, W, 3)."""
        if len(pixels) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.runtime.device)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        batch = ((batch - self._mean) / self._std).to(self.runtime.dtype)
        return self._model(pixel_values=batch).image_embeds.float().cpu().numpy()

    def encode(self, images: Sequence[Image.Image], normalize: bool = True, batch_size: int = 16) -> np.ndarray:
        """Embeds PIL images; float32, shape (len(images), dimension)."""
        chunks = [
            self.embed_pixels(np.stack([self.preprocessor(image) for image in images[start : start + batch_size]]))
            for start in range(0, len(images), batch_size)
        ]
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self.dimension), dtype=np.float32)
        return l2_normalize(vectors) if normalize else vectors
