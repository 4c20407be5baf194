from __future__ import annotations

from pathlib import Path

import pytest

from infra.blobs import BlobStore, content_hash, read_uri
from infra.errors import NotFound, PayloadTooLarge


class TestBlobStore:
    def test_content_addressed_and_idempotent(self, tmp_path: Path) -> None:
        store = BlobStore(str(tmp_path / "blobs"))
        key = store.put(b"image bytes")
        assert key == content_hash(b"image bytes") and store.put(b"image bytes") == key
        assert store.get(key) == b"image bytes" and store.exists(key)
        assert len(list((tmp_path / "blobs").rglob("*"))) == 2  # one shard folder, one blob
        assert read_uri(store.uri(key), 100) == b"image bytes"

    def test_fsspec_uri_roots(self) -> None:
        store = BlobStore("memory://vlmops-test/blobs")
        key = store.put(b"x" * 10)
        assert store.uri(key).startswith("memory://") and read_uri(store.uri(key), 100) == b"x" * 10

    def test_missing_and_oversized(self, tmp_path: Path) -> None:
        store = BlobStore(str(tmp_path))
        with pytest.raises(NotFound):
            store.get("0" * 64)
        (tmp_path / "big").write_bytes(b"y" * 200)
        with pytest.raises(PayloadTooLarge):
            read_uri(str(tmp_path / "big"), 100)
        with pytest.raises(NotFound):
            read_uri(str(tmp_path / "absent"), 100)
