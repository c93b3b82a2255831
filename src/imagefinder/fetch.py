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
            time.sleep(settings.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._client.close()

    def _follow(self, url: str) -> bytes:
        for _ in range(self._settings.max_redirects + 1):
            self._check_target(url)
            with self._client.stream("GET", url) as response:
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
        for chunk in response.iter_bytes():
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
        allowed = [ipaddress.ip_network(net) for net in self._settings.allowed_networks]
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if not address.is_global and not any(address in net for net in allowed):
                raise FetchError(
                    f"{url}: {parsed.hostname} resolves to the non-public address {address}; "
                    "fetching it is not allowed"
                )


class _Retryable(Exception):
    """A server-side failure (5xx) worth another attempt."""
