"""Datasets: every bad row is named before any training; the content hash names the data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.images import encode_png
from infra.toyworld import Domain, Split, ToyWorld
from registry.datasets import DatasetError, load_pairs, write_toy_dataset


def test_toy_jsonl_round_trip_and_hash(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path / "a", 30, Domain.SHIFTED, Split.TRAIN)
    data = load_pairs(path)
    assert len(data) == 30 and data.labels is not None and len(data.images) == 30
    assert all(im.size == (64, 64) for im in data.images)
    again = load_pairs(write_toy_dataset(tmp_path / "b", 30, Domain.SHIFTED, Split.TRAIN))
    assert again.content_hash == data.content_hash  # the data, not where it lies
    other = load_pairs(write_toy_dataset(tmp_path / "c", 30, Domain.PLAIN, Split.TRAIN))
    assert other.content_hash != data.content_hash
    train, held = data.split(0.2)
    assert len(held) == 6 and len(train) == 24
    assert not set(r.image for r in train.rows) & set(r.image for r in held.rows)


def test_bad_rows_are_all_named(tmp_path: Path) -> None:
    path = write_toy_dataset(tmp_path, 6)
    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    (tmp_path / "corrupt.png").write_bytes(encode_png(ToyWorld().sample(0).image)[:40])
    rows[1]["image"] = "missing.png"
    rows[2]["caption"] = "  "
    rows[4]["image"] = "corrupt.png"
    text = "\n".join(json.dumps(r) for r in rows) + "\n{not json\n"
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        load_pairs(path)
    msg = str(err.value)
    assert len(err.value.errors) == 4
    assert "row 2: image 'missing.png' not found" in msg
    assert "row 3: empty caption" in msg
    assert "row 5: image 'corrupt.png'" in msg and "could not be decoded as an image" in msg
    assert "line 7: not JSON" in msg


def test_csv_and_folder_forms(tmp_path: Path) -> None:
    world = ToyWorld()
    folder = tmp_path / "folder"
    folder.mkdir()
    rows = ["image,caption,label"]
    for i, s in enumerate(world.samples(4, Split.VAL, n_objects=1)):
        (folder / f"{i}.png").write_bytes(encode_png(s.image))
        (folder / f"{i}.txt").write_text(s.caption)
        rows.append(f"folder/{i}.png,{s.caption},{s.label}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    from_csv, from_folder = load_pairs(tmp_path / "pairs.csv"), load_pairs(folder)
    assert len(from_csv) == len(from_folder) == 4
    assert from_csv.captions == from_folder.captions and from_csv.labels is not None
    (folder / "0.txt").unlink()
    with pytest.raises(DatasetError, match="file 0.png: no caption file 0.txt"):
        load_pairs(folder)
    (tmp_path / "bad.csv").write_text("picture,text\nx.png,hello\n")
    with pytest.raises(DatasetError, match="missing column"):
        load_pairs(tmp_path / "bad.csv")
