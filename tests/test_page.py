"""The web page in a real browser: headless Chromium (Debian's) driven by Playwright, against a real
`imagefinder serve` over real photos. Upload, results in score order, "search from this", errors,
browse and detail views, a narrow screen. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import encode, gradient
from tests.live import live_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

if not os.path.exists(CHROMIUM) and not os.environ.get("IMAGEFINDER_REQUIRE_BROWSER"):
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, photos: Path, model_cache: Path) -> Iterator[str]:
    with live_server(tmp_path_factory.mktemp("page-home"), photos, model_cache) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, base_url: str):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield open_page(context, base_url)
    context.close()


def open_page(context, url: str):  # type: ignore[no-untyped-def]
    """Open the page and wait until its script has run (it then fills in the collection line)."""
    opened = context.new_page()
    opened.goto(url + "/")
    opened.wait_for_function("() => document.querySelector('#collection-info').textContent.length > 0")
    return opened


def result_scores(page) -> list[float]:  # type: ignore[no-untyped-def]
    return [
        float(s)
        for s in page.locator("#results li.card").evaluate_all("els => els.map(e => e.dataset.score)")
    ]


def test_upload_shows_results_in_score_order_then_search_from_one(page, photos: Path) -> None:  # type: ignore[no-untyped-def]
    page.select_option("#k-input", "6")
    page.set_input_files("#file-input", str(photos / "motorcycle_left.png"))
    page.wait_for_selector("#results li.card >> nth=5")
    cards = page.locator("#results li.card")
    assert cards.count() == 6
    scores = result_scores(page)
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1.0, abs=1e-3)
    assert cards.nth(0).get_attribute("data-id") == "motorcycle_left.png"
    assert cards.nth(0).locator(".copy").count() == 1  # itself: a copy
    assert page.locator("#query-image").get_attribute("src").startswith("blob:")
    # Every thumbnail loads (from the cache route), with alt text.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    assert all(page.locator("#results img").evaluate_all("els => els.map(e => e.alt.startsWith('Image '))"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page-results.png"), full_page=True)

    second = cards.nth(1).get_attribute("data-id")
    cards.nth(1).get_by_role("button", name=f"Search for images like {second}").click()
    page.wait_for_function(
        "id => document.querySelector('#query-caption').textContent === 'More like ' + id", arg=second
    )
    page.wait_for_function("() => document.querySelector('#results').getAttribute('aria-busy') === 'false'")
    ids = page.locator("#results li.card").evaluate_all("els => els.map(e => e.dataset.id)")
    assert len(ids) == 6 and second not in ids  # "more like this" leaves the image itself out
    new_scores = result_scores(page)
    assert new_scores == sorted(new_scores, reverse=True)
    page.screenshot(path=str(ARTIFACTS / "page-search-from-result.png"), full_page=True)


def test_a_corrupt_upload_shows_the_api_message(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(gradient(3, (300, 200)))[:300])
    page.set_input_files("#file-input", str(broken))
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert "cannot" in alert.inner_text() and page.locator("#results li").count() == 0
    page.screenshot(path=str(ARTIFACTS / "page-error.png"))


def test_a_private_url_is_refused_with_the_reason(page, base_url: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("#url-input", base_url + "/images/chelsea.png/file")
    page.click("#url-button")
    page.get_by_role("alert").wait_for()
    assert "non-public address" in page.get_by_role("alert").inner_text()


def test_browse_and_detail_views(page, photos: Path) -> None:  # type: ignore[no-untyped-def]
    page.click("#nav-browse")
    page.wait_for_selector("#browse li.card")
    total = len(list(photos.iterdir()))
    assert page.locator("#browse li.card").count() == total
    assert f"{total} images" in page.inner_text("#browse-info")
    page.locator('#browse li.card[data-id="coffee.png"] a').click()
    page.wait_for_selector("#neighbours li.card")
    assert page.inner_text("#detail-title") == "coffee.png"
    assert "hash" in page.inner_text("#detail-meta") and "efficientnet-lite0" in page.inner_text(
        "#detail-meta"
    )
    neighbours = page.locator("#neighbours li.card").evaluate_all("els => els.map(e => e.dataset.id)")
    assert "coffee.png" not in neighbours and len(neighbours) == min(12, total - 1)


def test_keyboard_and_a_narrow_screen(browser, base_url: str, photos: Path) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 360, "height": 740})
    page = open_page(context, base_url)
    # The drop zone is reachable with the keyboard and opens the file chooser on Enter.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "drop-zone":
            break
    assert page.evaluate("document.activeElement.id") == "drop-zone"
    # Enter opens the file picker: our handler clicks the file input. (Waiting for the browser's
    # own chooser event instead depends on its user-activation timing, and flickers under load.)
    page.evaluate(
        "window.pickerOpened = false;"
        "document.getElementById('file-input')"
        ".addEventListener('click', () => { window.pickerOpened = true; })"
    )
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.pickerOpened === true")
    page.set_input_files("#file-input", str(photos / "rocket.jpg"))
    page.wait_for_selector("#results li.card")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    page.screenshot(path=str(ARTIFACTS / "page-narrow.png"), full_page=True)
    context.close()


def test_the_page_sends_security_headers(page, base_url: str) -> None:  # type: ignore[no-untyped-def]
    response = page.request.get(base_url + "/")
    headers = response.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


@pytest.fixture(scope="module")
def keyed_base_url(
    tmp_path_factory: pytest.TempPathFactory, photos: Path, model_cache: Path
) -> Iterator[str]:
    """A server with an API key (writes need it) over the photos and copies of two of them."""
    from tests.test_real_model import edited_copy

    folder = tmp_path_factory.mktemp("page-copies")
    for photo in photos.iterdir():
        shutil.copy(photo, folder / photo.name)
    for name in ("rocket.jpg", "coffee.png"):
        stem = Path(name).stem
        (folder / f"{stem}-crop.jpg").write_bytes(edited_copy(photos / name, "crop"))
        (folder / f"{stem}-small.jpg").write_bytes(edited_copy(photos / name, "recompress"))
    home = tmp_path_factory.mktemp("page-keyed-home")
    with live_server(home, folder, model_cache, IMAGEFINDER_API__API_KEYS="page-test-key") as base:
        yield base


def test_the_duplicates_view_removes_the_copies_of_a_group_after_a_confirmation(  # type: ignore[no-untyped-def]
    browser, keyed_base_url: str
) -> None:
    import httpx

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = open_page(context, keyed_base_url)
    page.click("#nav-duplicates")
    page.wait_for_selector("#duplicate-groups li.group")
    group = page.locator('#duplicate-groups li.group[data-keeper="rocket.jpg"]')
    members = group.locator("li.card").evaluate_all("els => els.map(e => e.dataset.id)")
    assert members[0] == "rocket.jpg" and set(members) == {
        "rocket.jpg",
        "rocket-crop.jpg",
        "rocket-small.jpg",
    }
    assert group.locator("li.card.keeper .keep").count() == 1
    assert "groups" in page.inner_text("#duplicates-info")
    page.screenshot(path=str(ARTIFACTS / "page-duplicates.png"), full_page=True)

    # Dismissing the confirmation removes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    group.locator("button.remove").click()
    page.wait_for_timeout(300)
    assert httpx.get(keyed_base_url + "/images/rocket-crop.jpg").status_code == 200

    # Confirmed: the server asks for its key (401), the page asks the user, then removes.
    answers = iter(["confirm", "page-test-key"])

    def answer(dialog) -> None:  # type: ignore[no-untyped-def]
        kind = next(answers)
        assert (dialog.type == "prompt") == (kind == "page-test-key")
        dialog.accept(kind) if dialog.type == "prompt" else dialog.accept()

    page.on("dialog", answer)
    group.locator("button.remove").click()
    page.wait_for_function(
        "() => document.querySelector('#duplicates-info').textContent.startsWith('Removed 2')"
    )
    assert page.locator('#duplicate-groups li.group[data-keeper="rocket.jpg"]').count() == 0
    for removed in ("rocket-crop.jpg", "rocket-small.jpg"):
        assert httpx.get(f"{keyed_base_url}/images/{removed}").status_code == 404
    # Gone from search too: the copy's own bytes find the kept original, not the removed copies.
    found = httpx.post(
        keyed_base_url + "/search",
        params={"k": 5},
        files={"file": ("q.jpg", httpx.get(keyed_base_url + "/images/rocket.jpg/file").content)},
    ).json()["results"]
    ids = [r["id"] for r in found]
    assert ids[0] == "rocket.jpg" and "rocket-crop.jpg" not in ids and "rocket-small.jpg" not in ids
    context.close()


def test_before_a_search_the_page_offers_images_to_try_with_one_click(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("#try-list button >> nth=3")
    buttons = page.locator("#try-list button")
    assert buttons.count() == 4
    page.wait_for_function(
        "() => [...document.querySelectorAll('#try-list img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    tried = buttons.nth(1).get_attribute("aria-label").removeprefix("Search for images like ")
    buttons.nth(1).click()
    page.wait_for_function(
        "id => document.querySelector('#query-caption').textContent === 'More like ' + id", arg=tried
    )
    page.wait_for_function("() => document.querySelector('#results').getAttribute('aria-busy') === 'false'")
    assert page.locator("#results li.card").count() > 0
    assert page.locator("#try").is_hidden()  # it makes way for the results
