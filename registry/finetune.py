"""LoRA (or full) finetuning of a registered CLIP version on an image–text pair dataset.

- LoRA with peft on open_clip's ``nn.MultiheadAttention`` modules themselves (peft ≥ 0.15 wraps
  them; ``in_proj``/``out_proj`` are not targeted) and the MLP ``c_fc``/``c_proj``; configurable.
- Contrastive InfoNCE loss with CLIP's learnable temperature (``logit_scale``, trained in both modes).
  Pairs whose captions are identical are all positives (soft targets), so duplicate captions in a
  batch do not fight each other.
- Reproducible: batch order comes from (seed, epoch) alone, so a resumed run sees the same batches.
- Checkpoints (trainable weights, optimizer, step, history) are written atomically every
  ``checkpoint_every`` steps and at each epoch end into the job's work folder; a job that is killed
  and redelivered resumes from the last one.
- The result is stored as merged weights (served like any other version, no runtime cost); the small
  adapter is kept as a run artifact with a reference to its base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, ValidationError

from infra.errors import InvalidInput
from registry.datasets import PairDataset
from registry.evaluation import EvalReport, evaluate
from registry.families.clip import ClipModel, encode_text_cut

log = logging.getLogger(__name__)

Progress = Callable[[int, int, float], None]
EpochHook = Callable[[int, EvalReport], None]


class FinetuneConfig(BaseModel):
    """Hyperparameters (a JSON/TOML/YAML file and CLI flags); recorded as run params and lineage tags."""

    mode: Literal["lora", "full"] = "lora"
    epochs: int = Field(3, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (overrides epochs)")
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    seed: int = 0
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["attn", "c_fc", "c_proj"])
    learn_temperature: bool = True
    eval_fraction: float = Field(0.2, ge=0, lt=1, description="held out of the dataset when no eval set is given")
    checkpoint_every: int = Field(25, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"

    @classmethod
    def build(cls, path: Path | None = None, **overrides: Any) -> FinetuneConfig:
        """A config file (JSON, TOML or YAML) with overrides (CLI flags; None = not given), checked:
        a bad value is an :class:`InvalidInput` naming the field."""
        data: dict[str, Any] = {}
        if path is not None:
            text = path.read_text()
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        try:
            return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidInput(f"bad finetune config: {problems}") from exc

    def key(self) -> str:
        return self.model_dump_json()


@dataclass
class FinetuneResult:
    model: ClipModel
    steps: int
    resumed_from: int
    trainable_params: int
    total_params: int
    history: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0


# ----------------------------------------------------------------------------- model set-up
def apply_lora(model: ClipModel, config: FinetuneConfig) -> torch.nn.Module:
    """Inject LoRA adapters into ``model.model`` in place; returns the peft wrapper (for saving the adapter)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.model.named_modules()}
    missing = [t for t in config.target_modules if t not in names]
    if missing:
        raise InvalidInput(f"LoRA target modules {missing} are not in {model.architecture}")
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
    )
    peft_model = get_peft_model(model.model, lora)
    return peft_model


def prepare(model: ClipModel, config: FinetuneConfig) -> torch.nn.Module | None:
    """Make ``model`` trainable per ``config``; returns the peft wrapper in LoRA mode."""
    net = model.model
    peft_model = None
    if config.mode == "lora":
        peft_model = apply_lora(model, config)
    else:
        for p in net.parameters():
            p.requires_grad_(True)
    net.logit_scale.requires_grad_(config.learn_temperature)
    return peft_model


