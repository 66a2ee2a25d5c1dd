"""The encoders' networks as torch modules with numpy in and numpy out; also what the ONNX export traces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, CLIPConfig, CLIPTextModelWithProjection, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

from models.runtime import Runtime


class MeanPooledText(torch.nn.Module):
    """Token ids and attention mask → mean of the last hidden states over the real tokens (sentence-transformers)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).float()
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PixelsToImageEmbeds(torch.nn.Module):
    """uint8 pixels (N, H, W, 3) → CLIP's projected image features, the scaling and normalisation included."""

    def __init__(self, vision: torch.nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.vision = vision
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = pixels.permute(0, 3, 1, 2).float() / 255.0
        normalised = ((scaled - self.mean) / self.std).to(self.vision.dtype)
        return self.vision(pixel_values=normalised).image_embeds.float()


class ProjectedClipText(torch.nn.Module):
    """Token ids and attention mask → CLIP's projected text features (pooled at the end-of-text token)."""

    def __init__(self, text: torch.nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(input_ids=input_ids, attention_mask=attention_mask).text_embeds.float()


def load_text_module(path: Path, attention: str | None = None) -> MeanPooledText:
    return MeanPooledText(AutoModel.from_pretrained(str(path), attn_implementation=attention)).eval()


def load_image_module(path: Path, mean: Sequence[float], std: Sequence[float]) -> PixelsToImageEmbeds:
    return PixelsToImageEmbeds(load_clip_tower(CLIPVisionModelWithProjection, path), mean, std).eval()


def load_clip_text_module(path: Path, attention: str | None = None) -> ProjectedClipText:
    return ProjectedClipText(load_clip_tower(CLIPTextModelWithProjection, path, attention)).eval()


def load_clip_tower(tower: type, path: Path, attention: str | None = None) -> torch.nn.Module:
    """One of CLIP's two towers with its projection, from a whole CLIP model's folder, without the other tower's
    weights. The projection size lives in the top-level CLIP config, which a tower's config alone lacks."""
    config = CLIPConfig.from_pretrained(str(path))
    tower_config = config.vision_config if tower is CLIPVisionModelWithProjection else config.text_config
    tower_config.projection_dim = config.projection_dim
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the other tower's weights, skipped on purpose, are not news
    try:
        return tower.from_pretrained(str(path), config=tower_config, attn_implementation=attention)
    finally:
        transformers_logging.set_verbosity(verbosity)


def torch_forward(module: torch.nn.Module, runtime: Runtime) -> Callable[..., np.ndarray]:
    """`module` on the runtime's device as a function of numpy arrays returning a float32 numpy array."""
    if runtime.device == "cuda":
        module = module.half()  # fp16 on the GPU; the pooling and the output stay fp32
    elif runtime.threads:
        torch.set_num_threads(runtime.threads)
    module = module.to(runtime.device)

    @torch.inference_mode()
    def forward(*arrays: np.ndarray) -> np.ndarray:
        return module(*(torch.from_numpy(a).to(runtime.device) for a in arrays)).cpu().numpy()

    return forward
