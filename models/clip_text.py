"""CLIP's text tower: texts as vectors in the image space, and zero-shot classification of images by labels.

`ClipTextEncoder.encode` equals `CLIPModel.get_text_features` (L2-normalised by default); `zero_shot_probabilities`
equals the softmax of `CLIPModel`'s `logits_per_image`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from models.onnx_backend import CLIP_TEXT_ONNX_FILE, export_forward
from models.runtime import Runtime
from models.text import TextEncoder
from models.tokenizer import TextTokenizer
from models.vectors import l2_normalize

logger = logging.getLogger(__name__)


class ClipTextEncoder(TextEncoder):
    """The text tower and its projection, on torch, ONNX Runtime or OpenVINO; batching and padding as for
    `TextEncoder`."""

    @classmethod
    def load(cls, path: str | Path, runtime: Runtime) -> ClipTextEncoder:
        path = Path(path)
        if runtime.runs_export and (path / CLIP_TEXT_ONNX_FILE).is_file():
            forward = export_forward(path / CLIP_TEXT_ONNX_FILE, runtime)
        else:
            if runtime.runs_export:
                logger.warning("%s has no ONNX export of CLIP's text tower; it runs on torch", path)
            from models.torch_backend import load_clip_text_module, torch_forward

            forward = torch_forward(load_clip_text_module(path), Runtime("torch", runtime.device, runtime.threads))
        dimension = int(json.loads((path / "config.json").read_text())["projection_dim"])
        return cls(forward, TextTokenizer.from_dir(path), dimension, runtime)


def read_logit_scale(path: str | Path) -> float:
    """CLIP's learned temperature, exp(logit_scale) as `CLIPModel` applies it, from the weights in `path`."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "model.safetensors"), framework="numpy") as weights:
            value = weights.get_tensor("logit_scale")
    else:  # a model saved before safetensors
        import torch

        value = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)["logit_scale"].numpy()
    return float(np.exp(np.float64(value.reshape(()))))


def zero_shot_probabilities(image_vectors: np.ndarray, label_vectors: np.ndarray, logit_scale: float) -> np.ndarray:
    """Each image's probability over the labels, shape (images, labels): the softmax of the scaled cosine
    similarities, as `CLIPModel` computes `logits_per_image`."""
    logits = logit_scale * (l2_normalize(image_vectors) @ l2_normalize(label_vectors).T).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
