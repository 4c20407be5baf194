"""Golden outputs, one per transformers family, in the manner of open_clip's tests: seeded tiny weights, two
fixed toy images, and the family's whole path (processor, model, generation or post-processing) compared
with small committed tensors. A silent change in pre- or post-processing (normalisation, resizing, box
scaling against OWLv2's square padding, answer mapping, generation settings) moves them.

``VLMOPS_WRITE_GOLDEN=1 pytest tests/registry/test_golden.py`` writes them again, after a change that is
meant to move them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from infra.toyworld import ToyWorld
from registry.families.captioning import Captioner
from registry.families.grounding import Grounder
from registry.families.hf import HFModel
from registry.families.vqa import VQAModel
from tests.registry.test_hf_families import BUILDERS, tiny

GOLDEN = Path(__file__).resolve().parent / "golden"
ATOL = 1e-4  # float32 on CPU: the same weights and pixels give the same figures to far better than this
QUESTIONS = ["what colour is the star?", "how many objects are there?"]
QUERIES = [["a red circle", "a blue star"], ["a star"]]


def outputs(model: HFModel) -> dict[str, Any]:
    """What the family gives for the fixed inputs: its answer, and the tensors behind it."""
    images = [s.image for s in ToyWorld(seed=7).samples(2)]
    pixels = model.inputs(images=images)["pixel_values"]
    out: dict[str, Any] = {"pixels": [float(pixels.mean()), float(pixels.std()), list(pixels.shape)]}
    if isinstance(model, Captioner):
        with model.running():
            gen = model.model.generate(
                **model.inputs(images=images),
                max_new_tokens=3,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        out["scores"] = torch.stack(gen.scores)[:, :, :12].tolist()
        out["text"] = model.caption(images)
    elif isinstance(model, VQAModel):
        answers = model.answer(images, QUESTIONS)
        out["text"] = [a.answer for a in answers]
        out["scores"] = [a.score for a in answers if a.score is not None]
        if not out["scores"]:
            inputs = model.inputs(images=images, text=QUESTIONS, padding=True)
            with model.running():
                gen = model.model.generate(
                    **inputs, max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True
                )
            out["scores"] = torch.stack(gen.scores)[:, :, :12].tolist()
    elif isinstance(model, Grounder):
        found = model.detect(images, QUERIES, threshold=0.0)
        out["text"] = [[d.query for d in dets[:4]] for dets in found]
        out["scores"] = [[[*d.box, d.score] for d in dets[:4]] for dets in found]
    return out


def close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{path}: {got!r} against {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert abs(float(got) - want) <= ATOL * max(1.0, abs(want)), f"{path}: {got} against golden {want}"
    else:
        assert got == want, f"{path}: {got!r} against golden {want!r}"


@pytest.mark.parametrize("family", list(BUILDERS))
def test_outputs_match_the_committed_golden_ones(family: str, tmp_path: Path) -> None:
    got = outputs(tiny(family, tmp_path))
    file = GOLDEN / f"{family}.json"
    if os.environ.get("VLMOPS_WRITE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        file.write_text(json.dumps(got, indent=1) + "\n")
    assert file.is_file(), f"no golden output for {family}: run with VLMOPS_WRITE_GOLDEN=1 once"
    want = json.loads(file.read_text())
    assert set(got) == set(want)
    for key in want:
        close(got[key], want[key], key)


def test_a_changed_preprocessing_is_caught(tmp_path: Path) -> None:
    """The check has teeth: the same weights with the image mean moved by 2 % no longer match."""
    model = tiny("owlvit", tmp_path)
    model.processor.image_processor.image_mean = [m * 1.02 for m in model.processor.image_processor.image_mean]
    want = json.loads((GOLDEN / "owlvit.json").read_text())
    with pytest.raises(AssertionError):
        close(outputs(model)["scores"], want["scores"], "scores")
