"""A full-size CLIP ViT-B/32 with random weights: the real architecture and cost, without the hub."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel


def save_random_clip(folder: Path, seed: int = 0) -> Path:
    """Saves a `save_pretrained` folder shaped like openai/clip-vit-base-patch32 (weights drawn from `seed`) and
    the default 224-pixel image processor into `folder`; returns `folder`.

    Timings need only the shapes: a random ViT-B/32 costs what the trained one does per image.
    """
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "vocab_size": 49408,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessorPil().save_pretrained(folder)
    return folder
