"""CLIP models with random weights, saved as `save_pretrained` folders: the benchmark's full-size ViT-B/32 (the real
architecture and cost, without the hub) and the tests' tiny one."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

VIT_B_32 = {
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 224,
        "patch_size": 32,
    },
    "projection_dim": 512,
}
"""openai/clip-vit-base-patch32's shapes: a random ViT-B/32 costs what the trained one does per image."""

TINY = {
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 99,
        "max_position_embeddings": 77,
    },
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 30,
        "patch_size": 2,
    },
    "projection_dim": 24,
}
"""A CLIP small enough for every test to build and run in a moment."""


def save_random_clip(folder: Path, shape: dict = VIT_B_32, seed: int = 0) -> Path:
    """Saves a CLIP of `shape` with weights drawn from `seed`, and an image processor for its image size, into
    `folder`; returns `folder`."""
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**shape)).eval().save_pretrained(folder)
    size = shape["vision_config"]["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        folder
    )
    return folder
