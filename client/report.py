"""The duplicates as people decide on them: one self-contained HTML page (`--html`) and a CSV (`--csv`).

Sizes and modification times are read from the files under the embedded folder (`--root`) when the report is made,
not stored at embed time: the page needs the files anyway for its thumbnails and text previews, and what counts when
deleting is the files as they are now. A file gone since it was embedded is shown as missing, frees nothing and is
never the one kept.

In each group the report suggests keeping one file, by the rule the user picks (KEEP_RULES), and deleting the
others, but for a file of a near group under the threshold from the kept one (joined to the group through others),
which it marks for review; the totals count each file once, also when it is in an exact group and in a near group.
Groups come in this order: exact groups first, then near ones, each by the space they would free, largest first. The
page shows at most `max_groups` of them (a page of a hundred thousand thumbnails would not open); the CSV lists them
all.
"""

from __future__ import annotations

import base64
import csv
import datetime
import html
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from client.duplicates import Group
from client.store import Modality

THUMBNAIL_SIDE = 200
THUMBNAIL_QUALITY = 80
PREVIEW_LINES = 8
PREVIEW_BYTES = 2000
DEFAULT_MAX_GROUPS = 500


@dataclass(frozen=True)
class File:
    path: str
    size: int | None
    """None when the file is missing."""
    modified: float | None
    """Seconds since the epoch."""
    dimensions: tuple[int, int] | None = None
    """An image's width and height in pixels, when it can be read."""

    @property
    def pixels(self) -> int:
        return self.dimensions[0] * self.dimensions[1] if self.dimensions else 0


KEEP_RULES: dict[str, Callable[[File], tuple]] = {
    # The sort key that puts the file to keep first; ties go to the shorter path (a copy's name is often the
    # original's with something added), then the path's order. Of images, the largest has the most pixels: a
    # smaller copy can take more bytes (a JPEG of a PNG drawing, say).
    "largest": lambda file: (-file.pixels, -file.size, len(file.path), file.path),
    "newest": lambda file: (-file.modified, len(file.path), file.path),
    "shortest-path": lambda file: (len(file.path), file.path),
}


@dataclass(frozen=True)
class ReportGroup:
    number: int
    """The group's place in the report, from 1."""
    group: Group
    files: list[File]
    """The group's files, the one to keep first; missing files last."""
    similarities: list[float]
    """Each file's cosine similarity with the kept one."""
    suggestions: list[str]
    """Each file's: keep, delete, review (in a near group, under the threshold from the kept file: joined through
    others, so not a duplicate of it), or missing."""
    frees: int
    """Bytes that deleting the files suggested for deletion frees."""


@dataclass(frozen=True)
class Totals:
    groups: int
    exact: int
    near: int
    files: int
    """Files in at least one group."""
    deletable: int
    """Files that some group suggests deleting."""
    freed: int
    """Their bytes."""
    missing: int


def plan(
    groups: list[Group], modalities: dict[str, Modality], root: Path, keep: str, threshold: float
) -> list[ReportGroup]:
    """Each group with its files' sizes and times, the file to keep, the others' similarity with it and what to do
    with each, numbered in the report's order."""
    wanted = {(group.modality, path) for group in groups for path in group.paths}
    rows = {
        kind: {path: row for row, path in enumerate(modality.paths) if (kind, path) in wanted}
        for kind, modality in modalities.items()
    }
    key = KEEP_RULES[keep]
    planned = []
    for group in groups:
        files = sorted(
            (stat(root, path, group.modality) for path in group.paths),
            key=lambda file: (True,) if file.size is None else (False, *key(file)),
        )
        if group.kind == "exact" or files[0].size is None:
            similarities = [1.0] * len(files)
        else:
            chosen = modalities[group.modality].vectors[[rows[group.modality][file.path] for file in files]]
            similarities = [round(float(value), 4) for value in chosen @ chosen[0]]
        suggestions = [suggestion(files, place, similarities[place], threshold) for place in range(len(files))]
        frees = sum(file.size for file, what in zip(files, suggestions, strict=True) if what == "delete")
        planned.append((group, files, similarities, suggestions, frees))
    planned.sort(key=lambda item: (item[0].kind != "exact", -item[4], item[0].modality, item[0].paths))
    return [ReportGroup(number, *item) for number, item in enumerate(planned, 1)]


def stat(root: Path, path: str, modality: str) -> File:
    try:
        info = (root / path).stat()
    except OSError:
        return File(path, None, None)
    dimensions = None
    if modality == "image":
        try:
            with Image.open(root / path) as image:  # reads the header only
                dimensions = image.size
        except Exception:  # best effort: Pillow's plugins raise many kinds of error on a broken file
            pass
    return File(path, info.st_size, info.st_mtime, dimensions)


