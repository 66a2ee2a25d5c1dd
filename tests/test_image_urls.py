"""Image URLs (ALLOW_IMAGE_URLS): the address checks as a pure function, the fetch in process against a local HTTP(S)
server, and every route through a real server that fetches from it, each refusal with its status, code and index."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import data_url, image_bytes, start_server, stop_server

from embedding_server import image_urls
from embedding_server.errors import ApiError
from embedding_server.image_urls import ImageFetcher, fetch_image, is_public_address, looks_like_url, normalize_host
from embedding_server.settings import Settings

PNG = image_bytes("PNG", (64, 48), color=(20, 120, 220))
MAX_IMAGE_BYTES = 300_000  # conftest's TEST_LIMITS
BIG = b"\x89PNG\r\n\x1a\n" + b"\0" * (MAX_IMAGE_BYTES + 100_000)
HITS: Counter[str] = Counter()
"""Requests for /counted/NAME, by NAME."""


class Handler(http.server.BaseHTTPRequestHandler):
    """The remote: images, redirect chains, wrong types, oversized, slow and failing answers."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: C901 - one branch per path is the clearest here
        path = self.path
        if path in ("/img.png", "/octet"):
            self._send(200, PNG, "image/png" if path == "/img.png" else "application/octet-stream")
        elif path.startswith("/chain/"):  # /chain/N: N redirects, then the image
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/chain/{left - 1}" if left else None)
        elif path == "/to-loopback-ip":
            self._redirect(f"http://127.0.0.1:{self.server.server_port}/img.png")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/html":
            self._send(200, b"<html><body>not an image</body></html>", "text/html; charset=utf-8")
        elif path == "/big":
            self._send(200, BIG, "image/png")
        elif path == "/big-no-length":  # close-delimited: the size is only known while reading
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self._write_slowly(BIG, chunk=50_000, pause=0)
        elif path == "/chunked":  # no Content-Length either, in chunks
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(BIG), 50_000):
                part = BIG[start : start + 50_000]
                if not self._write(f"{len(part):x}\r\n".encode() + part + b"\r\n"):
                    return
            self._write(b"0\r\n\r\n")
        elif path == "/slow":  # answers after the fetch's read timeout
            time.sleep(5)
            self._send(200, PNG, "image/png")
        elif path == "/drip":  # a byte every 0.2 s: no read ever times out, only the deadline stops it
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self._write_slowly(PNG, chunk=1, pause=0.2)
        elif path == "/header-drip":  # the status line, then a header byte every 0.5 s: only the deadline stops it
            self._write(b"HTTP/1.1 200 OK\r\n")
            self._write_slowly(b"X-Drip: " + b"a" * 400, chunk=1, pause=0.5)
        elif path.startswith("/counted/"):
            HITS[path.rsplit("/", 1)[1]] += 1
            self._send(200, PNG, "image/png")
        elif path == "/gzip":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self._write(b"\x1f\x8b\x08\x00")
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(body)

    def _redirect(self, location: str | None) -> None:
        if location is None:
            self._send(200, PNG, "image/png")
            return
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
            return True
        except OSError:  # the fetch gave up and closed the connection, as it should
            self.close_connection = True
            return False

    def _write_slowly(self, data: bytes, chunk: int, pause: float) -> None:
        for start in range(0, len(data), chunk):
            if not self._write(data[start : start + chunk]):
                return
            time.sleep(pause)
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


def serve(context: ssl.SSLContext | None = None) -> Iterator[int]:
    remote = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    remote.daemon_threads = True
    if context is not None:
        remote.socket = context.wrap_socket(remote.socket, server_side=True)
    thread = threading.Thread(target=remote.serve_forever, daemon=True)
    thread.start()
    yield remote.server_port
    remote.shutdown()
    remote.server_close()


@pytest.fixture(scope="module")
def remote() -> Iterator[int]:
    """A plain HTTP server on 127.0.0.1 (which is what `localhost` resolves to here); its port."""
    yield from serve()


