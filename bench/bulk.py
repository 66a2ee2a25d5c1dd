"""The bulk row: `python -m client embed` over a folder of file-workload files through the running server, against
the raw encoders' files/s on the same mix.

The folder holds BULK_TEXTS text files (the file workload's texts, each made distinct by its first line) and
BULK_IMAGES images (the workload's photos and screenshots in turn, each re-encoded with one pixel changed), so that
no two files share a sha256 and the client sends every one.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from bench.data import FILES_FOLDER, IMAGES_FILE, JPEG_QUALITY, TEXTS_FILE
from harness.servers import ROOT

BULK_TEXTS = 800
BULK_IMAGES = 200


def write_folder(data: Path, into: Path) -> dict[str, int]:
    """The bulk folder at `into`, from the file workload in `data`; how many files of each kind it holds."""
    files = data / FILES_FOLDER
    texts = json.loads((files / TEXTS_FILE).read_text())
    photos = [base64.b64decode(url.partition(",")[2]) for url in json.loads((files / IMAGES_FILE).read_text())]
    into.mkdir(parents=True, exist_ok=True)
    for index in range(BULK_TEXTS):
        (into / f"doc-{index:04}.txt").write_text(f"file {index}\n{texts[index % len(texts)]}")
    for index in range(BULK_IMAGES):
        image = Image.open(io.BytesIO(photos[index % len(photos)]))
        fmt = image.format
        image = image.convert("RGB")
        image.putpixel((0, 0), (index % 256, index // 256, 7))
        suffix = "jpg" if fmt == "JPEG" else "png"
        image.save(into / f"photo-{index:04}.{suffix}", fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    return {"texts": BULK_TEXTS, "images": BULK_IMAGES}


def run_bulk(url: str, folder: Path, out: Path) -> dict:
    """`python -m client embed FOLDER` against `url` with its defaults, timed; files/s over its whole run."""
    out.unlink(missing_ok=True)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "client", "embed", str(folder), "--server", url, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.monotonic() - started
    files = BULK_TEXTS + BULK_IMAGES
    return {
        "files": files,
        "seconds": round(seconds, 2),
        "files_per_s": round(files / seconds, 2),
        "exit_status": result.returncode,
        "summary": result.stdout.strip()[-2000:],
    }


def raw_files_per_s(raw_text_best: float | None, raw_photo_best: float | None) -> float | None:
    """The raw encoders' files/s on the bulk folder's mix: its texts at the file texts' best rate, then its images
    at the photos' best."""
    if not raw_text_best or not raw_photo_best:
        return None
    return round((BULK_TEXTS + BULK_IMAGES) / (BULK_TEXTS / raw_text_best + BULK_IMAGES / raw_photo_best), 2)