def trainable_parameters(net: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def contrastive_loss(
    net: torch.nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, caption_ids: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE with the learnable temperature; identical captions are all positives."""
    img = F.normalize(net.encode_image(pixels), dim=-1)
    txt = F.normalize(encode_text_cut(net, tokens), dim=-1)
    logits = net.logit_scale.exp().clamp(max=100) * img @ txt.T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits.float(), target) + F.cross_entropy(logits.T.float(), target)) / 2


def make_optimizer(net: torch.nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    params = list(trainable_parameters(net).values())
    if not params:
        raise InvalidInput("nothing to train: no parameter requires grad")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def lr_at(step: int, total: int, config: FinetuneConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    frac = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def _autocast(device: str, precision: str) -> Any:
    from contextlib import nullcontext

    kind = torch.device(device).type
    if precision == "auto":
        precision = "bf16" if kind == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT = "checkpoint.pt"


def save_checkpoint(workdir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Trainable weights, optimizer and progress, written to a temporary file and renamed (atomic)."""
    workdir.mkdir(parents=True, exist_ok=True)
    blob = {
        "trainable": {n: p.detach().cpu() for n, p in trainable_parameters(net).items()},
        "optimizer": opt.state_dict(),
        **state,
    }
    tmp = workdir / f".{CHECKPOINT}.{os.getpid()}"
    torch.save(blob, tmp)
    os.replace(tmp, workdir / CHECKPOINT)


def load_checkpoint(workdir: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
    path = workdir / CHECKPOINT
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=False)
    params = trainable_parameters(net)
    if set(blob["trainable"]) != set(params):
        raise InvalidInput(f"checkpoint {path} does not match this model and config")
    with torch.no_grad():
        for name, value in blob["trainable"].items():
            params[name].copy_(value.to(params[name].device))
    opt.load_state_dict(blob["optimizer"])
    return blob


# ----------------------------------------------------------------------------- training
def finetune(
    model: ClipModel,
    train: PairDataset,
    eval_set: PairDataset | None,
    config: FinetuneConfig,
    workdir: Path,
    progress: Progress | None = None,
    on_eval: EpochHook | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> FinetuneResult:
    """Finetune ``model`` in place; resumes from ``workdir``'s checkpoint when there is one."""
    t0 = time.perf_counter()
    if len(train) < 2:
        raise InvalidInput("a contrastive finetune needs at least 2 training pairs")
    device = model.device
    torch.manual_seed(config.seed)
    peft_model = prepare(model, config)
    net = model.model
    opt = make_optimizer(net, config)
    batch = min(config.batch_size, len(train))
    per_epoch = max(1, len(train) // batch)
    total = config.max_steps or per_epoch * config.epochs
    epochs = math.ceil(total / per_epoch)
    history: dict[str, list[Any]] = {"loss": [], "eval": []}
    start = 0
    blob = load_checkpoint(workdir, net, opt)
    if blob is not None:
        start, history = int(blob["step"]), blob["history"]
        log.info("resuming the finetune at step %d of %d from %s", start, total, workdir)
    elif eval_set is not None:  # the base, as epoch 0, so the curves start where the base stands
        report = _evaluate(model, eval_set, "epoch 0")
        history["eval"].append({"epoch": 0, **report.metrics})
        if on_eval:
            on_eval(0, report)

    captions = train.captions
    cap_index = {c: i for i, c in enumerate(sorted(set(captions)))}
    cap_ids = torch.tensor([cap_index[c] for c in captions])
    step = start
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        idx = order[offset * batch : (offset + 1) * batch]
        pixels = torch.stack([model.preprocess(train.images[i]) for i in idx.tolist()]).to(device)
        tokens = model.tokenize([captions[i] for i in idx.tolist()]).tokens.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, config)
        net.train()
        with _autocast(device, config.precision):
            loss = contrastive_loss(net, pixels, tokens, cap_ids[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = float(loss.detach())
        history["loss"].append(value)
        if on_step:
            on_step(step, value, float(net.logit_scale.exp().detach()))
        if progress:
            progress(step, total, value)
        epoch_done = step % per_epoch == 0 or step == total
        if epoch_done and eval_set is not None:
            report = _evaluate(model, eval_set, f"epoch {epoch + 1}")
            history["eval"].append({"epoch": epoch + 1, **report.metrics})
            if on_eval:
                on_eval(epoch + 1, report)
        if epoch_done or step % config.checkpoint_every == 0:
            save_checkpoint(workdir, net, opt, {"step": step, "history": history, "total": total, "epochs": epochs})
    net.eval()
    n_train = sum(p.numel() for p in trainable_parameters(net).values())
    if peft_model is not None:
        save_adapter(peft_model, workdir / "adapter", model)
        merged = peft_model.merge_and_unload()
        model.model = merged
    n_total = sum(p.numel() for p in model.model.parameters())
    for p in model.model.parameters():
        p.requires_grad_(False)
    model._label_cache.clear()
    return FinetuneResult(model, total, start, n_train, n_total, history, time.perf_counter() - t0)


def _evaluate(model: ClipModel, data: PairDataset, name: str) -> EvalReport:
    model.model.eval()
    model._label_cache.clear()
    report = evaluate(model, data, name)
    model._label_cache.clear()
    return report


def save_adapter(peft_model: torch.nn.Module, path: Path, model: ClipModel) -> None:
    """The LoRA adapter (peft's format) plus the trained temperature; small, kept as a run artifact."""
    peft_model.save_pretrained(str(path))  # type: ignore[operator]
    (path / "logit_scale.json").write_text(json.dumps({"logit_scale": float(model.model.logit_scale.detach())}))


def work_key(base_ref: str, dataset_hash: str, config: FinetuneConfig, name: str) -> str:
    """The same job (base, data, hyperparameters, target) always maps to the same work folder."""
    return hashlib.sha256(f"{base_ref}|{dataset_hash}|{config.key()}|{name}".encode()).hexdigest()[:16]


def plot_history(history: dict[str, list[Any]], path: Path, metrics: Sequence[str] = ()) -> Path:
    """Loss per step and eval metrics per epoch, side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(1, len(history["loss"]) + 1), history["loss"])
    ax1.set_xlabel("step")
    ax1.set_ylabel("contrastive loss")
    ax1.set_title("training loss")
    evals = history.get("eval", [])
    keys = list(metrics) or [k for k in (evals[0] if evals else {}) if k != "epoch"][:6]
    for key in keys:
        ax2.plot([e["epoch"] for e in evals], [e.get(key, float("nan")) for e in evals], marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.05)
    ax2.set_title("held-out metrics")
    if keys:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
