"""Embedding responses as JSON bytes: the declared schema, and float32 vectors that read back exactly."""

from __future__ import annotations

import base64
import json

import numpy as np

from services.schemas import ImageEmbedding, TextEmbedding, embedding_json


def test_json_vectors_read_back_as_the_same_float32_and_match_the_schema() -> None:
    vectors = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for v in vectors:
        raw = embedding_json(v, "json", model="m", version="3", truncated=True)
        row = TextEmbedding.model_validate_json(raw)
        assert (row.dim, row.model, row.version, row.truncated, row.vector_b64) == (512, "m", "3", True, None)
        assert np.array_equal(np.asarray(row.vector, dtype=np.float32), v)
        # the shortest float32 digits: about half the bytes of the float64 digits of tolist()
        assert len(raw) < 0.7 * len(json.dumps(v.tolist()))


def test_base64_vectors_are_little_endian_float32() -> None:
    v = np.linspace(-1, 1, 96, dtype=np.float32)
    row = ImageEmbedding.model_validate_json(embedding_json(v, "base64", model="m", version="1"))
    assert row.vector is None and row.dim == 96
    assert np.array_equal(np.frombuffer(base64.b64decode(row.vector_b64 or ""), dtype="<f4"), v)
