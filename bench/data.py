"""Benchmark inputs, in two workloads, each a folder with texts.json and images.json (JSON lists of strings):

- short (the data folder itself): deterministic sentence-like texts of ~17 tokens and natural-looking 512×512 JPEG
  photos;
- files (its `files/` folder), what the application really sends: the beginnings of real documents on this machine
  (the Python standard library's sources, /usr/share/doc's READMEs and notes), nearly all over the text model's 256
  tokens, and camera-size photos (4000×3000 and 1920×1080 JPEGs) with 1920×1080 PNG screenshots.

The same files feed the raw measurement (`bench.raw`) and the load generator (`bench.load`), so that both
measure the same work.
"""

from __future__ import annotations

import base64
import io
import json
import random
import sysconfig
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTS_FILE = "texts.json"
IMAGES_FILE = "images.json"
FILES_FOLDER = "files"
"""The file workload's folder, inside the data folder."""
TEXT_COUNT = 512
IMAGE_COUNT = 16
IMAGE_SIDE = 512
JPEG_QUALITY = 90
FILE_TEXT_COUNT = 256
FILE_TEXT_CHARS = 4000
"""What a file text keeps of its document: the bulk client sends a file's whole text, and the model reads only its
first 256 tokens (some 1,000 characters), so more would only cost the tokenizer time."""
PHOTO_SIZES = [(4000, 3000)] * 4 + [(1920, 1080)] * 4
SCREENSHOT_COUNT, SCREENSHOT_SIZE = 4, (1920, 1080)

# Common words, one WordPiece token each for MiniLM, so that 10–20 words make about 17 tokens with [CLS] and [SEP].
DETERMINERS = ["the", "a", "one", "every", "this", "that", "our", "their"]
ADJECTIVES = ["small", "large", "old", "new", "quiet", "busy", "green", "red", "bright", "dark", "long", "short"]
ADJECTIVES += ["warm", "cold", "happy", "young", "local", "final", "early", "late", "simple", "strong"]
NOUNS = ["dog", "cat", "car", "house", "river", "city", "team", "report", "meeting", "garden", "road", "school"]
NOUNS += ["market", "window", "teacher", "student", "office", "bridge", "train", "island", "forest", "book", "music"]
NOUNS += ["company", "doctor", "child", "game", "table", "kitchen", "village", "mountain", "letter", "picture"]
VERBS = ["found", "saw", "built", "opened", "closed", "watched", "moved", "painted", "visited", "wrote", "sold"]
VERBS += ["followed", "cleaned", "carried", "changed", "started", "finished", "called", "helped", "left"]
PREPOSITIONS = ["in", "near", "behind", "after", "before", "across", "under", "over", "with", "from", "by"]
ADVERBS = ["quickly", "slowly", "today", "again", "yesterday", "finally", "often", "never", "always"]


def make_texts(count: int = TEXT_COUNT, seed: int = 0) -> list[str]:
    """`count` English sentence-like texts of 10 to 20 words, the same for the same seed."""
    rng = random.Random(seed)

    def noun_phrase() -> list[str]:
        return [rng.choice(DETERMINERS), rng.choice(ADJECTIVES), rng.choice(NOUNS)]

    texts = []
    for _ in range(count):
        length = rng.randint(10, 17)  # the last phrase may carry a text past its target, never past 20 words
        words = [*noun_phrase(), rng.choice(VERBS), *noun_phrase()]
        while len(words) < length:
            phrases = [[rng.choice(PREPOSITIONS), *noun_phrase()], ["and", *noun_phrase()], [rng.choice(ADVERBS)]]
            # A one-word adverb always fits, so every text ends on a whole phrase within 20 words.
            words += rng.choice([phrase for phrase in phrases if len(words) + len(phrase) <= 20])
        sentence = " ".join(words)
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts


