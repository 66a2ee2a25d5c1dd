"""What an operator relies on: the API key, CORS, /metrics, the request log and no usage tracking, on real servers."""

from __future__ import annotations

import re
import time

import bentoml
import openai
import pytest
import requests
from conftest import data_url, image_bytes, start_server, stop_server

API_KEY = "s3cret-key"
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def locked_server(model_store, tmp_path_factory):
    """A text-only server with an API key and one CORS origin, started the way an operator would start it: no
    BENTOML_DO_NOT_TRACK in its environment, with BentoML's usage events printed to its log instead of sent."""
    running = start_server(
        model_store,
        tmp_path_factory.mktemp("logs") / "locked.log",
        IMAGE_MODEL_NAME="",
        API_KEY=API_KEY,
        CORS_ORIGINS=ORIGIN,
        BENTOML_DO_NOT_TRACK=None,
        __BENTOML_DEBUG_USAGE="true",
    )
    yield running
    stop_server(running)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": API_KEY}, bearer(API_KEY + "x")])
def test_without_the_key_every_api_route_is_a_401(locked_server, headers):
    for path in ("/embed/text", "/embed/batch", "/v1/embeddings"):
        response = locked_server.post(path, json={"texts": ["hi"]}, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"
    assert locked_server.get("/v1/models", headers=headers).status_code == 401
    assert locked_server.get("/docs.json", headers=headers).status_code == 401


def test_with_the_key_routes_work_and_probes_never_need_it(locked_server):
    response = locked_server.post("/embed/text", json={"texts": ["hi"]}, headers=bearer(API_KEY))
    assert response.status_code == 200
    for path in ("/health", "/livez", "/readyz", "/metrics"):
        assert locked_server.get(path).status_code == 200, path


def test_openai_client_with_and_without_the_key(locked_server):
    good = openai.OpenAI(base_url=locked_server.url + "/v1", api_key=API_KEY, max_retries=0)
    assert len(good.embeddings.create(model="all-MiniLM-L6-v2", input="hi").data[0].embedding) == 384
    bad = openai.OpenAI(base_url=locked_server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        bad.embeddings.create(model="all-MiniLM-L6-v2", input="hi")
    assert raised.value.body["type"] == "authentication_error"


def test_cors_allows_the_configured_origin_only(locked_server):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = requests.options(locked_server.url + "/embed/text", headers={"Origin": ORIGIN, **preflight}, timeout=30)
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = requests.options(
        locked_server.url + "/embed/text", headers={"Origin": "https://evil.example", **preflight}, timeout=30
    )
    assert "Access-Control-Allow-Origin" not in other.headers
    # A refused key still carries the CORS header, so that a browser app can read the 401.
    refused = locked_server.post("/embed/text", json={"texts": ["hi"]}, headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_cors_is_closed_by_default(server):
    response = server.post("/embed/text", json={"texts": ["hi"]}, headers={"Origin": ORIGIN})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers


def test_usage_tracking_is_off_unless_opted_in(locked_server, model_store, tmp_path_factory):
    # BentoML prints its first serve event at start when debugging usage; wait past its 5 s debug interval too.
    time.sleep(6)
    assert "Tracking Payload" not in locked_server.log.read_text()
    opted_in = start_server(
        model_store,
        tmp_path_factory.mktemp("logs") / "tracked.log",
        IMAGE_MODEL_NAME="",
        BENTOML_DO_NOT_TRACK="false",
        __BENTOML_DEBUG_USAGE="true",
    )
    try:
        deadline = time.monotonic() + 15
        while "Tracking Payload" not in opted_in.log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Tracking Payload" in opted_in.log.read_text()  # the check above can see an event when there is one
    finally:
        stop_server(opted_in)


# --- metrics and logs, on the shared server -------------------------------------------------------------------------


def scrape(server) -> dict[str, float]:
    """The /metrics samples as {'name{labels}': value}."""
    response = server.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a series' samples whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for key, value in samples.items():
        key_name, _, key_labels = key.partition("{")
        if key_name == name and all(f'{k}="{v}"' in key_labels for k, v in labels.items()):
            total += value
    return total


def test_metrics_move_with_traffic(server):
    before = scrape(server)
    long_text = "word " * 400
    assert server.post("/embed/text", json={"texts": ["one", long_text]}).status_code == 200
    assert server.post("/embed/image", json={"images": [data_url(image_bytes())] * 3}).status_code == 200
    assert server.post("/embed/text", json={"texts": ["x" * 5001]}).status_code == 422
    assert server.post("/embed/image-text", json={"texts": ["a photo of a cat"]}).status_code == 200
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert moved("embedding_items_total", model="text") == 2
    assert moved("embedding_items_total", model="image") == 3
    assert moved("embedding_items_total", model="image_text") == 1
    assert moved("embedding_texts_truncated_total", model="text") == 1
    assert moved("embedding_request_errors_total", code="text_too_long") == 1
    assert moved("embedding_image_decode_seconds_count") == 3
    # Counted in the model services' own processes, and still on the API's /metrics.
    assert moved("embedding_model_batch_size_sum", model="text") == 2
    assert moved("embedding_model_batch_size_sum", model="image") == 3
    assert moved("embedding_model_batch_size_count", model="image_text") == 1
    assert moved("bentoml_service_request_total") >= 4  # BentoML's own series are there too


def test_one_log_line_per_request_without_its_content(server):
    secret = "my-private-sentence-xyz"
    start = len(server.log.read_text())
    assert server.post("/embed/text", json={"texts": [secret, "two", "three"]}).status_code == 200
    assert server.post("/embed/text", json={"texts": []}).status_code == 422
    # Bodies that fail validation: BentoML logs pydantic's error, which must not quote them.
    assert server.post("/embed/text", json={"texts": secret}).status_code == 422
    assert server.post("/v1/embeddings", json={"input": [secret]}).status_code == 422
    assert server.post("/embed/text", data=f"not json {secret}").status_code == 400
    assert server.post("/embed/x%0AFORGED status=200").status_code == 404
    assert server.get("/health").status_code == 200
    time.sleep(0.5)
    log = server.log.read_text()[start:]  # this test's requests only: the server is shared
    assert "GET /health" not in log  # probes are not logged
    assert re.search(r"POST /embed/text status=200 items=3 duration_ms=\d+\.\d", log)
    assert re.search(r"POST /embed/text status=422 items=0 duration_ms=", log)
    assert secret not in log
    assert "\nFORGED" not in log  # a decoded %0A in the path does not start a line of its own
    assert "Traceback" not in log  # client errors are not the server's faults


def test_bentoml_client_sends_the_key_as_its_token(locked_server):
    with bentoml.SyncHTTPClient(locked_server.url, token=API_KEY) as client:
        assert len(client.embed_text(texts=["hi"])["embeddings"][0]) == 384
