"""Faults survived, on real servers: a model worker killed, a forward pass that raises, SIGTERM with requests in flight,
a client that leaves, requests past their deadline, a full queue."""

from __future__ import annotations

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
from conftest import data_url, image_bytes, service_worker, start_server, stop_server
from test_operations import sample, scrape

FAULTY = "tests.faulty_service:EmbeddingAPI"
"""The real service with faults in its forward passes (tests/faulty_service.py)."""

TEXT = {"route": "/embed/text", "json": {"texts": ["a sentence about faults"]}}
IMAGE = {"route": "/embed/image", "json": {"images": [data_url(image_bytes())]}}


def worker_pid(server, service: str) -> int:
    return service_worker(server.process.pid, service).pid


def post(server, call: dict, timeout: float = 60) -> requests.Response:
    return requests.post(server.url + call["route"], json=call["json"], timeout=timeout)


def wait_for_health(server, status: int, within_s: float) -> float:
    """Seconds until /health answers `status`; fails the test past `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            if requests.get(server.url + "/health", timeout=10).status_code == status:
                return time.monotonic() - started
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    pytest.fail(f"/health did not answer {status} within {within_s} s")


# --- a server whose forward passes take 1 s and fail for batches of 7 -----------------------------------------------


@pytest.fixture(scope="module")
def faulty_server(model_store, tmp_path_factory):
    running = start_server(
        model_store,
        tmp_path_factory.mktemp("logs") / "faulty.log",
        target=FAULTY,
        FAULT_FORWARD_DELAY_S="1",
        FAULT_FAIL_BATCH_SIZE="7",
    )
    yield running
    stop_server(running)


def test_an_exception_in_a_forward_pass_fails_that_batch_only(faulty_server):
    response = faulty_server.post("/embed/text", json={"texts": ["x"] * 7})
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "model_error" and "text model failed on this batch" in error["message"]
    assert faulty_server.post("/embed/text", json={"texts": ["x"] * 6}).status_code == 200
    assert faulty_server.get("/health").status_code == 200


def batches_started(server, model: str) -> float:
    """Forward passes the model service has begun (counted before the test's delay)."""
    return sample(scrape(server), "embedding_model_batch_size_count", model=model)


@pytest.mark.parametrize(("service", "model", "call"), [("text_model", "text", TEXT), ("image_model", "image", IMAGE)])
def test_a_killed_model_worker_fails_its_requests_and_comes_back(faulty_server, service, model, call):
    api_pid, old_pid = worker_pid(faulty_server, "embedding_api"), worker_pid(faulty_server, service)
    started_before = batches_started(faulty_server, model)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, faulty_server, call)
        deadline = time.monotonic() + 10
        while batches_started(faulty_server, model) == started_before:  # wait until its forward pass is running
            assert time.monotonic() < deadline, "the request never reached the model"
            time.sleep(0.05)
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()
        response = in_flight.result()
    assert time.monotonic() - killed < 5  # an answer, not a hang
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_unavailable" and response.headers["Retry-After"]
    wait_for_health(faulty_server, 503, within_s=10)
    assert requests.get(faulty_server.url + "/readyz", timeout=30).status_code == 503
    wait_for_health(faulty_server, 200, within_s=90)  # BentoML restarted the worker
    assert worker_pid(faulty_server, service) != old_pid
    assert worker_pid(faulty_server, "embedding_api") == api_pid  # the rest of the server never stopped
    assert post(faulty_server, call).status_code == 200


# --- a small server: text only, 1.5 s forward passes, 2.5 s deadline, 4 items may wait -------------------------------
# The model runs the API's two calls in flight one after the other: the first ends at 1.5 s, within the deadline, and
# the second at 3 s, past it, whatever the machine's speed (the delay is a floor); the margins are a second.

FORWARD_S = 1.5


@pytest.fixture(scope="module")
def small_server(model_store, tmp_path_factory):
    running = start_server(
        model_store,
        tmp_path_factory.mktemp("logs") / "small.log",
        target=FAULTY,
        IMAGE_MODEL_NAME="",
        FAULT_FORWARD_DELAY_S=str(FORWARD_S),
        REQUEST_TIMEOUT_S="2.5",
        MAX_QUEUED_ITEMS="4",
        MAX_ITEMS_PER_REQUEST="4",
    )
    yield running
    stop_server(running)


