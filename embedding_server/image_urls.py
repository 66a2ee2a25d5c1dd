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
   DNS rebinding), with the URL's host in `Host` and, for https, in SNI and the certificate check (certifi's CAs).
   No proxy from the environment is used.
4. A redirect (301, 302, 303, 307, 308) is followed by going back to step 1 with its `Location` (relative ones
   resolved against the current URL), at most `MAX_REDIRECTS` times. So a public or allowlisted host cannot bounce
   the fetch to an address that the first check would have refused.
5. The answer must be 200 with an image `Content-Type` (`image/*`; also `application/octet-stream`, what many object
   stores serve images as, and none at all, which HTTP says to read as octet-stream: the decoder decides then). It
   is read in chunks and refused as soon as it passes MAX_IMAGE_BYTES (a `Content-Length` over it is refused before
   reading). Compressed answers are not asked for, and refused when sent anyway: an image gains nothing from gzip and
   a small compressed body could inflate without bound.
6. Connecting and each read wait at most IMAGE_FETCH_TIMEOUT_S, and the whole fetch (DNS, redirects, body) at most
   IMAGE_FETCH_DEADLINE_S: a server dripping a byte a second cannot hold a request.

Refusals say what the client needs and no more: a host that does not resolve and one that resolves to a non-public
address get the same answer, and no resolved address is ever quoted, so that the API cannot be used to map the
server's network or its internal DNS.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

import certifi
import urllib3
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
    port: int
    host_header: str
    """`Host`, IDNA-encoded, with the port when it is not the scheme's."""
    path: str


def fetch_image(url: str, settings: Settings, index: int | None = None) -> bytes:
    """The bytes of the image at `url` (at most MAX_IMAGE_BYTES), fetched as the module docstring says.

    Raises ApiError naming `index`: `image_url_disabled` (ALLOW_IMAGE_URLS is off), `invalid_image_url` (not an
    http(s) URL that can be fetched), `image_url_not_allowed` (a non-public address, or a redirect to one or to
    another scheme), `image_fetch_failed` (connection, TLS, timeout, an HTTP error, too many redirects),
    `not_an_image` (a Content-Type that is no image), `image_too_large` (over MAX_IMAGE_BYTES)."""
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
    allowlist = allowed_hosts(settings.image_url_allowlist)
    target = _parse(url, index, redirected=False)
    for redirects in range(MAX_REDIRECTS + 1):
        addresses = _resolve(target, target.host in allowlist, deadline, index)
        response = _request(target, addresses, settings, deadline, index)
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
            return _read_body(response, settings, deadline, index)
        finally:
            response.close()  # closes the connection too: an unread body is never drained
            response.release_conn()
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
    if ":" in ascii_host:  # an IPv6 literal
        ascii_host = f"[{ascii_host}]"
    port = port or default_port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(
        url=url,
        https=https,
        host=host,
        port=port,
        host_header=ascii_host if port == default_port else f"{ascii_host}:{port}",
        path=path,
    )


def _resolve(target: _Target, allowlisted: bool, deadline: float, index: int | None) -> list[str]:
    """Every address of the host, checked; the same refusal whether it does not resolve or resolves to a
    non-public address, so that internal names cannot be probed."""
    refused = ApiError(
        ErrorCode.IMAGE_URL_NOT_ALLOWED,
        f"host {_shown(target.host)} is not fetched: only hosts whose addresses are all on the public internet are",
        index,
    )
    future = _RESOLVER.submit(socket.getaddrinfo, target.host, target.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        infos = future.result(timeout=max(0.0, deadline - time.monotonic()))
    except FutureTimeout:
        future.cancel()
        raise _failed(f"looking up {_shown(target.host)} took longer than the fetch's deadline", index) from None
    except (OSError, UnicodeError):
        if allowlisted:
            raise _failed(f"host {_shown(target.host)} does not resolve", index) from None
        raise refused from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses or not (allowlisted or all(is_public_address(address) for address in addresses)):
        raise refused
    return addresses


def _request(
    target: _Target, addresses: list[str], settings: Settings, deadline: float, index: int | None
) -> urllib3.BaseHTTPResponse:
    """GET `target` from the first of its checked addresses that accepts a connection; the body is not read."""
    failure = "no address"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait = min(settings.image_fetch_timeout_s, remaining)
        options: dict = {"timeout": urllib3.Timeout(connect=wait, read=wait), "retries": False, "maxsize": 1}
        if target.https:
            pool_class = urllib3.HTTPSConnectionPool
            options |= {
                "cert_reqs": "CERT_REQUIRED",
                "ca_certs": certifi.where(),
                "server_hostname": target.host,
                "assert_hostname": target.host,
            }
        else:
            pool_class = urllib3.HTTPConnectionPool
        pool = pool_class(address, target.port, **options)
        try:
            return pool.urlopen(
                "GET",
                target.path,
                headers={
                    "Host": target.host_header,
                    "User-Agent": _USER_AGENT,
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",
                },
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                assert_same_host=False,
            )
        except (Urllib3Error, OSError) as exc:
            failure = _reason(exc)
        finally:
            pool.close()  # the response keeps its own connection
    raise _failed(f"{_shown(target.host)} could not be reached ({failure})", index)


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


def _read_body(response: urllib3.BaseHTTPResponse, settings: Settings, deadline: float, index: int | None) -> bytes:
    """The body in chunks: refused as soon as it passes MAX_IMAGE_BYTES, whatever Content-Length said, or when the
    deadline passes; each read waits at most the time left."""
    max_bytes = settings.max_image_bytes
    chunks: list[bytes] = []
    size = 0
    sock = getattr(response.connection, "sock", None)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failed(f"the image took longer than {settings.image_fetch_deadline_s:g} s to fetch", index)
        if sock is not None:
            try:
                sock.settimeout(min(settings.image_fetch_timeout_s, remaining))
            except OSError:  # closed once the whole body was read: the next read says so
                sock = None
        try:
            chunk = response.read1(_CHUNK_BYTES)
        except (Urllib3Error, OSError) as exc:
            if time.monotonic() >= deadline:  # the read waited for the time left, no longer
                raise _failed(
                    f"the image took longer than {settings.image_fetch_deadline_s:g} s to fetch", index
                ) from None
            raise _failed(f"reading the image failed ({_reason(exc)})", index) from None
        if not chunk:
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
