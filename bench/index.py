"""Vector index: search latency (p50/p99) and QPS of Qdrant Edge (HNSW, the embedded default) against
qdrant-client's local mode (exact, brute force), with Edge's recall@10 against exact, on random
unit 512-d vectors. Upsert time too.

    python -m bench.index [--n 100000] [--queries 200] [--skip-local]
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
from infra.vector_index.edge import EdgeIndex
from infra.vector_index.server import ServerIndex

DIM = 512


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


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
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors, queries = unit(rng, args.n), unit(rng, args.queries)
    # exact top-10 by brute force, the reference for recall
    ids = [point_id(f"bench-{i}") for i in range(args.n)]
    exact = [[ids[i] for i in np.argsort(-(vectors @ q))[:10]] for q in queries]
    results: dict[str, Any] = {"n": args.n, "dim": DIM, "queries": args.queries}
    backends: dict[str, Any] = {"qdrant-edge": lambda d: EdgeIndex(Path(d))}
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
            stats, found = query(index, queries)
            recall = float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)]))
            results[name] = {**stats, "upsert_s": upsert_s, "recall_at_10": recall}
            index.close()
        print(f"  {name}: {results[name]}", flush=True)
    print(f"\nvector index, {args.n} random {DIM}-d unit vectors, top-10")
    print(f"{'backend':30} {'p50 ms':>8} {'p99 ms':>8} {'QPS':>8} {'recall@10':>10} {'upsert s':>9}")
    for name in backends:
        r = results[name]
        row = f"{r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['qps']:8.1f} {r['recall_at_10']:10.3f} {r['upsert_s']:9.1f}"
        print(f"{name:30} {row}")
    write_results(f"index-{args.n}", results)


if __name__ == "__main__":
    main()
