"""The toy models train on the thread count their recipe names, whatever the calling process's: the demo, the
test session and CI then train the same weights."""

from __future__ import annotations

import os

import pytest
import torch

from infra.threads import torch_threads
from registry.toy_clip import TRAINING_THREADS, ToyTrainConfig, train_toy_clip
from registry.toy_tasks import toy_task

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 CPUs to differ in thread count")

TINY = ToyTrainConfig(n_single=64, n_multi=64, steps=4, batch_size=32, warmup=2)


def _train(threads: int) -> tuple[dict[str, torch.Tensor], set[int]]:
    seen: set[int] = set()
    with torch_threads(threads):
        model, _ = train_toy_clip(TINY, lambda *_: seen.add(torch.get_num_threads()))
        assert torch.get_num_threads() == threads  # the caller's count is back
    return model.model.state_dict(), seen


def test_the_toy_clip_trains_on_its_recipes_thread_count_and_the_same_weights() -> None:
    two, seen_two = _train(2)
    one, seen_one = _train(1)
    assert seen_two == seen_one == {TRAINING_THREADS}
    assert two.keys() == one.keys()
    assert all(torch.equal(two[k], one[k]) for k in two), "weights differ with the caller's thread count"


def test_the_thread_count_is_part_of_a_task_models_recipe() -> None:
    spec = toy_task("grounding")
    assert spec.config.threads == TRAINING_THREADS
    other = type(spec)(spec.task, spec.family, type(spec.config)(**{**vars(spec.config), "threads": 2}), spec.trainer)
    assert other.dataset_hash(0) != spec.dataset_hash(0)  # a model trained on another count is not taken for it
