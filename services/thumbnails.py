"""Thumbnails of stored originals for the explorer's result grid: JPEG, at most ``max_side`` pixels on the
longer side, from a byte-bounded LRU cache in the process (blob keys are content hashes, so a cached
thumbnail never goes stale)."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image

from infra.errors import InvalidInput
from infra.images import decode_image

SIZES = (64, 128, 256, 512)  # the sizes served: a few, so the cache holds few variants of an image


def check_size(size: int) -> int:
    if size not in SIZES:
        raise InvalidInput(f"size must be one of {', '.join(map(str, SIZES))} (pixels on the longer side)")
    return size


def make_thumbnail(data: bytes, size: int, *, max_bytes: int, max_pixels: int) -> bytes:
    """A JPEG of the image in ``data`` no larger than ``size`` on either side (never enlarged)."""
    image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, what="the stored image")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


class ThumbnailCache:
    """``(blob key, size) -> JPEG bytes``; the least recently used go once ``max_bytes`` is passed."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes += len(data) - (len(old) if old is not None else 0)
            self._items[key] = data
            while self.bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self.bytes -= len(dropped)

    def __len__(self) -> int:
        return len(self._items)
