"""Image content given as an http(s) URL, fetched without letting a request reach what it must not (server-side
request forgery): opt-in with ALLOW_IMAGE_URLS. aiohttp fetches, and the checks sit in its own hooks:

1. The URL: http or https, a host, no user name or password, at most 8192 characters; parsed once, by yarl, and
   given to aiohttp as parsed, so that no second parser can read another host into it.
2. The addresses: aiohttp asks the connector's resolver (`_PublicResolver`) for every new connection and connects to
   what it returned; each address must be public (`is_public_address`) unless the URL's host is in
   IMAGE_URL_ALLOWLIST. IP literals, which reach no resolver, are checked before their request. Pooled connections
   are reused only for the host, port and TLS they were opened for.
3. Redirects: followed here, at most `MAX_REDIRECTS`, each hop checked as the first (scheme, URL, addresses).
4. The answer: 200, an image `Content-Type` (or octet-stream, or none), not compressed (a small answer could inflate
   without bound), at most MAX_IMAGE_BYTES by `Content-Length` and while the body is read.
5. The time: IMAGE_FETCH_TIMEOUT_S to connect and for each read, IMAGE_FETCH_DEADLINE_S for the whole fetch, every
   hop (`aiohttp.ClientTimeout`), so that a server dripping a byte at a time cannot hold a fetch.

No proxy or netrc from the environment, no cookies kept, TLS checked against certifi's CAs. Refusals quote no address,
and a host that does not resolve is refused as one that is not public: the API cannot map the server's network.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urljoin

import aiohttp
import certifi
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from embedding_server.errors import ApiError, ErrorCode

if TYPE_CHECKING:
    from embedding_server.settings import Settings

MAX_REDIRECTS = 3
MAX_URL_CHARS = 8192
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_ACCEPTED_TYPES = ("application/octet-stream", "binary/octet-stream")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_HEADERS = {"User-Agent": "embedding-server image fetch", "Accept": "image/*", "Accept-Encoding": "identity"}
_REASONS = (  # a failure's cause as the client is told it: no addresses, no aiohttp reprs
    (aiohttp.ClientConnectorDNSError, "the host does not resolve"),
    (aiohttp.ClientConnectorCertificateError, "TLS certificate not valid for the host"),
    (aiohttp.ClientSSLError, "TLS handshake failed"),
    (aiohttp.ServerTimeoutError, "timed out"),
    (aiohttp.ClientConnectorError, "connection failed"),
)

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
    flags = (ip.is_loopback, ip.is_private, ip.is_link_local, ip.is_multicast, ip.is_reserved, ip.is_unspecified)
    listed = any(ip.version == network.version and ip in network for network in _NON_PUBLIC_NETWORKS)
    return ip.is_global and not any(flags) and not listed


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


class _NotPublic(Exception):
    """The resolver's refusal; no OSError, which aiohttp would turn into a DNS error."""


class _PublicResolver(AbstractResolver):
    """Resolves in threads of its own (not the loop's default pool, which tokenising and image decoding share, so
    that a slow DNS server cannot stall them), refusing a name (one that does not resolve alike, so that none can be
    probed) unless it is allowlisted or every address it resolves to is public."""

    def __init__(self, allowlist: frozenset[str], threads: int) -> None:
        self._allowlist = allowlist
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dns")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = normalize_host(host)  # without a trailing dot: `localhost.` is in no hosts file
        # aiohttp passes the host IDNA-encoded; the allowlist has it as the URL's `host`, decoded.
        allowlisted = normalize_host(URL.build(scheme="http", host=name, encoded=True).host or "") in self._allowlist
        lookup = functools.partial(socket.getaddrinfo, name, port, family, socket.SOCK_STREAM)
        try:
            infos = await asyncio.get_running_loop().run_in_executor(self._pool, lookup)
        except (OSError, UnicodeError) as exc:  # an OSError becomes aiohttp's DNS error
            raise (OSError(exc) if allowlisted else _NotPublic()) from exc
        results = [
            ResolveResult(
                hostname=host,
                host=address[0],
                port=address[1],
                family=address_family,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address_family, _, proto, _, address in infos
        ]
        if not (allowlisted or (results and all(is_public_address(result["host"]) for result in results))):
            raise _NotPublic()
        return results

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _session(settings: Settings) -> aiohttp.ClientSession:
    """A session whose every new connection is checked; belongs to the running loop."""
    connector = aiohttp.TCPConnector(
        resolver=_PublicResolver(allowed_hosts(settings.image_url_allowlist), settings.image_fetch_concurrency),
        ssl=ssl.create_default_context(cafile=certifi.where()),
    )
    # No cookie jar: a remote's cookies must not follow one client's fetch into another's.
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, headers=_HEADERS
    )


