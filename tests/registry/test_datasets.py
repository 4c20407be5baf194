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
        load_pairs(tmp_path / "bad.csv")  # no image column


def test_labels_without_captions_in_every_form(tmp_path: Path) -> None:
    """JSONL {image, label}, CSV image,label and a folder per class: the same rows, the same hash; accepted for
    evaluation, refused for finetuning (which needs captions); a row with neither is named."""
    world = ToyWorld()
    samples = list(world.samples(6, Split.VAL, n_objects=1))
    jsonl = write_toy_dataset(tmp_path / "jsonl", 6, split=Split.VAL, captions=False)
    assert all(set(json.loads(line)) == {"image", "label"} for line in jsonl.read_text().splitlines())
    csv_rows, classes = ["image,label"], tmp_path / "classes"
    for i, s in enumerate(samples):
        (classes / s.label).mkdir(parents=True, exist_ok=True)
        (classes / s.label / f"{i}.png").write_bytes(encode_png(s.image))
        csv_rows.append(f"classes/{s.label}/{i}.png,{s.label}")
    (tmp_path / "labels.csv").write_text("\n".join(csv_rows) + "\n")

    loaded = [load_pairs(p, require_captions=False, lazy=True) for p in (jsonl, tmp_path / "labels.csv", classes)]
    for data in loaded:
        assert len(data) == 6 and data.n_captioned == 0 and data.n_labelled == 6
        assert sorted(data.labels or []) == sorted(s.label for s in samples)
        assert all(im.size == (64, 64) for im in data.images[0:6])  # read again from disk, on demand
    assert loaded[0].content_hash == loaded[1].content_hash  # same images, same labels, same order
    with pytest.raises(DatasetError, match="empty caption"):
        load_pairs(jsonl)  # finetuning

    # a caption beside an image in a class folder is used too; a row with neither caption nor label is named
    (classes / samples[0].label / "0.txt").write_text("a caption too")
    assert load_pairs(classes, require_captions=False).n_captioned == 1
    jsonl.write_text(jsonl.read_text() + json.dumps({"image": jsonl.parent.glob("*.png").__next__().name}) + "\n")
    with pytest.raises(DatasetError, match="row 7: no caption and no label"):
        load_pairs(jsonl, require_captions=False)
    (tmp_path / "bad.csv").write_text("image\nx.png\n")
    with pytest.raises(DatasetError, match="needs 'image' and 'caption' and/or 'label'"):
        load_pairs(tmp_path / "bad.csv", require_captions=False)
