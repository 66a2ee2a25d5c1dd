"""CLIP models with random weights, saved as `save_pretrained` folders: the benchmark's full-size ViT-B/32 (the real
architecture and cost, without the hub) and the tiny one of the tests and the replicas demo, each with a CLIP
tokenizer built offline."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
# CLIP's byte-level BPE without merges: every byte, alone and word-final, then the two special tokens, which take
# the last ids as in openai/clip-vit-base-patch32 (its text tower pools at the highest id).
TOKENIZER_VOCAB = {**{b: i for i, b in enumerate(BYTES)}, **{b + "</w>": 256 + i for i, b in enumerate(BYTES)}}
BOS_TOKEN_ID, EOS_TOKEN_ID = len(TOKENIZER_VOCAB), len(TOKENIZER_VOCAB) + 1
SPECIAL_TOKENS = {"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}

VIT_B_32 = {
    "text_config": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        **SPECIAL_TOKENS,
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
        "vocab_size": EOS_TOKEN_ID + 1,
        "max_position_embeddings": 77,
        **SPECIAL_TOKENS,
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
    """Saves a CLIP of `shape` with weights drawn from `seed`, an image processor for its image size and a tokenizer
    into `folder`; returns `folder`."""
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(**shape)).eval().save_pretrained(folder)
    size = shape["vision_config"]["image_size"]
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
        folder
    )
    vocab = {**TOKENIZER_VOCAB, "<|startoftext|>": BOS_TOKEN_ID, "<|endoftext|>": EOS_TOKEN_ID}
    max_tokens = shape["text_config"]["max_position_embeddings"]
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_tokens).save_pretrained(folder)
    return folder
