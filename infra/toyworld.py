"""The toy world: deterministic images of coloured shapes with captions, Q&A pairs and boxes.

Real pretrained weights cannot be downloaded where this project is built and tested, so a tiny
CLIP is trained on this world to give checkable behaviour. Every sample is a pure function of
(world seed, split, index, domain): the same call always draws the same pixels.

Two domains:
- ``plain``: filled shapes on a light, flat background;
- ``shifted``: outlined shapes with a dark outline on a noisy, striped, coloured background, which
  a model trained only on ``plain`` handles clearly worse.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 210, 30),
    "purple": (135, 55, 175),
    "orange": (245, 135, 25),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three")
CLASS_TEMPLATE = "a {colour} {shape}"

Box = tuple[int, int, int, int]


class Domain(StrEnum):
    PLAIN = "plain"
    SHIFTED = "shifted"


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    box: Box  # [x0, y0, x1, y1] in pixels, x1/y1 exclusive

    @property
    def label(self) -> str:
        return CLASS_TEMPLATE.format(colour=self.colour, shape=self.shape)


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class ToySample:
    image: Image.Image
    objects: tuple[ToyObject, ...]
    caption: str
    qa: tuple[QA, ...] = field(default_factory=tuple)
    domain: Domain = Domain.PLAIN

    @property
    def label(self) -> str:
        """Class label of a single-object sample ("a red circle")."""
        if len(self.objects) != 1:
            raise ValueError("only single-object samples have a class label")
        return self.objects[0].label


def class_labels() -> list[str]:
    return [CLASS_TEMPLATE.format(colour=c, shape=s) for c in COLOURS for s in SHAPES]


def caption_for(objects: tuple[ToyObject, ...]) -> str:
    parts = [o.label for o in objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _questions(objects: tuple[ToyObject, ...], rng: np.random.Generator) -> tuple[QA, ...]:
    qa = [QA("how many objects are there?", COUNT_WORDS[len(objects)])]
    shapes = [o.shape for o in objects]
    colours = [o.colour for o in objects]
    for o in objects:
        if shapes.count(o.shape) == 1:
            qa.append(QA(f"what colour is the {o.shape}?", o.colour))
        if colours.count(o.colour) == 1:
            qa.append(QA(f"what shape is the {o.colour} object?", o.shape))
    present = {(o.colour, o.shape) for o in objects}
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    qa.append(QA(f"is there a {colour} {shape}?", "yes" if (colour, shape) in present else "no"))
    return tuple(qa)


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, obj: ToyObject, outline_style: bool) -> None:
    x0, y0, x1, y1 = obj.box
    fill = COLOURS[obj.colour]
    # exclusive box → inclusive PIL coordinates
    bx = (x0, y0, x1 - 1, y1 - 1)
    outline = (20, 20, 20) if outline_style else None
    width = 2 if outline_style else 0
    if obj.shape == "circle":
        draw.ellipse(bx, fill=fill, outline=outline, width=width)
    elif obj.shape == "square":
        draw.rectangle(bx, fill=fill, outline=outline, width=width)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill, outline=outline, width=width)
    elif obj.shape == "star":
        cx, cy, r = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0 - 1) / 2
        draw.polygon(_star(cx, cy, r), fill=fill, outline=outline, width=width)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _background(rng: np.random.Generator, size: int, domain: Domain) -> Image.Image:
    if domain is Domain.PLAIN:
        grey = int(rng.integers(225, 256))
        return Image.new("RGB", (size, size), (grey, grey, grey))
    base = rng.integers(60, 200, size=3)
    period = int(rng.integers(4, 12))
    yy, xx = np.mgrid[0:size, 0:size]
    angle = rng.uniform(0, math.pi)
    stripes = (np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period) > 0)[..., None]
    tint = rng.integers(-50, 50, size=3)
    noise = rng.normal(0, 28, size=(size, size, 3))
    arr = base + stripes * tint + noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _overlaps(a: Box, b: Box, margin: int = 2) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


@dataclass(frozen=True)
class ToyWorld:
    """A deterministic generator of toy samples."""

    seed: int = 0
    image_size: int = 64
    min_size_frac: float = 0.25
    max_size_frac: float = 0.5

    def _rng(self, split: Split, index: int, domain: Domain, salt: str = "") -> np.random.Generator:
        key = f"{self.seed}/{split}/{domain}/{index}/{salt}".encode()
        return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    def sample(
        self,
        index: int,
        split: Split = Split.TRAIN,
        domain: Domain = Domain.PLAIN,
        n_objects: int | None = None,
    ) -> ToySample:
        rng = self._rng(split, index, domain, salt=str(n_objects))
        count = n_objects if n_objects is not None else int(rng.integers(1, 4))
        if not 1 <= count <= 3:
            raise ValueError("a toy image holds 1 to 3 objects")
        size = self.image_size
        objects: list[ToyObject] = []
        while len(objects) < count:
            side = int(rng.integers(int(size * self.min_size_frac), int(size * self.max_size_frac) + 1))
            if count > 1:
                side = max(int(size * self.min_size_frac), int(side * 0.8))
            for _ in range(100):
                x0 = int(rng.integers(0, size - side + 1))
                y0 = int(rng.integers(0, size - side + 1))
                box = (x0, y0, x0 + side, y0 + side)
                if not any(_overlaps(box, o.box) for o in objects):
                    break
            else:  # no room left: start the image over with fresh draws
                objects.clear()
                continue
            colour = str(rng.choice(list(COLOURS)))
            shape = str(rng.choice(SHAPES))
            if any(o.colour == colour and o.shape == shape for o in objects):
                continue
            objects.append(ToyObject(colour, shape, box))
        image = _background(rng, size, domain)
        draw = ImageDraw.Draw(image)
        for obj in objects:
            _draw_shape(draw, obj, outline_style=domain is Domain.SHIFTED)
        objs = tuple(objects)
        return ToySample(image=image, objects=objs, caption=caption_for(objs), qa=_questions(objs, rng), domain=domain)

    def samples(
        self,
        n: int,
        split: Split = Split.TRAIN,
        domain: Domain = Domain.PLAIN,
        n_objects: int | None = None,
        start: int = 0,
    ) -> Iterator[ToySample]:
        for i in range(start, start + n):
            yield self.sample(i, split, domain, n_objects)
