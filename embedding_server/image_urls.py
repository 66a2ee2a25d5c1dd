"""Image content given as an http(s) URL, fetched by the server without letting a request reach what it must not
(server-side request forgery): opt-in with ALLOW_IMAGE_URLS, off by default.

One fetch, step by step:

1. The URL must be http or https, with a host, without user name or password, at most 8192 characters.
2. The host is resolved **once** (`getaddrinfo`, bounded by the deadline) and **every** address it resolves to must be
   public (`is_public_address`): no loopback, private, shared (CGNAT), link-local (cloud metadata at 169.254.169.254),
   multicast, reserved, unspecified or documentation address, IPv4 or IPv6, nor an IPv6 address that embeds such an
   IPv4 one (IPv4-mapped, 6to4, NAT64). A host in IMAGE_URL_ALLOWLIST skips this check: the operator trusts it,
   wherever its DNS points.
3. The connection goes to the **checked address**, never to the name again (a second lookup could answer otherwise:
   DNS rebinding), with the URL's host (IDNA-encoded) in `Host` and, for https, in SNI and the certificate check
   (certifi's CAs). No proxy from the environment is used.
4. A redirect (301, 302, 303, 307, 308) is followed by going back to step 1 with its `Location` (relative ones
   resolved against the current URL), at most `MAX_REDIRECTS` times. So a public or allowlisted host cannot bounce
   the fetch to an address that the first check would have refused.
5. The answer must be 200 with an image `Content-Type` (`image/*`; also `application/octet-stream`, what many object
   stores serve images as, and none at all, which HTTP says to read as octet-stream: the decoder decides then). It
   is read in chunks and refused as soon as it passes MAX_IMAGE_BYTES (a `Content-Length` over it is refused before
   reading). Compressed answers are not asked for, and refused when sent anyway: an image gains nothing from gzip and
   a small compressed body could inflate without bound.
6. Connecting and each read wait at most IMAGE_FETCH_TIMEOUT_S, and the whole fetch at most IMAGE_FETCH_DEADLINE_S:
   DNS (the wait for it), every redirect's connection, TLS handshake, request, status line, headers and body. A
   `Watchdog` enforces it: a timer that shuts the connection's socket down at the deadline, which ends whatever the
   fetch is blocked on, so a server that drips a header byte just inside each read timeout cannot hold a fetch.
7. `ImageFetcher` runs the fetches of a request all at once in a thread pool of their own (IMAGE_FETCH_CONCURRENCY
   threads), never in the event loop's default executor, which the API's tokenising and decoding share: slow remotes
   can make URL requests wait, not the text routes. A request that is cancelled (its deadline, its client gone)
   drops its fetches that have not started and stops those under way (the watchdog's `cancel`).

Refusals say what the client needs and no more: a host that does not resolve and one that resolves to a non-public
address get the same answer, and no resolved address is ever quoted, so that the API cannot be used to map the
server's network or its internal DNS.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError as Urllib3Error

from embedding_server.errors import ApiError, ErrorCode

if TYPE_CHECKING:
    from embedding_server.settings import Settings

MAX_REDIRECTS = 3
MAX_URL_CHARS = 8192
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPTED_TYPES = ("application/octet-stream", "binary/octet-stream")
_CHUNK_BYTES = 64 * 1024
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_USER_AGENT = "embedding-server image fetch"

# Refused whatever the Python version's tables say (ipaddress's is_private/is_global moved between releases).
_NON_PUBLIC_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches the local host on Linux
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "64:ff9b:1::/48",  # local-use NAT64
        "fec0::/10",  # deprecated site-local
        "2001::/23",  # IETF protocol assignments, Teredo included
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# getaddrinfo has no timeout of its own: it runs here, and a fetch stops waiting for it at its deadline.
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-url-dns")
_DNS_WAIT_SLICE_S = 0.1


def looks_like_url(content: str) -> bool:
    """Content that starts with a URL scheme other than `data:` (base64 has no colon, so none is mistaken)."""
    match = _SCHEME.match(content)
    return match is not None and match.group().lower() != "data:"


def is_public_address(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is on the public internet; an IPv6 address that embeds an IPv4 one (IPv4-mapped, 6to4,
    NAT64) is judged by the IPv4 address, which is where its packets end up."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)  # no zone id
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = (
            ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        )
        if embedded is not None:
            return is_public_address(embedded)
    return not (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
        or any(ip.version == network.version and ip in network for network in _NON_PUBLIC_NETWORKS)
    )


def normalize_host(host: str) -> str:
    """A host as the allowlist compares it: lower case, without brackets or a trailing dot, IP literals canonical."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


