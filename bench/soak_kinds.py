"""The requests of the soak: 23 kinds, valid and invalid, each with the bodies it cycles through, its weight in the
mix and the one answer it must get (a status, an error code, a check of a 200's content)."""

from __future__ import annotations

import base64
import io
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# urllib3 (a dependency of requests) for its multipart encoder alone: one plain call turns the
# parts, in the order given and with a fixed boundary, into the bytes that every run sends; aiohttp's encoder is a
# coroutine, and requests' is private and draws a random boundary.
from urllib3 import encode_multipart_formdata

from bench.data import jpeg_data_url, make_image, make_texts

# Small limits, so that the invalid bodies that cross them stay small; the valid requests are far below them.
SOAK_LIMITS = {
    "MAX_ITEMS_PER_REQUEST": "16",
    "MAX_TEXT_CHARS": "2000",
    "MAX_IMAGE_BYTES": "262144",
    "MAX_REQUEST_BYTES": "1048576",
}
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
IMAGE_MODEL = "openai/clip-vit-base-patch32"
LABELS = ["a photo of a cat", "a photo of a dog", "a diagram", "a landscape"]


@dataclass(frozen=True)
class Body:
    data: bytes | None  # None: a GET
    content_type: str = "application/json"
    chunked: bool = False  # sent without Content-Length, as a stream


Check = Callable[[dict], str | None]  # a 200's parsed answer → None when right, else what is wrong


@dataclass(frozen=True)
class Kind:
    """One kind of request: its route, the bodies it cycles through, its weight in the mix and what it must get."""

    name: str
    path: str
    bodies: list[Body]
    status: int
    code: str | None = None  # the error code an error answer must carry
    check: Check | None = None  # for a 200
    weight: int = 1

    @property
    def valid(self) -> bool:
        return self.status == 200


def as_json(value: object) -> Body:
    return Body(json.dumps(value).encode())


def multipart(fields: list[tuple[str, object]]) -> Body:
    data, content_type = encode_multipart_formdata(fields, boundary="soak-boundary-7d1c2f")
    return Body(data, content_type)


def png_bytes(seed: int, side: int = 96) -> bytes:
    buffer = io.BytesIO()
    make_image(seed, side).save(buffer, "PNG")
    return buffer.getvalue()


def counted(key: str, count: int) -> Check:
    return lambda answer: None if len(answer[key]) == count else f"{len(answer[key])} {key}, expected {count}"


def batch_check(count: int, failed_id: str, failed_code: str) -> Check:
    """A batch answer with `count` results, all embedded but `failed_id`, which failed with `failed_code`."""

    def check(answer: dict) -> str | None:
        results = answer["results"]
        if len(results) != count:
            return f"{len(results)} results, expected {count}"
        for result in results:
            if result["id"] == failed_id:
                if result.get("error", {}).get("code") != failed_code:
                    return f"item {failed_id}: {result}, expected error {failed_code}"
            elif "embedding" not in result:
                return f"item {result['id']} failed: {result.get('error')}"
        return None

    return check


def classify_check(top_k: int) -> Check:
    def check(answer: dict) -> str | None:
        labels = [len(result["labels"]) for result in answer["results"]]
        return None if labels == [top_k] else f"labels per image {labels}, expected [{top_k}]"

    return check


def v1_check(count: int) -> Check:
    def check(answer: dict) -> str | None:
        if answer.get("object") != "list" or len(answer["data"]) != count:
            return f"object {answer.get('object')!r} with {len(answer['data'])} vectors, expected a list of {count}"
        return None

    return check


def health_check(answer: dict) -> str | None:
    return None if answer.get("status") == "ok" else f"status {answer.get('status')!r}"


