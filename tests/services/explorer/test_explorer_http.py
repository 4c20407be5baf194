"""The explorer's and the search service's routes it relies on, over HTTP (thumbnails, errors, search by version)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.services.explorer.helpers import (
    Platform,
)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- HTTP
def test_thumbnails_are_small_jpegs_of_the_original_behind_the_key(platform: Platform) -> None:
    item = next(iter(platform.ids))
    body = {"collection": "toy", "item_id": item, "size": 64}
    answer = platform.post("search", "/thumbnail", body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert "immutable" in answer.headers["cache-control"]
    thumb = Image.open(io.BytesIO(answer.content))
    assert thumb.format == "JPEG" and max(thumb.size) <= 64
    # through the explorer, with the browser's key
    url = f"{platform.page}api/thumb?collection=toy&id={item}&size=128"
    got = httpx.get(url, headers={"authorization": f"Bearer {platform.key}"}, timeout=30)
    assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).size == (64, 64)  # never enlarged
    assert platform.post("search", "/thumbnail", body, key=None).status_code == 401
    assert httpx.get(url, timeout=30).status_code == 401
    missing = platform.post("search", "/thumbnail", {**body, "item_id": "00000000-0000-0000-0000-000000000000"})
    assert missing.status_code == 404 and "has no item" in missing.text
    bad = platform.post("search", "/thumbnail", {**body, "size": 5000})
    assert bad.status_code == 400 and "size must be one of" in bad.text


def test_the_explorer_passes_the_services_errors_and_refuses_what_it_does_not_proxy(platform: Platform) -> None:
    headers = {"authorization": f"Bearer {platform.key}"}
    bad = httpx.post(
        f"{platform.page}api/call/captioning/caption",
        json={"items": [{"image": base64.b64encode(b"not an image").decode()}]},
        headers=headers,
        timeout=60,
    )
    assert bad.status_code == 400 and "could not be decoded" in bad.text
    other = httpx.post(f"{platform.page}api/call/search/collections/delete", json={"name": "toy"}, headers=headers)
    assert other.status_code == 404 and "does not call" in other.text
    assert platform.post("search", "/collections/list", {}).json()[0]["count"] == len(platform.ids)
    registry = httpx.get(f"{platform.page}api/registry", timeout=60)
    assert registry.status_code == 401 and "needs an API key" in registry.text


def test_a_search_by_a_version_without_an_index_says_how_to_get_one(platform: Platform) -> None:
    answer = platform.post("search", "/search", {"collection": "toy", "text": "a red circle", "version": "9"})
    assert answer.status_code == 409 and "shadow build" in answer.text
