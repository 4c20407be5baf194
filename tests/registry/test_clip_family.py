from __future__ import annotations

from pathlib import Path

import pytest
import torch

from infra.toyworld import Domain
from registry.families import load_model
from registry.families.clip import ClipModel
from registry.toy_clip import held_out_single, zero_shot_accuracy

TEXTS = ["a red circle", "a photo of a blue square and a green star", "x"]


class TestClipFamily:
    def test_save_load_round_trip_gives_identical_embeddings(self, random_clip: ClipModel, tmp_path: Path) -> None:
        random_clip.save(tmp_path / "m")
        loaded = load_model(tmp_path / "m")
        assert isinstance(loaded, ClipModel)
        images = [s.image for s in held_out_single(4)]
        assert torch.equal(loaded.encode_text(TEXTS)[0], random_clip.encode_text(TEXTS)[0])
        assert torch.equal(loaded.encode_images(images), random_clip.encode_images(images))
        assert loaded.describe() == random_clip.describe()

    def test_vectors_are_unit_norm_with_the_config_dimension(self, random_clip: ClipModel) -> None:
        vectors, truncated = random_clip.encode_text(TEXTS)
        assert vectors.shape == (3, random_clip.embed_dim)
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert truncated == [False, False, False]

    def test_text_over_the_context_is_cut_and_flagged(self, random_clip: ClipModel) -> None:
        long = " ".join(["red"] * 200)
        batch = random_clip.tokenize([long, "a red circle"])
        assert batch.truncated == [True, False]
        assert batch.tokens.shape[1] == random_clip.context_length

    def test_short_texts_are_cut_before_the_padding(self, random_clip: ClipModel) -> None:
        batch = random_clip.tokenize(["a red circle"])
        assert batch.tokens.shape[1] < random_clip.context_length

    def test_cut_text_matches_full_padding_on_vit_b_32(self) -> None:
        """The causal text tower pools at end-of-text: cutting the padding changes nothing."""
        model = ClipModel.from_pretrained("ViT-B-32", pretrained=None, seed=0)
        texts = ["a red circle", "a blue star", "a photo of a purple triangle on a noisy background"]
        cut = model.tokenize(texts, cut=True)
        full = model.tokenize(texts, cut=False)
        assert cut.tokens.shape[1] < full.tokens.shape[1] == 77
        diff = (model.encode_tokens(cut.tokens) - model.encode_tokens(full.tokens)).abs().max()
        assert diff <= 1e-5

    def test_bf16_autocast_path_runs_on_cpu(self, random_clip: ClipModel) -> None:
        reference = random_clip.encode_text(TEXTS)[0]
        random_clip.precision = "bf16"
        vectors = random_clip.encode_text(TEXTS)[0]
        assert vectors.dtype == torch.float32
        assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-3)
        assert torch.nn.functional.cosine_similarity(vectors, reference).min() > 0.98

    def test_unknown_architecture_is_refused(self) -> None:
        from infra.errors import ModelFormatError

        with pytest.raises(ModelFormatError):
            ClipModel.from_pretrained("no-such-arch")


class TestToyClip:
    def test_zero_shot_accuracy_on_held_out_images(self, toy_clip: tuple[ClipModel, dict[str, float]]) -> None:
        model, metrics = toy_clip
        acc = zero_shot_accuracy(model, held_out_single(240))
        assert acc >= 0.9
        assert metrics["zero_shot_acc_plain"] >= 0.9

    def test_the_shifted_domain_is_clearly_harder(self, toy_clip: tuple[ClipModel, dict[str, float]]) -> None:
        model, _ = toy_clip
        plain = zero_shot_accuracy(model, held_out_single(240))
        shifted = zero_shot_accuracy(model, held_out_single(240, domain=Domain.SHIFTED))
        assert shifted < plain - 0.3


def test_a_batch_is_preprocessed_to_the_same_numbers_as_image_by_image(random_clip: ClipModel) -> None:
    """The bulk jobs' batched preprocessing (float conversion and normalisation once a batch) gives the
    service's per-image pixels bit for bit: sizes and modes of every kind, and a transform it cannot batch."""
    import numpy as np
    from PIL import Image

    from infra.toyworld import Split, ToyWorld

    rng = np.random.default_rng(0)
    images = [s.image for s in ToyWorld().samples(6, Split.TEST)]
    images += [
        Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)),  # resized and cropped
        Image.fromarray(rng.integers(0, 256, (40, 90), dtype=np.uint8)),  # grey: made RGB by the transform
        Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
    ]
    one_by_one = torch.stack([random_clip.preprocess(im) for im in images])
    batched = random_clip.preprocess_batch(images)
    assert batched.dtype == one_by_one.dtype and torch.equal(batched, one_by_one)
    assert abs(float(batched.mean())) < 3  # normalised, not raw 0..255 or 0..1 values left as they were
    random_clip.transform = lambda im: torch.zeros(3, 4, 4)  # not the standard pipeline: image by image
    assert torch.equal(random_clip.preprocess_batch(images[:2]), torch.zeros(2, 3, 4, 4))
