"""The encoders, in-process, against the reference implementations."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEXT_SOURCE, data_url
from PIL import Image, ImageDraw
from sentence_transformers import SentenceTransformer
from transformers import CLIPImageProcessorPil, CLIPModel

from embedding_server.images import decode_image
from models.calibration import CALIBRATION_TEXTS, texts
from models.image import ImageEncoder
from models.onnx_backend import INT8_ONNX_FILE, ONNX_FILE, export_image_model, export_text_model
from models.preprocess import ImagePreprocessor
from models.quantize import Quality, measure_quality, quantize_model
from models.runtime import Runtime
from models.text import TextEncoder
from models.vectors import l2_normalize

TEXTS = [
    "Hello world",
    "a photo of a dog",
    "",
    "Ünïcödé, emoji 🐕 and RTL עברית",
    "quarterly tax report " * 200,  # far over 256 tokens
]


TORCH = Runtime("torch", "cpu")
ONNX = Runtime("onnx", "cpu")
OPENVINO = Runtime("openvino", "cpu")
ONNX_TOLERANCE = 1e-4  # cosine distance from the PyTorch vectors
OPENVINO_TOLERANCE = 1e-3  # the same in bf16, on a CPU that has it (on the real models: < 5e-5)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder.load(TEXT_SOURCE, TORCH)


@pytest.fixture(scope="module")
def image_encoder(clip_dir) -> ImageEncoder:
    return ImageEncoder.load(clip_dir, TORCH)


@pytest.fixture(scope="module")
def text_export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("minilm") / "model"
    shutil.copytree(TEXT_SOURCE, folder)
    export_text_model(folder)
    return folder


@pytest.fixture(scope="module")
def image_export(tmp_path_factory, clip_dir) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "model"
    shutil.copytree(clip_dir, folder)
    export_image_model(folder)
    return folder


@pytest.fixture(scope="module")
def onnx_text_encoder(text_export) -> TextEncoder:
    return TextEncoder.load(text_export, ONNX)


@pytest.fixture(scope="module")
def onnx_image_encoder(image_export) -> ImageEncoder:
    return ImageEncoder.load(image_export, ONNX)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 1 - np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_text_vectors_equal_sentence_transformers(text_encoder):
    reference = SentenceTransformer(str(TEXT_SOURCE), device="cpu").encode(TEXTS, normalize_embeddings=True)
    vectors = text_encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(vectors[0, :5], [-0.0345, 0.0310, 0.0067, 0.0261, -0.0394], atol=1e-4)


def test_text_batch_order_and_padding_do_not_change_vectors(text_encoder):
    alone = np.stack([text_encoder.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(text_encoder.encode(TEXTS[::-1])[::-1], alone, atol=1e-5)


def test_unnormalised_text_vectors_are_the_mean_pooled_ones(text_encoder):
    raw = text_encoder.encode(TEXTS[:2], normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), text_encoder.encode(TEXTS[:2]), atol=1e-6
    )


def test_tokenizer_reports_length_and_cut(text_encoder):
    short, long = text_encoder.tokenizer.tokenize(["Hello world", TEXTS[-1]])
    assert (short.token_count, short.truncated, len(short.ids)) == (4, False, 4)
    assert long.truncated and long.token_count > 256 and len(long.ids) == 256 == text_encoder.tokenizer.max_tokens
    assert long.ids[-1] == short.ids[-1]  # the closing [SEP] survives the cut


def test_semantic_neighbours(text_encoder):
    dog, puppy, tax = text_encoder.encode(["a photo of a dog", "a picture of a puppy", "quarterly tax report"])
    assert dog @ puppy > dog @ tax + 0.3


def reference_image_vectors(clip_dir, images) -> np.ndarray:
    model = CLIPModel.from_pretrained(clip_dir).eval()
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    with torch.no_grad():
        features = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    return torch.nn.functional.normalize(features, dim=-1).numpy()


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    noise = lambda h, w, c=3: rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)  # noqa: E731
    palette = Image.fromarray(noise(33, 47)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 3
    return [
        Image.fromarray(noise(40, 64)),  # landscape
        Image.fromarray(noise(97, 31)),  # portrait
        Image.fromarray(noise(30, 30)),  # exactly the crop size
        Image.fromarray(noise(15, 20)),  # smaller than the crop: upscaled
        Image.fromarray(noise(60, 45, 4), "RGBA"),  # alpha composited onto white
        Image.fromarray(noise(50, 50, 1), "L"),  # greyscale
        palette,  # palette with a transparent index
    ]


def test_image_vectors_equal_clip_model(image_encoder, clip_dir):
    images = sample_images()
    vectors = image_encoder.encode(images)
    assert vectors.shape == (len(images), 24) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, reference_image_vectors(clip_dir, images), atol=1e-5)


def test_preprocessing_matches_clip_image_processor(clip_dir):
    preprocessor = ImagePreprocessor.from_dir(clip_dir)
    reference = CLIPImageProcessorPil.from_pretrained(clip_dir)
    for image in sample_images():
        ours = (preprocessor(image).astype(np.float32) / 255 - preprocessor.mean) / preprocessor.std
        theirs = reference(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_full_size_preprocessing_matches_on_a_real_photo_size():
    preprocessor = ImagePreprocessor(224, (224, 224), CLIPImageProcessorPil.image_mean, CLIPImageProcessorPil.image_std)
    reference = CLIPImageProcessorPil()
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (768, 1024, 3), dtype=np.uint8)).save(buffer, "JPEG")
    image = Image.open(buffer)
    ours = (preprocessor(image).astype(np.float32) / 255 - preprocessor.mean) / preprocessor.std
    theirs = reference(images=[image], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_onnx_text_vectors_within_tolerance_of_torch(text_encoder, onnx_text_encoder):
    texts = TEXTS + ["short", "a much longer sentence that pads the short ones in the same forward pass " * 3]
    assert onnx_text_encoder.runtime.backend == "onnx"
    assert cosine_distances(onnx_text_encoder.encode(texts), text_encoder.encode(texts)).max() < ONNX_TOLERANCE
    reference = SentenceTransformer(str(TEXT_SOURCE), device="cpu").encode(texts, normalize_embeddings=True)
    assert cosine_distances(onnx_text_encoder.encode(texts), reference).max() < ONNX_TOLERANCE


def test_onnx_text_batches_of_many_lengths_keep_input_order(onnx_text_encoder):
    # More texts than one forward chunk, in lengths that the length sort reorders.
    texts = [f"text number {i} " + "word " * (i * 7 % 50) for i in range(70)]
    alone = np.stack([onnx_text_encoder.encode([t])[0] for t in texts])
    assert cosine_distances(onnx_text_encoder.encode(texts), alone).max() < ONNX_TOLERANCE


def test_onnx_image_vectors_within_tolerance_of_torch(image_encoder, onnx_image_encoder, clip_dir):
    images = sample_images()
    assert onnx_image_encoder.runtime.backend == "onnx"
    assert cosine_distances(onnx_image_encoder.encode(images), image_encoder.encode(images)).max() < ONNX_TOLERANCE
    reference = reference_image_vectors(clip_dir, images)
    assert cosine_distances(onnx_image_encoder.encode(images), reference).max() < ONNX_TOLERANCE


def test_openvino_vectors_within_tolerance_of_torch(text_encoder, image_encoder, text_export, image_export):
    texts = TEXTS + ["short", "a much longer sentence that pads the short ones in the same forward pass " * 3]
    openvino_text = TextEncoder.load(text_export, OPENVINO)
    assert cosine_distances(openvino_text.encode(texts), text_encoder.encode(texts)).max() < OPENVINO_TOLERANCE
    images = sample_images()
    openvino_image = ImageEncoder.load(image_export, OPENVINO)
    assert cosine_distances(openvino_image.encode(images), image_encoder.encode(images)).max() < OPENVINO_TOLERANCE


@pytest.mark.parametrize(
    ("backend", "has_onnx", "chosen"),
    [
        ("auto", True, "onnx"),
        ("auto", False, "torch"),
        ("torch", True, "torch"),
        ("onnx", True, "onnx"),
        ("openvino", True, "openvino"),
    ],
)
def test_runtime_on_the_cpu(backend, has_onnx, chosen):
    assert Runtime.choose("cpu", backend, 2, has_onnx=has_onnx) == Runtime(chosen, "cpu", 2)


def test_runtime_refuses_what_cannot_run():
    with pytest.raises(ValueError, match="no ONNX export"):
        Runtime.choose("cpu", "onnx", has_onnx=False)
    with pytest.raises(ValueError, match="no ONNX export"):
        Runtime.choose("cpu", "openvino", has_onnx=False)
    for backend in ("onnx", "openvino"):
        with pytest.raises(ValueError, match="CPU only"):
            Runtime.choose("cuda", backend, has_onnx=True)
    assert Runtime.choose("cuda", "auto", has_onnx=True) == Runtime("torch", "cuda")
    for device, backend in (("cpu", "torch"), ("cuda", "auto")):
        with pytest.raises(ValueError, match="--onnx-only"):
            Runtime.choose(device, backend, has_onnx=True, has_pytorch_weights=False)
    for device, backend, has_onnx in (("cpu", "auto", False), ("cuda", "auto", True)):
        with pytest.raises(ValueError, match="QUANTIZE=int8 runs on ONNX Runtime on the CPU only"):
            Runtime.choose(device, backend, has_onnx=has_onnx, int8=True)
    assert Runtime.choose("cpu", "auto", 2, has_onnx=True, int8=True) == Runtime("onnx", "cpu", 2, int8=True)


def test_int8_text_export_within_the_gate_of_fp32(text_export, onnx_text_encoder):
    """Quantised on a few real texts, the int8 MiniLM keeps its vectors and its similar pairs on other real texts."""
    calibration, held_out = texts()
    calibration = calibration[:16] + calibration[CALIBRATION_TEXTS : CALIBRATION_TEXTS + 16]
    batches = [inputs for _, inputs in onnx_text_encoder.forward_inputs(token_ids(onnx_text_encoder, calibration))]
    plan = quantize_model(text_export / ONNX_FILE, text_export / INT8_ONNX_FILE, batches)
    assert plan["quantised_nodes"] == 24 and plan["fp32_channels"] > 0  # the layers' massive activations, apart

    held_out = held_out[::30]
    held_out += [text.split(" ", 1)[-1] for text in held_out]  # each without its first word: pairs to agree on
    int8 = TextEncoder.load(text_export, Runtime("onnx", "cpu", int8=True))
    quality = measure_quality(onnx_text_encoder.encode(held_out), int8.encode(held_out))
    assert quality.inputs == len(held_out) and quality.passed, quality
    assert quality.mean_cosine < 0.9999  # int8 indeed: not the fp32 file again


def test_the_gate_fails_on_each_figure_below_its_limit():
    rng = np.random.default_rng(0)
    originals = rng.normal(size=(60, 16)).astype(np.float32)
    # Each vector and a near copy: 60 similar pairs, and no other pair anywhere near 0.9 in 16 dimensions.
    reference = l2_normalize(np.concatenate([originals, originals + rng.normal(scale=0.05, size=originals.shape)]))
    assert measure_quality(reference, reference).failures == []
    noisy = measure_quality(reference, l2_normalize(reference + rng.normal(scale=0.3, size=reference.shape)))
    failed = [failure.split(" 0.")[0] for failure in noisy.failures]
    assert failed[:2] == ["mean cosine to fp32", "least cosine to fp32"]
    assert Quality.from_metadata(noisy.as_metadata()).failures == noisy.failures  # judged again when served
    close = np.repeat(reference[:1], len(reference), axis=0)  # every pair similar in fp32, few in the candidate
    assert "agreement on the pairs above 0.9 0.0" in " ".join(measure_quality(close, reference).failures)
    assert not measure_quality(reference, np.full_like(reference, np.nan)).passed
    unrelated = reference[:60]  # no similar pair at all: the agreement cannot be judged
    assert measure_quality(unrelated, unrelated).failures == ["0 pairs above 0.9, too few to judge (< 50)"]


def token_ids(encoder: TextEncoder, texts: list[str]) -> list[list[int]]:
    return [text.ids for text in encoder.tokenizer.tokenize(texts)]


def test_a_model_without_pytorch_weights_runs_on_onnx_without_asking_torch(monkeypatch):
    def no_torch_here():
        raise AssertionError("gpu_visible() imports torch")

    monkeypatch.setattr("models.runtime.gpu_visible", no_torch_here)
    assert Runtime.choose("auto", "auto", 2, has_onnx=True, has_pytorch_weights=False) == Runtime("onnx", "cpu", 2)


def photo_like_jpeg(size: tuple[int, int]) -> str:
    """A data URL of a JPEG with smooth gradients and hard edges, as photos have."""
    width, height = size
    image = Image.merge(
        "RGB",
        [
            Image.linear_gradient("L").resize(size),
            Image.linear_gradient("L").rotate(90).resize(size),
            Image.radial_gradient("L").resize(size),
        ],
    )
    ImageDraw.Draw(image).ellipse((width // 5, height // 4, width // 2, height * 3 // 4), fill=(220, 40, 30))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return data_url(buffer.getvalue(), "image/jpeg")


@pytest.mark.parametrize("size", [(512, 384), (1600, 1200), (300, 2000)])
def test_reduced_scale_jpeg_decode_stays_within_tolerance(image_encoder, size):
    preprocessor = image_encoder.preprocessor
    content = photo_like_jpeg(size)
    full = preprocessor(decode_image(content, 10**8, 10**8))
    reduced_image = decode_image(content, 10**8, 10**8, min_side=preprocessor.size)
    assert min(reduced_image.size) >= preprocessor.size and reduced_image.size[0] < size[0]  # really decoded smaller
    reduced = preprocessor(reduced_image)
    assert np.abs(full.astype(int) - reduced.astype(int)).mean() < 2  # grey levels
    vectors = [image_encoder.embed_pixels(pixels[None]) for pixels in (full, reduced)]
    assert cosine_distances(*vectors).max() < 1e-4


def test_a_large_image_is_shrunk_by_a_whole_factor_first_within_tolerance(image_encoder):
    screenshot = Image.new("RGB", (3840, 2160), (245, 245, 245))
    draw = ImageDraw.Draw(screenshot)
    for line in range(0, 2160, 24):  # lines of "text", whose sharp edges a box filter changes most
        draw.rectangle([40, line + 6, 40 + (line * 7) % 3000, line + 16], fill=(40, 40, 40))
    mean, std = CLIPImageProcessorPil.image_mean, CLIPImageProcessorPil.image_std
    exact = ImagePreprocessor(224, (224, 224), mean, std, reducing_gap=None)(screenshot)
    reduced = ImagePreprocessor(224, (224, 224), mean, std)(screenshot)
    assert 0 < np.abs(exact.astype(int) - reduced.astype(int)).mean() < 0.5  # grey levels
    tiny = image_encoder.preprocessor
    exact, reduced = (
        ImagePreprocessor(tiny.size, (tiny.crop_height, tiny.crop_width), tiny.mean, tiny.std, gap)(screenshot)
        for gap in (None, tiny.reducing_gap)
    )
    vectors = [image_encoder.embed_pixels(pixels[None]) for pixels in (exact, reduced)]
    assert cosine_distances(*vectors).max() < 1e-4