def totals(planned: list[ReportGroup]) -> Totals:
    files: dict[str, File] = {}
    deletable: set[str] = set()
    for item in planned:
        files.update((file.path, file) for file in item.files)
        deletable.update(file.path for file, what in zip(item.files, item.suggestions, strict=True) if what == "delete")
    exact = sum(item.group.kind == "exact" for item in planned)
    return Totals(
        groups=len(planned),
        exact=exact,
        near=len(planned) - exact,
        files=len(files),
        deletable=len(deletable),
        freed=sum(files[path].size for path in deletable),
        missing=sum(file.size is None for file in files.values()),
    )


def suggestion(files: list[File], place: int, similarity: float, threshold: float) -> str:
    """What to do with `files[place]`, `files[0]` being the one to keep."""
    if files[place].size is None:
        return "missing"
    if place == 0:
        return "keep"
    return "delete" if files[0].size is not None and similarity >= threshold else "review"


# --- CSV --------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ["group", "kind", "type", "group_similarity", "path", "size", "modified", "pixels"]
CSV_COLUMNS += ["similarity", "suggestion"]


def write_csv(out: Path, planned: list[ReportGroup]) -> None:
    """One row per file of each group: the group's number, exact or near, text or image, its lowest similarity; the
    file's path, size in bytes, modification time (ISO 8601, UTC), an image's width×height, similarity with the kept
    file, and keep, delete or missing."""
    with out.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for item in planned:
            for place, (member, similarity) in enumerate(zip(item.files, item.similarities, strict=True)):
                size = "" if member.size is None else member.size
                modified = "" if member.modified is None else iso_time(member.modified)
                pixels = "{}x{}".format(*member.dimensions) if member.dimensions else ""
                writer.writerow(
                    [item.number, item.group.kind, item.group.modality, item.group.similarity, member.path, size]
                    + [modified, pixels, similarity, item.suggestions[place]]
                )