@pytest.fixture(scope="module")
def url_server(model_store, tmp_path_factory):
    running = start_server(
        model_store,
        tmp_path_factory.mktemp("logs") / "image-urls.log",
        ALLOW_IMAGE_URLS="true",
        IMAGE_URL_ALLOWLIST="localhost",
        IMAGE_FETCH_TIMEOUT_S="1",
        IMAGE_FETCH_DEADLINE_S="3",
    )
    yield running
    stop_server(running)


def settings(**overrides) -> Settings:
    values = {
        "allow_image_urls": True,
        "image_url_allowlist": "localhost",
        "image_fetch_timeout_s": 1.0,
        "image_fetch_deadline_s": 3.0,
        "max_image_bytes": MAX_IMAGE_BYTES,
    }
    return Settings(**(values | overrides))


def refusal(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    return caught.value


# --- the address check: a pure function ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",  # loopback
        "127.8.9.10",
        "10.1.2.3",  # private
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "169.254.169.254",  # link-local: cloud metadata
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",  # unspecified, and "this network"
        "0.1.2.3",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "::1",
        "::",
        "fe80::1",  # link-local
        "fe80::1%eth0",
        "fc00::1",  # unique local
        "fd12:3456::1",
        "fec0::1",  # site-local
        "ff02::1",  # multicast
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:0001::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::1",  # local-use NAT64
        "2001:db8::1",  # documentation
        "2001::1",  # Teredo
        "::127.0.0.1",  # IPv4-compatible (deprecated)
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700::1", "2a00:1450:4001:81a::200e", "::ffff:93.184.216.34"]
)
def test_public_addresses_are_allowed(address):
    assert is_public_address(address)


def test_what_counts_as_a_url_and_how_hosts_compare():
    for content in ("http://x/a.png", "HTTPS://x", "ftp://x", "file:///etc/passwd", "javascript:alert(1)"):
        assert looks_like_url(content)
    for content in (data_url(PNG), "iVBORw0KGgo=", "", "  "):
        assert not looks_like_url(content)
    assert normalize_host("LocalHost.") == "localhost"
    assert normalize_host("[0:0::1]") == "::1"


# --- the fetch in process ------------------------------------------------------------------------------------------


def test_fetch_through_the_allowlist(remote):
    assert fetch_image(f"http://localhost:{remote}/img.png", settings(), 0) == PNG
    assert fetch_image(f"http://LOCALHOST.:{remote}/chain/3", settings(), 0) == PNG  # 3 redirects: the most
    assert fetch_image(f"http://localhost:{remote}/octet", settings(), 0) == PNG


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/chain/4", "image_fetch_failed", "more than 3 redirects"),
        ("/to-loopback-ip", "image_url_not_allowed", "public"),
        ("/to-file", "image_url_not_allowed", "http or https"),
        ("/html", "not_an_image", "text/html"),
        ("/big", "image_too_large", "300000"),
        ("/big-no-length", "image_too_large", "300000"),
        ("/chunked", "image_too_large", "300000"),
        ("/missing", "image_fetch_failed", "HTTP 404"),
        ("/gzip", "image_fetch_failed", "compressed"),
    ],
)
def test_fetch_refusals(remote, path, code, words):
    error = refusal(lambda: fetch_image(f"http://localhost:{remote}{path}", settings(), 5))
    assert (error.code.value, error.index) == (code, 5) and words in error.message, error.message


def test_a_host_is_refused_unless_allowlisted_by_the_name_in_the_url(remote):
    for url in (f"http://127.0.0.1:{remote}/img.png", f"http://[::ffff:127.0.0.1]:{remote}/img.png"):
        error = refusal(lambda url=url: fetch_image(url, settings(), 1))
        assert (error.code.value, error.index, error.status) == ("image_url_not_allowed", 1, 422)
    error = refusal(lambda: fetch_image(f"http://localhost:{remote}/img.png", settings(image_url_allowlist=""), 1))
    assert error.code.value == "image_url_not_allowed" and "127.0.0.1" not in error.message
    # An IP literal may be allowlisted too; then only that literal is, not the names that resolve to it.
    assert fetch_image(f"http://127.0.0.1:{remote}/img.png", settings(image_url_allowlist="127.0.0.1"), 0) == PNG


