"""Fuzzing. schemathesis against the OpenAPI document the real server publishes, on every route: no 5xx, and every
answer (errors included) as the document says. hypothesis on the input decoding: arbitrary bytes and strings as
image content, arbitrary unicode as text, in process and through the server: a vector or a 4xx, never an exception.

Every run is derandomized (the same examples each time) and bounded, so that CI is reproducible and quick.
"""

from __future__ import annotations

import base64
import io
import json
import unicodedata
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from embedding_server.errors import TEI_ERROR_TYPES, ApiError, ErrorCode
from embedding_server.images import decode_image
from models.preprocess import ImagePreprocessor
from models.tokenizer import TextTokenizer
from tests.conftest import TEST_LIMITS, TEXT_SOURCE, data_url, image_bytes

# PIL warns about the corrupt files it is fed on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

MAX_TEXT_CHARS = int(TEST_LIMITS["MAX_TEXT_CHARS"])
MAX_ITEMS = int(TEST_LIMITS["MAX_ITEMS_PER_REQUEST"])
MAX_IMAGE_BYTES = int(TEST_LIMITS["MAX_IMAGE_BYTES"])
MAX_IMAGE_PIXELS = int(TEST_LIMITS["MAX_IMAGE_PIXELS"])
ERROR_CODES = {code.value for code in ErrorCode}
TEI_PATHS = {"/embed", "/", "/tokenize", "/decode", "/similarity"}
"""text-embeddings-inference's routes, whose error body is TEI's: {"error": "...", "error_type": "..."}."""


def fuzz(max_examples: int) -> settings:
    """Reproducible: the same examples on every run, none stored between runs."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# --- schemathesis on the published document ------------------------------------------------------------------------

POST_ROUTES = [
    "POST /embed/text",
    "POST /embed/image",
    "POST /embed/batch",
    "POST /embed/image-text",
    "POST /classify/image",
    "POST /v1/embeddings",
    "POST /embeddings",
    "POST /embed",
    "POST /",
    "POST /tokenize",
    "POST /decode",
    "POST /similarity",
]
GET_ROUTES = [
    "GET /health",
    "GET /v1/models",
    "GET /info",
    "GET /livez",
    "GET /readyz",
    "GET /healthz",
    "GET /metrics",
]
EXAMPLES_PER_POST_ROUTE = 60
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES: Counter[str] = Counter()
"""Examples sent per route in this run (printed with -s)."""

SAMPLE_IMAGES = [
    image_bytes("PNG"),
    image_bytes("JPEG", size=(80, 60), color=(20, 40, 220)),
    image_bytes("WEBP", size=(33, 90), mode="RGBA", color=(0, 200, 0, 128)),
    image_bytes("GIF", size=(40, 40), mode="P", color=3),
    image_bytes("BMP", size=(16, 24)),
    image_bytes("TIFF", size=(20, 20), mode="L", color=90),
]
MODEL_NAMES = [
    "all-MiniLM-L6-v2",
    "SENTENCE-TRANSFORMERS/ALL-MINILM-L6-V2",
    "openai/clip-vit-base-patch32",
    "Clip-ViT-Base-Patch32",
]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/docs.json")


def test_document_lists_every_route(api_schema):
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(POST_ROUTES) | set(GET_ROUTES)


@st.composite
def with_real_content(draw, operation):
    """A valid case whose images are real images and whose `model` is served, so that the fuzzing reaches the models
    (the schema alone makes a random string of every image and model name)."""
    case = draw(operation.as_strategy(GenerationMode.POSITIVE))
    body = case.body
    if not isinstance(body, dict):
        return case
    multipart = (case.media_type or "").startswith("multipart/")
    image = st.sampled_from(SAMPLE_IMAGES if multipart else [data_url(data) for data in SAMPLE_IMAGES])
    if isinstance(body.get("images"), list):
        body["images"] = [draw(image) for _ in body["images"]]
    if "model" in body:
        body["model"] = draw(st.sampled_from(MODEL_NAMES))
    for item in body.get("items", []) if isinstance(body.get("items"), list) else []:
        if isinstance(item, dict) and item.get("type") == "image":
            item["content"] = draw(image)
    if multipart and operation.path == "/embed/batch":
        for name in [name for name in body if name != "options"]:
            body[name] = draw(st.sampled_from([*SAMPLE_IMAGES, b"some text"]))
    return case


@pytest.mark.parametrize("route", POST_ROUTES + GET_ROUTES)
def test_route_answers_as_documented(api_schema, route):
    """Valid, invalid and valid-with-real-content requests (JSON and multipart where documented): never a 5xx, the
    status, content type and body of every answer documented for the route."""
    operation = api_schema.find_operation_by_label(route)
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
        with_real_content(operation),
    )

    @given(case=cases)
    @fuzz(EXAMPLES_PER_POST_ROUTE)
    def send(case):
        EXAMPLES[route] += 1
        statuses[case.call_and_validate(checks=CHECKS, timeout=60).status_code] += 1

    statuses: Counter[int] = Counter()
    send()
    print(f"{route}: {EXAMPLES[route]} examples, statuses {dict(sorted(statuses.items()))}")
    # A GET route takes no input (hypothesis sends its one request again); a POST route gets the full count, and
    # some of its requests must get through to the models.
    assert EXAMPLES[route] >= (EXAMPLES_PER_POST_ROUTE if route.startswith("POST") else 1)
    assert statuses[200] > 0


# --- image content, in process --------------------------------------------------------------------------------------

PREPROCESSOR = ImagePreprocessor(224, (224, 224), [0.5] * 3, [0.5] * 3)


def decodes_or_4xx(content: str | bytes, index: int = 3) -> Image.Image | None:
    """The decoded image, pre-processed as the server does; or None for an ApiError with a 4xx naming `index`."""
    try:
        image = decode_image(content, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, index, min_side=PREPROCESSOR.size)
    except ApiError as error:
        assert 400 <= error.status < 500, (error.code, error.message)
        assert error.index == index
        assert isinstance(error.code, ErrorCode)
        return None
    assert isinstance(image, Image.Image)
    assert PREPROCESSOR(image).shape == (224, 224, 3)
    return image


@st.composite
def corrupted_images(draw) -> bytes:
    """A real image's header with a corrupted body: cut, bytes flipped, garbage appended."""
    data = bytearray(draw(st.sampled_from(SAMPLE_IMAGES + [image_bytes("JPEG", exif=_rotated_exif())])))
    data = data[: draw(st.integers(8, len(data)))]
    for position in draw(st.lists(st.integers(8, max(8, len(data) - 1)), max_size=6)):
        if position < len(data):
            data[position] ^= draw(st.integers(1, 255))
    return bytes(data) + draw(st.binary(max_size=64))


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90°
    return exif


