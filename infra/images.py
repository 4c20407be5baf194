"""Safe image decoding: size limits before the pixels are read, clear errors for bad bytes."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from infra.errors import InvalidInput, PayloadTooLarge


def decode_base64(data: str, what: str = "image") -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what} is not valid base64: {exc}") from exc


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, what: str = "image") -> Image.Image:
    """Decode ``data`` to an RGB image, refusing oversized or corrupt input with a typed error."""
    if not data:
        raise InvalidInput(f"{what} is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size  # read from the header, before any pixel is decoded
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"{what} is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            img.load()
    except PayloadTooLarge:
        raise
    except UnidentifiedImageError as exc:
        raise InvalidInput(f"{what} could not be decoded as an image (unknown or corrupt format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInput(f"{what} could not be decoded as an image: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"{what} is corrupt or truncated: {exc}") from exc
    if img.width == 0 or img.height == 0:
        raise InvalidInput(f"{what} has no pixels")
    return img.convert("RGB") if img.mode != "RGB" else img


def encode_png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
