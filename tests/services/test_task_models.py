"""The toy task models checked for meaning, through real ``bentoml serve`` processes of the captioning, VQA and
grounding services: the acceptance figures of held-out toy images, as assertions with their thresholds.

The models are trained once (``vlmops train-toy --task ...``, cached under ./.vlmops; the test session
starts that training in the background as it begins, see ``tests/conftest.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.clients import TaskClient
from infra.process import ServiceProcess
from infra.toyworld import Domain
from registry import task_quality as Q
from registry.families.grounding import DEFAULT_THRESHOLD
from registry.families.hf import HFModel
from registry.store import RegistryStore
from registry.toy_tasks import TASKS, model_name
from tests.conftest import make_settings

pytestmark = pytest.mark.slow
N = 200  # held-out images per set


@pytest.fixture(scope="module")
def served(
    toy_tasks: dict[str, tuple[HFModel, dict[str, float]]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TaskClient]]:
    """The three toy task models registered as production, and their three services running."""
    home = tmp_path_factory.mktemp("tasks")
    settings = make_settings(home)
    store = RegistryStore.from_settings(settings)
    env = {"VLMOPS_HOME": str(home)}
    for task, (model, metrics) in toy_tasks.items():
        name = model_name(settings, task)
        store.promote(name, store.register(name, model, metrics=metrics).version)
        env[f"VLMOPS_{task.upper()}__MAX_LATENCY_MS"] = "10000"
    procs = [ServiceProcess(task, env=env, log_path=home / f"{task}.log") for task in TASKS]
    ServiceProcess.start_together(procs)
    clients = {task: TaskClient(proc.url) for task, proc in zip(TASKS, procs, strict=True)}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def figures(served: dict[str, TaskClient]) -> dict[str, float]:
    """Every figure of the three services on the held-out sets (single-object and 2–3-object images, plain and
    shifted), computed once for the module."""
    from services.demo_tasks import held_out_figures

    out = held_out_figures(served, n=N)
    print("\n" + json.dumps(out, indent=1, sort_keys=True))
    return out


def misses(figures: dict[str, float], prefix: str) -> dict[str, tuple[float, float]]:
    return Q.failed_acceptance(figures, prefix)


class TestAcceptanceThroughTheServices:
    def test_captions_name_the_objects(self, figures: dict[str, float]) -> None:
        assert not misses(figures, "caption_"), misses(figures, "caption_")

    def test_answers_are_right(self, figures: dict[str, float]) -> None:
        assert not misses(figures, "vqa_"), misses(figures, "vqa_")

    def test_boxes_are_where_the_objects_are_and_absent_objects_score_low(self, figures: dict[str, float]) -> None:
        assert not misses(figures, "grounding_"), misses(figures, "grounding_")

    def test_the_shifted_domain_shows_the_gap_a_finetune_would_close(self, figures: dict[str, float]) -> None:
        """Reported, not gated: outlined shapes on striped noise are clearly worse for every task."""
        for metric in ("caption_word_acc", "vqa_acc", "grounding_recall_at_iou50"):
            for part in ("single", "multi"):
                plain, shifted = figures[f"{metric}_{part}"], figures[f"{metric}_{part}_shifted"]
                assert shifted < plain - 0.05, (metric, part, plain, shifted)


def test_services_agree_with_the_models_in_process(
    served: dict[str, TaskClient], toy_tasks: dict[str, tuple[HFModel, dict[str, float]]]
) -> None:
    """The service's decoding, batching and post-processing give what the model gives in this process."""
    from registry.task_eval import model_ground

    examples = Q.held_out(24, None, seed=3)
    images = [e.image for e in examples]
    captioner, vqa, grounder = (toy_tasks[t][0] for t in TASKS)
    assert Q.service_caption(served["captioning"])(images) == captioner.caption(images)  # type: ignore[attr-defined]
    items = Q.questions(examples)
    qs_images, qs = [examples[i].image for i, _, _ in items], [q for _, q, _ in items]
    want = [a.answer for a in vqa.answer(qs_images, qs)]  # type: ignore[attr-defined]
    assert Q.service_answer(served["vqa"])(qs_images, qs) == want
    queries = Q.grounding_queries(examples)
    got = Q.service_ground(served["grounding"])(images, queries)
    for g_row, w_row in zip(got, model_ground(grounder, images, queries), strict=True):  # type: ignore[arg-type]
        for g, w in zip(g_row, w_row, strict=True):
            assert (g.box is None) == (w.box is None)  # a query no patch likes best gets no box (OWL-ViT's rule)
            if g.box is not None and w.box is not None:
                assert max(abs(a - b) for a, b in zip(g.box, w.box, strict=True)) < 0.05
                assert abs((g.score or 0) - (w.score or 0)) < 1e-3


def test_default_threshold_drops_an_absent_object(served: dict[str, TaskClient]) -> None:
    """With the service's default threshold, a query for an object not in the image mostly gets no box."""
    examples = Q.held_out(40, 1, Domain.PLAIN, seed=5)
    from infra.images import encode_png

    absent = [Q.absent_label(e) or "" for e in examples]
    outs = served["grounding"].ground([encode_png(e.image) for e in examples], [[a] for a in absent])
    empty = sum(not o["detections"] for o in outs) / len(outs)
    assert empty >= 0.8, empty
    present = served["grounding"].ground([encode_png(e.image) for e in examples], [[e.objects[0][0]] for e in examples])
    assert sum(bool(o["detections"]) for o in present) / len(present) >= 0.9
    assert DEFAULT_THRESHOLD == 0.1


def test_registered_versions_carry_their_lineage_and_figures(tmp_path: Path, toy_tasks: dict) -> None:
    from registry.toy_tasks import register_toy_task

    settings = make_settings(tmp_path / "home")
    model, metrics = toy_tasks["grounding"]
    info = register_toy_task(settings, "grounding", model, metrics, promote=True, init_from="vlmops-clip/1")
    assert info.aliases == ("production",) or "production" in info.aliases
    assert info.tags["init_from"] == "vlmops-clip/1" and info.tags["task"] == "grounding"
    assert len(info.tags["dataset_hash"]) == 16 and info.tags["family"] == "owlvit"
    recall = float(info.tags["metric.grounding_recall_at_iou50_single"])
    assert recall == pytest.approx(metrics["grounding_recall_at_iou50_single"], rel=1e-5) and recall >= 0.9