def concurrently(server, bodies: list[dict]) -> list[tuple[requests.Response, float]]:
    def timed(body: dict) -> tuple[requests.Response, float]:
        started = time.monotonic()
        response = requests.post(server.url + "/embed/text", json=body, timeout=30)
        return response, time.monotonic() - started

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(timed, bodies))


def let_the_model_finish() -> None:
    """Cancelled requests' calls that the model service already took still run to their end."""
    time.sleep(3 * FORWARD_S)


def test_a_request_past_its_deadline_is_a_504_not_a_wait(small_server):
    answers = concurrently(small_server, [{"texts": ["one"]}, {"texts": ["two"]}, {"texts": ["three"]}])
    statuses = sorted(response.status_code for response, _ in answers)
    assert statuses == [200, 504, 504], [r.text for r, _ in answers]
    for response, seconds in answers:
        assert seconds < 5
        if response.status_code == 504:
            assert response.json()["error"]["code"] == "request_timeout"
    let_the_model_finish()
    assert small_server.post("/embed/text", json={"texts": ["after"]}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(small_server):
    answers = concurrently(small_server, [{"texts": ["a", "b"]}] * 12)
    overloaded = [response for response, _ in answers if response.status_code == 503]
    assert {response.status_code for response, _ in answers} <= {200, 503, 504}
    assert len(overloaded) >= 6  # two calls in flight, four items (two requests) waiting: the rest are refused
    for response in overloaded:
        assert response.json()["error"]["code"] == "overloaded" and response.headers["Retry-After"] == "1"
    assert max(seconds for _, seconds in answers) < 5
    let_the_model_finish()
    assert small_server.post("/embed/text", json={"texts": ["after"]}).status_code == 200
    assert small_server.get("/health").status_code == 200


def test_a_client_that_leaves_leaves_no_work_behind(small_server):
    before = scrape(small_server)
    with ThreadPoolExecutor(2) as pool:
        # Two calls keep the model busy for 3 s; the third request waits in the API's queue...
        busy = [pool.submit(requests.post, small_server.url + "/embed/text", json={"texts": ["x"]}, timeout=30)]
        busy.append(pool.submit(requests.post, small_server.url + "/embed/text", json={"texts": ["y"]}, timeout=30))
        time.sleep(0.2)
        body = b'{"texts": ["l", "e", "f"]}'
        address = urlsplit(small_server.url)
        with socket.create_connection((address.hostname, address.port)) as connection:
            connection.sendall(
                b"POST /embed/text HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.2)
        # ...and its client has gone before the model was free.
        for future in busy:
            future.result()
    time.sleep(1)
    moved = sample(scrape(small_server), "embedding_model_batch_size_sum", model="text") - sample(
        before, "embedding_model_batch_size_sum", model="text"
    )
    assert moved == 2  # the two that stayed; the three texts of the one that left were never computed


# --- SIGTERM ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("to", ["arbiter", "process group"])
def test_sigterm_lets_requests_in_flight_finish_and_exits_0(model_store, tmp_path, to):
    """`docker stop` signals the arbiter; Ctrl-C, systemd and `kill -- -pgid` the whole group, so that each model
    worker hears the signal twice (the arbiter forwards it)."""
    server = start_server(
        model_store, tmp_path / "sigterm.log", target=FAULTY, IMAGE_MODEL_NAME="", FAULT_FORWARD_DELAY_S="1"
    )
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(post, server, TEXT) for _ in range(8)]
            time.sleep(0.5)  # all eight are in the API, two calls at the model
            if to == "arbiter":
                os.kill(server.process.pid, signal.SIGTERM)
            else:
                os.killpg(server.process.pid, signal.SIGTERM)
            assert [answer.result().status_code for answer in answers] == [200] * 8
        assert server.process.wait(30) == 0
    finally:
        stop_server(server)


def test_after_sigterm_the_server_is_not_ready_but_serves_for_the_shutdown_delay(model_store, tmp_path):
    """What lets a load balancer polling /readyz stop sending requests before the listener closes."""
    server = start_server(model_store, tmp_path / "delay.log", IMAGE_MODEL_NAME="", SHUTDOWN_DELAY_S="3")
    try:
        signalled = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert server.get("/readyz").status_code == 503
        health = server.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "stopping"
        assert post(server, TEXT).status_code == 200  # still served
        assert server.get("/livez").status_code == 200
        assert server.process.wait(30) == 0
        assert time.monotonic() - signalled >= 3
    finally:
        stop_server(server)
