"""The explorer in Debian's Chromium, driven by Playwright: each panel's results, errors, keyboard, a phone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from infra.toyworld import Split, class_labels
from tests.services.explorer.helpers import (
    PER_CLASS,
    WORLD,
    Platform,
    cards,
    png_b64,
    shot,
    single,
    upload,
    wait_thumbnails,
)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- browser
def test_text_search_shows_the_class_asked_for(page: Any, platform: Platform, tmp_path: Path) -> None:
    for query in ("a red circle", "a blue star", "a yellow triangle"):
        page.fill("#q", query)
        page.fill("#topk", str(PER_CLASS))
        page.click("#search-form button[type=submit]")
        page.wait_for_function(f"document.querySelector('#search-meta').textContent.includes('{query}')")
        found = cards(page)
        assert len(found) == PER_CLASS
        labels = [platform.ids[c["id"]] for c in found]
        assert labels[0] == query and labels.count(query) >= PER_CLASS - 1, (query, labels)
        assert all(f"label: {lb}" in c["payload"] for c, lb in zip(found, labels, strict=True))
    assert "version 1" in page.text_content("#search-meta")
    wait_thumbnails(page)
    shot(page, tmp_path / "text-search.png")
    # the state is in the URL: a new tab opened on it asks for the key (kept per tab), then shows the same results
    again = page.context.new_page()
    again.goto(page.url)
    again.wait_for_selector("#key-dialog[open]")
    again.fill("#key-input", platform.key)
    again.click("#key-dialog button[value=save]")
    again.wait_for_selector("#results figure.card")
    assert [c["id"] for c in cards(again)] == [c["id"] for c in found]


DROP_OR_PASTE = """([kind, b64]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], "query.png", {type: "image/png"}));
    document.querySelector('#search-meta').textContent = "";
    if (kind === "drop") {
        const drop = new DragEvent("drop", {dataTransfer: data, bubbles: true});
        document.querySelector('#search-drop').dispatchEvent(drop);
    } else {
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
    }
}"""


def test_an_uploaded_image_and_more_like_this_find_their_class(page: Any, platform: Platform, tmp_path: Path) -> None:
    query = single(5)
    upload(page, "#search-file", query.image)
    page.wait_for_function("document.querySelector('#search-meta').textContent.includes('for image')")
    assert platform.ids[cards(page)[0]["id"]] == query.label
    # the same by drag-and-drop and by paste (Ctrl-V), with images of other classes
    for kind, index in (("drop", 7), ("paste", 9)):
        sample = single(index)
        page.evaluate(DROP_OR_PASTE, [kind, png_b64(sample.image)])
        page.wait_for_function("document.querySelector('#search-meta').textContent.includes('for image')")
        assert platform.ids[cards(page)[0]["id"]] == sample.label, kind
    # more like this on a result of another class: that item first, then its class
    first = cards(page)
    other = next(c for c in first if platform.ids[c["id"]] != query.label)
    index = first.index(other)
    page.locator("#results figure.card").nth(index).get_by_role("button", name="More like").click()
    page.wait_for_function(f"document.querySelector('#search-meta').textContent.includes('{other['id'][:8]}')")
    found = cards(page)
    assert found[0]["id"] == other["id"] and platform.ids[found[1]["id"]] == platform.ids[other["id"]]
    wait_thumbnails(page)
    shot(page, tmp_path / "more-like-this.png")


def test_versions_side_by_side_after_a_shadow_build(page: Any, platform: Platform, tmp_path: Path) -> None:
    page.click("#tab-compare")
    page.wait_for_function("document.querySelectorAll('#compare-version option').length > 0")
    assert page.input_value("#compare-version") == "2"  # the candidate
    page.fill("#cq", "a green square")
    page.click("#compare-form button[type=submit]")
    page.wait_for_selector("#shadow:not([hidden])")  # no index of version 2 yet
    assert "no index of version 2" in page.text_content("#shadow-text")
    page.click("#shadow-start")
    page.wait_for_selector("#col-b figure.card", timeout=180_000)
    left, right = cards(page, "#col-a"), cards(page, "#col-b")
    assert {c["version"] for c in left} == {"1"} and {c["version"] for c in right} == {"2"}
    assert "version 1" in page.text_content("#col-a-title") and "version 2" in page.text_content("#col-b-title")
    assert platform.ids[left[0]["id"]] == "a green square"
    wait_thumbnails(page, "#col-b")
    shot(page, tmp_path / "side-by-side.png")
    # the shadow stays beside the live collection; the live one is still version 1
    listed = platform.post("search", "/collections/list", {}).json()[0]
    assert listed["version"] == "1" and listed["build"]["version"] == "2"


def test_zero_shot_panel_ranks_the_true_label_first(page: Any, tmp_path: Path) -> None:
    page.click("#tab-zeroshot")
    sample = single(11)
    upload(page, "#zs-file", sample.image)
    labels = [sample.label, *[lb for lb in class_labels() if lb != sample.label][:5]]
    page.fill("#zs-labels", ", ".join(labels))
    page.click("#zs-form button[type=submit]")
    page.wait_for_selector("#zs-bars .bar")
    bars = page.eval_on_selector_all("#zs-bars .bar", "els => els.map(e => e.dataset.label)")
    assert bars[0] == sample.label and "none of these" in bars and len(bars) == len(labels) + 1
    assert "version 1" in page.text_content("#zs-meta")
    shot(page, tmp_path / "zero-shot.png")


def test_playground_draws_boxes_and_names_versions(page: Any, tmp_path: Path) -> None:
    page.click("#tab-playground")
    sample = WORLD.sample(3, Split.TEST, n_objects=2)
    upload(page, "#pg-file", sample.image.resize((256, 256), Image.Resampling.NEAREST))
    page.fill("#pg-queries", ", ".join(o.label for o in sample.objects))
    page.fill("#pg-threshold", "0")
    page.click("#pg-ground button[type=submit]")
    page.wait_for_selector("#pg-boxes rect", state="attached")
    # drawn over the image, in its coordinates (the tiny random model's boxes may be degenerate: some are not)
    boxes = page.eval_on_selector_all(
        "#pg-boxes rect", "els => els.map(r => { const b = r.getBoundingClientRect(); return [b.width, b.height]; })"
    )
    assert any(w > 1 and h > 1 for w, h in boxes)
    answer = page.text_content("#pg-ground-out")
    assert answer.count(" at [") == len(boxes) and "a " in answer
    assert "tiny-grounder version 1" in page.text_content("#pg-ground-out")
    page.click("#pg-caption")
    page.wait_for_function("document.querySelector('#pg-caption-out').textContent.includes('version')")
    assert "tiny-captioner version 1" in page.text_content("#pg-caption-out")
    page.fill("#pg-question", "what colour is the circle?")
    page.click("#pg-vqa button[type=submit]")
    page.wait_for_function("document.querySelector('#pg-vqa-out').textContent.includes('version')")
    assert "tiny-vqa version 1" in page.text_content("#pg-vqa-out")
    shot(page, tmp_path / "playground.png")


def test_a_bad_image_shows_a_message_not_a_blank_page(page: Any, tmp_path: Path) -> None:
    page.click("#tab-playground")
    upload(page, "#pg-file", b"\x89PNG\r\n\x1a\n this is not an image", name="broken.png")
    page.click("#pg-caption")
    page.wait_for_selector("#message:not([hidden])")
    text = page.text_content("#message")
    assert "400" in text and "could not be decoded" in text
    shot(page, tmp_path / "error.png")
    page.click("#tab-search")  # the page goes on working
    page.fill("#q", "a purple star")
    page.click("#search-form button[type=submit]")
    page.wait_for_function("document.querySelector('#search-meta').textContent.includes('a purple star')")


def test_registry_view_shows_versions_the_class_table_and_history(page: Any, tmp_path: Path) -> None:
    page.click("#tab-registry")
    page.wait_for_selector("#reg-versions tbody tr")
    page.select_option("#reg-model", "vlmops-clip")
    rows = page.eval_on_selector_all("#reg-versions tbody tr", "els => els.map(e => [e.dataset.version, e.innerText])")
    assert [v for v, _ in rows] == ["2", "1"]
    assert "candidate" in rows[0][1] and "production" in rows[1][1]
    page.click("#reg-classes-form button[type=submit]")
    page.wait_for_selector("#reg-classes tbody tr")
    assert page.locator("#reg-classes tbody tr").count() == len(class_labels())
    header = page.text_content("#reg-classes thead")
    assert all(m in header for m in ("R@10", "P@10", "R-P")) and "v1" in header and "v2" in header
    # the untrained candidate loses on classes, and the table says which
    assert page.locator("#reg-classes td.drop-cell").count() > 0
    assert "classes that dropped" in page.text_content("#reg-classes-meta")
    assert "promote to version 1" in page.text_content("#reg-history")
    shot(page, tmp_path / "registry.png")


def test_keyboard_and_a_phone_sized_screen(browser: Any, platform: Platform, tmp_path: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844})
    pg = context.new_page()
    pg.goto(platform.page)
    pg.wait_for_selector("body[data-ready=true]")
    # without a key: a message that says so, not a blank page
    assert "API key" in pg.text_content("#message")
    pg.keyboard.press("Escape")  # the key dialog opened itself
    pg.focus("#tab-search")
    pg.keyboard.press("ArrowRight")
    assert pg.evaluate("document.activeElement.id") == "tab-compare"
    assert pg.get_attribute("#tab-compare", "aria-selected") == "true" and pg.is_visible("#panel-compare")
    assert pg.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    shot(pg, tmp_path / "phone.png")
    context.close()
