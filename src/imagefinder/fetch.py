"""Download one image over HTTP(S) without trusting the other side.

Each request has a timeout and a size cap; 5xx answers and timeouts are retried with exponential
backoff, 4xx answers are not. A response whose Content-Type is not an image, or whose first bytes
are not an image signature, is refused before the rest is downloaded. With `allow_private=False`
(the API's default) a URL whose host resolves to a loopback, private, link-local or otherwise
non-public address is refused, and so is every redirect hop that leads to one.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlparse

import httpx

from imagefinder.errors import FetchError
from imagefinder.images import looks_like_image

_ACCEPTED_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class FetchSettings:
    max_bytes: int = 50 * 1024 * 1024
    timeout_s: float = 15.0
    retries: int = 2
    backoff_s: float = 0.5
    max_redirects: int = 5
    # Whole-download deadline: `timeout_s` bounds each read, so a server trickling a byte every
    # few seconds would otherwise hold a worker for ever.
    total_timeout_s: float = 60.0
    allow_private: bool = True
    # Networks allowed even when allow_private is False, e.g. ("10.20.0.0/16",) for an intranet.
    allowed_networks: tuple[str, ...] = ()


class HttpFetcher:
    def __init__(self, settings: FetchSettings, client: httpx.Client | None = None) -> None:
        self._settings = settings
        # Redirects are followed by hand so that every hop is checked.
        self._client = client or httpx.Client(
            timeout=settings.timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            headers={"User-Agent": "ImageFinder"},
        )

    def fetch(self, url: str) -> bytes:
        settings = self._settings
        for attempt in range(settings.retries + 1):
            last = attempt == settings.retries
            try:
                return self._follow(url)
            except _Retryable as exc:
                if last:
                    raise FetchError(f"{url}: {exc} (after {attempt + 1} attempts)") from None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if last:
                    reason = type(exc).__name__ + (f" {exc}" if str(exc) else "")
                    raise FetchError(f"{url}: {reason} (after {attempt + 1} attempts)") from None
            except (httpx.HTTPError, httpx.InvalidURL, ValueError, UnicodeError) as exc:
                # A bad gzip body, an unparsable URL or port: the URL's fault, not worth a retry.
                reason = type(exc).__name__ + (f" {exc}" if str(exc) else "")
                raise FetchError(f"{url}: {reason}") from None
            time.sleep(settings.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._client.close()

    def _follow(self, url: str) -> bytes:
        for _ in range(self._settings.max_redirects + 1):
            self._check_target(url)
            with self._client.stream("GET", url) as response:
                self._check_peer(url, response)
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                return self._read(url, response)
        raise FetchError(f"{url}: more than {self._settings.max_redirects} redirects")

    def _read(self, url: str, response: httpx.Response) -> bytes:
        status = response.status_code
        if status >= 500:
            raise _Retryable(f"HTTP {status}")
        if status >= 400:
            raise FetchError(f"{url}: HTTP {status}")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type and not content_type.startswith(_ACCEPTED_TYPES):
            raise FetchError(f"{url}: content-type {content_type} is not an image")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._settings.max_bytes:
            raise FetchError(f"{url}: {declared} bytes, limit is {self._settings.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        checked = False
        deadline = time.monotonic() + self._settings.total_timeout_s
        for chunk in response.iter_bytes():
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: download took longer than {self._settings.total_timeout_s} s")
            chunks.append(chunk)
            size += len(chunk)
            if size > self._settings.max_bytes:
                raise FetchError(f"{url}: larger than the limit of {self._settings.max_bytes} bytes")
            if not checked and size >= 12:  # enough for every signature: stop early on HTML etc.
                self._check_signature(url, b"".join(chunks))
                checked = True
        if not chunks:
            raise FetchError(f"{url}: empty response")
        data = b"".join(chunks)
        if not checked:
            self._check_signature(url, data)
        return data

    @staticmethod
    def _check_signature(url: str, head: bytes) -> None:
        if not looks_like_image(head):
            raise FetchError(f"{url}: the content is not an image (no image signature)")

    def _check_target(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise FetchError(f"{url}: only http and https URLs with a host can be fetched")
        if self._settings.allow_private:
            return
        try:
            infos = socket.getaddrinfo(parsed.hostname, parsed.port or 443, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise FetchError(f"{url}: cannot resolve {parsed.hostname} ({exc.strerror})") from None
        for info in infos:
            self._check_address(url, parsed.hostname, str(info[4][0]))

    def _check_peer(self, url: str, response: httpx.Response) -> None:
        """Check the address actually connected to, not only what the name resolved to before:
        a name that resolves to a public address first and a private one next (DNS rebinding)
        is caught here, before anything of the answer is read."""
        if self._settings.allow_private:
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer:
            self._check_address(url, urlparse(url).hostname or "", str(peer[0]))

    def _check_address(self, url: str, host: str, text: str) -> None:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        allowed = [ipaddress.ip_network(net) for net in self._settings.allowed_networks]
        if any(address in net for net in allowed):
            return
        if not address.is_global or not all(v4.is_global for v4 in _embedded_ipv4(address)):
            raise FetchError(
                f"{url}: {host} resolves to the non-public address {address}; fetching it is not allowed"
            )


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses carried inside an IPv6 one (mapped, 6to4, NAT64, IPv4-compatible), which
    reach the IPv4 host on networks that route them."""
    if address.version == 4:
        return []
    assert isinstance(address, ipaddress.IPv6Address)
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    packed = int(address)
    if address in ipaddress.ip_network("64:ff9b::/96") or packed >> 32 == 0:
        found.append(ipaddress.IPv4Address(packed & 0xFFFFFFFF))
    return found


class _Retryable(Exception):
    """A server-side failure (5xx) worth another attempt."""
