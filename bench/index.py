"""Vector index: search latency (p50/p99) and QPS of Qdrant Edge (HNSW, the embedded default) against
qdrant-client's local mode (exact, brute force), with recall@10 against numpy brute force, on 512-d
unit vectors. Upsert time too (for Edge including the HNSW build).

    python -m bench.index [--n 100000] [--queries 200] [--skip-local] [--data random|clustered]
                          [--m 16] [--ef-construct 100] [--ef 128]

``--data random``: uniform on the sphere. The hardest case for any graph index: in 512 dimensions
the nearest neighbours are hardly nearer than any other point (mean cosine of the top-1 about 0.15
at 100k points), so HNSW recall is low and says little about real embeddings. ``--data clustered``:
points drawn around ``--clusters`` random centres with Gaussian noise of norm about ``--noise``,
closer to real embeddings, which sit on a low-dimensional, clustered manifold. ``--m``,
``--ef-construct`` and ``--ef`` override Edge's HNSW parameters for this run only.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient

from bench.embedding import write_results
from infra.vector_index import IndexPoint, VectorIndex, point_id
from infra.vector_index.base import HNSW_EF, HNSW_EF_CONSTRUCT, HNSW_M
from infra.vector_index.edge import EdgeIndex
from infra.vector_index.server import ServerIndex

DIM = 512


def normalise(v: np.ndarray) -> np.ndarray:
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def unit(rng: np.random.Generator, n: int, chunk: int = 100_000) -> np.ndarray:
    """``n`` random unit vectors, uniform on the sphere (float32, made in chunks to spare memory)."""
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        out[start : start + chunk] = normalise(rng.standard_normal((min(chunk, n - start), DIM), np.float32))
    return out


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float, chunk: int = 100_000) -> np.ndarray:
    """``n`` unit vectors, each a random centre plus isotropic noise of norm about ``noise``."""
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        v = centres[rng.integers(0, len(centres), k)]
        v += rng.standard_normal((k, DIM), np.float32) * np.float32(noise / np.sqrt(DIM))
        out[start : start + k] = normalise(v)
    return out


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10, chunk: int = 100_000) -> np.ndarray:
    """Row indices of the exact top-``k`` (by dot product) of each query, best first, in chunks of rows."""
    best_i = np.empty((len(queries), 0), np.int64)
    best_s = np.empty((len(queries), 0), np.float32)
    for start in range(0, len(vectors), chunk):
        s = queries @ vectors[start : start + chunk].T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_i = np.concatenate([best_i, top + start], axis=1)
        best_s = np.concatenate([best_s, np.take_along_axis(s, top, axis=1)], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_i, best_s = np.take_along_axis(best_i, keep, axis=1), np.take_along_axis(best_s, keep, axis=1)
    return best_i


def fill(index: VectorIndex, vectors: np.ndarray, ids: list[str], batch: int = 2000) -> float:
    index.create("bench", DIM)
    t0 = time.perf_counter()
    for start in range(0, len(vectors), batch):
        chunk = vectors[start : start + batch]
        index.upsert("bench", [IndexPoint(ids[start + i], v.tolist()) for i, v in enumerate(chunk)])
    return time.perf_counter() - t0


def query(index: VectorIndex, queries: np.ndarray) -> tuple[dict[str, float], list[list[str]]]:
    index.search("bench", queries[0].tolist(), 10)  # warm-up
    lat, found = [], []
    t0 = time.perf_counter()
    for q in queries:
        t = time.perf_counter()
        found.append([h.id for h in index.search("bench", q.tolist(), 10)])
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    lat.sort()
    return {
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
        "qps": len(queries) / wall,
    }, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-local", action="store_true", help="only Qdrant Edge (e.g. for 1M vectors)")
    parser.add_argument("--data", choices=["random", "clustered"], default="random")
    parser.add_argument("--clusters", type=int, default=2000, help="--data clustered: number of centres")
    parser.add_argument("--noise", type=float, default=0.5, help="--data clustered: noise norm per point")
    parser.add_argument("--m", type=int, default=HNSW_M, help="Edge HNSW edges per node")
    parser.add_argument("--ef-construct", type=int, default=HNSW_EF_CONSTRUCT, help="Edge HNSW build beam")
    parser.add_argument("--ef", type=int, default=HNSW_EF, help="Edge HNSW search beam (hnsw_ef)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if args.data == "random":
        vectors, queries = unit(rng, args.n), unit(rng, args.queries)
    else:
        centres = unit(rng, args.clusters)
        vectors = clustered(rng, centres, args.n, args.noise)
        queries = clustered(rng, centres, args.queries, args.noise)
    # exact top-10 by brute force, the reference for recall
    ids = [point_id(f"bench-{i}") for i in range(args.n)]
    top = exact_top(vectors, queries)
    exact = [[ids[i] for i in row] for row in top]
    scores = np.einsum("qkd,qd->qk", vectors[top], queries)
    hnsw = {"m": args.m, "ef_construct": args.ef_construct, "ef": args.ef}
    results: dict[str, Any] = {
        "n": args.n,
        "dim": DIM,
        "queries": args.queries,
        "data": args.data,
        **({"clusters": args.clusters, "noise": args.noise} if args.data == "clustered" else {}),
        "edge_hnsw": hnsw,
        # how far the true neighbours stand out: random 512-d data has top-1 barely above top-10
        "exact_mean_score_top1": float(scores[:, 0].mean()),
        "exact_mean_score_top10": float(scores[:, 9].mean()),
    }
    backends: dict[str, Any] = {
        "qdrant-edge": lambda d: EdgeIndex(Path(d), m=args.m, ef_construct=args.ef_construct, hnsw_ef=args.ef)
    }
    if not args.skip_local:
        backends["qdrant-client local (exact)"] = lambda d: ServerIndex(QdrantClient(path=d))
    for name, make in backends.items():
        with tempfile.TemporaryDirectory() as tmp:
            index = make(tmp)
            upsert_s = fill(index, vectors, ids)
            if isinstance(index, EdgeIndex):
                t = time.perf_counter()
                index._shard("bench").optimize()  # build the HNSW graph now, not during the queries
                upsert_s += time.perf_counter() - t
            if isinstance(index, EdgeIndex):
                info = index._shard("bench").info()
                results["edge_segments"] = info.segments_count
                results["edge_indexed_vectors"] = info.indexed_vectors_count  # all n: the graph covers them all
            stats, found = query(index, queries)
            recall = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))
            results[name] = {**stats, "upsert_s": upsert_s, "recall_at_10": recall}
            index.close()
        print(f"  {name}: {results[name]}", flush=True)
    data = args.data if args.data == "random" else f"clustered ({args.clusters} centres, noise {args.noise})"
    print(f"\nvector index, {args.n} {data} {DIM}-d unit vectors, top-10")
    print(f"Edge HNSW m={args.m} ef_construct={args.ef_construct} ef={args.ef}")
    print(f"{'backend':30} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'recall@10':>10} {'upsert s':>9}")
    for name in backends:
        r = results[name]
        row = f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['qps']:8.1f} {r['recall_at_10']:10.3f} {r['upsert_s']:9.1f}"
        print(f"{name:30} {row}")
    write_results(f"index-{args.n}-{args.data}", results)


if __name__ == "__main__":
    main()