def test_a_host_that_does_not_resolve_is_refused_like_a_private_one():
    error = refusal(lambda: fetch_image("http://no-such-host.invalid/x.png", settings(), 2))
    assert error.code.value == "image_url_not_allowed" and "public internet" in error.message


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("ftp://localhost/x.png", "invalid_image_url"),
        ("file:///etc/passwd", "invalid_image_url"),
        ("http://", "invalid_image_url"),
        ("http://user:secret@localhost/x.png", "invalid_image_url"),
        ("http://localhost:99999/x.png", "invalid_image_url"),
        ("http://" + "a" * 9000, "invalid_image_url"),
    ],
)
def test_urls_that_cannot_be_fetched(url, code):
    error = refusal(lambda: fetch_image(url, settings(), 3))
    assert (error.code.value, error.index, error.status) == (code, 3, 422)


def test_urls_are_off_by_default():
    assert Settings.model_fields["allow_image_urls"].default is False
    error = refusal(lambda: fetch_image("http://localhost/x.png", Settings(allow_image_urls=False), 0))
    assert (error.code.value, error.status) == ("image_url_disabled", 422) and "ALLOW_IMAGE_URLS" in error.message


def test_timeouts_and_the_deadline(remote):
    started = time.monotonic()
    error = refusal(lambda: fetch_image(f"http://localhost:{remote}/slow", settings(), 0))
    assert error.code.value == "image_fetch_failed" and "timed out" in error.message
    assert time.monotonic() - started < 3  # the 1 s read timeout, not the server's 5 s

    started = time.monotonic()  # a byte every 0.2 s never trips the read timeout; the 1.5 s deadline stops it
    error = refusal(lambda: fetch_image(f"http://localhost:{remote}/drip", settings(image_fetch_deadline_s=1.5), 0))
    assert error.code.value == "image_fetch_failed" and "longer than 1.5 s" in error.message
    assert 1.4 < time.monotonic() - started < 3

    with socket_closed_port() as port:
        error = refusal(lambda: fetch_image(f"http://localhost:{port}/x.png", settings(), 0))
    assert (error.code.value, error.status) == ("image_fetch_failed", 502) and "refused" in error.message


def test_the_deadline_covers_the_status_line_and_headers(remote):
    """Each header byte comes inside the 1 s read timeout: the 2 s deadline must still end the fetch."""
    started = time.monotonic()
    error = refusal(
        lambda: fetch_image(
            f"http://localhost:{remote}/header-drip",
            settings(image_fetch_timeout_s=1.0, image_fetch_deadline_s=2.0),
            4,
        )
    )
    elapsed = time.monotonic() - started
    assert (error.code.value, error.index, error.status) == ("image_fetch_failed", 4, 502), error.message
    assert "longer than 2 s" in error.message
    assert 1.9 < elapsed < 2 + 1.5


def test_sni_and_the_certificate_check_use_the_idna_host():
    target = image_urls._parse("https://B\u00fccher.example:8443/a.png", 0, redirected=False)
    assert (target.host, target.ascii_host, target.host_header) == (
        "b\u00fccher.example",
        "xn--bcher-kva.example",
        "xn--bcher-kva.example:8443",
    )
    target = image_urls._parse("https://[::1]/a.png", 0, redirected=False)
    assert (target.ascii_host, target.host_header) == ("::1", "[::1]")


