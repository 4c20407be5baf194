"""Captioning, VQA and grounding throughput: each service under 1 and 8 concurrent single-item clients
against the raw in-process batched forward of the same model, in the same run.

Real architectures with random weights (BLIP-base captioning, ViLT-B/32 VQA, OWL-ViT-B/32), their
processors built locally (``infra.local_tokenizers``): nothing is downloaded.

    python -m bench.vision [--seconds 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers as T
from PIL import Image

from bench.embedding import jpeg, write_results
from bench.loadgen import load
from infra.images import to_base64
from infra.local_tokenizers import bert_tokenizer, clip_tokenizer
from infra.process import ServiceProcess
from infra.settings import Settings
from infra.toyworld import Split, ToyWorld
from registry.families.blip_caption import BlipCaptioner
from registry.families.captioning import GenerationParams
from registry.families.hf import HFModel
from registry.families.owlvit import OwlViT
from registry.families.vilt_vqa import ViltVQA
from registry.store import RegistryStore

QUESTION = "what colour is the star?"
QUERIES = ["a red circle", "a blue star"]
MAX_NEW_TOKENS = 10


def blip_base(folder: Path) -> HFModel:
    cfg = T.BlipConfig()
    tok = bert_tokenizer(folder, size=cfg.text_config.vocab_size, dec_id=cfg.text_config.bos_token_id)
    proc = T.BlipProcessor(image_processor=T.BlipImageProcessor(), tokenizer=tok)
    return BlipCaptioner(T.BlipForConditionalGeneration(cfg), proc, "random BLIP-base")


def vilt_b32(folder: Path) -> HFModel:
    answers = [f"answer{i}" for i in range(3129)]
    cfg = T.ViltConfig(num_labels=len(answers), id2label=dict(enumerate(answers)))
    tok = bert_tokenizer(folder, size=cfg.vocab_size)
    proc = T.ViltProcessor(image_processor=T.ViltImageProcessor(), tokenizer=tok)
    return ViltVQA(T.ViltForQuestionAnswering(cfg), proc, "random ViLT-B/32")


def owlvit_b32(folder: Path) -> HFModel:
    cfg = T.OwlViTConfig()
    tok = clip_tokenizer(folder, size=cfg.text_config.vocab_size)
    proc = T.OwlViTProcessor(image_processor=T.OwlViTImageProcessor(), tokenizer=tok)
    return OwlViT(T.OwlViTForObjectDetection(cfg), proc, "random OWL-ViT-B/32")


def raw_rate(run: Callable[[list[Image.Image]], Any], images: list[Image.Image], batch: int, seconds: float) -> float:
    run(images[:batch])  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(images[:batch])
        done += batch
    return done / (time.perf_counter() - t0)


CASES: list[tuple[str, str, str, Callable[[Path], HFModel]]] = [
    ("captioning", "/caption", "BLIP-base captioning", blip_base),
    ("vqa", "/answer", "ViLT-B/32 VQA", vilt_b32),
    ("grounding", "/ground", "OWL-ViT-B/32 grounding", owlvit_b32),
]


def runner(service: str, model: HFModel) -> Callable[[list[Image.Image]], Any]:
    match service:
        case "captioning":
            return lambda ims: model.caption(ims, GenerationParams(MAX_NEW_TOKENS, 1))  # type: ignore[attr-defined]
        case "vqa":
            return lambda ims: model.answer(ims, [QUESTION] * len(ims))  # type: ignore[attr-defined]
        case _:
            return lambda ims: model.detect(ims, [QUERIES] * len(ims))  # type: ignore[attr-defined]


def item(service: str, image: str) -> dict[str, Any]:
    match service:
        case "captioning":
            return {"image": image, "max_new_tokens": MAX_NEW_TOKENS}
        case "vqa":
            return {"image": image, "question": QUESTION}
        case _:
            return {"image": image, "queries": QUERIES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--clients", default="1,8")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    # the raw forward runs where the services run (Settings.device "auto"), at their precision ("auto": fp16 on CUDA)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    images = [s.image.resize((384, 384)) for s in ToyWorld().samples(16, Split.TEST)]
    payloads = [to_base64(jpeg(im)) for im in images]
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = RegistryStore.from_settings(Settings(home=home))
        for service, route, title, build in CASES:
            torch.manual_seed(0)
            model = build(home / f"tok-{service}")
            if device != "cpu":
                model.model.to(device)
                model.device = device
                model.configure_runtime("fp16")
            run = runner(service, model)
            row: dict[str, Any] = {
                "model": title,
                "raw_b1": raw_rate(run, images, 1, args.seconds),
                f"raw_b{args.batch}": raw_rate(run, images, args.batch, args.seconds),
            }
            name = f"bench-{service}"
            store.promote(name, store.register(name, model).version)
            del model, run
            prefix = f"VLMOPS_{service.upper()}__"
            env = {"VLMOPS_HOME": str(home), f"{prefix}MODEL_NAME": name, f"{prefix}MAX_BATCH_SIZE": str(args.batch)}
            env[f"{prefix}MAX_LATENCY_MS"] = "60000"
            with ServiceProcess(service, env=env, log_path=home / f"{service}.log", ready_timeout_s=300) as svc:
                for c in clients:
                    bodies = [{"items": [item(service, p)]} for p in payloads]
                    row[f"service_c{c}"] = load(svc.url, route, bodies, c, args.seconds)
            results[service] = row
            print(f"  {title}: {json.dumps({k: v for k, v in row.items() if k.startswith('raw')})}", flush=True)
    report(results, args.batch, clients)


def report(results: dict[str, Any], batch: int, clients: list[int]) -> None:
    where = results["gpu"] or f"CPU, {results['threads']} threads"
    print(f"\nvision services, items/s ({where}; random weights)")
    head = f"{'model':26} {'raw b1':>8} {'raw b' + str(batch):>8}"
    head += "".join(f" {'svc x' + str(c):>8}" for c in clients) + f" {'svc/raw':>8}"
    print(head)
    for service, *_ in CASES:
        row = results[service]
        line = f"{row['model']:26} {row['raw_b1']:8.2f} {row[f'raw_b{batch}']:8.2f}"
        line += "".join(f" {row[f'service_c{c}']['requests_per_s']:8.2f}" for c in clients)
        ratio = row[f"service_c{clients[-1]}"]["requests_per_s"] / row[f"raw_b{batch}"]
        row["ratio_service_vs_raw"] = ratio
        print(line + f" {ratio:8.2f}")
    write_results(f"vision-{results['device']}", results)


if __name__ == "__main__":
    main()
