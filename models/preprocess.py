"""CLIP's image pre-processing up to uint8 pixels; PIL and numpy only, so the API process needs no torch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255, 255)
REDUCING_GAP = 3.0
"""Pillow's `reducing_gap`: an image over twice this many times the model's size is first shrunk by a whole factor
with a box filter, leaving at least this factor to the bicubic filter, whose cost grows with the scale. A 4K
screenshot's resize then takes a third of the time (66 -> 22 ms here) for a mean change of 0.17 grey levels."""


class ImagePreprocessor:
    """CLIPImageProcessor's geometry (RGB, shortest side to `size` with bicubic, centre crop), stopping at uint8 pixels.

    The float scaling and normalisation are left to the model side (`ImageEncoder.embed_pixels`), so that what travels
    between processes is a quarter of the size.
    """

    def __init__(
        self,
        size: int,
        crop: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        reducing_gap: float | None = REDUCING_GAP,
    ) -> None:
        """`reducing_gap`: None resizes exactly as CLIPImageProcessor does, at any size."""
        self.size = size
        self.crop_height, self.crop_width = crop
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.reducing_gap = reducing_gap

    @classmethod
    def from_dir(cls, path: str | Path, reducing_gap: float | None = REDUCING_GAP) -> ImagePreprocessor:
        config = json.loads((Path(path) / "preprocessor_config.json").read_text())
        size = config.get("size", 224)
        shortest = size["shortest_edge"] if isinstance(size, dict) else int(size)
        crop = config.get("crop_size", shortest)
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(shortest, crop_hw, config["image_mean"], config["image_std"], reducing_gap)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """uint8 array of shape (crop_height, crop_width, 3)."""
        image = to_rgb(image)
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.size * long / short)  # the same rounding as transformers
        new_size = (self.size, new_long) if width <= height else (new_long, self.size)
        pixels = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=self.reducing_gap))
        top = (pixels.shape[0] - self.crop_height) // 2
        left = (pixels.shape[1] - self.crop_width) // 2
        return np.ascontiguousarray(pixels[top : top + self.crop_height, left : left + self.crop_width])


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB with any transparency composited onto white, as transformers' `convert_to_rgb` does."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        background = Image.new("RGBA", image.size, _WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")