def test_a_request_fetches_its_urls_at_once_and_stops_them_when_it_fails_or_ends(remote):
    """A cancelled request (its deadline, its client gone) stops its fetch under way and drops the one still queued
    (one fetch thread); with two, a failing URL fails the request at once (fail_fast), stopping the dripping one,
    and in /embed/batch's mode each URL gets its own result."""
    fetcher = ImageFetcher(settings(image_fetch_concurrency=1, image_fetch_deadline_s=30.0, image_fetch_timeout_s=5.0))
    drip, missing = f"http://localhost:{remote}/header-drip", f"http://localhost:{remote}/missing"

    async def cancelled() -> float:
        task = asyncio.ensure_future(
            fetcher.fetch({0: drip, 1: f"http://localhost:{remote}/counted/queued"}, fail_fast=False)
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        started = time.monotonic()  # the one thread is free at once: the drip was stopped, not left to its 30 s
        assert await fetcher.fetch({2: f"http://localhost:{remote}/img.png"}, fail_fast=True) == {2: PNG}
        return time.monotonic() - started

    try:
        assert asyncio.run(cancelled()) < 1.0
        assert HITS["queued"] == 0  # never started
    finally:
        fetcher.close()

    fetcher = ImageFetcher(settings(image_fetch_concurrency=2, image_fetch_deadline_s=30.0, image_fetch_timeout_s=5.0))

    async def fail_fast() -> float:
        started = time.monotonic()
        with pytest.raises(image_urls.ApiError) as caught:
            await fetcher.fetch({0: drip, 1: missing}, fail_fast=True)
        assert (caught.value.code.value, caught.value.index) == ("image_fetch_failed", 1)
        assert await fetcher.fetch({2: f"http://localhost:{remote}/img.png"}, fail_fast=True) == {2: PNG}
        results = await fetcher.fetch({0: f"http://localhost:{remote}/img.png", 1: missing}, fail_fast=False)
        assert results[0] == PNG and results[1].index == 1 and "HTTP 404" in results[1].message
        return time.monotonic() - started

    try:
        assert asyncio.run(fail_fast()) < 1.5
    finally:
        fetcher.close()


class socket_closed_port:  # noqa: N801 - used as a context manager
    """A port on 127.0.0.1 that nothing listens on."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def tls_remote(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """An HTTPS server whose self-signed certificate names `localhost` only; its port and the certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],  # fmt: skip
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    for port in serve(context):
        yield port, cert


def test_https_connects_to_the_checked_address_and_verifies_the_name(tls_remote, monkeypatch):
    port, cert = tls_remote
    # Not signed by a CA that certifi knows: refused.
    error = refusal(lambda: fetch_image(f"https://localhost:{port}/img.png", settings(), 0))
    assert error.code.value == "image_fetch_failed" and "certificate" in error.message
    # Trusted: the connection goes to 127.0.0.1, and SNI and the certificate check use the URL's host name.
    monkeypatch.setattr(image_urls.certifi, "where", lambda: str(cert))
    assert fetch_image(f"https://localhost:{port}/img.png", settings(), 0) == PNG
    # The same server by its address: the certificate does not name 127.0.0.1.
    error = refusal(
        lambda: fetch_image(f"https://127.0.0.1:{port}/img.png", settings(image_url_allowlist="127.0.0.1"), 0)
    )
    assert error.code.value == "image_fetch_failed" and "certificate" in error.message


# --- through the server --------------------------------------------------------------------------------------------


def assert_error(response, status: int, code: str, index: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error.get("index")) == (code, index), error
    return error


