"""Image–text pair datasets for finetuning and evaluation: JSONL, CSV, a folder with captions, or a folder
per class.

- JSONL: one object per line, ``{"image": path-or-URI, "caption": str, "label": str}``.
- CSV: a header with ``image`` and ``caption`` and/or ``label``.
- A folder: every image file with a caption file of the same stem beside it (``cat.png`` + ``cat.txt``);
  a ``labels.json`` mapping stem → label is optional.
- A folder per class (no image at the top): each sub-folder's name is the label of the images in it; a
  caption file beside an image is optional.

Finetuning needs a caption on every row. Evaluation also takes rows with a label and no caption, the
usual form of a curated collection: such rows are scored by class queries only (``require_captions=False``).

Relative image paths are resolved against the dataset file's folder; other URIs go through fsspec.
The whole dataset is validated before any training starts: every bad row is named in one error
(missing file, undecodable image, empty caption). The content hash covers image bytes, captions and
labels in order, so it names the data, not the file that lists it.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from PIL import Image

from infra.blobs import read_uri
from infra.errors import InvalidInput, NotFound
from infra.images import decode_image, encode_png
from infra.toyworld import Domain, Split, ToyWorld

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MAX_ERRORS_SHOWN = 20


class DatasetError(InvalidInput):
    """A dataset that cannot be used; ``errors`` names each bad row."""

    def __init__(self, source: str, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        shown = "\n  ".join(self.errors[:MAX_ERRORS_SHOWN])
        more = f"\n  ... and {len(self.errors) - MAX_ERRORS_SHOWN} more" if len(self.errors) > MAX_ERRORS_SHOWN else ""
        super().__init__(f"dataset {source} has {len(self.errors)} bad row(s):\n  {shown}{more}")


@dataclass(frozen=True)
class PairRow:
    row: int  # 1-based line (JSONL), data row (CSV) or file index (folder), as named in errors
    image: str
    caption: str
    label: str | None = None


class LazyImages(Sequence[Image.Image]):
    """Images read and decoded again at each access: an evaluation set of any size in bounded memory.

    Every image was decoded once when the dataset was validated; it is read from its URI again here."""

    def __init__(self, uris: Sequence[str]) -> None:
        self.uris = tuple(uris)

    def __len__(self) -> int:
        return len(self.uris)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | Sequence[Image.Image]:
        if isinstance(index, slice):
            return [self._read(u) for u in self.uris[index]]
        return self._read(self.uris[index])

    @staticmethod
    def _read(uri: str) -> Image.Image:
        data = read_uri(uri, MAX_IMAGE_BYTES)
        return decode_image(data, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_IMAGE_PIXELS, what=uri)


@dataclass(frozen=True)
class PairDataset:
    source: str
    rows: tuple[PairRow, ...]
    images: Sequence[Image.Image]
    content_hash: str

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def captions(self) -> list[str]:
        """The caption of every row ("" where a row has a label and no caption)."""
        return [r.caption for r in self.rows]

    @property
    def n_captioned(self) -> int:
        return sum(1 for r in self.rows if r.caption)

    @property
    def n_labelled(self) -> int:
        return sum(1 for r in self.rows if r.label is not None)

    @property
    def labels(self) -> list[str] | None:
        """Class labels when every row has one, else None."""
        labels = [r.label for r in self.rows]
        return None if any(lb is None for lb in labels) else [str(lb) for lb in labels]

    def split(self, eval_fraction: float, seed: int = 0) -> tuple[PairDataset, PairDataset]:
        """A deterministic train / held-out split (by a hash of each row's image and caption)."""
        keyed = sorted(
            range(len(self.rows)),
            key=lambda i: hashlib.sha256(f"{seed}/{self.rows[i].image}/{self.rows[i].caption}".encode()).digest(),
        )
        n_eval = max(1, int(round(len(keyed) * eval_fraction)))
        held, train = sorted(keyed[:n_eval]), sorted(keyed[n_eval:])
        return self.subset(train, "train"), self.subset(held, "eval")

    def subset(self, indices: Sequence[int], part: str) -> PairDataset:
        rows = tuple(self.rows[i] for i in indices)
        images: Sequence[Image.Image]
        if isinstance(self.images, LazyImages):
            images = LazyImages([self.images.uris[i] for i in indices])
        else:
            images = tuple(self.images[i] for i in indices)
        digest = hashlib.sha256(f"{self.content_hash}/{part}/{list(indices)}".encode()).hexdigest()
        return PairDataset(f"{self.source}#{part}", rows, images, digest)


def _read_rows(source: Path) -> Iterator[PairRow | str]:
    """Rows of the dataset, or an error string for a row that cannot even be parsed."""
    if source.is_dir() and _is_class_folders(source):
        index = 0
        for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for img in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                index += 1
                txt = img.with_suffix(".txt")
                yield PairRow(index, str(img), txt.read_text().strip() if txt.is_file() else "", sub.name)
        return
    if source.is_dir():
        labels_file = source / "labels.json"
        labels = json.loads(labels_file.read_text()) if labels_file.is_file() else {}
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for i, img in enumerate(images, start=1):
            txt = img.with_suffix(".txt")
            caption = txt.read_text().strip() if txt.is_file() else ""
            if not txt.is_file():
                yield f"file {img.name}: no caption file {txt.name}"
                continue
            yield PairRow(i, str(img), caption, labels.get(img.stem))
        return
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        for i, line in enumerate(source.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {i}: not JSON ({exc.msg})"
                continue
            if not isinstance(obj, dict) or "image" not in obj:
                yield f"line {i}: no 'image' field"
                continue
            label = obj.get("label")
            yield PairRow(i, str(obj["image"]), str(obj.get("caption") or ""), None if label is None else str(label))
    elif suffix in (".csv", ".tsv"):
        with source.open(newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            fields = set(reader.fieldnames or [])
            if "image" not in fields or not fields & {"caption", "label"}:
                yield f"header: missing column(s): needs 'image' and 'caption' and/or 'label' (has {sorted(fields)})"
                return
            for i, rec in enumerate(reader, start=2):  # line numbers as an editor shows them
                label = rec.get("label") or None
                yield PairRow(i, str(rec["image"] or ""), str(rec.get("caption") or ""), label)
    else:
        raise InvalidInput(f"{source}: a dataset is a .jsonl, .csv or .tsv file or a folder of images with captions")


def _is_class_folders(source: Path) -> bool:
    """A folder per class: sub-folders, and no image at the top."""
    entries = list(source.iterdir())
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in entries)
    return not has_images and any(p.is_dir() and not p.name.startswith(".") for p in entries)


def _resolve(image: str, base: Path) -> str:
    if "://" in image:
        return image
    path = Path(image)
    return str(path if path.is_absolute() else base / path)


def load_pairs(
    source: str | Path, max_rows: int | None = None, require_captions: bool = True, lazy: bool = False
) -> PairDataset:
    """Read and validate every row; raises :class:`DatasetError` naming all bad rows, before any training.

    ``require_captions=False`` accepts rows with a label and no caption (evaluation). ``lazy`` keeps no
    decoded image in memory: each is read again when used (an evaluation set of any size)."""
    path = Path(source)
    if not path.exists():
        raise NotFound(f"no dataset at {source}")
    base = path if path.is_dir() else path.parent
    errors: list[str] = []
    rows: list[PairRow] = []
    images: list[Image.Image] = []
    digest = hashlib.sha256()
    for item in _read_rows(path):
        if isinstance(item, str):
            errors.append(item)
            continue
        where = f"row {item.row}" if not path.is_dir() else f"file {Path(item.image).name}"
        problems: list[str] = []
        if not item.caption.strip() and (require_captions or item.label is None):
            problems.append("empty caption" if require_captions else "no caption and no label")
        uri = _resolve(item.image, base)
        image: Image.Image | None = None
        if not item.image.strip():
            problems.append("no image")
        else:
            try:
                data = read_uri(uri, MAX_IMAGE_BYTES)
                image = decode_image(data, max_bytes=MAX_IMAGE_BYTES, max_pixels=MAX_IMAGE_PIXELS, what=item.image)
                digest.update(hashlib.sha256(data).digest())
            except NotFound:
                problems.append(f"image {item.image!r} not found")
            except InvalidInput as exc:
                problems.append(f"image {item.image!r}: {exc}")
        if problems:
            errors.append(f"{where}: {'; '.join(problems)}")
            continue
        assert image is not None
        digest.update(json.dumps([item.caption.strip(), item.label]).encode())
        rows.append(PairRow(item.row, uri, item.caption.strip(), item.label))
        if not lazy:
            images.append(image)
        if max_rows is not None and len(rows) >= max_rows:
            break
    if errors:
        raise DatasetError(str(source), errors)
    if not rows:
        raise DatasetError(str(source), ["no rows"])
    kept: Sequence[Image.Image] = LazyImages([r.image for r in rows]) if lazy else tuple(images)
    return PairDataset(str(source), tuple(rows), kept, digest.hexdigest())


def write_toy_dataset(
    folder: Path,
    n: int,
    domain: Domain = Domain.PLAIN,
    split: Split = Split.TRAIN,
    seed: int = 0,
    start: int = 0,
    n_objects: int | None = 1,
    append: bool = False,
    captions: bool = True,
    tasks: bool = False,
) -> Path:
    """Toy-world pairs as PNG files plus a ``pairs.jsonl`` (caption and class label); returns the JSONL path.

    ``append`` adds to an existing ``pairs.jsonl`` (e.g. a mix of domains). ``captions=False`` writes
    ``{image, label}`` rows only, as a curated collection has them (images with no label are left out).
    ``tasks`` adds each image's questions (``qa``) and labelled boxes (``objects``): a task dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(ToyWorld(seed=seed).samples(n, split, domain, n_objects=n_objects, start=start)):
        if not captions and len(s.objects) != 1:
            continue
        name = f"{split}-{domain}-{start + i:06d}.png"
        (folder / name).write_bytes(encode_png(s.image))
        record: dict[str, object] = {"image": name, "caption": s.caption} if captions else {"image": name}
        if len(s.objects) == 1:
            record["label"] = s.label
        if tasks:
            record["qa"] = [{"question": qa.question, "answer": qa.answer} for qa in s.qa]
            record["objects"] = [{"label": o.label, "box": list(o.box)} for o in s.objects]
        lines.append(json.dumps(record))
    out = folder / "pairs.jsonl"
    with out.open("a" if append else "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out
