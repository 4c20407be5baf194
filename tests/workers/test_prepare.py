"""A GPU worker's preparing processes (decode, resize and crop in processes; floats and normalisation on the
model's device) give the vectors the one preparing thread gives, with the same images kept and refused."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from infra.images import encode_png
from infra.toyworld import Split, ToyWorld
from registry.families.clip import ClipModel
from workers.embedder import VersionEmbedder


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_preparing_processes_give_the_threads_vectors_and_errors() -> None:
    model = ClipModel.from_pretrained("vlmops-toy-clip", seed=3)
    world = ToyWorld()
    blobs = [encode_png(s.image) for s in world.samples(21, Split.TEST, start=700)]
    blobs[4] = b"not an image"
    blobs[13] = jpeg(world.sample(800, Split.TEST).image.resize((150, 90)))  # resized and cropped
    blobs[17] = encode_png(Image.new("L", (40, 70), 128))  # grey: made RGB by the transform
    names = [f"img-{i}" for i in range(len(blobs))]
    one = VersionEmbedder(model, "1", 1 << 20, 1 << 22, batch=8)
    many = VersionEmbedder(model, "1", 1 << 20, 1 << 22, batch=8, processes=3)
    try:
        assert many.processes == 3 and one.processes == 0
        v1, kept1, err1 = one.embed_valid(blobs, names)
        v2, kept2, err2 = many.embed_valid(blobs, names)
        assert kept1 == kept2 == [i for i in range(len(blobs)) if i != 4]
        assert list(err1) == list(err2) == [4] and "img-4" in err2[4] and "could not be decoded" in err2[4]
        assert v2.dtype == np.float32 and v2.shape == (20, model.embed_dim)
        assert np.array_equal(v1, v2)  # the same pixels to the bit, so the same vectors
        assert np.allclose(np.linalg.norm(v2, axis=1), 1.0, atol=1e-5)
        assert np.array_equal(many(blobs[:2]), one(blobs[:2]))  # a page smaller than the processes
    finally:
        many.close()
