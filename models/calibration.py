"""Real inputs for the int8 exports (models/quantize.py): a calibration set that their plan is chosen on, and a held-out
set that the quality gate is measured on.

Texts come from the Python standard library's sources, which every machine that runs the import has: the beginnings
of modules (nearly all past the text model's 256 tokens, as the application's files are), paragraphs, and the first
sentences of docstrings. Photos are the eight small real photos in models/calibration/ (their sources and licences
in its README), each in eight views, split by photo.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

from PIL import Image, ImageOps

CALIBRATION_TEXTS = 64
HELD_OUT_TEXTS = 600
"""Of each kind of text: file beginnings, paragraphs, sentences. The held-out set is large because the gate's pair
agreement is counted on the pairs near its threshold: 480 texts held 81 similar pairs (one miss: -1.2 %), 1,786 hold
some 1,900."""
FILE_CHARS = 4000
PHOTOS = Path(__file__).parent / "calibration"
CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket", "camera")
HELD_OUT_PHOTOS = ("chelsea", "hubble-deep-field", "retina", "grace-hopper")


def texts() -> tuple[list[str], list[str]]:
    """Calibration texts and held-out texts, disjoint, the same on every run with the same Python."""
    calibration, held_out = [], []
    for kind in stdlib_texts():
        calibration += kind[:CALIBRATION_TEXTS]
        held_out += kind[CALIBRATION_TEXTS : CALIBRATION_TEXTS + HELD_OUT_TEXTS]
    return calibration, held_out


def stdlib_texts() -> list[list[str]]:
    """File beginnings, paragraphs and docstring sentences from the standard library's modules (not its tests), each
    kind without repeats and shuffled with a fixed seed."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files, paragraphs, sentences = set(), set(), set()
    for path in sorted(stdlib.rglob("*.py")):
        if {"site-packages", "test", "tests", "idle_test"} & set(path.relative_to(stdlib).parts):
            continue
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue
        if len(source) >= 1000:
            files.add(source[:FILE_CHARS])
        paragraphs.update(p.strip() for p in re.split(r"\n\s*\n", source) if 200 <= len(p.strip()) <= 2000)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and ast.get_docstring(node):
                first = re.split(r"(?<=[.!?])\s", ast.get_docstring(node).split("\n\n")[0].replace("\n", " "))[0]
                if 20 <= len(first) <= 200:
                    sentences.add(first)
    kinds = [sorted(files), sorted(paragraphs), sorted(sentences)]
    for kind in kinds:
        random.Random(0).shuffle(kind)
    return kinds


def photos() -> tuple[list[Image.Image], list[Image.Image]]:
    """Calibration photos and held-out photos, in eight views each."""
    return [view for name in CALIBRATION_PHOTOS for view in views(name)], [
        view for name in HELD_OUT_PHOTOS for view in views(name)
    ]


def views(name: str) -> list[Image.Image]:
    """The photo, mirrored, its four corners and its centre, and turned: different crops once CLIP's pre-processing
    has cut the centre square."""
    with Image.open(PHOTOS / f"{name}.jpg") as opened:
        photo = opened.convert("RGB")
    width, height = photo.size
    corner_width, corner_height = width * 3 // 5, height * 3 // 5
    corners = [
        photo.crop((x, y, x + corner_width, y + corner_height))
        for x in (0, width - corner_width)
        for y in (0, height - corner_height)
    ]
    centre = photo.crop((width // 4, height // 4, width * 3 // 4, height * 3 // 4))
    return [photo, ImageOps.mirror(photo), *corners, centre, photo.rotate(90, expand=True)]
