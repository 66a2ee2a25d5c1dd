"""Which files of a folder are embedded, and as what: the walk, the classification and the reading.

A text is a file with a text extension (TEXT_EXTENSIONS) of at most `max_text_bytes` bytes that is UTF-8; an image is
a file with an image extension, or a file of any other extension whose first bytes are an image format's signature.
Everything else is unsupported. Hidden files and folders (a name starting with ".") are not visited, nor are
symlinks to folders (a link to an outer folder would be walked twice, or forever); symlinks to files are read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Kind(str, Enum):
    TEXT = "text"
    IMAGE = "image"


# The formats the server decodes (embedding_server/images.py).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".dib", ".tif", ".tiff"})
TEXT_EXTENSIONS = frozenset(
    {
        # prose and markup
        ".txt", ".text", ".md", ".markdown", ".rst", ".adoc", ".org", ".tex", ".html", ".htm", ".xml", ".srt", ".vtt",
        # data and configuration
        ".csv", ".tsv", ".json", ".jsonl", ".ndjson", ".yaml", ".yml", ".toml", ".ini", ".cfg", ".conf", ".log",
        # source code
        ".py", ".ipynb", ".js", ".mjs", ".ts", ".tsx", ".jsx", ".java", ".kt", ".scala", ".go", ".rs", ".c", ".h",
        ".cc", ".cpp", ".hpp", ".cs", ".rb", ".php", ".swift", ".r", ".jl", ".lua", ".pl", ".sh", ".bash", ".zsh",
        ".sql", ".css", ".scss", ".vue", ".svelte",
    }
)  # fmt: skip
SNIFF_BYTES = 12
# The server's default MAX_TEXT_CHARS is 100000 characters: a file of at most as many bytes is never over it. The text
# model reads only its first 256 tokens anyway.
DEFAULT_MAX_TEXT_BYTES = 100_000


def image_signature(head: bytes) -> bool:
    """Whether `head`, a file's first SNIFF_BYTES bytes, starts like a PNG, JPEG, GIF, BMP, TIFF or WebP file."""
    return head.startswith(
        (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
    ) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


@dataclass(frozen=True)
class Candidate:
    """A file to embed."""

    path: Path
    relative: str
    """The path relative to the walked folder, with / separators: the file's key in the output."""
    kind: Kind


@dataclass(frozen=True)
class Problem:
    """A file (or folder) that was not embedded, and why."""

    relative: str
    reason: str


@dataclass
class Walk:
    candidates: list[Candidate] = field(default_factory=list)
    unsupported: list[Problem] = field(default_factory=list)
    unreadable: list[Problem] = field(default_factory=list)
    """Files and folders whose listing or metadata could not be read."""


class Unsupported(Exception):
    """A candidate whose content turned out not to be embeddable (a text file that is not UTF-8, or has grown past
    the limit since the walk)."""


def walk(root: Path, max_text_bytes: int) -> Walk:
    """Every file under `root`, recursively and sorted by path, sorted into candidates, unsupported and unreadable."""
    found = Walk()

    def listing_failed(error: OSError) -> None:
        found.unreadable.append(Problem(shown(relative_to(root, Path(error.filename))) + "/", unreadable_reason(error)))

    for folder, subfolders, names in os.walk(root, onerror=listing_failed):
        # os.walk lists symlinks to folders among the folders and does not descend into them (followlinks=False);
        # hidden folders are pruned here.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder, name)
            relative = relative_to(root, path)
            if not is_utf8(relative):
                found.unsupported.append(Problem(shown(relative), "the path is not UTF-8, so it cannot be stored"))
                continue
            try:
                outcome = classify(path, max_text_bytes)
            except OSError as error:
                found.unreadable.append(Problem(relative, unreadable_reason(error)))
                continue
            if isinstance(outcome, Kind):
                found.candidates.append(Candidate(path, relative, outcome))
            else:
                found.unsupported.append(Problem(relative, outcome))
    # os.walk gives a folder's files before its subfolders' files; sorted, a file's place does not depend on that.
    found.candidates.sort(key=lambda candidate: candidate.relative)
    return found


def classify(path: Path, max_text_bytes: int) -> Kind | str:
    """The file's kind, or why it is not embedded; raises OSError when it cannot be read."""
    info = path.stat()  # follows a symlink, so that a link to a file is that file
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"  # a FIFO or a device would block or never end
    extension = path.suffix.lower()
    if extension in IMAGE_EXTENSIONS:
        return Kind.IMAGE
    if extension in TEXT_EXTENSIONS:
        if info.st_size > max_text_bytes:
            return text_too_large(info.st_size, max_text_bytes)
        return Kind.TEXT
    with path.open("rb") as file:
        if image_signature(file.read(SNIFF_BYTES)):
            return Kind.IMAGE
    return "not a text or image file"


def read(candidate: Candidate, max_text_bytes: int) -> bytes:
    """The candidate's bytes; raises Unsupported for a text file that is not UTF-8 or too large, OSError when it
    cannot be read (permission denied, vanished since the walk)."""
    data = candidate.path.read_bytes()
    if candidate.kind is Kind.TEXT:
        if len(data) > max_text_bytes:
            raise Unsupported(text_too_large(len(data), max_text_bytes))
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Unsupported(f"text file is not UTF-8 (byte {error.start})") from None
    return data


def text_too_large(size: int, limit: int) -> str:
    return f"text file of {size} bytes, over the limit of {limit} (--max-text-bytes)"


def unreadable_reason(error: OSError) -> str:
    return f"unreadable: {error.strerror or error}"


def relative_to(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def is_utf8(name: str) -> bool:
    """False for a name with bytes that are not UTF-8, which Python keeps as surrogates and Parquet cannot store."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str) -> str:
    """The name as it can be printed: bytes that are not UTF-8 as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
