"""CPU inference engines and precisions compared on the stored models, in-process: speed, memory, first call, and
the vectors' agreement with ONNX Runtime fp32 (what the CPU server runs today).

    export BENTOML_HOME=.bench/bentoml-home             # a store with both models and their ONNX exports
    python -m bench.engines speed ENGINE --out DIR      # one engine per process, so that its RSS is its own
    python -m bench.engines vectors ENGINE --out DIR    # the quality set's vectors, DIR/ENGINE-{text,image}.npy
    python -m bench.engines compare --out DIR           # each engine's vectors against ort-f32's

Engines: ort-f32 (ONNX Runtime, the CPU default), openvino (the backend as the server runs it: bf16, weights kept in
fp16), ov-f32 / ov-bf16 (OpenVINO on the export as read, fp32 weights; ov-bf16-tput with the THROUGHPUT hint), and
torch-f32 / torch-bf16 (the module cast to bf16) / torch-autocast-bf16; all on 2 threads.

Speed: pre-tokenised texts (the tokenizer's cost is the same for every engine) through `TextEncoder.embed_token_ids`
(length sort, passes of at most 32) and pre-processed uint8 pixels through `ImageEncoder.embed_pixels`, then L2
normalisation; file texts at batch 1/16/32, short texts at 1/32/64, images at 1/8/16.
Quality: the file texts, the short texts and 1,000 paragraphs of the same documents; 64 synthetic pictures.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import psutil

from bench.data import document_files, make_file_texts, make_image, make_screenshot, make_texts
from bench.raw import measure
from embedding_server.model_store import find_stored
from embedding_server.settings import get_settings
from models.onnx_backend import ONNX_FILE, onnx_forward
from models.openvino_backend import openvino_forward
from models.preprocess import ImagePreprocessor
from models.quantize import similar_pairs
from models.runtime import Runtime
from models.tokenizer import TextTokenizer
from models.vectors import l2_normalize

THREADS = 2
REFERENCE = "ort-f32"
SIMILAR = (0.9, 0.8, 0.7)
"""Pair agreement: of the pairs that either engine puts at or above each similarity, the share both put there."""
NEIGHBOURS = 10
"""Neighbour agreement: the share of each item's nearest items by the reference that the engine finds too."""

Loader = Callable[[str, Path], Callable[..., np.ndarray]]
"""(modality, stored model folder) -> forward function of numpy arrays returning float32 vectors."""


def torch_loader(dtype: str, autocast: bool = False) -> Loader:
    def load(modality: str, folder: Path) -> Callable[..., np.ndarray]:
        import torch

        from models.torch_backend import load_image_module, load_text_module

        torch.set_num_threads(THREADS)
        if modality == "text":
            module = load_text_module(folder)
        else:
            preprocessor = ImagePreprocessor.from_dir(folder)
            module = load_image_module(folder, preprocessor.mean, preprocessor.std)
        if dtype == "bf16" and not autocast:
            module = module.to(torch.bfloat16)

        @torch.inference_mode()
        def forward(*arrays: np.ndarray) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return module(*(torch.from_numpy(a) for a in arrays)).float().numpy()

        return forward

    return load


def openvino_loader(precision: str, hint: str = "LATENCY") -> Loader:
    """OpenVINO on the export as read, its weights in fp32 (the backend stores them in fp16)."""

    def load(modality: str, folder: Path) -> Callable[..., np.ndarray]:
        import openvino

        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": THREADS}
        request = openvino.Core().compile_model(str(folder / ONNX_FILE), "CPU", config).create_infer_request()

        def forward(*arrays: np.ndarray) -> np.ndarray:
            return request.infer(list(arrays))[0]

        return forward

    return load


ENGINES: dict[str, Loader] = {
    "ort-f32": lambda modality, folder: onnx_forward(folder / ONNX_FILE, THREADS),
    "openvino": lambda modality, folder: openvino_forward(folder / ONNX_FILE, THREADS),
    "ov-f32": openvino_loader("f32"),
    "ov-bf16": openvino_loader("bf16"),
    "ov-bf16-tput": openvino_loader("bf16", "THROUGHPUT"),
    "torch-f32": torch_loader("f32"),
    "torch-bf16": torch_loader("bf16"),
    "torch-autocast-bf16": torch_loader("bf16", autocast=True),
}


