"""CLIP's text tower and zero-shot classification, in-process, against `CLIPModel` on the tiny random CLIP."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from models.clip_text import ClipTextEncoder, read_logit_scale, zero_shot_probabilities
from models.onnx_backend import export_clip_text_model
from models.runtime import Runtime

TEXTS = ["a photo of a cat", "", "Ünïcödé, emoji 🐕 and RTL עברית", "a dog " * 60]  # the last: over 77 tokens


@pytest.fixture(scope="module")
def clip(clip_dir) -> CLIPModel:
    return CLIPModel.from_pretrained(clip_dir).eval()


@pytest.fixture(scope="module")
def reference(clip_dir, clip) -> np.ndarray:
    """`CLIPModel.get_text_features` of TEXTS, normalised, with the model's own tokenizer cutting at 77 tokens."""
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(TEXTS, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        features = clip.get_text_features(**tokens)
    features = getattr(features, "pooler_output", features)  # a tensor, or an output object in newer transformers
    return torch.nn.functional.normalize(features, dim=-1).numpy()


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory, clip_dir):
    folder = tmp_path_factory.mktemp("clip-text") / "model"
    shutil.copytree(clip_dir, folder)
    export_clip_text_model(folder)
    return folder


def test_torch_encoder_equals_clip_model(clip_dir, reference):
    encoder = ClipTextEncoder.load(clip_dir, Runtime("torch", "cpu"))
    assert encoder.dimension == reference.shape[1] == 24
    np.testing.assert_allclose(encoder.encode(TEXTS), reference, atol=1e-5)


@pytest.mark.parametrize(("backend", "tolerance"), [("onnx", 1e-4), ("openvino", 1e-3)])  # openvino: bf16
def test_onnx_export_stays_within_tolerance(onnx_folder, reference, backend, tolerance):
    encoder = ClipTextEncoder.load(onnx_folder, Runtime(backend, "cpu"))
    distance = 1 - np.sum(encoder.encode(TEXTS) * reference, axis=1)
    assert distance.max() <= tolerance


def test_texts_are_cut_at_77_tokens_as_clip_tokenizer_does(clip_dir):
    encoder = ClipTextEncoder.load(clip_dir, Runtime("torch", "cpu"))
    tokenized = encoder.tokenizer.tokenize(TEXTS)
    expected = CLIPTokenizer.from_pretrained(clip_dir)(TEXTS, truncation=True).input_ids
    assert [t.ids for t in tokenized] == expected
    assert [t.truncated for t in tokenized] == [False, False, False, True]
    assert len(tokenized[-1].ids) == 77 < tokenized[-1].token_count


def test_zero_shot_probabilities_equal_clip_model(clip_dir, clip):
    pixels = torch.rand((3, 3, 30, 30))
    labels = ["a cat", "a dog", "a red square", "noise"]
    tokens = CLIPTokenizer.from_pretrained(clip_dir)(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = clip(pixel_values=pixels, **tokens)
    expected = output.logits_per_image.softmax(dim=-1).numpy()
    # Un-normalised features on purpose: the function normalises, as CLIPModel does.
    probabilities = zero_shot_probabilities(
        output.image_embeds.numpy() * 3.0, output.text_embeds.numpy() * 0.5, read_logit_scale(clip_dir)
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)


def test_logit_scale_is_the_models_learned_temperature(clip_dir, clip):
    assert read_logit_scale(clip_dir) == pytest.approx(clip.logit_scale.exp().item())
