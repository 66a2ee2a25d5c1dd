"""client/report.py without a server: the file each rule keeps, the totals that count a file once, missing files,
the CSV and the page's thumbnails. tests/test_client.py opens the page of a real run in Chromium."""

from __future__ import annotations

import base64
import csv
import io
import os

import numpy as np
from PIL import Image

from client.duplicates import Group
from client.report import plan, thumbnail, totals, write_csv, write_html
from client.store import Modality

THRESHOLD = 0.95


def write(path, data: bytes, modified: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (modified, modified))


def png(size: tuple[int, int], color=(200, 30, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def folder_and_groups(root):
    """Three images (a big old PNG, a small new JPEG-sized one, a copy with a long name) and two texts, one missing."""
    write(root / "big.png", png((400, 300)), 1_000_000)
    write(root / "sub" / "small-but-heavier.png", png((40, 30)) + b"\0" * 5000, 2_000_000)
    write(root / "copies" / "big (copy).png", png((400, 300)), 3_000_000)
    write(root / "note.txt", b"first line\nsecond line\n" + b"more\n" * 50, 1_500_000)
    image_paths = ["big.png", "copies/big (copy).png", "sub/small-but-heavier.png"]
    images = Modality(image_paths, ["a", "a", "b"], np.array([[1, 0], [1, 0], [0.96, 0.28]], dtype=np.float32))
    texts = Modality(["gone.txt", "note.txt"], ["c", "d"], np.array([[1, 0, 0], [0.99, 0.141, 0]], dtype=np.float32))
    groups = [
        Group("exact", "image", 1.0, ["big.png", "copies/big (copy).png"]),
        Group("near", "image", 0.96, image_paths),
        Group("near", "text", 0.99, ["gone.txt", "note.txt"]),
    ]
    return {"image": images, "text": texts}, groups


def kept(planned) -> list[str]:
    return [item.files[0].path for item in planned]


def test_each_rule_keeps_its_file_and_the_totals_count_a_file_once(tmp_path):
    modalities, groups = folder_and_groups(tmp_path)
    largest = plan(groups, modalities, tmp_path, "largest", THRESHOLD)
    # Exact groups first; then near ones by the bytes they free. Of images the largest has the most pixels.
    assert [item.group.kind for item in largest] == ["exact", "near", "near"]
    assert kept(largest) == ["big.png", "big.png", "note.txt"]
    assert kept(plan(groups, modalities, tmp_path, "newest", THRESHOLD))[:2] == ["copies/big (copy).png"] * 2
    assert kept(plan(groups, modalities, tmp_path, "shortest-path", THRESHOLD))[:2] == ["big.png", "big.png"]

    near_images = largest[1]
    assert near_images.similarities == [1.0, 1.0, 0.96]
    copy, small = (tmp_path / "copies" / "big (copy).png").stat().st_size, (tmp_path / "sub" / "small-but-heavier.png")
    assert near_images.frees == copy + small.stat().st_size
    # The missing text is listed last, frees nothing and is never kept.
    note = largest[2]
    assert [file.path for file in note.files] == ["note.txt", "gone.txt"] and note.files[1].size is None
    assert note.frees == 0
    total = totals(largest)
    assert (total.groups, total.exact, total.near, total.files, total.missing) == (3, 1, 2, 5, 1)
    # The copy is to delete in two groups: counted once.
    assert total.deletable == 2 and total.freed == near_images.frees


def test_a_file_joined_through_others_but_under_the_threshold_from_the_kept_one_is_to_review(tmp_path):
    angles = {"a.png": 0, "b.png": 20, "c.png": 40}  # a~b and b~c at cos 20° = 0.94; a and c at cos 40° = 0.77
    for side, path in zip((300, 200, 100), angles, strict=True):
        write(tmp_path / path, png((side, side)), 1_000_000)
    vectors = np.array([[np.cos(np.radians(a)), np.sin(np.radians(a))] for a in angles.values()], dtype=np.float32)
    modalities = {"image": Modality(list(angles), ["a", "b", "c"], vectors)}
    [chain] = plan([Group("near", "image", 0.94, list(angles))], modalities, tmp_path, "largest", 0.9)

    assert chain.suggestions == ["keep", "delete", "review"]
    assert chain.frees == (tmp_path / "b.png").stat().st_size
    assert totals([chain]).deletable == 1


def test_csv_lists_every_file_of_every_group(tmp_path):
    modalities, groups = folder_and_groups(tmp_path)
    planned = plan(groups, modalities, tmp_path, "largest", THRESHOLD)
    write_csv(tmp_path / "report.csv", planned)
    rows = list(csv.DictReader((tmp_path / "report.csv").open(encoding="utf-8")))
    assert [(row["group"], row["path"], row["suggestion"]) for row in rows] == [
        ("1", "big.png", "keep"),
        ("1", "copies/big (copy).png", "delete"),
        ("2", "big.png", "keep"),
        ("2", "copies/big (copy).png", "delete"),
        ("2", "sub/small-but-heavier.png", "delete"),
        ("3", "note.txt", "keep"),
        ("3", "gone.txt", "missing"),
    ]
    assert rows[0]["pixels"] == "400x300" and rows[0]["modified"] == "1970-01-12T13:46:40+00:00"
    assert rows[6]["size"] == rows[6]["modified"] == "" and rows[5]["pixels"] == ""


def test_the_page_stands_alone_and_shows_the_groups_that_free_most(tmp_path):
    modalities, groups = folder_and_groups(tmp_path)
    planned = plan(groups, modalities, tmp_path, "largest", THRESHOLD)
    page = tmp_path / "report.html"
    shown = write_html(page, planned, tmp_path, source="v.parquet", threshold=0.95, keep="largest", max_groups=2)
    text = page.read_text()
    assert shown == 2 and text.count("<section ") == 2 and "The 2 groups that free most are shown, of 3" in text
    assert text.count('<img src="data:image/jpeg;base64,') == 5 and "<pre>" not in text  # the text group is cut
    assert "<link" not in text and "<script" not in text and "http" not in text.replace("http-equiv", "")
    assert '<dd id="groups">3</dd>' in text and "400 × 300 pixels" in text
    assert "copies/big (copy).png" in text and "&lt;" not in text
    write_html(page, planned, tmp_path, source="<v>.parquet", threshold=0.95, keep="largest")
    text = page.read_text()
    assert "Duplicates in &lt;v&gt;.parquet" in text and "<pre>first line\nsecond line\nmore\n" in text


def test_thumbnails_are_small_upright_and_flatten_transparency_on_white(tmp_path):
    write(tmp_path / "clear.png", png((800, 400), (0, 0, 0, 0), "RGBA"), 0)
    image = Image.new("RGB", (300, 100), (10, 200, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° to show
    image.save(tmp_path / "turned.jpg", exif=exif)
    for name, size, color in (("clear.png", (200, 100), (255, 255, 255)), ("turned.jpg", (67, 200), (10, 200, 10))):
        data_url = thumbnail(tmp_path / name)
        assert data_url.startswith("data:image/jpeg;base64,")
        with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as made:
            assert made.size == size
            assert max(abs(a - b) for a, b in zip(made.getpixel((20, 20)), color, strict=True)) <= 8
