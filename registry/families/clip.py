"""The CLIP family on open_clip: image and text embeddings, zero-shot classification.

Loads an open_clip architecture by name + pretrained tag (or weights file), a model directory in
open_clip's ``local-dir`` layout (``open_clip_config.json`` + ``open_clip_model.safetensors``), or a
registry version (which is such a directory). Text is cut after the last end-of-text token of the
batch instead of being padded to the full context: the text tower is causal and pools at that
token, so the embeddings are the same and short queries cost what they are.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms import Compose, Normalize

from infra.errors import InvalidInput, ModelFormatError
from registry.families.base import ModelFamily

_TO_TENSOR = ("ToTensor", "MaybeToTensor")  # torchvision's and open_clip's: uint8 HWC -> float CHW / 255


def geometry_uint8(geometry: Compose, images: Sequence[Image.Image]) -> np.ndarray | None:
    """``(N, H, W, 3)`` uint8 pixels of ``images`` after ``geometry`` (``ClipModel.pixel_geometry``); ``None``
    when they do not come out as RGB images of one size (the caller then preprocesses image by image)."""
    pil = [geometry(im) for im in images] if geometry.transforms else list(images)
    if any(im.mode != "RGB" for im in pil) or len({im.size for im in pil}) != 1:
        return None
    return np.stack([np.asarray(im, dtype=np.uint8) for im in pil])


CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_TEMPLATES: tuple[str, ...] = ("{}", "a photo of {}", "an image of {}", "a picture of {}")


@dataclass(frozen=True)
class TextBatch:
    tokens: torch.Tensor  # [n, L] with L <= context length, cut after the longest end-of-text token
    truncated: list[bool]


class ClipModel(ModelFamily):
    """An open_clip model with its tokenizer and preprocessing."""

    family: ClassVar[str] = "clip"

    def __init__(
        self,
        model: open_clip.CLIP | open_clip.CustomTextCLIP,
        model_cfg: dict[str, Any],
        preprocess_cfg: dict[str, Any],
        architecture: str,
        tokenizer: Callable[..., torch.Tensor],
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.model = model.to(device).eval()
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg
        self.architecture = architecture
        self.device = device
        self.precision = precision
        self.tokenizer = tokenizer
        self.transform: Callable[[Image.Image], torch.Tensor] = image_transform_v2(
            PreprocessCfg(**preprocess_cfg), is_train=False
        )
        self._label_cache: OrderedDict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = OrderedDict()
        self._label_lock = threading.Lock()
        self._stream: torch.cuda.Stream | None = None

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls, architecture: str, pretrained: str | None = None, device: str = "cpu", seed: int | None = None
    ) -> Self:
        """An open_clip architecture by name with a pretrained tag or weights file (None: seeded random weights).

        Names are open_clip's built-in architectures plus the configs under ``registry/configs``.
        """
        register_configs()
        model_cfg = open_clip.get_model_config(architecture)
        if model_cfg is None:
            raise ModelFormatError(f"open_clip knows no architecture {architecture!r}")
        if seed is not None:
            torch.manual_seed(seed)
        model = open_clip.create_model(architecture, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(architecture)
        return cls(model, model_cfg, _preprocess_cfg_for(model), architecture, tokenizer, device)

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> Self:
        config_file = path / CONFIG_FILE
        if not config_file.is_file():
            raise ModelFormatError(f"{path} holds no {CONFIG_FILE}")
        config = json.loads(config_file.read_text())
        model_cfg = config["model_cfg"]
        architecture = config.get("architecture", "custom")
        if not (path / WEIGHTS_FILE).is_file():
            raise ModelFormatError(f"{path} holds no {WEIGHTS_FILE}")
        model = open_clip.create_model(f"local-dir:{path}", device=device)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
        pp = config.get("preprocess_cfg") or _preprocess_cfg_for(model)
        return cls(model, model_cfg, pp, architecture, tokenizer, device)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg, "architecture": self.architecture}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        self.write_manifest(path)

    def load_weights(self, path: Path) -> None:
        self.model.load_state_dict(load_file(str(path / WEIGHTS_FILE), device=self.device))

    def describe(self) -> dict[str, str]:
        return {
            "architecture": self.architecture,
            "embed_dim": str(self.embed_dim),
            "image_size": str(self.image_size),
            "context_length": str(self.context_length),
        }

    # ---------------------------------------------------------------- facts
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def transform_key(self) -> str:
        """Identifies the preprocessing: pixels made by one transform are valid for every model sharing the key."""
        return json.dumps(self.preprocess_cfg, sort_keys=True, default=str)

    def configure_runtime(self, precision: str = "fp32", compile_model: bool = False) -> None:
        """Serving options: autocast precision (fp32 | fp16 | bf16) and torch.compile of both towers."""
        self.precision = precision
        if compile_model:
            self.model.visual = torch.compile(self.model.visual, dynamic=True)  # type: ignore[assignment]
            self.model.transformer = torch.compile(self.model.transformer, dynamic=True)  # type: ignore[assignment]

    @contextmanager
    def _running(self) -> Iterator[None]:
        """Inference mode, autocast at the configured precision, and on CUDA this model's own stream."""
        kind = torch.device(self.device).type
        autocast: AbstractContextManager[Any] = nullcontext()
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            autocast = torch.autocast(device_type=kind, dtype=dtype)
        stream: AbstractContextManager[Any] = nullcontext()
        if kind == "cuda":
            if self._stream is None:
                self._stream = torch.cuda.Stream(device=self.device)
            stream = torch.cuda.stream(self._stream)
        with torch.inference_mode(), stream, autocast:
            yield
        if self._stream is not None:
            self._stream.synchronize()

    # ---------------------------------------------------------------- text
    def tokenize(self, texts: Sequence[str], cut: bool = True) -> TextBatch:
        """Tokenize to at most the context length; ``cut`` stops after the longest end-of-text token."""
        ctx = self.context_length
        tok = self.tokenizer
        if not isinstance(tok, SimpleTokenizer):
            return TextBatch(tok(list(texts)), [False] * len(texts))
        rows: list[list[int]] = []
        truncated: list[bool] = []
        for text in texts:
            ids = [tok.sot_token_id, *tok.encode(text), tok.eot_token_id]
            truncated.append(len(ids) > ctx)
            if len(ids) > ctx:
                ids = [*ids[: ctx - 1], tok.eot_token_id]
            rows.append(ids)
        length = max(len(r) for r in rows) if cut and self._can_cut() else ctx
        tokens = torch.zeros(len(rows), length, dtype=torch.long)
        for i, ids in enumerate(rows):
            tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return TextBatch(tokens, truncated)

    def _can_cut(self) -> bool:
        m = self.model
        return isinstance(m, open_clip.CLIP) and getattr(m, "text_pool_type", "argmax") in ("argmax", "eos")

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings of a token batch of any length up to the context length."""
        m = self.model
        with self._running():
            tokens = tokens.to(self.device, non_blocking=True)
            if not self._can_cut() or tokens.shape[1] == self.context_length:
                out = m.encode_text(tokens)
            else:
                out = encode_text_cut(m, tokens)
            return F.normalize(out.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        if not texts:
            raise InvalidInput("no texts to embed")
        batch = self.tokenize(texts)
        return self.encode_tokens(batch.tokens), batch.truncated

    # ---------------------------------------------------------------- images
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def preprocess_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``torch.stack([preprocess(im) for im in images])``, with the same numbers: each image is resized
        and cropped on its own, then the batch becomes floats and is normalized in one operation each (per
        image those two steps cost a bulk job a third of a fast model's time). Transforms of another shape
        run image by image."""
        geometry = self.pixel_geometry()
        if geometry is None:
            return torch.stack([self.preprocess(im) for im in images])
        array = geometry_uint8(geometry, images)
        if array is None:
            return torch.stack([self.preprocess(im) for im in images])
        return self.normalize_uint8(torch.from_numpy(array))

    def pixel_geometry(self) -> Compose | None:
        """The transform's steps before its float conversion (resize, crop: PIL in, PIL out), which
        :func:`geometry_uint8` runs anywhere (a helper process) and :meth:`normalize_uint8` completes on any
        device; ``None`` for a transform of another shape."""
        steps = getattr(self.transform, "transforms", [])
        if len(steps) < 2 or not isinstance(steps[-1], Normalize) or type(steps[-2]).__name__ not in _TO_TENSOR:
            return None
        return Compose(steps[:-2])

    def normalize_uint8(self, array: torch.Tensor) -> torch.Tensor:
        """Uint8 ``(N, H, W, 3)`` pixels (on any device) → the model's float input, as ``preprocess`` makes it:
        the same two correctly rounded operations, so the same numbers on a GPU."""
        pixels = array.permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        return self.transform.transforms[-1](pixels)  # Normalize broadcasts its (C, 1, 1) mean and std

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        pin = self.device != "cpu" and pixels.device.type == "cpu"
        if pin:
            pixels = pixels.pin_memory()
        with self._running():
            out = self.model.encode_image(pixels.to(self.device, non_blocking=pin))
            return F.normalize(out.float(), dim=-1)

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        if not images:
            raise InvalidInput("no images to embed")
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]))

    # ---------------------------------------------------------------- zero-shot
    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> torch.Tensor:
        """One unit vector per label: the renormalised mean over prompt templates (prompt ensembling)."""
        key = (tuple(labels), tuple(templates))
        with self._label_lock:
            if key in self._label_cache:
                self._label_cache.move_to_end(key)
                return self._label_cache[key]
        prompts = [t.format(label) for label in labels for t in templates]
        emb, _ = self.encode_text(prompts)
        emb = F.normalize(emb.view(len(labels), len(templates), -1).mean(dim=1), dim=-1)
        with self._label_lock:
            self._label_cache[key] = emb
            while len(self._label_cache) > 256:
                self._label_cache.popitem(last=False)
        return emb

    @torch.inference_mode()
    def classify_embeddings(self, image_emb: torch.Tensor, label_emb: torch.Tensor) -> torch.Tensor:
        """Probabilities over labels for each image embedding."""
        scale = self.model.logit_scale.exp().float().clamp(max=100)
        return (scale * image_emb @ label_emb.T).softmax(dim=-1)


def encode_text_cut(m: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` on a sequence shorter than the context (positional and mask sliced)."""
    length = tokens.shape[1]
    cast_dtype = m.transformer.get_cast_dtype()
    x = m.token_embedding(tokens).to(cast_dtype)
    x = x + m.positional_embedding[:length].to(cast_dtype)
    mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
    x = m.transformer(x, attn_mask=mask)
    x = m.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None)
    )
    if m.text_projection is not None:
        x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
    return x


def register_configs() -> None:
    """Make the architectures under ``registry/configs`` known to open_clip (configuration as data)."""
    if not set(p.stem for p in CONFIG_DIR.glob("*.json")) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


def _preprocess_cfg_for(model: torch.nn.Module) -> dict[str, Any]:
    """The preprocessing open_clip attached to the model (size, mean, std, interpolation, resize mode)."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}))
    if "size" in cfg and isinstance(cfg["size"], tuple):
        cfg["size"] = list(cfg["size"])
    return cfg
