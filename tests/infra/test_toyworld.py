from __future__ import annotations

import numpy as np

from infra.toyworld import COLOURS, SHAPES, Domain, Split, ToyWorld, class_labels


class TestToyWorld:
    def test_same_call_draws_the_same_pixels(self) -> None:
        a, b = ToyWorld(seed=3).sample(17, Split.VAL), ToyWorld(seed=3).sample(17, Split.VAL)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.caption == b.caption and a.objects == b.objects and a.qa == b.qa

    def test_seeds_and_splits_differ(self) -> None:
        base = np.asarray(ToyWorld(seed=0).sample(0).image)
        assert not np.array_equal(base, np.asarray(ToyWorld(seed=1).sample(0).image))
        assert not np.array_equal(base, np.asarray(ToyWorld(seed=0).sample(0, Split.TEST).image))

    def test_covers_every_colour_and_shape_with_one_to_three_objects(self) -> None:
        samples = list(ToyWorld().samples(300))
        counts = {len(s.objects) for s in samples}
        assert counts == {1, 2, 3}
        seen = {(o.colour, o.shape) for s in samples for o in s.objects}
        assert len(COLOURS) >= 6 and len(SHAPES) >= 4
        assert seen == {(c, s) for c in COLOURS for s in SHAPES}
        assert len(class_labels()) == len(COLOURS) * len(SHAPES)

    def test_boxes_lie_inside_the_image_and_hold_the_object_colour(self) -> None:
        for s in ToyWorld().samples(50):
            arr = np.asarray(s.image).astype(int)
            sizes = set()
            for o in s.objects:
                x0, y0, x1, y1 = o.box
                assert 0 <= x0 < x1 <= s.image.width and 0 <= y0 < y1 <= s.image.height
                sizes.add(x1 - x0)
                centre = arr[(y0 + y1) // 2, (x0 + x1) // 2]
                assert np.abs(centre - np.array(COLOURS[o.colour])).sum() < 10, (o, centre)
            for a in s.objects:  # objects never overlap
                for b in s.objects:
                    if a is not b:
                        assert (
                            a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
                        )

    def test_captions_and_answers_describe_the_objects(self) -> None:
        for s in ToyWorld().samples(50):
            for o in s.objects:
                assert o.label in s.caption
            answers = {q.question: q.answer for q in s.qa}
            assert answers["how many objects are there?"] == ["zero", "one", "two", "three"][len(s.objects)]
            for o in s.objects:
                if sum(p.shape == o.shape for p in s.objects) == 1:
                    assert answers[f"what colour is the {o.shape}?"] == o.colour

    def test_shifted_domain_looks_different(self) -> None:
        plain = np.asarray(ToyWorld().sample(0, domain=Domain.PLAIN).image).astype(float)
        shifted = np.asarray(ToyWorld().sample(0, domain=Domain.SHIFTED).image).astype(float)
        # the plain background is flat; the shifted one is noisy
        assert plain[:4, :4].std() < 1.0 < 10.0 < shifted.std()
