"""Linearity of the bulk paths: ``bench.pipeline`` at two sizes (default 10,000 and 100,000 toy images),
and the time an item costs at each once a job's fixed cost (dispatch, start, result) is taken out.
A pipeline whose paging or checks grew with the collection would show a ratio above 1.

    python -m bench.scale                     # ratio of the per-item times, 100k over 10k (goal: within 1.2)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.embedding import RESULTS, write_results


def run(n: int, blobs: str | None) -> dict[str, Any]:
    """One ``bench.pipeline`` run of ``n`` toy images in a process of its own; its results."""
    started = time.time()
    cmd = [sys.executable, "-m", "bench.pipeline", "--arch", "vlmops-toy-clip", "--n", str(n), "--batch", "64"]
    cmd += ["--http-n", "500", *(["--blobs", blobs] if blobs else [])]
    subprocess.run(cmd, check=True)
    written = [p for p in RESULTS.glob(f"pipeline-vlmops-toy-clip-{n}-*.json") if p.stat().st_mtime >= started]
    return json.loads(max(written, key=lambda p: p.stat().st_mtime).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--blobs", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    small, large = run(args.small, args.blobs), run(args.large, args.blobs)
    results: dict[str, Any] = {"small": small, "large": large}
    print(f"\n{'µs an item':<12} {args.small:>10,} {args.large:>10,} {'ratio':>7}")
    for what in ("ingest", "reindex"):
        key = f"{what}_marginal_s_per_item"
        ratio = large[key] / small[key]
        results[f"{what}_ratio"] = ratio
        print(f"{what:<12} {small[key] * 1e6:>10.0f} {large[key] * 1e6:>10.0f} {ratio:>7.2f}")
    write_results(f"scale-{args.small}-{args.large}", results)


if __name__ == "__main__":
    main()