def make_kinds(limits: dict[str, str] = SOAK_LIMITS) -> list[Kind]:
    """Every kind of request of the soak, each with a few distinct bodies. Deterministic."""
    max_items, max_chars = int(limits["MAX_ITEMS_PER_REQUEST"]), int(limits["MAX_TEXT_CHARS"])
    max_image, max_body = int(limits["MAX_IMAGE_BYTES"]), int(limits["MAX_REQUEST_BYTES"])
    texts = make_texts(256, seed=7)
    jpegs = [jpeg_data_url(make_image(seed, 512)) for seed in range(6)]  # ~60 KB each, like a photo
    pngs = [png_bytes(100 + seed) for seed in range(6)]
    jpeg_files = [base64.b64decode(url.split(",", 1)[1]) for url in jpegs]
    not_an_image = "data:image/png;base64," + base64.b64encode(b"not an image at all").decode()
    rng = random.Random(7)

    def some_texts(count: int) -> list[str]:
        return rng.sample(texts, count)

    # The image limit is checked on the base64's length, before it is decoded: the bytes need not be an image.
    over_image = np.random.default_rng(7).integers(0, 256, max_image + 1024, dtype=np.uint8).tobytes()
    big_image = "data:image/png;base64," + base64.b64encode(over_image).decode()
    assert len(big_image) < max_body, "image_too_large needs a body under the request limit"
    over_body = json.dumps({"texts": ["x" * (max_body + 1024)]}).encode()
    return [
        # valid
        Kind(
            "text",
            "/embed/text",
            [as_json({"texts": some_texts(4)}) for _ in range(8)],
            200,
            check=counted("embeddings", 4),
            weight=3,
        ),
        Kind(
            "image", "/embed/image", [as_json({"images": [url]}) for url in jpegs], 200, check=counted("embeddings", 1)
        ),
        Kind(
            "image_upload",
            "/embed/image",
            [
                multipart([("images", ("photo.jpg", jpeg, "image/jpeg")), ("images", ("small.png", png, "image/png"))])
                for jpeg, png in zip(jpeg_files, pngs, strict=True)
            ],
            200,
            check=counted("embeddings", 2),
        ),
        Kind(
            "batch",
            "/embed/batch",
            [
                as_json(
                    {
                        "items": [{"id": "t0", "type": "text", "content": text} for text in some_texts(1)]
                        + [
                            {"id": "i0", "type": "image", "content": url},
                            {"id": "bad", "type": "image", "content": not_an_image},
                            {"id": "t1", "type": "text", "content": some_texts(1)[0]},
                        ]
                    }
                )
                for url in jpegs
            ],
            200,
            check=batch_check(4, "bad", "not_an_image"),
        ),
        Kind(
            "batch_upload",
            "/embed/batch",
            [
                multipart(
                    [
                        ("notes.txt", ("notes.txt", some_texts(1)[0].encode(), "text/plain")),
                        ("small.png", ("small.png", png, "image/png")),
                        ("title", some_texts(1)[0]),
                        ("broken.png", ("broken.png", b"not an image", "image/png")),
                    ]
                )
                for png in pngs
            ],
            200,
            check=batch_check(4, "broken.png", "not_an_image"),
        ),
        Kind(
            "image_text",
            "/embed/image-text",
            [as_json({"texts": some_texts(2)}) for _ in range(8)],
            200,
            check=counted("embeddings", 2),
            weight=2,
        ),
        Kind(
            "classify",
            "/classify/image",
            [as_json({"images": [url], "labels": LABELS, "top_k": 2}) for url in jpegs],
            200,
            check=classify_check(2),
        ),
        Kind(
            "v1_embeddings",
            "/v1/embeddings",
            [
                as_json({"model": model, "input": some_texts(2)})
                for _ in range(4)
                for model in ("all-MiniLM-L6-v2", IMAGE_MODEL)
            ]
            + [as_json({"model": TEXT_MODEL, "input": some_texts(2), "encoding_format": "base64"})],
            200,
            check=v1_check(2),
            weight=2,
        ),
        Kind("health", "/health", [Body(None)], 200, check=health_check),
        Kind("metrics", "/metrics", [Body(None)], 200),
        # invalid: each must get exactly its status and error code
        Kind("invalid_base64", "/embed/image", [as_json({"images": ["%%% not base64 %%%"]})], 422, "invalid_base64"),
        Kind("not_an_image", "/embed/image", [as_json({"images": [not_an_image]})], 422, "not_an_image"),
        Kind(
            "truncated_image",
            "/embed/image",
            [as_json({"images": ["data:image/jpeg;base64," + base64.b64encode(jpeg_files[0][:4000]).decode()]})],
            422,
            "truncated_image",
        ),
        Kind("empty_input", "/embed/text", [as_json({"texts": []})], 422, "empty_input"),
        Kind("too_many_items", "/embed/text", [as_json({"texts": some_texts(max_items + 1)})], 422, "too_many_items"),
        Kind("text_too_long", "/embed/text", [as_json({"texts": ["ok", "x" * (max_chars + 1)]})], 422, "text_too_long"),
        Kind(
            "too_many_tokens",
            "/embed/text",
            [as_json({"texts": ["word " * 300], "truncate": False})],
            422,
            "too_many_tokens",
        ),
        Kind("invalid_json", "/embed/text", [Body(b"not json at all"), Body(b'{"texts": ["a"')], 400, "invalid_json"),
        Kind(
            "model_not_found",
            "/v1/embeddings",
            [as_json({"model": "no-such-model", "input": "hello"})],
            404,
            "model_not_found",
        ),
        Kind(
            "invalid_upload",
            "/embed/image",
            [multipart([("images", ("a.png", pngs[0], "image/png")), ("note", "not a file")])],
            422,
            "invalid_upload",
        ),
        Kind("image_too_large", "/embed/image", [as_json({"images": [big_image]})], 413, "image_too_large"),
        Kind("request_too_large", "/embed/text", [Body(over_body)], 413, "request_too_large"),
        Kind(
            "request_too_large_streamed",
            "/embed/text",
            [Body(over_body, chunked=True)],
            413,
            "request_too_large",
        ),
    ]


class Mix:
    """The kinds in fixed proportions: rounds of each kind `weight` times in a shuffled but fixed order; each kind's
    bodies are taken in turn. Shared by the clients, so that the proportions hold over the whole run."""

    def __init__(self, kinds: list[Kind], seed: int = 0) -> None:
        round_ = [kind for kind in kinds for _ in range(kind.weight)]
        random.Random(seed).shuffle(round_)
        self._kinds = itertools.cycle(round_)
        self._bodies = {kind.name: itertools.cycle(kind.bodies) for kind in kinds}

    def next(self) -> tuple[Kind, Body]:
        kind = next(self._kinds)
        return kind, next(self._bodies[kind.name])


def judge(kind: Kind, status: int, payload: bytes) -> str | None:
    """None when the answer is the one `kind` expects, else what differs."""
    if status != kind.status:
        return f"status {status}, expected {kind.status}"
    if kind.code is None and kind.check is None:
        return None
    try:
        answer = json.loads(payload)
        if kind.code is not None:
            code = answer["error"]["code"]
            return None if code == kind.code else f"error code {code!r}, expected {kind.code!r}"
        return kind.check(answer)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return f"malformed answer ({type(exc).__name__}: {exc})"
