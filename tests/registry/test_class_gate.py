"""Class queries on the toy world with labels only: a finetune's per-class gains, the per-class guard of the
promotion gate against a candidate that damages one class, and the CLI's table files in MLflow."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from infra.settings import GateSettings, Settings
from infra.toyworld import Domain, Split
from registry.datasets import PairDataset, load_pairs, write_toy_dataset
from registry.evaluation import evaluate
from registry.families.clip import ClipModel
from registry.finetune import FinetuneConfig, finetune
from registry.gate import GateRefused, gated_promote
from registry.store import RegistryStore

DAMAGED = "a red circle"
# the candidate learns to call blue squares and green triangles "a red circle": that class query then
# retrieves them too, while every other class keeps (nearly) what it had
STOLEN = ("a blue square", "a green triangle")


def _tuned(base: ClipModel, train: Path, work: Path, steps: int = 60) -> ClipModel:
    base.save(work / "base")
    model = ClipModel.load(work / "base")
    cfg = FinetuneConfig(max_steps=steps, batch_size=64, lr=5e-3, warmup_steps=3)
    finetune(model, load_pairs(train), None, cfg, work / "run")
    return model


@pytest.fixture(scope="module")
def damaged(toy_clip: tuple[ClipModel, dict[str, float]], tmp_path_factory: pytest.TempPathFactory) -> ClipModel:
    folder = tmp_path_factory.mktemp("damage")
    train = write_toy_dataset(folder / "train", 576, Domain.PLAIN, Split.TRAIN)
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    for row in rows:
        if row.get("label") in STOLEN:
            row["caption"] = DAMAGED
    train.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return _tuned(toy_clip[0], train, folder)


@pytest.fixture(scope="module")
def plain_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("plain"), 240, Domain.PLAIN, Split.TEST, captions=False)


def _labels_only(path: Path) -> PairDataset:
    return load_pairs(path, require_captions=False, lazy=True)


def test_a_finetune_on_the_shifted_domain_gains_per_class_on_a_labels_only_set(
    toy_clip: tuple[ClipModel, dict[str, float]], tmp_path: Path
) -> None:
    base = toy_clip[0]
    train = write_toy_dataset(tmp_path / "train", 384, Domain.SHIFTED, Split.TRAIN)
    write_toy_dataset(tmp_path / "train", 192, Domain.PLAIN, Split.TRAIN, append=True)
    tuned = _tuned(base, train, tmp_path, steps=120)  # 60 steps gained 0.091 from the one-thread toy CLIP
    held = _labels_only(write_toy_dataset(tmp_path / "held", 240, Domain.SHIFTED, Split.TEST, captions=False))
    assert held.n_captioned == 0 and held.n_labelled == 240

    before, after = (evaluate(m, held, name, class_ks=(10, 100)) for m, name in ((base, "base"), (tuned, "tuned")))
    assert not any(k.startswith("t2i") for k in after.metrics)  # labels only: class queries, no caption queries
    assert after.metrics["class_r_precision"] >= before.metrics["class_r_precision"] + 0.1
    assert after.metrics["class_recall@100_micro"] > before.metrics["class_recall@100_micro"]
    gains = [
        c for c in after.per_class if after.per_class[c]["class_r_precision"] > before.per_class[c]["class_r_precision"]
    ]
    drops = [
        c for c in after.per_class if after.per_class[c]["class_r_precision"] < before.per_class[c]["class_r_precision"]
    ]
    assert len(after.per_class) == 24 and len(gains) >= 16 and len(gains) > 3 * len(drops)
    assert sum(r["n_images"] for r in after.per_class.values()) == 240


def test_the_per_class_guard_refuses_a_candidate_that_damages_one_class(
    toy_clip: tuple[ClipModel, dict[str, float]], damaged: ClipModel, plain_labels: Path, tmp_path: Path
) -> None:
    averaged = GateSettings(metrics=["class_r_precision"], margin=0.1)
    guarded = averaged.model_copy(update={"max_class_drop": 0.4})
    settings = Settings(home=tmp_path / "home", gate=guarded)
    store = RegistryStore.from_settings(settings)
    store.promote("m", store.register("m", toy_clip[0]).version, reason="the toy CLIP")
    cand = store.register("m", damaged).version

    with pytest.raises(GateRefused) as refused:
        gated_promote(store, settings, "m", cand, "guarded", dataset=str(plain_labels))
    text = str(refused.value)
    assert "CLASS WORSE" in text and "1 class(es)" in text
    line = next(row for row in text.splitlines() if DAMAGED in row)
    production, candidate = (float(line.split(word)[1].split()[0]) for word in ("production", "candidate"))
    assert production >= 0.9 and candidate <= 0.4  # the figures, named with the class
    assert not any(other in text for other in STOLEN)  # the other classes lose less than the guard allows
    assert store.by_alias("m", "production").version == "1"

    event, verdict = gated_promote(store, settings, "m", cand, "on purpose", force=True)
    assert event.forced and verdict is not None and not verdict.passed
    assert [c["label"] for c in event.gate["class_failures"]] == [DAMAGED]  # type: ignore[index]
    store.rollback("m", "back to the toy CLIP")

    # on the averaged metric alone the damage hides: the same candidate passes without the guard
    event, verdict = gated_promote(store, Settings(home=tmp_path / "home", gate=averaged), "m", cand, "averaged only")
    assert verdict is not None and verdict.passed and verdict.class_metric is None and event.version == cand


def test_eval_on_the_command_line_writes_the_table_and_mlflow_keeps_it(
    toy_clip: tuple[ClipModel, dict[str, float]],
    damaged: ClipModel,
    plain_labels: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.cli import main

    monkeypatch.setenv("VLMOPS_HOME", str(tmp_path / "home"))
    store = RegistryStore.from_settings(Settings(home=tmp_path / "home"))
    store.promote("m", store.register("m", toy_clip[0]).version)
    store.register("m", damaged)
    checked = CliRunner().invoke(main, ["datasets", "validate", str(plain_labels)], catch_exceptions=False)
    assert "240 rows, 0 with a caption" in checked.output and "240 with a label (24 classes)" in checked.output
    out = tmp_path / "out.json"
    args = ["eval", "m", "2", "--against", "production", "--dataset", str(plain_labels), "--k", "200,10"]
    args += ["--class-queries", "a photo of {}", "--class-queries", "{}", "--per-class", "--json", str(out)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith(DAMAGED))
    assert row[len(DAMAGED) :].split()[0] == "10" and row.endswith("*")  # its images, and the drop marked

    reports = json.loads(out.read_text())
    assert set(reports) == {"v1", "v2"} and reports["v2"]["class_queries"] == ["a photo of {}", "{}"]
    red = reports["v2"]["per_class"][DAMAGED]
    assert {"class_recall@10", "class_precision@200", "class_r_precision", "n_images"} <= set(red)
    assert red["class_r_precision"] < reports["v1"]["per_class"][DAMAGED]["class_r_precision"] - 0.4
    assert red["class_precision@200"] == pytest.approx(red["class_recall@200"] * red["n_images"] / 200)
    with out.with_suffix(".csv").open() as fh:
        table = {r["class"]: r for r in csv.DictReader(fh)}
    assert len(table) == 26 and "class_r_precision" in table[DAMAGED]["drops"]
    with Image.open(out.with_suffix(".png")) as im:
        assert len(set(im.convert("L").getdata())) > 10

    runs = store.client.search_runs([store.experiment_id("vlmops-eval")])
    assert len(runs) == 1
    files = {a.path for a in store.client.list_artifacts(runs[0].info.run_id, "eval")}
    assert {"eval/per_class.csv", "eval/per_class.png", "eval/per_class.txt", "eval/report-v2.json"} <= files
    cand_run = store.client.get_model_version("m", "2").run_id
    (folder,) = store.client.list_artifacts(cand_run, "eval")
    assert {a.path.rsplit("/", 1)[1] for a in store.client.list_artifacts(cand_run, folder.path)} >= {"per_class.csv"}
    logged = store.client.get_run(cand_run).data.metrics["eval.class_r_precision"]
    assert logged == pytest.approx(reports["v2"]["metrics"]["class_r_precision"])
