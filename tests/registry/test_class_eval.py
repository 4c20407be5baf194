"""Class-query evaluation: every figure against a hand computation, on a fixed score matrix and through
``evaluate`` with hand-built embeddings; the per-class table and its files."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from registry.class_table import ClassComparison
from registry.datasets import PairDataset, PairRow
from registry.evaluation import EvalReport, evaluate
from registry.ranking import chunked_hits, rank_hits

# six images labelled A A A B B C (C has one image); one row of scores per class query
LABELS = ["A", "A", "A", "B", "B", "C"]
SCORES = torch.tensor(
    [
        [0.9, 0.2, 0.5, 0.8, 0.1, 0.5],  # A: a tie at 0.5 between image 2 (A) and image 5 (C)
        [0.3, 0.3, 0.3, 0.3, 0.3, 0.3],  # B: every image ties
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # C: its one image first
    ]
)
# By hand, ties broken against the relevant images:
#   A ranks 0(A) 3(B) 5(C) 2(A) 1(A) 4(B) -> relevance 1 0 0 1 1 0
#   B ranks the four others first -> 0 0 0 0 1 1
#   C ranks 5(C) first -> 1 0 0 0 0 0
HAND = {
    "A": {"class_recall@2": 1 / 3, "class_precision@2": 1 / 2, "class_recall@10": 1.0, "class_precision@10": 0.3,
          "class_r_precision": 1 / 3},
    "B": {"class_recall@2": 0.0, "class_precision@2": 0.0, "class_recall@10": 1.0, "class_precision@10": 0.2,
          "class_r_precision": 0.0},
    "C": {"class_recall@2": 1.0, "class_precision@2": 0.5, "class_recall@10": 1.0, "class_precision@10": 0.1,
          "class_r_precision": 1.0},
}  # fmt: skip
MICRO = {  # pooled: hits over relevant (6) or over K x classes
    "class_recall@2_micro": 2 / 6,
    "class_precision@2_micro": 2 / 6,
    "class_recall@10_micro": 1.0,
    "class_precision@10_micro": 6 / 30,
    "class_r_precision_micro": 2 / 6,
}


def _relevance(rows: slice) -> torch.Tensor:
    truth = torch.tensor([ord(lb) - ord("A") for lb in LABELS])
    return torch.arange(3)[rows][:, None] == truth[None, :]


class TestRanking:
    def test_every_metric_equals_the_hand_computation_in_any_chunking(self) -> None:
        for chunk in (1, 2, 3):
            hits = chunked_hits(SCORES, torch.eye(6), _relevance, [2, 10], chunk=chunk)
            per_query = hits.per_query("class")
            for i, label in enumerate("ABC"):
                for metric, value in HAND[label].items():
                    assert float(per_query[metric][i]) == pytest.approx(value), (label, metric)
            macro = hits.macro("class")
            for metric in HAND["A"]:
                assert macro[metric] == pytest.approx(sum(HAND[c][metric] for c in "ABC") / 3)
            assert hits.micro("class") == pytest.approx(MICRO)

    def test_a_collapsed_model_scores_nothing_whatever_the_dataset_order(self) -> None:
        # stable order would put the first class's images first and give it a perfect score
        flat = torch.zeros(2, 6)
        relevant = torch.tensor([[True, True, True, False, False, False], [False, False, False, True, True, True]])
        hits = rank_hits(flat, relevant, [3])
        assert hits.at_k[:, 0].tolist() == [0, 0] and hits.at_r.tolist() == [0, 0]

    def test_a_query_with_nothing_relevant_scores_zero(self) -> None:
        hits = rank_hits(torch.tensor([[0.5, 0.1]]), torch.tensor([[False, False]]), [1])
        assert hits.macro("q") == {"q_recall@1": 0.0, "q_precision@1": 0.0, "q_r_precision": 0.0}


class _HandModel:
    """Image embeddings = the columns of SCORES; class queries = unit axes: image j scores SCORES[c, j]."""

    def __init__(self) -> None:
        self.templates: tuple[str, ...] = ()

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([SCORES[:, im.getpixel((0, 0))[0]] for im in images])  # type: ignore[index]

    def label_embeddings(self, labels: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        self.templates = tuple(templates)
        return torch.eye(3)[[ord(lb) - ord("A") for lb in labels]]


def _labels_only_set() -> PairDataset:
    rows = tuple(PairRow(i + 1, f"img{i}.png", "", lb) for i, lb in enumerate(LABELS))
    images = tuple(Image.new("RGB", (4, 4), (i, 0, 0)) for i in range(6))
    return PairDataset("hand", rows, images, "h" * 64)


def test_evaluate_gives_the_hand_figures_per_class_and_overall() -> None:
    model = _HandModel()
    report = evaluate(model, _labels_only_set(), "hand", class_ks=[10, 2], class_queries=["a photo of {}"])  # type: ignore[arg-type]
    assert model.templates == ("a photo of {}",) and report.class_queries == ["a photo of {}"]
    assert report.class_ks == [2, 10]
    assert not any(k.startswith(("t2i", "i2t")) for k in report.metrics)  # no captions: no caption retrieval
    for label in "ABC":
        row = report.per_class[label]
        assert {k: row[k] for k in HAND[label]} == pytest.approx(HAND[label])
    assert [report.per_class[c]["n_images"] for c in "ABC"] == [3, 2, 1]
    # zero-shot: argmax over each image's column -> A B A A C C against A A A B B C
    assert [report.per_class[c]["zero_shot_acc"] for c in "ABC"] == pytest.approx([2 / 3, 0.0, 1.0])
    assert report.metrics["zero_shot_acc"] == pytest.approx(0.5)
    assert report.metrics["class_r_precision"] == pytest.approx(4 / 9)
    assert {k: report.metrics[k] for k in MICRO} == pytest.approx(MICRO)
    again = EvalReport.from_json(report.to_json())
    assert again.per_class == report.per_class and again.class_metric_names() == report.class_metric_names()


def _report(name: str, per_class: dict[str, float], n: dict[str, int]) -> EvalReport:
    rows = {c: {"class_r_precision": v, "n_images": float(n[c])} for c, v in per_class.items()}
    macro = sum(per_class.values()) / len(per_class)
    metrics = {"class_r_precision": macro, "class_r_precision_micro": macro}
    return EvalReport(name, "d", "h", sum(n.values()), 0, metrics, rows, [], ["{}"])


class TestClassTable:
    N = {"plants": 40, "animals": 30, "maps": 20}
    BASE = {"plants": 0.17, "animals": 0.28, "maps": 0.75}  # ONiT's figures, pretrained
    TUNED = {"plants": 0.51, "animals": 0.46, "maps": 0.69}  # and finetuned: maps lost

    def test_the_table_marks_the_class_that_lost(self, tmp_path: Path) -> None:
        table = ClassComparison.of("v1", _report("v1", self.BASE, self.N), "v2", _report("v2", self.TUNED, self.N))
        assert table.regressions() == {"maps": ["class_r_precision"]}
        text = table.text()
        maps = next(line for line in text.splitlines() if line.startswith("maps"))
        assert maps.split() == ["maps", "20", "0.7500", "0.6900", "-0.0600*"]
        plants = next(line for line in text.splitlines() if line.startswith("plants"))
        assert plants.split()[-1] == "+0.3400"
        assert "1 of 3 classes drop: maps (R-P)" in text

        with table.write_csv(tmp_path / "t.csv").open() as fh:
            rows = {r["class"]: r for r in csv.DictReader(fh)}
        assert set(rows) == {"plants", "animals", "maps", "(macro)", "(micro)"}
        assert float(rows["maps"]["class_r_precision.diff"]) == pytest.approx(-0.06)
        assert rows["maps"]["drops"] == "class_r_precision" and rows["plants"]["drops"] == ""
        assert float(rows["(macro)"]["class_r_precision.v2"]) == pytest.approx(sum(self.TUNED.values()) / 3)

        png = table.plot(tmp_path / "t.png")
        with Image.open(png) as im:
            assert im.size[0] > 300 and len(set(im.convert("L").getdata())) > 10  # drawn, not blank

    def test_json_of_a_report_keeps_per_class_metrics_by_name(self) -> None:
        report = _report("v2", self.TUNED, self.N)
        obj = json.loads(report.to_json())
        assert obj["per_class"]["maps"]["class_r_precision"] == pytest.approx(0.69)
        assert not math.isnan(obj["metrics"]["class_r_precision"])
