"""Class-query evaluation at scale: 10,000 labelled images x 100 classes, two versions, on this machine.

    python -m bench.class_eval [--n 10000] [--classes 100] [--k 200,1000]

Writes a labels-only JSONL of toy images (class ``c`` holds the images ``i % classes == c``: the labels
carry no meaning here, the cost does), then times what ``vlmops eval NAME V --against production`` does:
the validation pass over every image, then per version the image embeddings (each image read and
embedded once), the class queries and the chunked ranking; and the per-class table. Peak RSS is the
process's own, so it includes the toy model and Python; the ``lazy`` dataset keeps no decoded image.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from bench.embedding import write_results
from infra.images import encode_png
from infra.settings import Settings
from infra.toyworld import Domain, Split, ToyWorld
from registry.class_table import ClassComparison
from registry.datasets import load_pairs
from registry.evaluation import evaluate
from registry.families.clip import ClipModel


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_set(folder: Path, n: int, classes: int) -> Path:
    lines = []
    for i, sample in enumerate(ToyWorld().samples(n, Split.TEST, Domain.PLAIN, n_objects=1)):
        name = f"{i:06d}.png"
        (folder / name).write_bytes(encode_png(sample.image))
        lines.append(json.dumps({"image": name, "label": f"class {i % classes:03d}"}))
    out = folder / "labels.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", default="200,1000")
    args = parser.parse_args()
    ks = [int(k) for k in args.k.split(",")]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from services.demo import ensure_toy_clip

    base, _ = ensure_toy_clip(Settings())
    candidate = ClipModel.from_pretrained("vlmops-toy-clip", seed=5)  # a second version: same cost
    rss_models = peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = write_set(Path(tmp), args.n, args.classes)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = load_pairs(path, require_captions=False, lazy=True)
        t_load = time.perf_counter() - t0
        rss_loaded = peak_rss_mib()
        timings, reports = {}, {}
        for name, model in (("v1", base), ("v2", candidate)):
            t0 = time.perf_counter()
            reports[name] = evaluate(model, data, name, class_ks=ks)
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = ClassComparison.of("v1", reports["v1"], "v2", reports["v2"])
        table.write_csv(Path(tmp) / "t.csv")
        table.plot(Path(tmp) / "t.png")
        t_table = time.perf_counter() - t0
    results = {
        "n_images": args.n,
        "n_classes": args.classes,
        "ks": ks,
        "threads": torch.get_num_threads(),
        "write_dataset_s": t_write,
        "validate_s": t_load,
        "evaluate_s_per_version": timings,
        "images_per_s": {k: args.n / v for k, v in timings.items()},
        "table_csv_png_s": t_table,
        "peak_rss_mib": {"models_loaded": rss_models, "dataset_validated": rss_loaded, "end": peak_rss_mib()},
        "macro_class_r_precision": {k: r.metrics["class_r_precision"] for k, r in reports.items()},
    }
    print(f"class-query evaluation, {args.n} images x {args.classes} classes, K = {ks}")
    print(f"  {'validate (read + decode every image)':<44}{t_load:>8.1f} s")
    for name, t in timings.items():
        print(f"  {'evaluate ' + name + ' (embed, query, rank)':<44}{t:>8.1f} s  ({args.n / t:,.0f} images/s)")
    print(f"  {'per-class table (text, CSV, PNG)':<44}{t_table:>8.1f} s")
    peaks = results["peak_rss_mib"]
    print(f"  peak RSS: {peaks['models_loaded']:.0f} MiB with the models, {peaks['end']:.0f} MiB at the end")
    write_results("class_eval", results)


if __name__ == "__main__":
    main()
