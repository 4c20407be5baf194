"""The preparing processes of a GPU worker's bulk jobs: decode, resize and crop, in processes of their own.

On a GPU the model is not the bottleneck of a bulk job, its input is: measured on an H200 with ViT-B-32
(fp16), the forward runs about 21,000 images/s and one thread decoding and preprocessing 640x480 JPEGs
about 170 (resizing is 60 % of it). Threads in one process stop scaling early (the interpreter lock;
14 threads gave about 1,000/s); processes do not. Each process returns uint8 pixels (a quarter of the
floats' bytes); the float conversion and normalisation run on the GPU with the same arithmetic as
``ClipModel.preprocess`` (``ClipModel.normalize_uint8``), so the vectors stay the service's.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from torchvision.transforms import Compose

from infra.errors import InvalidInput
from infra.images import decode_image
from registry.families.clip import geometry_uint8

_GEOMETRY: Compose | None = None  # set in each preparing process by its initializer

Prepared = tuple[np.ndarray | None, list[int], dict[int, str]]  # uint8 pixels, kept indices, errors


def _init(geometry: Compose) -> None:
    import torch

    global _GEOMETRY
    _GEOMETRY = geometry
    torch.set_num_threads(1)  # a process a core: no thread pool of its own


def prepare_chunk(
    blobs: Sequence[bytes], start: int, names: Sequence[str] | None, max_bytes: int, max_pixels: int
) -> Prepared:
    """Images ``start``... decoded (within the limits) and resized/cropped to uint8 pixels; one that does not
    decode is named in the errors. ``None`` pixels: nothing decoded, or images of a shape the batch form
    cannot hold (the caller then prepares them itself)."""
    if _GEOMETRY is None:
        raise RuntimeError("prepare_chunk runs in a preparing process (see pool)")
    images, kept, errors = [], [], {}
    for i, data in enumerate(blobs, start):
        what = names[i - start] if names else f"item {i}"
        try:
            images.append(decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, what=what))
        except InvalidInput as exc:
            errors[i] = str(exc)
            continue
        kept.append(i)
    return (geometry_uint8(_GEOMETRY, images) if images else None), kept, errors


def pool(processes: int, geometry: Compose) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=(geometry,)
    )
