from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from infra.toyworld import ToyWorld
from registry.families import family_class, load_model
from registry.families.captioning import Captioner
from registry.families.grounding import Grounder
from registry.families.hf import HFModel
from registry.families.vqa import VQAModel
from tests import hf_tiny

ANSWERS = ["red", "blue", "green", "one", "two", "yes", "no"]
BUILDERS: dict[str, Callable[[Path], tuple[object, object]]] = {
    "blip-caption": hf_tiny.blip_caption,
    "git-caption": hf_tiny.git_caption,
    "blip-vqa": hf_tiny.blip_vqa,
    "vilt-vqa": lambda d: hf_tiny.vilt_vqa(d, ANSWERS),
    "owlvit": hf_tiny.owl,
    "owlv2": lambda d: hf_tiny.owl(d, v2=True),
}


def tiny(family: str, folder: Path) -> HFModel:
    torch.manual_seed(0)
    model, processor = BUILDERS[family](folder)
    return family_class(family)(model, processor, f"tiny-{family}")  # type: ignore[call-arg]


def run(model: HFModel) -> object:
    images = [s.image for s in ToyWorld().samples(2)]
    if isinstance(model, Captioner):
        return model.caption(images)
    if isinstance(model, VQAModel):
        return model.answer(images, ["what colour is the star?", "how many objects are there?"])
    if isinstance(model, Grounder):
        return model.detect(images, [["a red circle", "a blue star"], ["a star"]], threshold=0.0)
    raise AssertionError(type(model))


@pytest.mark.parametrize("family", list(BUILDERS))
class TestTransformersFamilies:
    def test_save_load_round_trip_gives_identical_outputs(self, family: str, tmp_path: Path) -> None:
        model = tiny(family, tmp_path / "build")
        model.save(tmp_path / "saved")
        loaded = load_model(tmp_path / "saved")
        assert type(loaded) is type(model)
        assert run(loaded) == run(model)
        assert loaded.describe()["model_class"] == type(model.model).__name__

    def test_loads_from_a_save_pretrained_directory(self, family: str, tmp_path: Path) -> None:
        model = tiny(family, tmp_path / "build")
        model.model.save_pretrained(tmp_path / "plain")
        model.processor.save_pretrained(tmp_path / "plain")
        again = family_class(family).from_pretrained(str(tmp_path / "plain"))  # type: ignore[attr-defined]
        assert run(again) == run(model)


def test_grounding_boxes_lie_inside_the_image_sorted_by_score(tmp_path: Path) -> None:
    for family in ("owlvit", "owlv2"):
        model = tiny(family, tmp_path / family)
        assert isinstance(model, Grounder)
        image = ToyWorld().sample(0).image.resize((80, 48))
        (found,) = model.detect([image], [["a red circle", "a star", "a blue square"]], threshold=0.0, nms_iou=0.5)
        assert found
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for d in found:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= 80 and 0 <= y0 <= y1 <= 48
            assert d.query in {"a red circle", "a star", "a blue square"}
