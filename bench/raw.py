"""The raw encoders in-process, through the server's own code path and without HTTP: the benchmark's yardstick.

    python -m bench.raw --data DIR --out raw.json [--batch-sizes 1,8,16,32,64] [--seconds 3]

Text: tokenise + forward + normalise. Images: base64 + decode + pre-process + forward + normalise, from the same
data URLs the server gets. The encoders load as the model services load them (settings, backend, threads); then,
where the stored model's int8 export passed its gate, as QUANTIZE=int8 loads them, on the file texts, the short texts
and the photos (rows "file text int8" and so on).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.data import FILES_FOLDER, IMAGES_FILE, TEXTS_FILE
from embedding_server.images import decode_image
from embedding_server.model_service import load_encoder
from embedding_server.model_store import Modality
from embedding_server.settings import get_settings
from models.image import ImageEncoder
from models.text import TextEncoder
from models.vectors import l2_normalize

Pipeline = Callable[[Sequence[str]], np.ndarray]
"""Embeds a batch of raw inputs (texts, or image data URLs) into normalised vectors."""


def text_pipeline(encoder: TextEncoder) -> Pipeline:
    def embed(texts: Sequence[str]) -> np.ndarray:
        return l2_normalize(encoder.embed_token_ids([t.ids for t in encoder.tokenizer.tokenize(texts)]))

    return embed


def image_pipeline(encoder: ImageEncoder) -> Pipeline:
    settings = get_settings()

    def embed(data_urls: Sequence[str]) -> np.ndarray:
        limits = (settings.max_image_bytes, settings.max_image_pixels)
        images = [decode_image(url, *limits, min_side=encoder.preprocessor.size) for url in data_urls]
        return l2_normalize(encoder.embed_pixels(np.stack([encoder.preprocessor(image) for image in images])))

    return embed


def measure(embed: Pipeline, inputs: Sequence[str], batch_size: int, seconds: float) -> dict:
    """Items per second and per-batch latency of `embed` on consecutive batches of `inputs`, for about `seconds`."""
    embed(inputs[:batch_size])  # warm-up: first-call allocations and kernel selection
    latencies, items, start, cursor = [], 0, time.perf_counter(), 0
    while not latencies or time.perf_counter() - start < seconds:
        batch = [inputs[(cursor + i) % len(inputs)] for i in range(batch_size)]
        cursor += batch_size
        began = time.perf_counter()
        embed(batch)
        latencies.append(time.perf_counter() - began)
        items += batch_size
    elapsed = time.perf_counter() - start
    return {
        "batch_size": batch_size,
        "items_per_s": round(items / elapsed, 2),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)) * 1000, 2),
        "batches": len(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder written by bench.data.write_data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    args = parser.parse_args(argv)
    settings = get_settings()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    # Each encoder on each workload (bench.data): the short one, then the files (file texts, camera-size photos);
    # then its int8 export, where it has one that passed.
    short, files = args.data, args.data / FILES_FOLDER
    plan = [
        (Modality.TEXT, settings.text_model_name, TextEncoder.load, text_pipeline, "none", ("text", "file text")),
        (Modality.IMAGE, settings.image_model_name, ImageEncoder.load, image_pipeline, "none", ("image", "photo")),
        (Modality.TEXT, settings.text_model_name, TextEncoder.load, text_pipeline, "int8", ("text", "file text")),
        (Modality.IMAGE, settings.image_model_name, ImageEncoder.load, image_pipeline, "int8", ("photo",)),
    ]
    report: dict = {"backend": {}, "threads": settings.threads_per_model(), "rows": []}
    for modality, model_id, loader, pipeline, quantize, kinds in plan:
        loaded = load_encoder(modality, model_id, loader, settings, quantize) if model_id else None
        if loaded is None or loaded.encoder is None:
            if quantize == "int8" and loaded is not None:
                print(f"raw {modality.value} int8: not measured, {loaded.problem}", flush=True)
            continue
        encoder = loaded.encoder
        report["backend"][modality.value + (" int8" if quantize == "int8" else "")] = encoder.runtime.backend
        for kind in kinds:
            folder = files if kind in ("file text", "photo") else short
            inputs = json.loads((folder / (TEXTS_FILE if modality is Modality.TEXT else IMAGES_FILE)).read_text())
            kind += " int8" if quantize == "int8" else ""
            for batch_size in batch_sizes:
                row = {"modality": kind, **measure(pipeline(encoder), inputs, batch_size, args.seconds)}
                report["rows"].append(row)
                print(
                    f"raw {kind:14} batch {batch_size:3}: {row['items_per_s']:8.1f} items/s, "
                    f"{row['latency_ms_p50']:8.2f} ms per batch",
                    flush=True,
                )
        del encoder, loaded
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
