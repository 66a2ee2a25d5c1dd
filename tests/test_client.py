"""The bulk folder client (client/): the walk, the retry policy, the store and the grouping on their own, then the
`python -m client` commands on a folder of copies, resized copies, near-identical and unrelated files against the
real server."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import requests
from conftest import ROOT, data_url
from PIL import Image, ImageDraw

from client.embed import EmbedOptions, embed_folder
from client.files import Kind, walk
from client.store import Row, Store, read_modalities
from client.upload import BatchClient, RequestFailed, RetryPolicy, parse_retry_after, send_with_retries

MINUTES = (
    "The committee met on Tuesday to review the budget for the new library. After a long discussion, the members "
    "agreed to fund the children's reading room and to postpone the renovation of the roof until next spring, when "
    "prices for materials are expected to fall."
)
TEXTS = {
    "notes.txt": "Remember to water the plants on Friday and to call the plumber about the kitchen sink.",
    "texts/minutes.md": MINUTES,
    "texts/minutes-copy.md": MINUTES,
    "texts/minutes-edited.txt": MINUTES.replace("Tuesday", "Wednesday"),
    "texts/minutes-extended.txt": MINUTES + " The minutes will be published on the town website.",
    "texts/summary.txt": "The town council discussed library funding and decided to delay fixing the roof.",
    "texts/recipe.txt": "Preheat the oven to 200 degrees. Mix flour, butter and sugar until crumbly, then bake.",
    "texts/football.txt": "The goalkeeper saved a penalty in the final minute and the home team won the title.",
    "code/fib.py": (
        "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
    ),
}
# Measured on this folder: MiniLM gives the one-word edit 0.9955 and the added sentence 0.954 with the original, the
# paraphrase 0.55 and the unrelated texts below 0.16. The tests' CLIP is tiny and random and sees 30×30 pixels: it gives
# the 0.8× JPEG copy 0.999998 but unrelated images up to 0.943 too, so images are grouped only at the higher threshold.
HIGH, LOW = 0.99, 0.9


# --- the folder -------------------------------------------------------------------------------------------------


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def gradient(width: int = 160, height: int = 120) -> Image.Image:
    x, y = np.linspace(0, 1, width)[None, :, None], np.linspace(0, 1, height)[:, None, None]
    pixels = np.array([255, 0, 0]) * (1 - x) * (1 - y) + np.array([0, 0, 255]) * x * y + 60 * np.sin(10 * x + 5 * y)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def shapes(seed: int, width: int = 160, height: int = 120) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(10, 60)), int(rng.integers(10, 60))
        draw.ellipse([x, y, x + w, y + h], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image


def noise(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (120, 160, 3), dtype=np.uint8))


def resized_jpeg(image: Image.Image, factor: float = 0.8) -> bytes:
    buffer = io.BytesIO()
    image.resize((int(image.width * factor), int(image.height * factor)), Image.BICUBIC).save(buffer, "JPEG")
    return buffer.getvalue()


def build_folder(root: Path) -> dict[str, bytes]:
    """The test folder; returns the bytes of each file that should be embedded, by relative path."""
    embeddable = {path: text.encode() for path, text in TEXTS.items()}
    embeddable |= {
        "images/gradient.png": png(gradient()),
        "images/shapes.png": png(shapes(1)),
        "images/shapes-copy.png": png(shapes(1)),
        "images/shapes-small.jpg": resized_jpeg(shapes(1)),
        "images/noise.png": png(noise(3)),
        "images/circles": png(shapes(2)),  # no extension: an image by its signature
    }
    others = {
        "images/broken.png": b"\x89PNG\r\n\x1a\n but nothing after the signature",
        "texts/latin1.txt": "Caf\xe9 cr\xe8me, d\xe9j\xe0 vu".encode("latin-1"),
        "data.bin": bytes(range(256)) * 4,
        "logs/big.log": b"a line of the log\n" * 200,  # 3600 bytes, over --max-text-bytes below
        os.fsdecode(b"caf\xe9.txt"): b"a name that is not UTF-8",
        ".hidden.txt": b"not visited",
        ".git/config": b"[core]\n",
    }
    for relative, data in (embeddable | others).items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    (root / "link-to-texts").symlink_to(root / "texts", target_is_directory=True)
    (root / "dangling.txt").symlink_to(root / "nowhere.txt")
    return embeddable


MAX_TEXT_BYTES = 2000
UNSUPPORTED = {"caf\\xe9.txt", "data.bin", "logs/big.log", "texts/latin1.txt"}
FAILED = {"images/broken.png", "dangling.txt"}


def run_client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def embed(folder: Path, server_url: str, out: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    limit = str(MAX_TEXT_BYTES)
    return run_client(
        "embed", str(folder), "--server", server_url, "--out", str(out), "--max-text-bytes", limit, *args, **kwargs
    )


def server_vectors(server, route: str, field: str, inputs: list[str]) -> tuple[np.ndarray, int]:
    """The server's vectors for `inputs` on a JSON route, 8 (the test server's limit) a request, and their dimension."""
    answers = [server.post(route, json={field: inputs[i : i + 8]}).json() for i in range(0, len(inputs), 8)]
    return np.concatenate([answer["embeddings"] for answer in answers]), answers[0]["metadata"]["dimension"]


def read_rows(out: Path) -> dict[str, dict]:
    return {row["path"]: row for row in pq.read_table(out).to_pylist()}


# --- units: no server -------------------------------------------------------------------------------------------


def test_walk_sorts_and_classifies(tmp_path):
    build_folder(tmp_path)
    found = walk(tmp_path, MAX_TEXT_BYTES)
    relatives = [candidate.relative for candidate in found.candidates]
    assert relatives == sorted(relatives) and "link-to-texts/minutes.md" not in relatives
    assert not any(part.startswith(".") for relative in relatives for part in relative.split("/"))
    kinds = {candidate.relative: candidate.kind for candidate in found.candidates}
    assert kinds["images/circles"] is Kind.IMAGE and kinds["images/broken.png"] is Kind.IMAGE
    assert kinds["code/fib.py"] is Kind.TEXT and kinds["texts/latin1.txt"] is Kind.TEXT  # not UTF-8: found on reading
    assert {problem.relative: problem.reason for problem in found.unsupported} == {
        "caf\\xe9.txt": "the path is not UTF-8, so it cannot be stored",
        "data.bin": "not a text or image file",
        "logs/big.log": "text file of 3600 bytes, over the limit of 2000 (--max-text-bytes)",
    }
    assert [problem.relative for problem in found.unreadable] == ["dangling.txt"]


def test_retries_honour_retry_after_and_back_off():
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {"code": "model_unavailable"}}),
            httpx.ConnectError("refused"),
            httpx.Response(429),
            httpx.Response(200, json={"ok": True}),
        ]
    )
    slept: list[float] = []

    async def send() -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    response = asyncio.run(send_with_retries(send, RetryPolicy(retries=5, base_delay=1.0), sleep=sleep))
    assert response.status_code == 200
    # Retry-After as sent, then backoff with jitter: retry n waits between 2ⁿ/2 and 2ⁿ seconds.
    assert slept[0] == 2 and 1 <= slept[1] <= 2 and 2 <= slept[2] <= 4


def test_retries_give_up_and_refusals_are_not_retried():
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("authorization"))
        if request.url.path == "/embed/batch" and len(calls) == 1:
            return httpx.Response(422, json={"error": {"code": "too_many_items", "message": "9 items, more than 8"}})
        return httpx.Response(503, headers={"Retry-After": "0"})

    async def scenario() -> tuple[RequestFailed, RequestFailed]:
        policy = RetryPolicy(retries=2)
        async with BatchClient("http://server", "k", policy, 5, 1, transport=httpx.MockTransport(handler)) as client:
            with pytest.raises(RequestFailed) as refused:
                await client.embed([(Kind.TEXT, b"hello")])
            with pytest.raises(RequestFailed) as exhausted:
                await client.embed([(Kind.TEXT, b"hello")])
        return refused.value, exhausted.value

    refused, exhausted = asyncio.run(scenario())
    assert (refused.status, refused.code, refused.transient) == (422, "too_many_items", False)
    assert exhausted.status == 503 and exhausted.transient and "after 3 tries" in str(exhausted)
    assert calls == ["Bearer k"] * 4


def test_retry_after_as_a_date():
    assert parse_retry_after(formatdate(0, usegmt=True)) == 0
    assert 50 < parse_retry_after(formatdate(time.time() + 60, usegmt=True)) <= 60
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_store_keeps_the_output_intact_until_the_end_and_resumes_from_parts(tmp_path):
    out = tmp_path / "vectors.parquet"
    vector = np.arange(4, dtype=np.float32)
    first = Store(out, flush_rows=2)
    for name in "abc":
        first.add(Row(name, "text", f"sha-{name}", vector))
    assert first.finish() == 3
    before = out.read_bytes()

    crashed = Store(out, flush_rows=2)  # a run that is killed after its first flush
    crashed.add(Row("d", "image", "sha-d", vector[:2]))
    crashed.add(Row("a", "text", "sha-a2", vector + 1))  # a changed since the first run
    crashed.add(Row("e", "text", "sha-e", vector))  # pending, lost
    assert out.read_bytes() == before and len(list(crashed.parts.glob("*.parquet"))) == 1

    resumed = Store(out)
    assert resumed.embedded() == {"a": "sha-a2", "b": "sha-b", "c": "sha-c", "d": "sha-d"}
    resumed.add(Row("e", "text", "sha-e", vector))
    assert resumed.finish() == 5 and not resumed.parts.exists()
    rows = read_rows(out)
    assert rows["a"]["sha256"] == "sha-a2" and rows["a"]["vector"] == [1, 2, 3, 4]
    assert sorted(rows) == ["a", "b", "c", "d", "e"]
    assert {kind: m.vectors.shape for kind, m in read_modalities(out).items()} == {"image": (1, 2), "text": (4, 4)}


# --- against the real server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_folder(server, tmp_path_factory):
    """The test folder and the first `embed` run on it (default batch size: over the test server's 8 items)."""
    folder = tmp_path_factory.mktemp("folder")
    expected = build_folder(folder)
    if os.geteuid() != 0:  # root reads any file
        (folder / "texts" / "secret.txt").write_text("no access")
        (folder / "texts" / "secret.txt").chmod(0)
    out = tmp_path_factory.mktemp("out") / "vectors.parquet"
    result = embed(folder, server.url, out)
    return folder, expected, out, result


def test_embed_writes_a_row_per_file_with_the_servers_vectors(server, embedded_folder):
    folder, expected, out, result = embedded_folder
    assert result.returncode == 2, result.stderr  # broken.png and dangling.txt failed
    assert pq.read_schema(out).names == ["path", "type", "sha256", "vector"]
    rows = read_rows(out)
    assert rows.keys() == expected.keys()
    texts = sorted(path for path, row in rows.items() if row["type"] == "text")
    images = sorted(path for path, row in rows.items() if row["type"] == "image")
    assert texts == sorted(TEXTS)
    text_vectors, _ = server_vectors(server, "/embed/text", "texts", [expected[p].decode() for p in texts])
    image_vectors, image_dimension = server_vectors(
        server, "/embed/image", "images", [data_url(expected[p]) for p in images]
    )
    np.testing.assert_allclose([rows[p]["vector"] for p in texts], text_vectors, atol=1e-5)
    np.testing.assert_allclose([rows[p]["vector"] for p in images], image_vectors, atol=1e-5)
    assert {len(rows[p]["vector"]) for p in texts} == {384}
    assert {len(rows[p]["vector"]) for p in images} == {image_dimension}
    assert all(row["sha256"] == hashlib.sha256(expected[path]).hexdigest() for path, row in rows.items())


def test_embed_reports_what_it_did_not_embed(embedded_folder):
    *_, result = embedded_folder
    summary = result.stdout
    assert f"embedded {len(TEXTS) + 6} files ({len(TEXTS)} text, 6 image)" in summary
    unsupported = summary.split("unsupported, not embedded: ")[1].split("\nfailed")[0]
    assert unsupported.startswith(f"{len(UNSUPPORTED)} files")
    assert "texts/latin1.txt: text file is not UTF-8 (byte 3)" in unsupported
    assert all(f"  {path}: " in unsupported for path in UNSUPPORTED)
    failed = summary.split("\nfailed: ")[1]
    failures = FAILED | ({"texts/secret.txt"} if os.geteuid() != 0 else set())
    assert failed.startswith(f"{len(failures)} files")
    assert "images/broken.png: not_an_image: " in failed and "dangling.txt: unreadable: " in failed
    assert all(f"  {path}: " in failed for path in failures)
    # The server takes 8 items a request: the client's default 16 was refused, and the client took the server's size.
    assert "too_many_items: the upload has more than 8 items): batches of 8 from now on" in result.stderr
    assert "file/s" in result.stderr  # the progress bar


def test_embed_resumes(server, embedded_folder, tmp_path):
    folder, expected, first_out, _ = embedded_folder
    out = tmp_path / "vectors.parquet"
    out.write_bytes(first_out.read_bytes())
    before = read_rows(out)

    again = embed(folder, server.url, out)
    assert again.returncode == 2 and "embedded 0 files" in again.stdout
    assert f"from an earlier run: {len(expected)} files" in again.stdout

    (folder / "texts" / "new.txt").write_text("A brand new note about the weather in the mountains.")
    try:
        third = embed(folder, server.url, out)
    finally:
        (folder / "texts" / "new.txt").unlink()
    assert "embedded 1 file (1 text, 0 image)" in third.stdout, third.stdout
    after = read_rows(out)
    assert after.keys() == before.keys() | {"texts/new.txt"}
    assert all(after[path] == row for path, row in before.items())

    # A changed file is embedded again and its row replaced; the row of the file deleted since is kept.
    recipe = folder / "texts" / "recipe.txt"
    original = recipe.read_bytes()
    recipe.write_text("Boil the pasta for nine minutes, drain it and stir in the pesto.")
    try:
        fourth = embed(folder, server.url, out)
    finally:
        recipe.write_bytes(original)
    assert "embedded 1 file (1 text, 0 image)" in fourth.stdout
    assert "kept the rows of 1 file no longer in the folder" in fourth.stdout
    changed = read_rows(out)
    assert (
        changed.keys() == after.keys() and changed["texts/recipe.txt"]["vector"] != after["texts/recipe.txt"]["vector"]
    )
    assert changed["texts/recipe.txt"]["sha256"] != after["texts/recipe.txt"]["sha256"]


def test_duplicates_groups_copies_resized_copies_and_near_identical_texts(embedded_folder):
    _, expected, out, _ = embedded_folder
    result = run_client("duplicates", str(out), "--threshold", str(HIGH), "--json")
    assert result.returncode == 0, result.stderr
    groups = [(g["kind"], g["modality"], g["paths"]) for g in json.loads(result.stdout)]
    indexed = run_client("duplicates", str(out), "--threshold", str(HIGH), "--json", "--method", "indexed")
    # The same groups; the similarities from matrix products of other shapes, equal to float32 rounding.
    assert [(g["kind"], g["modality"], g["paths"]) for g in json.loads(indexed.stdout)] == groups
    similarities = [g["similarity"] for g in json.loads(result.stdout)]
    assert [g["similarity"] for g in json.loads(indexed.stdout)] == pytest.approx(similarities, abs=1e-5)
    assert groups == [
        ("exact", "image", ["images/shapes-copy.png", "images/shapes.png"]),
        ("exact", "text", ["texts/minutes-copy.md", "texts/minutes.md"]),
        ("near", "image", ["images/shapes-copy.png", "images/shapes-small.jpg", "images/shapes.png"]),
        ("near", "text", ["texts/minutes-copy.md", "texts/minutes-edited.txt", "texts/minutes.md"]),
    ]
    lower = json.loads(run_client("duplicates", str(out), "--threshold", str(LOW), "--json").stdout)
    near_texts = [g["paths"] for g in lower if g["kind"] == "near" and g["modality"] == "text"]
    assert near_texts == [[f"texts/minutes{suffix}" for suffix in ("-copy.md", "-edited.txt", "-extended.txt", ".md")]]
    readable = run_client("duplicates", str(out), "--threshold", str(HIGH))
    assert "near text, 3 files, lowest similarity 0.99" in readable.stdout
    assert readable.stdout.rstrip().endswith(
        f"4 groups (2 exact, 2 near) among {len(expected)} files, threshold {HIGH}"
    )


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium (Debian's package) with a fresh profile and none of its background connections, which this
    machine's closed network refuses."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is needed to check the report: deploy/system-packages.sh installs it")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    result = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def pixels(row: dict) -> int:
    return int(np.prod([int(side) for side in row["pixels"].split("x")])) if row["pixels"] else 0


def test_duplicates_report_renders_in_a_browser_and_its_csv_adds_up(embedded_folder, tmp_path):
    folder, _, out, _ = embedded_folder
    page, table, shot = tmp_path / "report.html", tmp_path / "report.csv", tmp_path / "report.png"
    result = run_client(
        "duplicates",
        str(out),
        "--threshold",
        str(HIGH),
        "--html",
        str(page),
        "--csv",
        str(table),
        "--root",
        str(folder),
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr and result.stdout.rstrip().endswith(f"threshold {HIGH}")

    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    assert list(groups) == ["1", "2", "3", "4"]
    kinds = [members[0]["kind"] for members in groups.values()]
    assert kinds == ["exact", "exact", "near", "near"]  # exact groups first
    freed: dict[str, int] = {}
    for members in groups.values():
        for row in members:
            info = (folder / row["path"]).stat()
            assert int(row["size"]) == info.st_size and row["modified"].startswith(time.strftime("%Y-", time.gmtime()))
            if row["type"] == "image":
                with Image.open(folder / row["path"]) as image:
                    assert row["pixels"] == f"{image.width}x{image.height}"
        # --keep largest: the most pixels, then bytes, then the shorter path; the other files are to delete.
        largest = min(members, key=lambda row: (-pixels(row), -int(row["size"]), len(row["path"]), row["path"]))
        assert [row["suggestion"] for row in members] == ["keep"] + ["delete"] * (len(members) - 1)
        assert members[0] is largest and float(members[0]["similarity"]) == 1.0
        freed |= {row["path"]: int(row["size"]) for row in members[1:]}
    image_cards = sum(row["type"] == "image" for row in rows)

    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    totals = dict(re.findall(r'<dd id="([a-z-]+)"[^>]*>([^<]+)</dd>', dom))
    assert (totals["groups"], totals["exact-groups"], totals["near-groups"]) == ("4", "2", "2")
    assert totals["files"] == str(len({row["path"] for row in rows}))
    assert totals["deletable"] == str(len(freed)) and f'data-bytes="{sum(freed.values())}"' in dom
    assert dom.count("<section ") == 4 and dom.count('<img src="data:image/jpeg;base64,') == image_cards == 5
    assert "http://" not in dom and "https://" not in dom  # nothing to fetch: the page stands alone

    chromium(f"--screenshot={shot}", "--window-size=1280,1400", page.as_uri(), profile=tmp_path / "profile")
    # The thumbnails are on the screen: the shapes image's background colour covers much of them.
    colours = shapes(1).getcolors(maxcolors=1 << 16)
    background = np.array(max(colours)[1])
    screen = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert (np.abs(screen - background).max(axis=2) <= 12).sum() > 5 * 100 * 60


def test_search_by_text_ranks_images_through_clip_and_texts_through_the_text_model(server, embedded_folder):
    _, _, out, _ = embedded_folder
    query = "the town committee discussed the budget of the library"
    result = run_client("search", str(out), query, "--server", server.url, "--top", "3", "--json")
    assert result.returncode == 0, result.stderr
    matches = json.loads(result.stdout)["matches"]
    texts = [match["path"] for match in matches["text"]]
    assert set(texts) <= {"texts/summary.txt"} | {path for path in TEXTS if path.startswith("texts/minutes")}
    # The tests' CLIP is random: its ranking means nothing, but it must be the one of its text tower's vector.
    query_vector = np.array(server.post("/embed/image-text", json={"texts": [query]}).json()["embeddings"][0])
    images = {path: np.array(row["vector"]) for path, row in read_rows(out).items() if row["type"] == "image"}
    similarities = {path: float(vector @ query_vector) for path, vector in images.items()}
    best = sorted(similarities, key=lambda path: -similarities[path])[:3]
    assert [match["path"] for match in matches["image"]] == best
    assert [match["similarity"] for match in matches["image"]] == pytest.approx(
        [similarities[p] for p in best], abs=1e-4
    )
    readable = run_client("search", str(out), query, "--server", server.url, "--top", "2").stdout
    assert readable.startswith(f"images nearest {query!r}:\n  ") and f"texts nearest {query!r}:" in readable


def test_search_like_a_stored_file_or_a_new_one(server, embedded_folder, tmp_path):
    _, _, out, _ = embedded_folder
    result = run_client("search", str(out), "--like", "images/shapes.png", "--top", "3", "--json")  # no server
    assert result.returncode == 0, result.stderr
    matches = json.loads(result.stdout)["matches"]
    assert list(matches) == ["image"]
    assert [match["path"] for match in matches["image"][:2]] == ["images/shapes-copy.png", "images/shapes-small.jpg"]
    assert matches["image"][0]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert "images/shapes.png" not in [match["path"] for match in matches["image"]]  # the file itself is left out

    new = tmp_path / "minutes-again.txt"
    new.write_text(MINUTES.replace("budget", "yearly budget"))
    result = run_client("search", str(out), "--like", str(new), "--server", server.url, "--top", "4", "--json")
    assert result.returncode == 0, result.stderr
    texts = [match["path"] for match in json.loads(result.stdout)["matches"]["text"]]
    assert sorted(texts) == sorted(path for path in TEXTS if path.startswith("texts/minutes"))
    refused = run_client("search", str(out), "--like", str(new))
    assert refused.returncode == 1 and "--server is needed to embed it" in refused.stderr


def test_unreadable_files_are_reported_not_fatal(server, tmp_path, monkeypatch):
    """Files that cannot be read when their turn comes (permission denied, gone since the walk): what chmod 000 does
    to a user that is not root, in any user's test."""
    import client.embed

    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "in" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text(f"file {name}")
    refused = {"b.txt": PermissionError(13, "Permission denied"), "c.txt": FileNotFoundError(2, "No such file")}
    real_read = client.embed.read

    def read(candidate, limit):
        if candidate.relative in refused:
            raise refused[candidate.relative]
        return real_read(candidate, limit)

    monkeypatch.setattr(client.embed, "read", read)
    options = EmbedOptions(
        folder=tmp_path / "in",
        server=server.url,
        out=tmp_path / "vectors.parquet",
        batch_size=8,
        concurrency=2,
        max_text_bytes=1000,
        api_key=None,
        retries=0,
        timeout=30,
    )
    report = embed_folder(options)
    assert report.embedded == {"text": 1} and report.rows == 1
    assert {(p.relative, p.reason) for p in report.failed} == {
        ("b.txt", "unreadable: Permission denied"),
        ("c.txt", "unreadable: No such file"),
    }


class FlakyProxy(ThreadingHTTPServer):
    """Forwards requests to the server, but answers a POST without `Bearer <key>` 401, the first `failures` others 503
    with Retry-After: 0, and one with POISON in its body 413, as a proxy with a lower size limit would."""

    def __init__(self, upstream: str, key: str, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        self.upstream, self.key, self.failures, self.lock = upstream, key, failures, threading.Lock()
        self.answers: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def do_GET(self) -> None:
        self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))  # read whole, even for a refusal
        proxy = self.server
        if self.headers.get("Authorization") != f"Bearer {proxy.key}":
            return self.answer(401, b'{"error": {"code": "unauthorized", "message": "key"}}', {})
        with proxy.lock:
            proxy.failures -= 1
            fail = proxy.failures >= 0
        if fail:
            return self.answer(
                503, b'{"error": {"code": "model_unavailable", "message": "busy"}}', {"Retry-After": "0"}
            )
        if b"POISON" in body:
            return self.answer(413, b'{"error": {"code": "too_large", "message": "poisoned"}}', {})
        self.forward(body)

    def forward(self, body: bytes) -> None:
        headers = {"Content-Type": self.headers["Content-Type"]} if self.headers.get("Content-Type") else {}
        upstream = requests.request(
            self.command, self.server.upstream + self.path, data=body, headers=headers, timeout=60
        )
        self.answer(upstream.status_code, upstream.content, {})

    def answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.server.answers.append(status)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_) -> None:
        pass


@pytest.fixture
def flaky_proxy(server):
    proxy = FlakyProxy(server.url, key="s3cret", failures=3)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


def test_transient_failures_are_retried_refusals_isolated_and_a_wrong_key_stops_the_run(
    embedded_folder, flaky_proxy, tmp_path
):
    *_, first_out, _ = embedded_folder
    texts = tmp_path / "texts"
    for path, text in (TEXTS | {"texts/poisoned.txt": "POISON"}).items():
        (texts / path).parent.mkdir(parents=True, exist_ok=True)
        (texts / path).write_text(text)

    refused = embed(texts, flaky_proxy.url, tmp_path / "refused.parquet", "--api-key", "wrong")
    assert refused.returncode == 1 and "the server refused the request: 401 unauthorized" in refused.stderr

    out = tmp_path / "vectors.parquet"
    result = embed(texts, flaky_proxy.url, out, "--batch-size", "4", env={"API_KEY": "s3cret"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert flaky_proxy.answers.count(503) == 3
    assert result.stderr.count("503 model_unavailable: busy; retrying in 0.0 s") == 3
    # The refused batch was sent again in halves until the poisoned file was alone: only that file failed.
    assert "failed: 1 file\n  texts/poisoned.txt: 413 too_large: poisoned\n" in result.stdout
    first = read_rows(first_out)
    rows = read_rows(out)
    assert rows.keys() == TEXTS.keys()
    # Other batches than the first run's: other padding, the same vectors to float32 rounding.
    np.testing.assert_allclose([rows[p]["vector"] for p in TEXTS], [first[p]["vector"] for p in TEXTS], atol=1e-5)