@given(st.binary(max_size=2048))
@fuzz(200)
def test_arbitrary_bytes_as_an_uploaded_image(content):
    decodes_or_4xx(content)


@given(st.text(st.characters(exclude_categories=()), max_size=512))
@fuzz(200)
def test_arbitrary_strings_as_image_content(content):
    decodes_or_4xx(content)


@given(st.binary(max_size=2048), st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", ""]))
@fuzz(200)
def test_arbitrary_bytes_in_base64(content, mime):
    decodes_or_4xx(f"data:{mime};base64,{base64.b64encode(content).decode()}")
    decodes_or_4xx(base64.b64encode(content).decode())


@given(corrupted_images())
@fuzz(300)
def test_real_image_headers_with_corrupted_bodies(content):
    decodes_or_4xx(content)
    decodes_or_4xx(data_url(content))


def test_every_sample_image_decodes():
    """The property tests above start from images that do decode."""
    for data in SAMPLE_IMAGES:
        assert decodes_or_4xx(data) is not None
        assert decodes_or_4xx(data_url(data)) is not None


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (4, 1000)])
def test_an_extreme_aspect_ratio_is_refused_before_it_is_scaled(size):
    """Scaled to a shortest side of 224, a 1x100,000 PNG (a few hundred bytes) would be 224x22,400,000 pixels."""
    buffer = io.BytesIO()
    Image.new("L", size, 255).save(buffer, "PNG")
    with pytest.raises(ApiError) as raised:
        decode_image(buffer.getvalue(), MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, 0, min_side=224)
    assert raised.value.code is ErrorCode.TOO_MANY_PIXELS
    # Within the limit once scaled: decoded, and pre-processed to the model's size.
    assert decodes_or_4xx(image_bytes("PNG", size=(20, 200))) is not None