def iso_time(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


# --- HTML -------------------------------------------------------------------------------------------------------


def write_html(
    out: Path,
    planned: list[ReportGroup],
    root: Path,
    *,
    source: str,
    threshold: float,
    keep: str,
    max_groups: int = DEFAULT_MAX_GROUPS,
) -> int:
    """The page, everything inline (styles, thumbnails as data: URLs): it opens from disk, with no server and no
    network. Returns how many groups it shows."""
    shown = planned[:max_groups]
    previews = make_previews(shown, root)
    total = totals(planned)
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    missing = f" ({total.missing:,} missing)" if total.missing else ""
    note = (
        f"<p class='note'>The {len(shown):,} groups that free most are shown, of {total.groups:,}; the CSV "
        f"(<code>--csv</code>) lists them all.</p>"
        if len(shown) < total.groups
        else ""
    )
    header = f"""<header>
<h1>Duplicates in {escape(source)}</h1>
<p class="meta">Threshold {threshold} · keeping the {keep.replace("-", " ")} file of each group · files under
<code>{escape(str(root))}</code> · made {made}</p>
<dl class="totals">
<div><dt>groups</dt><dd id="groups">{total.groups:,}</dd></div>
<div><dt>exact</dt><dd id="exact-groups">{total.exact:,}</dd></div>
<div><dt>near</dt><dd id="near-groups">{total.near:,}</dd></div>
<div><dt>files in groups</dt><dd id="files">{total.files:,}{missing}</dd></div>
<div><dt>files to delete</dt><dd id="deletable">{total.deletable:,}</dd></div>
<div><dt>space freed</dt><dd id="freed" data-bytes="{total.freed}">{human_size(total.freed)}</dd></div>
</dl>
{note}
</header>"""
    sections = "\n".join(group_html(item, previews) for item in shown)
    title = f"Duplicates: {total.groups:,} groups, {human_size(total.freed)} to free"
    out.write_text(PAGE.format(title=escape(title), style=STYLE, body=f"{header}\n<main>\n{sections}\n</main>"))
    return len(shown)


def group_html(item: ReportGroup, previews: dict[str, str]) -> str:
    group = item.group
    if group.kind == "exact":
        title = f"Exact copies · {group.modality} · {len(item.files)} files"
    else:
        title = (
            f"Near duplicates · {group.modality} · {len(item.files)} files · lowest similarity {group.similarity:.4f}"
        )
    cards = []
    for place, (file, similarity) in enumerate(zip(item.files, item.similarities, strict=True)):
        verdict = item.suggestions[place]
        badge = {
            "keep": "keep",
            "delete": f"delete · frees {human_size(file.size or 0)}",
            "review": "review: under the threshold from the kept file",
            "missing": "missing",
        }
        if file.size is None:
            details = "not found under the folder"
        else:
            details = f"{human_size(file.size)} · {datetime.datetime.fromtimestamp(file.modified):%Y-%m-%d %H:%M}"
            if file.dimensions:
                details = "{} × {} pixels · ".format(*file.dimensions) + details
        cards.append(
            f"""<figure class="card {verdict}">{previews.get(file.path) or "<div class='none'>no preview</div>"}
<figcaption><span class="badge">{badge[verdict]}</span>
<code class="path">{escape(file.path)}</code>
<span class="details">{details}</span>
<span class="similarity">similarity {similarity:.4f}</span></figcaption></figure>"""
        )
    return f"""<section class="group {group.kind}" id="group-{item.number}" data-kind="{group.kind}" \
data-frees="{item.frees}">
<h2><span class="number">{item.number}</span> {escape(title)} · frees {human_size(item.frees)}</h2>
<div class="cards">
{"".join(cards)}
</div>
</section>"""


def make_previews(shown: list[ReportGroup], root: Path) -> dict[str, str]:
    """Each present file's preview as HTML: an image's thumbnail, a text's first lines; made on all cores."""
    files = {(file.path, item.group.modality) for item in shown for file in item.files if file.size is not None}
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:  # Pillow decodes without the GIL
        made = pool.map(lambda entry: (entry[0], preview(root / entry[0], entry[1])), sorted(files))
        return {path: html_preview for path, html_preview in made if html_preview}


def preview(path: Path, modality: str) -> str | None:
    try:
        if modality == "image":
            return f'<img src="{thumbnail(path)}" alt="">'
        with path.open("rb") as file:
            text = file.read(PREVIEW_BYTES).decode("utf-8", errors="replace")
    except Exception:  # best effort: Pillow's plugins raise many kinds of error on a broken file
        return None
    lines = text.splitlines()[:PREVIEW_LINES]
    return f"<pre>{escape(chr(10).join(lines))}</pre>"


def thumbnail(path: Path) -> str:
    """A JPEG data: URL of the image at most THUMBNAIL_SIDE on a side, upright as its EXIF orientation says."""
    with Image.open(path) as image:
        # A JPEG decodes at 1/2, 1/4 or 1/8 scale when the result is still at least this large: several times faster.
        image.draft("RGB", (THUMBNAIL_SIDE * 2, THUMBNAIL_SIDE * 2))
        image = ImageOps.exif_transpose(image)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        if image.mode != "RGB":
            image = flattened(image)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def flattened(image: Image.Image) -> Image.Image:
    """RGB, transparent parts on white (a PNG's transparency would turn black)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def human_size(size: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def escape(text: str) -> str:
    return html.escape(text, quote=True)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f2; color: #222; }
header { padding: 16px 24px; background: #fff; border-bottom: 1px solid #ddd; }
h1 { font-size: 20px; margin: 0 0 4px; }
.meta, .note { color: #666; margin: 4px 0; }
.totals { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 0; }
.totals div { background: #f4f4f2; border-radius: 6px; padding: 6px 12px; }
.totals dt { color: #666; font-size: 12px; }
.totals dd { margin: 0; font-size: 18px; font-weight: 600; }
main { padding: 8px 24px 24px; }
.group { margin: 16px 0; }
.group h2 { font-size: 15px; font-weight: 600; margin: 0 0 8px; }
.group.exact h2 .number { background: #2d6cdf; }
.number { display: inline-block; min-width: 20px; padding: 0 6px; border-radius: 10px; background: #888;
  color: #fff; text-align: center; }
.cards { display: flex; gap: 12px; overflow-x: auto; padding-bottom: 4px; }
.card { flex: 0 0 220px; margin: 0; background: #fff; border: 2px solid #ddd; border-radius: 8px; padding: 8px;
  display: flex; flex-direction: column; gap: 6px; }
.card.keep { border-color: #2e9d4f; }
.card.delete { border-color: #e0a0a0; }
.card.review { border-color: #e0c060; }
.card.missing { opacity: 0.5; }
.card img { display: block; max-width: 200px; max-height: 200px; margin: 0 auto; }
.card pre { margin: 0; height: 140px; overflow: hidden; white-space: pre-wrap; word-break: break-word;
  font-size: 11px; background: #fafafa; border: 1px solid #eee; padding: 4px; }
.none { height: 100px; display: flex; align-items: center; justify-content: center; color: #999; }
figcaption { display: flex; flex-direction: column; gap: 2px; font-size: 12px; }
.badge { align-self: flex-start; border-radius: 4px; padding: 0 6px; font-weight: 600; background: #eee; }
.keep .badge { background: #2e9d4f; color: #fff; }
.delete .badge { background: #f6dada; color: #8a1f1f; }
.path { word-break: break-all; }
.details, .similarity { color: #555; }
"""
