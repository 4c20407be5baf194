from __future__ import annotations

import pytest

from registry.toy_vqa import ANSWERS, ToyVQAConfig, train_toy_vilt

pytestmark = pytest.mark.slow


def test_a_tiny_vilt_trained_on_the_toy_world_answers_colour_questions() -> None:
    model, metrics = train_toy_vilt(ToyVQAConfig())
    assert metrics["colour_question_acc"] >= 0.8, metrics
    (answer,) = model.answer([__import__("infra.toyworld", fromlist=["ToyWorld"]).ToyWorld().sample(0).image], ["x"])
    assert answer.answer in ANSWERS and 0.0 <= (answer.score or 0.0) <= 1.0
