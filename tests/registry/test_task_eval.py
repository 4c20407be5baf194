"""``vlmops eval`` and the promotion gate for captioning, VQA and grounding versions: figures on a task dataset,
stored on the version, compared by the gate on the task's metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.errors import InvalidInput
from infra.toyworld import Split, ToyWorld
from registry.datasets import write_toy_dataset
from registry.families.hf import HFModel
from registry.gate import GateRefused, gated_promote, stored_eval
from registry.store import RegistryStore
from registry.task_eval import load_examples
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
Models = dict[str, tuple[HFModel, dict[str, float]]]


@pytest.fixture(scope="module")
def task_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 held-out toy images of 1–3 objects with captions, questions and boxes."""
    folder = tmp_path_factory.mktemp("taskset")
    return write_toy_dataset(folder, 60, split=Split.TEST, start=70_000, n_objects=None, tasks=True)


def test_a_task_dataset_holds_what_the_toy_world_knows(task_set: Path) -> None:
    examples, digest = load_examples(task_set)
    truth = list(ToyWorld().samples(60, Split.TEST, start=70_000))
    assert len(examples) == 60 and len(digest) == 64
    for e, s in zip(examples, truth, strict=True):
        assert e.caption == s.caption and [q.answer for q in e.qa] == [q.answer for q in s.qa]
        boxes = [(label, tuple(int(v) for v in box)) for label, box in e.objects]
        assert boxes == [(o.label, o.box) for o in s.objects]
        assert e.image.tobytes() == s.image.tobytes()


def test_a_bad_task_dataset_is_refused_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "missing.png", "caption": "a red circle"}\n')
    with pytest.raises(InvalidInput, match="line 1: image 'missing.png' not found"):
        load_examples(bad)
    write_toy_dataset(tmp_path / "ok", 1, tasks=True)
    (tmp_path / "ok" / "pairs.jsonl").write_text('{"image": "train-plain-000000.png", "objects": [{"label": "x"}]}\n')
    with pytest.raises(InvalidInput, match="line 1"):
        load_examples(tmp_path / "ok" / "pairs.jsonl")


def test_the_gate_refuses_a_worse_grounder_on_the_tasks_metric(
    tmp_path: Path, toy_tasks: Models, toy_clip: tuple, task_set: Path
) -> None:
    from registry.toy_tasks.grounding import build

    settings = make_settings(tmp_path / "home")
    store = RegistryStore.from_settings(settings)
    name = settings.grounding.model_name
    good = store.register(name, toy_tasks["grounding"][0])
    store.promote(name, good.version)
    untrained = store.register(name, build(toy_clip[0]))  # the same architecture, heads never trained
    with pytest.raises(GateRefused, match="grounding_recall_at_iou50"):
        gated_promote(store, settings, name, untrained.version, dataset=str(task_set))
    _, digest = load_examples(task_set)
    stored = {v: stored_eval(store.get(name, v), digest) for v in (good.version, untrained.version)}
    assert stored[good.version] is not None and stored[untrained.version] is not None
    assert stored[good.version].metrics["grounding_recall_at_iou50"] >= 0.8
    assert stored[untrained.version].metrics["grounding_recall_at_iou50"] < 0.3
    again = store.register(name, toy_tasks["grounding"][0])  # as good as production: passes
    event, verdict = gated_promote(store, settings, name, again.version, dataset=str(task_set))
    assert verdict is not None and verdict.passed and event.version == again.version


def test_vlmops_eval_scores_a_captioner_and_a_vqa_model(
    tmp_path: Path, toy_tasks: Models, task_set: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli import main

    home = tmp_path / "home"
    settings = make_settings(home)
    store = RegistryStore.from_settings(settings)
    monkeypatch.setenv("VLMOPS_HOME", str(home))
    for task, key, least in (("captioning", "caption_word_acc", 0.9), ("vqa", "vqa_acc", 0.7)):
        name = getattr(settings, task).model_name
        info = store.register(name, toy_tasks[task][0])
        out = tmp_path / f"{task}.json"
        result = CliRunner().invoke(main, ["eval", name, info.version, "--dataset", str(task_set), "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert key in result.output
        report = json.loads(out.read_text())[f"v{info.version}"]
        assert report["metrics"][key] >= least, report["metrics"]
        tagged = stored_eval(store.get(name, info.version), report["dataset_hash"])
        assert tagged is not None and tagged.metrics[key] == report["metrics"][key]