class ImageFetcher:
    """Fetches the image URLs of requests, those of a request all at once, at most IMAGE_FETCH_CONCURRENCY at a time
    (more wait their turn; a fetch's deadline counts from its start). One session, made at the first fetch in the
    serving loop, pools connections across requests. A cancelled request (its REQUEST_TIMEOUT_S, its client gone)
    cancels its fetches, queued or under way."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.image_fetch_concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self, urls: Mapping[int, str], fail_fast: bool) -> dict[int, bytes | ApiError]:
        """The bytes of each URL, by its item's index, or the ApiError of its fetch. `fail_fast`: the first refusal
        is raised instead and the other fetches cancelled, the request failing as a whole; otherwise every fetch runs
        to its end (one bad item of /embed/batch fails only itself)."""
        if not urls:
            return {}
        self._session = self._session or _session(self.settings)
        tasks = {index: asyncio.ensure_future(self._fetch_one(url, index, fail_fast)) for index, url in urls.items()}
        try:
            await asyncio.gather(*tasks.values())
        finally:  # the request failed or was cancelled: its fetches end with it
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
        return {index: task.result() for index, task in tasks.items()}

    async def _fetch_one(self, url: str, index: int, fail_fast: bool) -> bytes | ApiError:
        async with self._slots:
            try:
                return await _fetch(self._session, url, self.settings, index)
            except ApiError as error:
                if fail_fast:
                    raise
                return error

    def close(self) -> None:
        """Closes the pooled connections. Sync, for callers outside the loop, hence the connector's sync part of its
        close (ClientSession.close is a coroutine); once the loop has stopped, the sockets close when collected."""
        if self._session is not None:
            self._session.connector._close()


def fetch_image(url: str, settings: Settings, index: int | None = None) -> bytes:
    """The bytes of the image at `url`, in a session of its own; blocks, so async code goes through ImageFetcher."""

    async def fetch() -> bytes:
        async with _session(settings) as session:
            return await _fetch(session, url, settings, index)

    return asyncio.run(fetch())


class _Target(NamedTuple):
    url: URL
    host: str
    """Normalised, IDNA-decoded: what the allowlist and the messages see."""
    ascii_host: str
    """IDNA-encoded: what aiohttp resolves and sends in SNI, and the certificate is checked against."""
    host_header: str


def _parse(url: str, index: int | None, redirected: bool) -> _Target:
    refused = ErrorCode.IMAGE_URL_NOT_ALLOWED if redirected else ErrorCode.INVALID_IMAGE_URL
    where = "redirected to a URL that is not" if redirected else "not"
    if len(url) > MAX_URL_CHARS:
        raise ApiError(refused, f"{where} a URL of at most {MAX_URL_CHARS} characters", index)
    try:
        parsed = URL(url)
        host = parsed.host  # decodes IDNA, which fails for a host that is not valid
    except ValueError as exc:
        raise ApiError(refused, f"{where} a valid URL: {exc}", index) from None
    if parsed.scheme not in ("http", "https"):
        raise ApiError(refused, f"{where} an http or https URL (scheme {parsed.scheme[:20]!r})", index)
    if not host:
        raise ApiError(refused, f"{where} a URL with a host", index)
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise ApiError(refused, f"{where} a URL without a user name or password", index)
    return _Target(parsed, normalize_host(host), normalize_host(parsed.raw_host), parsed.host_port_subcomponent)


def _literal_refused(host: str) -> bool:
    """Whether an IP literal is not public. aiohttp takes a host with a colon or only digits and dots for one and
    asks no resolver, so such a host that is no valid address (`127.1`) is refused too."""
    try:
        return not is_public_address(host)
    except ValueError:
        return ":" in host or host.replace(".", "").isdigit()


async def _fetch(session: aiohttp.ClientSession, url: str, settings: Settings, index: int | None) -> bytes:
    """Raises ApiError naming `index`: `invalid_image_url`, `image_url_disabled`, `image_url_not_allowed` (a
    non-public address, or a redirect to one or to another scheme), `image_fetch_failed` (connection, TLS, a timeout,
    the deadline, an HTTP error, too many redirects), `not_an_image` or `image_too_large`."""
    target = _parse(url, index, redirected=False)
    if not settings.allow_image_urls:
        raise ApiError(
            ErrorCode.IMAGE_URL_DISABLED,
            "image URLs are off on this server: send the image as a data URL or base64 "
            "(the server's operator can accept URLs with ALLOW_IMAGE_URLS=true)",
            index,
        )
    allowlist = allowed_hosts(settings.image_url_allowlist)
    deadline = time.monotonic() + settings.image_fetch_deadline_s
    for redirects in range(MAX_REDIRECTS + 1):
        if target.host not in allowlist and _literal_refused(target.host):
            raise _not_public(target.host, index)
        timeout = aiohttp.ClientTimeout(
            total=max(deadline - time.monotonic(), 1e-3),  # what is left of the deadline; 0 is no limit to aiohttp
            sock_connect=settings.image_fetch_timeout_s,
            sock_read=settings.image_fetch_timeout_s,
        )
        try:
            async with session.get(target.url, allow_redirects=False, timeout=timeout) as response:
                if response.status not in _REDIRECT_STATUSES:
                    return await _read(response, target.host, settings.max_image_bytes, index)
                location = response.headers.get("Location")
                if not location:
                    raise _failed(f"{_shown(target.host)} answered HTTP {response.status} without a Location", index)
                if redirects == MAX_REDIRECTS:
                    raise _failed(f"more than {MAX_REDIRECTS} redirects", index)
            target = _parse(urljoin(str(target.url), location.strip()), index, redirected=True)
        except _NotPublic:
            raise _not_public(target.host, index) from None
        except aiohttp.ClientError as exc:  # the connect and read timeouts too
            reason = next((reason for kind, reason in _REASONS if isinstance(exc, kind)), "reading the answer failed")
            if isinstance(getattr(exc, "os_error", None), ConnectionRefusedError):
                reason = "connection refused"
            raise _failed(f"fetching from {_shown(target.host)} failed ({reason})", index) from None
        except TimeoutError:  # the total
            raise _failed(f"the image took longer than {settings.image_fetch_deadline_s:g} s to fetch", index) from None
    raise AssertionError("unreachable")  # pragma: no cover


async def _read(response: aiohttp.ClientResponse, host: str, max_bytes: int, index: int | None) -> bytes:
    if response.status != 200:
        raise _failed(f"{_shown(host)} answered HTTP {response.status}", index)
    content_type = response.content_type  # octet-stream when there is none, as HTTP says
    if not (content_type.startswith("image/") or content_type in _ACCEPTED_TYPES):
        raise ApiError(ErrorCode.NOT_AN_IMAGE, f"the URL's content type is {content_type[:100]!r}, not an image", index)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _failed(f"the URL's answer is compressed ({encoding[:50]}), which is not accepted for images", index)
    size = response.content_length
    if size is not None and size > max_bytes:
        raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is {size} bytes, more than {max_bytes}", index)
    body = bytearray()
    async for chunk in response.content.iter_any():
        if len(body) + len(chunk) > max_bytes:
            raise ApiError(ErrorCode.IMAGE_TOO_LARGE, f"image is larger than {max_bytes} bytes", index)
        body += chunk
    return bytes(body)


def _not_public(host: str, index: int | None) -> ApiError:
    message = f"host {_shown(host)} is not fetched: only hosts whose addresses are all on the public internet are"
    return ApiError(ErrorCode.IMAGE_URL_NOT_ALLOWED, message, index)


def _failed(message: str, index: int | None) -> ApiError:
    return ApiError(ErrorCode.IMAGE_FETCH_FAILED, message, index)


def _shown(host: str) -> str:
    return host if len(host) <= 100 else host[:100] + "…"