def make_image(seed: int, side: int = IMAGE_SIDE, size: tuple[int, int] | None = None) -> Image.Image:
    """A `side`×`side` (or `size`, width × height) RGB picture: a two-colour gradient, a dozen soft shapes and mild
    sensor-like noise.

    Pure noise would compress badly and decode slower than a photo; this compresses like one.
    """
    width, height = size or (side, side)
    rng = np.random.default_rng(seed)
    start, end = rng.integers(0, 256, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    image = Image.fromarray((start + (end - start) * ramp).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = rng.integers(-width // 4, width), rng.integers(-height // 4, height)
        w, h = rng.integers(width // 10, width // 2), rng.integers(height // 10, height // 2)
        box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            corners = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
            draw.polygon(corners, fill=colour)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    pixels += rng.normal(0, 6, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_screenshot(seed: int, size: tuple[int, int] = SCREENSHOT_SIZE) -> Image.Image:
    """A screenshot-like picture: flat panels, bars and lines of 'text' on a light background, as PNG keeps well."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (245, 245, 245))
    draw = ImageDraw.Draw(image)
    width, height = size
    for _ in range(8):
        colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        draw.rectangle(
            [x0, y0, x0 + int(rng.integers(100, width // 3)), y0 + int(rng.integers(40, height // 3))], fill=colour
        )
    for line in range(0, height, 24):
        x = int(rng.integers(10, 60))
        for _ in range(int(rng.integers(3, 20))):
            word = int(rng.integers(15, 70))
            draw.rectangle([x, line + 6, x + word, line + 16], fill=(40, 40, 40))
            x += word + 8
    return image


def data_url(image: Image.Image, fmt: str = "JPEG", quality: int = JPEG_QUALITY) -> str:
    """The image as a `data:image/...;base64,...` URL."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def jpeg_data_url(image: Image.Image, quality: int = JPEG_QUALITY) -> str:
    """The image as a `data:image/jpeg;base64,...` URL."""
    return data_url(image, "JPEG", quality)


def make_images(count: int = IMAGE_COUNT, seed: int = 0) -> list[str]:
    """`count` distinct JPEG data URLs (512×512, quality 90), the same for the same seed."""
    return [jpeg_data_url(make_image(seed * 1000 + index)) for index in range(count)]


def document_files() -> list[Path]:
    """Real documents on this machine, in a fixed order: the standard library's modules and /usr/share/doc's
    READMEs, NEWS and text files (not the copyright files, most of which are the same licence)."""
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    docs = sorted(
        path
        for pattern in ("*/README*", "*/NEWS*", "*/*.txt", "*/*.md")
        for path in Path("/usr/share/doc").glob(pattern)
        if path.is_file() and path.suffix != ".gz"
    )
    return [*stdlib, *docs]


def make_file_texts(count: int = FILE_TEXT_COUNT) -> list[str]:
    """The beginnings of `count` real documents (FILE_TEXT_CHARS characters each, those of at least 1,000), half
    code and half prose where the machine has enough of both, taken evenly across the sorted list."""
    texts = []
    for path in document_files():
        try:
            text = path.read_text(encoding="utf-8")[:FILE_TEXT_CHARS]
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) >= 1000:
            texts.append(text)
    if not texts:
        raise RuntimeError("no documents to make file texts from (the standard library's sources are missing)")
    step = max(1, len(texts) // count)
    return (texts[::step] * (count // len(texts[::step]) + 1))[:count]


def make_photos(seed: int = 0) -> list[str]:
    """Camera-size JPEGs (PHOTO_SIZES) and PNG screenshots, as data URLs."""
    photos = [data_url(make_image(seed * 1000 + i, size=size)) for i, size in enumerate(PHOTO_SIZES)]
    return photos + [data_url(make_screenshot(seed * 1000 + i), "PNG") for i in range(SCREENSHOT_COUNT)]


def write_data(folder: Path) -> Path:
    """Writes the short workload's texts.json and images.json into `folder` and the file workload's into
    `folder/files` (created if needed); returns it."""
    files = folder / FILES_FOLDER
    files.mkdir(parents=True, exist_ok=True)
    (folder / TEXTS_FILE).write_text(json.dumps(make_texts()))
    (folder / IMAGES_FILE).write_text(json.dumps(make_images()))
    (files / TEXTS_FILE).write_text(json.dumps(make_file_texts()))
    (files / IMAGES_FILE).write_text(json.dumps(make_photos()))
    return folder


def load_data(folder: Path) -> tuple[list[str], list[str]]:
    """The texts and image data URLs that `write_data` wrote into `folder`."""
    return json.loads((folder / TEXTS_FILE).read_text()), json.loads((folder / IMAGES_FILE).read_text())