def test_an_elongated_image_is_a_413_through_the_server(server):
    """Before the check, the API process tried to scale this 1x100,000 PNG to 224x22,400,000 pixels (20 GB)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 100_000), 255).save(buffer, "PNG")
    response = server.post("/embed/image", json={"images": [data_url(SAMPLE_IMAGES[0]), data_url(buffer.getvalue())]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_pixels" and response.json()["error"]["index"] == 1


# --- text, in process -----------------------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=400)
"""Any unicode but lone surrogates, which cannot reach the tokenizer: the JSON parser refuses them (tested through
the server below), and uploaded text files are decoded as strict UTF-8."""


@pytest.fixture(scope="module", params=["text", "clip"])
def tokenizer(request) -> TextTokenizer:
    source = TEXT_SOURCE if request.param == "text" else request.getfixturevalue("clip_dir")
    return TextTokenizer.from_dir(source)


def test_tokenizer_on_arbitrary_unicode(tokenizer):
    @given(st.lists(ANY_TEXT, min_size=1, max_size=4))
    @fuzz(200)
    def check(texts):
        for tokenized in tokenizer.tokenize(texts):
            assert 0 < len(tokenized.ids) <= tokenizer.max_tokens
            assert tokenized.token_count >= len(tokenized.ids)
            assert tokenized.truncated == (tokenized.token_count > tokenizer.max_tokens)

    check()


# --- text, through the server ---------------------------------------------------------------------------------------

SPECIAL_TEXTS = [
    "",
    "\x00",
    "a\x00b\x07\x1b[31m\x7f",
    "\u200f\u202eRTL override\u202c \u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 \U0001f1fa\U0001f1f3 \u2764\ufe0f",
    "\ufeff\ufffe\uffff\U0010ffff",
    "e\u0301\u0301\u0301\u0301 Z\u0351\u0352\u0353\u0354",
    "\u4e00" * 4999,
    "\U0001f600" * MAX_TEXT_CHARS,
    "x" * (MAX_TEXT_CHARS + 1),
]

TEXT_ROUTES = ["/embed/text", "/embed/image-text", "/embed/batch", "/v1/embeddings", "/classify/image"]


def text_body(route: str, texts: list[str]) -> dict:
    if route == "/embed/batch":
        return {"items": [{"id": str(i), "type": "text", "content": text} for i, text in enumerate(texts)]}
    if route == "/v1/embeddings":
        return {"model": "all-MiniLM-L6-v2", "input": texts}
    if route == "/classify/image":
        return {"images": [data_url(SAMPLE_IMAGES[0])], "labels": texts}
    return {"texts": texts}


def post_json(server, route: str, body: bytes) -> requests.Response:
    return server.post(route, data=body, headers={"Content-Type": "application/json"})


def expected_outcome(texts: list[str]) -> tuple[int, str | None]:
    """What the server must answer for these texts (as the JSON parser reads them back): a lone surrogate is no
    valid JSON text; over MAX_TEXT_CHARS is too long (a batch item fails alone, with 200); else 200."""
    if any(unicodedata.category(char) == "Cs" for text in texts for char in text):
        return 400, "invalid_json"
    if any(len(text) > MAX_TEXT_CHARS for text in texts):
        return 422, "text_too_long"
    return 200, None


def assert_answer(route: str, response: requests.Response, texts: list[str]) -> None:
    status, code = expected_outcome(texts)
    body = response.json()
    if route == "/embed/batch" and code == "text_too_long":
        status = 200  # the long item fails alone
    assert response.status_code == status, (response.status_code, body)
    if status != 200:
        assert body["error"]["code"] == code
        if route != "/v1/embeddings":
            assert set(body["error"]) <= {"code", "message", "index"}
        return
    if route == "/embed/batch":
        too_long = [len(text) > MAX_TEXT_CHARS for text in texts]
        assert [("error" in result) for result in body["results"]] == too_long
    elif route == "/v1/embeddings":
        assert len(body["data"]) == len(texts)
    elif route == "/classify/image":
        assert len(body["results"][0]["labels"]) == len(texts)
    else:
        assert len(body["embeddings"]) == len(texts)


@pytest.mark.parametrize("route", TEXT_ROUTES)
def test_arbitrary_unicode_through_the_server(server, route):
    """Any unicode, control characters and (escaped in the JSON) surrogates included: a vector or the error body."""
    texts = st.lists(
        st.text(st.characters(exclude_categories=()), max_size=200) | st.sampled_from(SPECIAL_TEXTS),
        min_size=1,
        max_size=MAX_ITEMS,
    )

    @given(texts=texts, ascii_only=st.booleans())
    @fuzz(40)
    def check(texts, ascii_only):
        if not ascii_only and any(unicodedata.category(char) == "Cs" for text in texts for char in text):
            ascii_only = True  # raw UTF-8 cannot carry a surrogate
        body = json.dumps(text_body(route, texts), ensure_ascii=ascii_only).encode()
        assert_answer(route, post_json(server, route, body), _read_back(body, route))

    check()


def _field(route: str) -> str:
    return {"/embed/batch": "items", "/v1/embeddings": "input", "/classify/image": "labels"}.get(route, "texts")


def _read_back(body: bytes, route: str) -> list[str]:
    """The texts as a JSON parser reads them: an escaped surrogate pair is one character again."""
    values = json.loads(body)[_field(route)]
    return [value["content"] for value in values] if route == "/embed/batch" else values


@pytest.mark.parametrize("route", TEXT_ROUTES)
@pytest.mark.parametrize(
    "escaped, status",
    [
        ('"\\ud800"', 400),  # a lone high surrogate
        ('"\\udc00x"', 400),  # a lone low surrogate
        ('"\\ud83d\\ude00"', 200),  # an escaped pair: one emoji
        ('"\\u0000\\u0001\\u001f"', 200),
        ('"\\u200f\\u202e\\u2066"', 200),
        ('"' + "\u00e9" * 100_000 + '"', 422),  # 100 KB (200 KB of UTF-8): over MAX_TEXT_CHARS
        ('"' + "\\u00e9" * 100_000 + '"', 422),
        ('"' + "\u4e00" * 4999 + '"', 200),  # 4999 characters of one token each: cut to the token limit
    ],
    ids=["lone-high", "lone-low", "pair", "controls", "rtl", "100k-chars", "100k-escapes", "4999-cjk"],
)
def test_raw_json_texts(server, route, escaped, status):
    """Raw JSON bytes, so that the escapes reach the server's parser as written."""
    if route == "/embed/batch":
        body = f'{{"items": [{{"id": "a", "type": "text", "content": {escaped}}}]}}'
    elif route == "/v1/embeddings":
        body = f'{{"model": "all-MiniLM-L6-v2", "input": [{escaped}]}}'
    elif route == "/classify/image":
        body = f'{{"images": ["{data_url(SAMPLE_IMAGES[0])}"], "labels": [{escaped}]}}'
    else:
        body = f'{{"texts": [{escaped}]}}'
    response = post_json(server, route, body.encode())
    answer = response.json()
    if route == "/embed/batch" and status == 422:
        assert response.status_code == 200
        assert answer["results"][0]["error"]["code"] == "text_too_long"
        return
    assert response.status_code == status, answer
    if status == 400:
        assert answer["error"]["code"] == "invalid_json"
    elif status == 422:
        assert answer["error"]["code"] == "text_too_long"
        if route != "/v1/embeddings":
            assert answer["error"]["index"] == 0
    elif escaped.startswith('"\u4e00') and route in ("/embed/text", "/embed/image-text"):
        assert answer["metadata"]["truncated"] == [0]


@pytest.mark.parametrize("route", ["/embed/text", "/embed/image-text"])
def test_many_tokens_without_truncation(server, route):
    """4999 characters of one token each, with truncate: false: 422 too_many_tokens naming the text."""
    response = server.post(route, json={"texts": ["ok", "\u4e00" * 4999], "truncate": False})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "too_many_tokens"
    assert response.json()["error"]["index"] == 1


@given(
    body=st.binary(max_size=512)
    | st.text(st.characters(exclude_categories=()), max_size=256).map(
        lambda text: text.encode("utf-8", "surrogatepass")
    )
)
@fuzz(60)
def test_arbitrary_bytes_as_a_request_body(server, body):
    """Any bytes as the body of any route: a 4xx (or a 200 for the rare valid JSON) with the route's error body."""
    for route in POST_ROUTES:
        response = post_json(server, route.split(" ")[1], body)
        assert response.status_code < 500, (route, body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            if route.split(" ")[1] in TEI_PATHS:
                assert isinstance(error, str) and response.json()["error_type"] in TEI_ERROR_TYPES
            else:
                assert error["code"] in ERROR_CODES