def test_server_embeds_an_allowlisted_url_as_the_same_image(url_server, remote):
    by_data = url_server.post("/embed/image", json={"images": [data_url(PNG)]})
    by_url = url_server.post(
        "/embed/image", json={"images": [f"http://localhost:{remote}/img.png", f"http://localhost:{remote}/chain/2"]}
    )
    assert by_data.status_code == 200 and by_url.status_code == 200, by_url.text
    expected = np.array(by_data.json()["embeddings"][0])
    for vector in by_url.json()["embeddings"]:
        np.testing.assert_allclose(vector, expected, atol=1e-6)

    labels = ["a red square", "a blue square"]
    classified = [
        url_server.post("/classify/image", json={"images": [image], "labels": labels}).json()["results"]
        for image in (data_url(PNG), f"http://localhost:{remote}/img.png")
    ]
    assert classified[0] == classified[1]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("http://localhost:{port}/chain/4", 502, "image_fetch_failed"),  # more than 3 redirects
        ("http://localhost:{port}/to-loopback-ip", 422, "image_url_not_allowed"),  # redirected off the allowlist
        ("http://127.0.0.1:{port}/img.png", 422, "image_url_not_allowed"),  # loopback, not allowlisted
        ("http://169.254.169.254/latest/meta-data/", 422, "image_url_not_allowed"),  # cloud metadata
        ("http://localhost:{port}/html", 422, "not_an_image"),
        ("http://localhost:{port}/big", 413, "image_too_large"),
        ("http://localhost:{port}/big-no-length", 413, "image_too_large"),
        ("http://localhost:{port}/slow", 502, "image_fetch_failed"),  # IMAGE_FETCH_TIMEOUT_S=1
        ("http://localhost:{port}/missing", 502, "image_fetch_failed"),
        ("ftp://localhost:{port}/img.png", 422, "invalid_image_url"),
        ("file:///etc/passwd", 422, "invalid_image_url"),
    ],
)
def test_server_refusals_name_the_item(url_server, remote, path, status, code):
    started = time.monotonic()
    response = url_server.post("/embed/image", json={"images": [data_url(PNG), path.format(port=remote)]})
    assert_error(response, status, code, 1)
    assert time.monotonic() - started < 4  # the slow server (5 s) is given up on after the 1 s timeout


def test_server_batch_fails_only_the_bad_url(url_server, remote):
    items = [
        {"id": "good", "type": "image", "content": f"http://localhost:{remote}/img.png"},
        {"id": "loopback", "type": "image", "content": f"http://127.0.0.1:{remote}/img.png"},
        {"id": "text", "type": "text", "content": "still embedded"},
        {"id": "missing", "type": "image", "content": f"http://localhost:{remote}/missing"},
    ]
    response = url_server.post("/embed/batch", json={"items": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["good", "loopback", "text", "missing"]
    assert results[0]["embedding"] and results[2]["embedding"]
    assert results[1]["error"]["code"] == "image_url_not_allowed"
    assert results[3]["error"]["code"] == "image_fetch_failed"
    assert response.json()["metadata"]["failed"] == 2


def test_slow_urls_do_not_hold_the_text_routes(url_server, remote):
    """8 requests of 2 dripping URLs each (16 fetches, 3 s each, for 8 fetch threads): a text request still answers
    at once, since fetches no longer wait in the API's shared worker threads; each URL request answers, 502."""
    urls = [f"http://localhost:{remote}/header-drip", f"http://localhost:{remote}/drip"]
    with ThreadPoolExecutor(8) as clients:
        started = time.monotonic()
        slow = [clients.submit(url_server.post, "/embed/image", json={"images": urls}) for _ in range(8)]
        time.sleep(1.0)  # all in flight, every fetch thread busy
        assert not any(future.done() for future in slow)
        text_started = time.monotonic()
        response = url_server.post("/embed/text", json={"texts": ["still answered"]})
        assert response.status_code == 200, response.text
        assert time.monotonic() - text_started < 2
        for future in slow:
            assert future.result().status_code in (502, 504), future.result().text
    assert time.monotonic() - started < 15  # two rounds of 3 s deadlines, not a hang


def test_the_openapi_document_mentions_urls_only_when_on(url_server, server):
    def described(running) -> str:
        return running.get("/docs.json").text

    assert "http(s) URLs" in described(url_server) and "http(s) URLs" not in described(server)


def test_default_server_says_urls_are_off(server, remote):
    response = server.post("/embed/image", json={"images": [data_url(PNG), f"http://localhost:{remote}/img.png"]})
    error = assert_error(response, 422, "image_url_disabled", 1)
    assert "ALLOW_IMAGE_URLS" in error["message"]
    assert_error(server.post("/embed/image", json={"images": ["file:///etc/passwd"]}), 422, "invalid_image_url", 0)
    batch = server.post(
        "/embed/batch",
        json={"items": [{"id": "u", "type": "image", "content": f"https://localhost:{remote}/img.png"}]},
    ).json()
    assert batch["results"][0]["error"]["code"] == "image_url_disabled"
