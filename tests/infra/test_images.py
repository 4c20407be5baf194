from __future__ import annotations

import io

import pytest
from PIL import Image

from infra.errors import InvalidInput, PayloadTooLarge
from infra.images import decode_base64, decode_image, encode_png

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 1_000_000}


def png(w: int, h: int) -> bytes:
    return encode_png(Image.new("RGB", (w, h), (10, 200, 30)))


class TestDecodeImage:
    def test_decodes_to_rgb(self) -> None:
        buf = io.BytesIO()
        Image.new("L", (7, 5), 128).save(buf, format="JPEG")
        img = decode_image(buf.getvalue(), **LIMITS)
        assert img.mode == "RGB" and img.size == (7, 5)

    @pytest.mark.parametrize("data", [b"", b"hello", png(8, 8)[:40]])
    def test_corrupt_bytes_are_refused(self, data: bytes) -> None:
        with pytest.raises(InvalidInput):
            decode_image(data, **LIMITS)

    def test_decompression_bomb_is_refused_before_decoding(self) -> None:
        bomb = png(4000, 4000)  # 16 Mpx in a few kB
        assert len(bomb) < 100_000
        with pytest.raises(PayloadTooLarge, match="pixels"):
            decode_image(bomb, **LIMITS)

    def test_oversized_file_is_refused(self) -> None:
        with pytest.raises(PayloadTooLarge, match="bytes"):
            decode_image(b"x" * 2_000_000, **LIMITS)

    def test_bad_base64(self) -> None:
        with pytest.raises(InvalidInput, match="base64"):
            decode_base64("not base64!")