def stored_folder(modality: str) -> Path:
    settings = get_settings()
    model_id = settings.text_model_name if modality == "text" else settings.image_model_name
    stored = find_stored(model_id)
    if stored is None:
        raise SystemExit(f"{model_id} is not in the store at BENTOML_HOME; import it with import_models.py")
    return Path(stored.path)


def text_encoder(engine: str):
    from models.text import TextEncoder

    folder = stored_folder("text")
    forward = ENGINES[engine]("text", folder)
    return TextEncoder(forward, TextTokenizer.from_dir(folder), 384, Runtime("onnx", "cpu", THREADS))


def image_encoder(engine: str):
    from models.image import ImageEncoder

    folder = stored_folder("image")
    forward = ENGINES[engine]("image", folder)
    return ImageEncoder(forward, ImagePreprocessor.from_dir(folder), 512, Runtime("onnx", "cpu", THREADS))


def paragraphs(count: int = 1000) -> list[str]:
    """`count` paragraphs of real documents (stdlib sources and /usr/share/doc), 200 to 3,000 characters each."""
    found: dict[str, None] = {}
    for path in document_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for paragraph in text.split("\n\n"):
            if 200 <= len(paragraph.strip()) <= 3000:
                found[paragraph.strip()] = None
    texts = list(found)
    return texts[:: max(1, len(texts) // count)][:count]


def quality_texts() -> list[str]:
    return make_file_texts() + make_texts() + paragraphs()


def quality_pixels(preprocessor: ImagePreprocessor) -> np.ndarray:
    images = [make_image(seed) for seed in range(48)]
    images += [make_image(100 + seed, size=(1920, 1080)) for seed in range(8)]
    images += [make_screenshot(200 + seed) for seed in range(8)]
    return np.stack([preprocessor(image) for image in images])


def embed_token_ids(encoder, batch: list[list[int]]) -> np.ndarray:
    return l2_normalize(encoder.embed_token_ids(batch))


def embed_pixels(encoder, batch: list[np.ndarray]) -> np.ndarray:
    return l2_normalize(encoder.embed_pixels(np.stack(batch)))


def idle_cpu_s(process: psutil.Process, seconds: float = 1.0) -> float:
    """CPU seconds the process burns in the `seconds` after a forward pass: spinning pool threads show here."""
    before = process.cpu_times()
    time.sleep(seconds)
    after = process.cpu_times()
    return round(after.user + after.system - before.user - before.system, 3)


def speed(engine: str, seconds: float) -> dict:
    process = psutil.Process()
    busy_before, wall_before = busy_cpu_s() - own_cpu_s(process), time.perf_counter()
    report: dict = {"engine": engine, "load": float(np.mean(psutil.getloadavg()[:1])), "rss_base_mb": 0, "rows": []}
    tokenizer = TextTokenizer.from_dir(stored_folder("text"))
    workloads = {
        "file text": ([t.ids for t in tokenizer.tokenize(make_file_texts())], (1, 16, 32)),
        "short text": ([t.ids for t in tokenizer.tokenize(make_texts())], (1, 32, 64)),
    }
    preprocessor = ImagePreprocessor.from_dir(stored_folder("image"))
    pixels = np.stack([preprocessor(make_image(seed)) for seed in range(16)])
    report["rss_base_mb"] = round(process.memory_info().rss / 2**20)
    for modality in ("text", "image"):
        rss_before = process.memory_info().rss
        began = time.perf_counter()
        encoder = text_encoder(engine) if modality == "text" else image_encoder(engine)
        loaded = time.perf_counter()
        if modality == "text":
            encoder.embed_token_ids(workloads["file text"][0][:1])
        else:
            encoder.embed_pixels(pixels[:1])
        report[f"{modality}_load_s"] = round(loaded - began, 3)
        report[f"{modality}_first_call_s"] = round(time.perf_counter() - loaded, 3)
        report[f"{modality}_idle_cpu_s"] = idle_cpu_s(process)
        if modality == "text":
            embed = partial(embed_token_ids, encoder)
            runs = workloads.items()
        else:
            embed = partial(embed_pixels, encoder)
            runs = [("image", (list(pixels), (1, 8, 16)))]
        for kind, (inputs, batch_sizes) in runs:
            for batch_size in batch_sizes:
                row = {"engine": engine, "workload": kind, **measure(embed, inputs, batch_size, seconds)}
                report["rows"].append(row)
                print(
                    f"{engine:20} {kind:10} batch {batch_size:3}: {row['items_per_s']:8.1f} items/s, "
                    f"{row['latency_ms_p50']:8.2f} ms per batch",
                    flush=True,
                )
        report[f"{modality}_idle_cpu_after_s"] = idle_cpu_s(process)
        report[f"{modality}_rss_mb"] = round((process.memory_info().rss - rss_before) / 2**20)
        del encoder, embed
    report["rss_peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    report["other_cpu_s"] = round(busy_cpu_s() - own_cpu_s(process) - busy_before, 1)
    report["wall_s"] = round(time.perf_counter() - wall_before, 1)
    return report


def busy_cpu_s() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq + times.steal


def own_cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def vectors(engine: str, out: Path) -> None:
    text = text_encoder(engine)
    np.save(out / f"{engine}-text.npy", text.encode(quality_texts()))
    del text
    image = image_encoder(engine)
    np.save(out / f"{engine}-image.npy", l2_normalize(image.embed_pixels(quality_pixels(image.preprocessor))))


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    cosines = np.sum(reference * other, axis=1)
    result = {
        "items": len(reference),
        "cosine_mean": round(float(cosines.mean()), 6),
        "cosine_min": round(float(cosines.min()), 6),
    }
    for threshold in SIMILAR:
        both, either = similar_pairs(reference, other, threshold)
        result[f"pairs_{threshold}"] = either
        result[f"pair_agreement_{threshold}"] = round(both / max(1, either), 4)
    neighbours_ref, neighbours_other = (nearest(vectors, NEIGHBOURS) for vectors in (reference, other))
    shared = [len(set(a) & set(b)) for a, b in zip(neighbours_ref, neighbours_other, strict=True)]
    result[f"top{NEIGHBOURS}_agreement"] = round(float(np.mean(shared)) / NEIGHBOURS, 4)
    return result


def nearest(vectors: np.ndarray, count: int) -> np.ndarray:
    """Each item's `count` nearest other items by cosine, shape (len(vectors), count)."""
    similarities = vectors @ vectors.T
    np.fill_diagonal(similarities, -np.inf)
    return np.argpartition(-similarities, count, axis=1)[:, :count]


def compare(out: Path) -> dict:
    # The file texts repeat documents when the machine has fewer than 256: each text counts once.
    distinct = {"text": sorted({text: i for i, text in reversed(list(enumerate(quality_texts())))}.values())}
    result = {}
    for modality in ("text", "image"):
        rows = distinct.get(modality, slice(None))
        reference = np.load(out / f"{REFERENCE}-{modality}.npy")[rows]
        for path in sorted(out.glob(f"*-{modality}.npy")):
            engine = path.name.removesuffix(f"-{modality}.npy")
            result[f"{engine} {modality}"] = agreement(reference, np.load(path)[rows])
            print(f"{engine:20} {modality:5}", result[f"{engine} {modality}"], flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["speed", "vectors", "compare"])
    parser.add_argument("engine", nargs="?", choices=list(ENGINES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=4.0, help="per workload and batch size")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.step == "speed":
        report = speed(args.engine, args.seconds)
        (args.out / f"speed-{args.engine}.json").write_text(json.dumps(report, indent=2))
    elif args.step == "vectors":
        vectors(args.engine, args.out)
    else:
        (args.out / "quality.json").write_text(json.dumps(compare(args.out), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