@functools.cache
def allowed_hosts(allowlist: str) -> frozenset[str]:
    """IMAGE_URL_ALLOWLIST's comma-separated hosts, normalised."""
    return frozenset(normalize_host(host) for host in allowlist.split(",") if host.strip())


@dataclass(frozen=True)
class _Target:
    url: str
    https: bool
    host: str
    """Normalised (see normalize_host); what the allowlist and the DNS lookup see."""
    ascii_host: str
    """The host IDNA-encoded, without brackets: what TLS SNI and the certificate check see."""
    port: int
    host_header: str
    """`Host`, IDNA-encoded, with the port when it is not the scheme's."""
    path: str


class Watchdog:
    """Ends one fetch at its deadline, or at once when `cancel`led, whatever the fetch is blocked on: a timer shuts
    the socket of the connection under way down (`shutdown(SHUT_RDWR)`), which makes a TLS handshake, the request,
    the status line, the headers or the body that is being waited for return at once. The per-read timeout alone
    cannot bound a fetch: a server that sends a header byte just inside it would hold one for ever.

    It holds a duplicate of the socket's descriptor, so that a shutdown can only reach the fetch's own connection
    (never an unrelated socket given a descriptor number that the fetch has closed); a shutdown acts on the
    connection whichever of its descriptors it is given. Connecting itself is not watched: it waits at most the time
    left (and IMAGE_FETCH_TIMEOUT_S), and the deadline and a cancel are checked before and after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._socket: socket.socket | None = None
        self._finished = False
        self.stopped: Literal["deadline", "cancelled"] | None = None
        """Why the watchdog stopped the fetch, once it has."""

    def start(self, deadline: float) -> None:
        """Arms the timer for `deadline` (time.monotonic)."""
        with self._lock:
            if self.stopped is None and self._timer is None and not self._finished:
                self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._stop, ("deadline",))
                self._timer.daemon = True
                self._timer.start()

    def cancel(self) -> None:
        """Stops the fetch now, from any thread; a fetch cancelled before it starts fails at once."""
        self._stop("cancelled")

    def watch(self, sock: socket.socket) -> None:
        """`sock` is now the fetch's connection (a newly connected one, before TLS)."""
        duplicate = sock.dup()
        with self._lock:
            self._release()
            self._socket = duplicate
            if self.stopped is not None or self._finished:
                self._shut_down()

    def release(self) -> None:
        """The connection is closed: lets go of its descriptor (the connection closes once both are)."""
        with self._lock:
            self._release()

    def finish(self) -> None:
        """The fetch is over: the timer is cancelled and the connection let go of."""
        with self._lock:
            self._finished = True
            if self._timer is not None:
                self._timer.cancel()
            self._release()

    def _stop(self, why: Literal["deadline", "cancelled"]) -> None:
        with self._lock:
            if self._finished:
                return
            self.stopped = self.stopped or why
            self._shut_down()

    def _shut_down(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):  # already closed by the remote: nothing is waiting on it
                self._socket.shutdown(socket.SHUT_RDWR)

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection that hands its socket to its fetch's watchdog as soon as it is connected."""

    def __init__(self, *args, watchdog: Watchdog, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.watchdog = watchdog

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        self.watchdog.watch(sock)
        return sock


class _WatchedHTTPSConnection(_WatchedHTTPConnection, urllib3.connection.HTTPSConnection):
    """The same over TLS: the watchdog has the socket before the handshake starts."""


class ImageFetcher:
    """Fetches the image URLs of requests from async code: in a thread pool of its own (IMAGE_FETCH_CONCURRENCY
    threads), so that network waits never hold the event loop's default executor, which tokenising and decoding
    share; all URLs of a request at once.

    When every thread is busy, fetches wait their turn in the pool's queue (first come, first served) and a fetch's
    IMAGE_FETCH_DEADLINE_S counts from when it starts. The wait is bounded anyway: the request's own deadline
    (REQUEST_TIMEOUT_S) answers 504 and cancels its work, which drops its fetches still queued and stops those under
    way. This is preferred to a 503 past some queue length: a queued fetch costs a few bytes, a busy pool is only
    slow remotes (not this server's capacity, which a retry would not find any freer), and any limit would refuse
    a request of many URLs while a stream of small ones got through."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ThreadPoolExecutor(settings.image_fetch_concurrency, thread_name_prefix="image-fetch")

    async def fetch(self, urls: Mapping[int, str], fail_fast: bool) -> dict[int, bytes | ApiError]:
        """The bytes of each URL, by its item's index, or the ApiError of its fetch.

        `fail_fast`: the first refusal is raised instead (the lowest index among those that came at once) and the
        other fetches are stopped, since the request fails as a whole. Otherwise every fetch runs to its end (one
        bad item of /embed/batch fails only itself). Cancelling this coroutine stops every fetch not done."""
        if not urls:
            return {}
        loop = asyncio.get_running_loop()
        watchdogs = {index: Watchdog() for index in urls}
        futures = {
            loop.run_in_executor(self.pool, fetch_image, url, self.settings, index, watchdogs[index]): index
            for index, url in urls.items()
        }
        try:
            pending = set(futures)
            while pending:
                done, pending = await asyncio.wait(
                    pending, return_when=asyncio.FIRST_EXCEPTION if fail_fast else asyncio.ALL_COMPLETED
                )
                failed = sorted((futures[f], f.exception()) for f in done if f.exception() is not None)
                if fail_fast and failed:
                    raise failed[0][1]
        finally:
            for future, index in futures.items():
                if future.done():
                    if not future.cancelled():
                        future.exception()  # seen, so not logged as lost when the request ends without it
                else:
                    future.cancel()  # not started yet: taken off the pool's queue
                    watchdogs[index].cancel()  # under way: its connection is shut down
        results: dict[int, bytes | ApiError] = {}
        for future, index in futures.items():
            error = future.exception()
            if error is not None and not isinstance(error, ApiError):
                raise error
            results[index] = future.result() if error is None else error
        return results

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def fetch_image(url: str, settings: Settings, index: int | None = None, watchdog: Watchdog | None = None) -> bytes:
    """The bytes of the image at `url` (at most MAX_IMAGE_BYTES), fetched as the module docstring says; blocks, so
    async code goes through ImageFetcher. `watchdog` lets another thread cancel the fetch.

    Raises ApiError naming `index`: `image_url_disabled` (ALLOW_IMAGE_URLS is off), `invalid_image_url` (not an
    http(s) URL that can be fetched), `image_url_not_allowed` (a non-public address, or a redirect to one or to
    another scheme), `image_fetch_failed` (connection, TLS, timeout, the deadline, an HTTP error, too many redirects,
    cancelled), `not_an_image` (a Content-Type that is no image), `image_too_large` (over MAX_IMAGE_BYTES)."""
    if not looks_like_url(url) or url.split(":", 1)[0].lower() not in ("http", "https"):
        raise ApiError(
            ErrorCode.INVALID_IMAGE_URL,
            f"only http and https URLs can be image content, not {url.split(':', 1)[0][:20]!r}; "
            "send other images as data URLs or base64",
            index,
        )
    if not settings.allow_image_urls:
        raise ApiError(
            ErrorCode.IMAGE_URL_DISABLED,
            "image URLs are off on this server: send the image as a data URL or base64 "
            "(the server's operator can accept URLs with ALLOW_IMAGE_URLS=true)",
            index,
        )
    deadline = time.monotonic() + settings.image_fetch_deadline_s
    watchdog = watchdog or Watchdog()
    watchdog.start(deadline)
    try:
        return _fetch(url, settings, deadline, watchdog, index)
    finally:
        watchdog.finish()


def _fetch(url: str, settings: Settings, deadline: float, watchdog: Watchdog, index: int | None) -> bytes:
    allowlist = allowed_hosts(settings.image_url_allowlist)
    target = _parse(url, index, redirected=False)
    for redirects in range(MAX_REDIRECTS + 1):
        addresses = _resolve(target, target.host in allowlist, deadline, watchdog, settings, index)
        connection, response = _request(target, addresses, settings, deadline, watchdog, index)
        try:
            if response.status in _REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise _failed(f"{_shown(target.host)} answered HTTP {response.status} without a Location", index)
                if redirects == MAX_REDIRECTS:
                    raise _failed(f"more than {MAX_REDIRECTS} redirects", index)
                target = _parse(urljoin(target.url, location.strip()), index, redirected=True)
                continue
            if response.status != 200:
                raise _failed(f"{_shown(target.host)} answered HTTP {response.status}", index)
            _check_headers(response, settings.max_image_bytes, index)
            return _read_body(response, settings, deadline, watchdog, index)
        finally:
            response.close()  # and the connection: an unread body is never drained
            _close(connection, watchdog)
    raise AssertionError("unreachable")  # pragma: no cover


def _parse(url: str, index: int | None, redirected: bool) -> _Target:
    refused = ErrorCode.IMAGE_URL_NOT_ALLOWED if redirected else ErrorCode.INVALID_IMAGE_URL
    where = "redirected to a URL that is not" if redirected else "not"
    if len(url) > MAX_URL_CHARS:
        raise ApiError(refused, f"{where} a URL of at most {MAX_URL_CHARS} characters", index)
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise ApiError(refused, f"{where} a valid URL: {exc}", index) from None
    if parts.scheme not in ("http", "https"):
        raise ApiError(refused, f"{where} an http or https URL (scheme {parts.scheme[:20]!r})", index)
    if not host:
        raise ApiError(refused, f"{where} a URL with a host", index)
    if parts.username is not None or parts.password is not None:
        raise ApiError(refused, f"{where} a URL without a user name or password", index)
    https = parts.scheme == "https"
    default_port = 443 if https else 80
    host = normalize_host(host)
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ApiError(refused, f"{where} a URL with a valid host name", index) from None
    bracketed = f"[{ascii_host}]" if ":" in ascii_host else ascii_host  # an IPv6 literal
    port = port or default_port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(
        url=url,
        https=https,
        host=host,
        ascii_host=ascii_host,
        port=port,
        host_header=bracketed if port == default_port else f"{bracketed}:{port}",
        path=path,
    )


def _resolve(
    target: _Target, allowlisted: bool, deadline: float, watchdog: Watchdog, settings: Settings, index: int | None
) -> list[str]:
    """Every address of the host, checked; the same refusal whether it does not resolve or resolves to a
    non-public address, so that internal names cannot be probed."""
    refused = ApiError(
        ErrorCode.IMAGE_URL_NOT_ALLOWED,
        f"host {_shown(target.host)} is not fetched: only hosts whose addresses are all on the public internet are",
        index,
    )
    _check_going(watchdog, settings, deadline, index)
    future = _RESOLVER.submit(socket.getaddrinfo, target.host, target.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    while True:  # waits in slices, so that a cancel is seen within one
        try:
            infos = future.result(timeout=min(_DNS_WAIT_SLICE_S, max(0.0, deadline - time.monotonic())))
            break
        except FutureTimeout:
            if watchdog.stopped is None and time.monotonic() < deadline:
                continue
            future.cancel()
            late = f"looking up {_shown(target.host)} took longer than the fetch's {{}} s"
            _check_going(watchdog, settings, deadline, index, late)
        except (OSError, UnicodeError):
            if allowlisted:
                raise _failed(f"host {_shown(target.host)} does not resolve", index) from None
            raise refused from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not (allowlisted or all(is_public_address(address) for address in addresses)):
        raise refused
    return addresses


def _request(
    target: _Target, addresses: list[str], settings: Settings, deadline: float, watchdog: Watchdog, index: int | None
) -> tuple[urllib3.connection.HTTPConnection, urllib3.BaseHTTPResponse]:
    """GET `target` from the first of its checked addresses that answers; the connection and the response, whose
    body is not read."""
    failure = "no address"
    for address in addresses:
        _check_going(watchdog, settings, deadline, index)
        wait = min(settings.image_fetch_timeout_s, deadline - time.monotonic())
        connection: urllib3.connection.HTTPConnection
        if target.https:
            connection = _WatchedHTTPSConnection(
                address,  # the checked address; the name only in SNI, the certificate check and Host
                target.port,
                timeout=wait,
                watchdog=watchdog,
                server_hostname=target.ascii_host,  # checked against the certificate by the TLS handshake itself
                cert_reqs="CERT_REQUIRED",
                ca_certs=certifi.where(),
            )
        else:
            connection = _WatchedHTTPConnection(address, target.port, timeout=wait, watchdog=watchdog)
        try:
            connection.connect()
            connection.request(
                "GET",
                target.path,
                headers={
                    "Host": target.host_header,
                    "User-Agent": _USER_AGENT,
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",
                },
                preload_content=False,
                decode_content=False,
            )
            response = connection.getresponse()
        except (Urllib3Error, OSError, http.client.HTTPException) as exc:
            _close(connection, watchdog)
            _check_going(watchdog, settings, deadline, index)  # the watchdog cut it short: that is the cause
            failure = _reason(exc)
            continue
        except BaseException:
            _close(connection, watchdog)
            raise
        if watchdog.stopped is not None:  # cut short while the headers were read: they may look complete, not be
            response.close()
            _close(connection, watchdog)
            _check_going(watchdog, settings, deadline, index)
        return connection, response
    raise _failed(f"{_shown(target.host)} could not be reached ({failure})", index)


def _close(connection: urllib3.connection.HTTPConnection, watchdog: Watchdog) -> None:
    connection.close()
    watchdog.release()


def _check_going(
    watchdog: Watchdog,
    settings: Settings,
    deadline: float,
    index: int | None,
    late: str = "the image took longer than {} s to fetch",
) -> None:
    """Raises when the fetch has been cancelled or is past its deadline (`late`, given the deadline's seconds)."""
    if watchdog.stopped == "cancelled":
        raise _failed("the fetch was cancelled, its request having ended", index)
    if watchdog.stopped is not None or time.monotonic() >= deadline:
        raise _failed(late.format(f"{settings.image_fetch_deadline_s:g}"), index)


def _check_headers(response: urllib3.BaseHTTPResponse, max_bytes: int, index: int | None) -> None:
    content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if content_type and not (content_type.startswith("image/") or content_type in _ACCEPTED_TYPES):
        raise ApiError(ErrorCode.NOT_AN_IMAGE, f"the URL's content type is {content_type[:100]!r}, not an image", index)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _failed(f"the URL's answer is compressed ({encoding[:50]}), which is not accepted for images", index)
    length = response.headers.get("Content-Length", "")
    if length.strip().isdigit() and int(length) > max_bytes:
        raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is {int(length)} bytes, more than {max_bytes}", index)


def _read_body(
    response: urllib3.BaseHTTPResponse, settings: Settings, deadline: float, watchdog: Watchdog, index: int | None
) -> bytes:
    """The body in chunks: refused as soon as it passes MAX_IMAGE_BYTES, whatever Content-Length said, or when the
    deadline passes. Each read waits at most IMAGE_FETCH_TIMEOUT_S (the socket's timeout since the request), and
    the watchdog ends one that would outlast the deadline."""
    max_bytes = settings.max_image_bytes
    chunks: list[bytes] = []
    size = 0
    while True:
        _check_going(watchdog, settings, deadline, index)
        try:
            chunk = response.read1(_CHUNK_BYTES)
        except (Urllib3Error, OSError, http.client.HTTPException) as exc:
            _check_going(watchdog, settings, deadline, index)  # the watchdog ended the read
            raise _failed(f"reading the image failed ({_reason(exc)})", index) from None
        if not chunk:
            _check_going(watchdog, settings, deadline, index)  # an end made by the watchdog is not the image's
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes", index)
        chunks.append(chunk)


def _failed(message: str, index: int | None) -> ApiError:
    return ApiError(ErrorCode.IMAGE_FETCH_FAILED, message, index)


def _reason(exc: BaseException) -> str:
    """A short cause for a failed connection or read, without addresses or urllib3's object reprs."""
    text = " ".join(f"{type(e).__name__} {e}" for e in (exc, exc.__cause__, getattr(exc, "reason", None)) if e)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    if "certificate" in text.lower() or "match" in text.lower():
        return "TLS certificate not valid for the host"
    if "ssl" in text.lower():
        return "TLS handshake failed"
    if "refused" in text.lower():
        return "connection refused"
    return "connection failed"


def _shown(host: str) -> str:
    return host if len(host) <= 100 else host[:100] + "…"
