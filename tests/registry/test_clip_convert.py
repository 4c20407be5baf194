"""The open_clip -> transformers converter the task models start from: the same pixels and text give the same
outputs in both layouts (GIT and OWL-ViT take the towers exactly)."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import transformers as T

from infra.toyworld import ToyWorld
from registry.families import clip_convert as C
from registry.families.clip import ClipModel

TEXTS = ["a red circle", "a photo of a blue star, a green square and a yellow triangle"]


@pytest.fixture(scope="module")
def clip() -> ClipModel:
    return ClipModel.from_pretrained("vlmops-toy-clip", seed=3)


def pixels(clip: ClipModel) -> torch.Tensor:
    return torch.stack([clip.preprocess(s.image) for s in ToyWorld().samples(4)])


def test_vision_tower_gives_open_clips_image_embeddings(clip: ClipModel) -> None:
    cfg = T.CLIPVisionConfig(**C.vision_config(clip.model_cfg), projection_dim=clip.model_cfg["embed_dim"])
    hf = T.CLIPVisionModelWithProjection(cfg).eval()
    state = {f"vision_model.{k}": v for k, v in C.vision_state(clip.model).items()}
    C.load_into(hf, state | {"visual_projection.weight": C.projections(clip.model)["visual_projection.weight"]})
    px = pixels(clip)
    with torch.no_grad():
        want, got = clip.model.encode_image(px), hf(pixel_values=px).image_embeds
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_text_tower_and_tokenizer_give_open_clips_text_embeddings(clip: ClipModel, tmp_path: Path) -> None:
    ids = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    cfg = T.CLIPTextConfig(**C.text_config(clip.model_cfg), projection_dim=clip.model_cfg["embed_dim"], **ids)
    hf = T.CLIPTextModelWithProjection(cfg).eval()
    state = {f"text_model.{k}": v for k, v in C.text_state(clip.model).items()}
    C.load_into(hf, state | {"text_projection.weight": C.projections(clip.model)["text_projection.weight"]})
    tok = C.clip_tokenizer(tmp_path, 24)
    enc = tok(TEXTS, padding="max_length", return_tensors="pt")
    theirs = open_clip.get_tokenizer("vlmops-toy-clip")(TEXTS)
    for row, mask, ref in zip(enc.input_ids, enc.attention_mask, theirs, strict=True):
        assert row[: int(mask.sum())].tolist() == ref[: int(mask.sum())].tolist()
    with torch.no_grad():
        want = clip.model.encode_text(theirs)
        got = hf(input_ids=enc.input_ids, attention_mask=enc.attention_mask).text_embeds
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_owlvit_built_from_the_clip_keeps_its_towers(clip: ClipModel, tmp_path: Path) -> None:
    from registry.toy_tasks.grounding import build

    owl = build(clip, image_size=32).model.owlvit.eval()
    px = pixels(clip)
    tok = C.clip_tokenizer(tmp_path, 24)
    enc = tok(TEXTS, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        image = owl.visual_projection(owl.vision_model(pixel_values=px).pooler_output)
        text = owl.text_projection(owl.text_model(**enc).pooler_output)
        assert torch.allclose(image, clip.model.encode_image(px), atol=1e-5)
        want = clip.model.encode_text(open_clip.get_tokenizer("vlmops-toy-clip")(TEXTS))
        assert torch.allclose(text, want, atol=1e-5)


def test_a_larger_input_resizes_the_positional_embedding(clip: ClipModel) -> None:
    state = C.vision_state(clip.model, image_size=48)
    positions = state["embeddings.position_embedding.weight"]
    assert positions.shape == (1 + 6 * 6, clip.model_cfg["vision_cfg"]["width"])
    assert torch.equal(positions[0], clip.model.visual.positional_embedding[0])  # the class position is kept


def test_load_into_refuses_unknown_names_and_shapes(clip: ClipModel) -> None:
    cfg = T.CLIPVisionConfig(**C.vision_config(clip.model_cfg))
    hf = T.CLIPVisionModel(cfg)
    with pytest.raises(KeyError, match="no such weights"):
        C.load_into(hf, {"nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="does not fit"):
        C.load_into(hf, {"post_layernorm.weight": torch.zeros(3)})
