"""Deterministic benchmark inputs: sentence-like texts and natural-looking 512×512 JPEG photos as data URLs.

The same files feed the raw measurement (`bench.raw`) and the load generator (`bench.load`), so that both
measure the same work.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TEXTS_FILE = "texts.json"
IMAGES_FILE = "images.json"
TEXT_COUNT = 512
IMAGE_COUNT = 16
IMAGE_SIDE = 512
JPEG_QUALITY = 90

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


def make_image(seed: int, side: int = IMAGE_SIDE) -> Image.Image:
    """A `side`×`side` RGB picture: a two-colour gradient, a dozen soft shapes and mild sensor-like noise.

    Pure noise would compress badly and decode slower than a photo; this compresses like one.
    """
    rng = np.random.default_rng(seed)
    start, end = rng.integers(0, 256, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:side, 0:side] / side
    ramp = (np.cos(angle) * x + np.sin(angle) * y)[..., None]
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    image = Image.fromarray((start + (end - start) * ramp).astype(np.uint8))

    draw = ImageDraw.Draw(image)
    for _ in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x0, y0 = rng.integers(-side // 4, side, size=2)
        width, height = rng.integers(side // 10, side // 2, size=2)
        box = [int(x0), int(y0), int(x0 + width), int(y0 + height)]
        shape = rng.integers(3)
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([tuple(int(v) for v in rng.integers(0, side, size=2)) for _ in range(3)], fill=colour)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jpeg_data_url(image: Image.Image, quality: int = JPEG_QUALITY) -> str:
    """The image as a `data:image/jpeg;base64,...` URL."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def make_images(count: int = IMAGE_COUNT, seed: int = 0) -> list[str]:
    """`count` distinct JPEG data URLs (512×512, quality 90), the same for the same seed."""
    return [jpeg_data_url(make_image(seed * 1000 + index)) for index in range(count)]


def write_data(folder: Path) -> Path:
    """Writes texts.json and images.json (JSON lists of strings) into `folder`, created if needed; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TEXTS_FILE).write_text(json.dumps(make_texts()))
    (folder / IMAGES_FILE).write_text(json.dumps(make_images()))
    return folder


def load_data(folder: Path) -> tuple[list[str], list[str]]:
    """The texts and image data URLs that `write_data` wrote into `folder`."""
    return json.loads((folder / TEXTS_FILE).read_text()), json.loads((folder / IMAGES_FILE).read_text())
