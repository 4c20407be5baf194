"""Image–text pair datasets for finetuning and evaluation: JSONL, CSV, or a folder with captions.

- JSONL: one object per line, ``{"image": path-or-URI, "caption": str, "label": str (optional)}``.
- CSV: a header with ``image`` and ``caption`` (``label`` optional).
- A folder: every image file with a caption file of the same stem beside it (``cat.png`` + ``cat.txt``);
  a ``labels.json`` mapping stem → label is optional.

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


@dataclass(frozen=True)
class PairDataset:
    source: str
    rows: tuple[PairRow, ...]
    images: tuple[Image.Image, ...]
    content_hash: str

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def captions(self) -> list[str]:
        return [r.caption for r in self.rows]

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
        images = tuple(self.images[i] for i in indices)
        digest = hashlib.sha256(f"{self.content_hash}/{part}/{list(indices)}".encode()).hexdigest()
        return PairDataset(f"{self.source}#{part}", rows, images, digest)


def _read_rows(source: Path) -> Iterator[PairRow | str]:
    """Rows of the dataset, or an error string for a row that cannot even be parsed."""
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
            missing = {"image", "caption"} - set(reader.fieldnames or [])
            if missing:
                yield f"header: missing column(s) {sorted(missing)}"
                return
            for i, rec in enumerate(reader, start=2):  # line numbers as an editor shows them
                label = rec.get("label") or None
                yield PairRow(i, str(rec["image"] or ""), str(rec["caption"] or ""), label)
    else:
        raise InvalidInput(f"{source}: a dataset is a .jsonl, .csv or .tsv file or a folder of images with captions")


def _resolve(image: str, base: Path) -> str:
    if "://" in image:
        return image
    path = Path(image)
    return str(path if path.is_absolute() else base / path)


def load_pairs(source: str | Path, max_rows: int | None = None) -> PairDataset:
    """Read and validate every row; raises :class:`DatasetError` naming all bad rows, before any training."""
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
        if not item.caption.strip():
            problems.append("empty caption")
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
        images.append(image)
        if max_rows is not None and len(rows) >= max_rows:
            break
    if errors:
        raise DatasetError(str(source), errors)
    if not rows:
        raise DatasetError(str(source), ["no rows"])
    return PairDataset(str(source), tuple(rows), tuple(images), digest.hexdigest())


def write_toy_dataset(
    folder: Path,
    n: int,
    domain: Domain = Domain.PLAIN,
    split: Split = Split.TRAIN,
    seed: int = 0,
    start: int = 0,
    n_objects: int | None = 1,
    append: bool = False,
) -> Path:
    """Toy-world pairs as PNG files plus a ``pairs.jsonl`` (caption and class label); returns the JSONL path.

    ``append`` adds to an existing ``pairs.jsonl`` (e.g. a mix of domains)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, s in enumerate(ToyWorld(seed=seed).samples(n, split, domain, n_objects=n_objects, start=start)):
        name = f"{split}-{domain}-{start + i:06d}.png"
        (folder / name).write_bytes(encode_png(s.image))
        record: dict[str, str] = {"image": name, "caption": s.caption}
        if len(s.objects) == 1:
            record["label"] = s.label
        lines.append(json.dumps(record))
    out = folder / "pairs.jsonl"
    with out.open("a" if append else "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return out
