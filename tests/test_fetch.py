"""HttpFetcher against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagefinder.errors import FetchError
from imagefinder.fetch import FetchSettings, HttpFetcher
from tests.factories import encode, gradient
from tests.http_server import ImageServer

IMAGES = {f"p{i}.jpg": encode(gradient(i, (200, 150))) for i in range(3)}
FAST = FetchSettings(max_bytes=1_000_000, timeout_s=2.0, retries=2, backoff_s=0.01)


@pytest.fixture
def server() -> Iterator[ImageServer]:
    with ImageServer(IMAGES, slow_s=2.0) as running:
        yield running


def test_downloads_an_image(server: ImageServer) -> None:
    assert HttpFetcher(FAST).fetch(server.url("/img/p1.jpg")) == IMAGES["p1.jpg"]


def test_retries_a_500_and_succeeds(server: ImageServer) -> None:
    assert HttpFetcher(FAST).fetch(server.url("/flaky/p2.jpg")) == IMAGES["p2.jpg"]
    assert server.hits["/flaky/p2.jpg"] == 2


def test_gives_up_on_a_persistent_500_after_the_retries(server: ImageServer) -> None:
    with pytest.raises(FetchError, match="HTTP 500 .after 3 attempts"):
        HttpFetcher(FAST).fetch(server.url("/always500"))
    assert server.hits["/always500"] == 3


def test_does_not_retry_a_404(server: ImageServer) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        HttpFetcher(FAST).fetch(server.url("/missing"))
    assert server.hits["/missing"] == 1


def test_times_out_and_retries(server: ImageServer) -> None:
    with pytest.raises(FetchError, match="Timeout.*after 2 attempts"):
        HttpFetcher(FetchSettings(timeout_s=0.3, retries=1, backoff_s=0.01)).fetch(server.url("/slow/p0.jpg"))
    assert server.hits["/slow/p0.jpg"] == 2


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/html", "content-type text/html is not an image"),
        ("/html-as-jpeg", "not an image .no image signature"),
    ],
)
def test_refuses_what_is_not_an_image(server: ImageServer, path: str, reason: str) -> None:
    with pytest.raises(FetchError, match=reason):
        HttpFetcher(FAST).fetch(server.url(path))


def test_refuses_a_download_over_the_size_cap(server: ImageServer) -> None:
    with pytest.raises(FetchError, match="limit is 100"):
        HttpFetcher(FetchSettings(max_bytes=100, retries=0)).fetch(server.url("/img/p0.jpg"))


def test_follows_redirects_but_not_forever(server: ImageServer) -> None:
    assert HttpFetcher(FAST).fetch(server.url("/redirect/p0.jpg")) == IMAGES["p0.jpg"]
    with pytest.raises(FetchError, match="more than 5 redirects"):
        HttpFetcher(FAST).fetch(server.url("/loop"))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/a.jpg",
        "http://localhost/a.jpg",
        "http://[::1]/a.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/a.jpg",
        "http://192.168.0.1/a.jpg",
        "http://0.0.0.0/a.jpg",
    ],
)
def test_refuses_non_public_targets_when_asked(url: str) -> None:
    fetcher = HttpFetcher(FetchSettings(allow_private=False, retries=0))
    with pytest.raises(FetchError, match="non-public address"):
        fetcher.fetch(url)


def test_refuses_a_redirect_into_the_private_network(server: ImageServer) -> None:
    # Allow just the loopback test server; its redirect to 10.1.2.3 must be refused (before any
    # connection is made to it), because every hop goes through the same check.
    fetcher = HttpFetcher(FetchSettings(allow_private=False, allowed_networks=("127.0.0.1/32",), retries=0))
    assert fetcher.fetch(server.url("/img/p0.jpg")) == IMAGES["p0.jpg"]
    with pytest.raises(FetchError, match="non-public address 10.1.2.3"):
        fetcher.fetch(server.url("/redirect-private"))


@pytest.mark.parametrize("url", ["ftp://example.org/a.jpg", "http:///a.jpg", "file:///etc/passwd"])
def test_refuses_other_schemes_and_hostless_urls(url: str) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        HttpFetcher(FAST).fetch(url)


def test_a_trickling_download_hits_the_overall_deadline(server: ImageServer) -> None:
    fetcher = HttpFetcher(FetchSettings(timeout_s=1.0, total_timeout_s=0.6, retries=0))
    with pytest.raises(FetchError, match="took longer than 0.6 s"):
        fetcher.fetch(server.url("/trickle.jpg"))


def test_a_broken_gzip_body_is_a_fetch_error(server: ImageServer) -> None:
    with pytest.raises(FetchError, match="Decoding"):
        HttpFetcher(FAST).fetch(server.url("/bad-gzip.jpg"))


@pytest.mark.parametrize("url", ["http://[::1/a.jpg", "http://example.org:99999/a.jpg"])
def test_unparsable_urls_are_fetch_errors(url: str) -> None:
    with pytest.raises(FetchError):
        HttpFetcher(FetchSettings(allow_private=False, retries=0)).fetch(url)


def test_dns_rebinding_is_caught_at_the_connected_address(
    server: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name resolves to a public address when checked, then to 127.0.0.1 when httpx connects:
    the check of the connected peer refuses it before the body is read."""
    import socket

    real = socket.getaddrinfo
    port = int(server.base.rsplit(":", 1)[1])
    calls = {"n": 0}

    def rebinding(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "rebind.test":
            calls["n"] += 1
            address = "93.184.216.34" if calls["n"] == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    fetcher = HttpFetcher(FetchSettings(allow_private=False, retries=0))
    with pytest.raises(FetchError, match="non-public address 127.0.0.1"):
        fetcher.fetch(f"http://rebind.test:{port}/img/p0.jpg")
    assert calls["n"] >= 2


@pytest.mark.parametrize("address", ["64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::127.0.0.1", "::ffff:10.0.0.1"])
def test_ipv6_forms_of_private_ipv4_are_refused(address: str) -> None:
    fetcher = HttpFetcher(FetchSettings(allow_private=False))
    with pytest.raises(FetchError, match="non-public"):
        fetcher._check_address("http://x/", "x", address)
    fetcher._check_address("http://x/", "x", "2606:4700::1111")  # a public IPv6 address passes
