"""Training examples, detectron2 records, deterministic splits and exact geometric augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsst.meas.extensions.deepdisc.core.augment import (
    AugmentConfig,
    augment_example,
    crop_example,
    flip_example,
    flip_spans,
    random_crop_box,
    rot90_example,
    rot90_spans,
)
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans, spans_to_mask
from lsst.meas.extensions.deepdisc.core.training_data import (
    InstanceLabel,
    TrainingExample,
    to_detectron2_dict,
)

seeds = st.integers(0, 2**32 - 1)


def labelled_example(seed: int, height: int = 13, width: int = 17, n_bands: int = 3) -> TrainingExample:
    """Random non-overlapping instances; band 0 is a marker image: ``label index + 1`` on each instance.

    The other bands hold noise, and ``valid`` is random, so every transform must move all of them alike.
    """
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, 5, size=(height, width))  # 0 = background, 1..4 = instance id.
    image = rng.normal(size=(n_bands, height, width)).astype(np.float32)
    image[0] = owner
    instances = [
        InstanceLabel(mask_to_spans(owner == label), class_id=label % 2, source_id=100 + label)
        for label in range(1, 5)
        if np.any(owner == label)
    ]
    image[0] = 0
    for index, instance in enumerate(instances):
        image[0][spans_to_mask(instance.spans, (height, width))] = index + 1
    valid = rng.random((height, width)) > 0.2
    bands = tuple("ugrizy"[:n_bands])
    return TrainingExample(image, instances, f"example-{seed}", bands, valid=valid)


def assert_marker_consistent(example: TrainingExample, source_ids: list[int]) -> None:
    """Band 0 must equal the rendering of the (transformed) instance masks with their original markers."""
    rendered = np.zeros((example.height, example.width), dtype=np.float32)
    for instance in example.instances:
        mask = spans_to_mask(instance.spans, (example.height, example.width))
        assert mask.any()
        assert not np.any(rendered[mask]), "instances must not overlap"
        rendered[mask] = source_ids.index(instance.source_id) + 1
    np.testing.assert_array_equal(example.image[0], rendered)


def assert_same_example(a: TrainingExample, b: TrainingExample) -> None:
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.valid, b.valid)
    assert [i.source_id for i in a.instances] == [i.source_id for i in b.instances]
    for left, right in zip(a.instances, b.instances):
        np.testing.assert_array_equal(left.spans, right.spans)


# ---------------------------------------------------------------------------------------------- labels


def test_instance_label_bbox_and_validation() -> None:
    label = InstanceLabel(np.array([[3, 2, 5], [4, 1, 1]]), class_id=1)
    assert label.spans.dtype == np.int32
    assert label.bbox == (1, 3, 5, 4)
    assert label.area == 5
    assert np.isnan(label.magnitude) and np.isnan(label.blendedness)
    with pytest.raises(ValueError, match="empty footprint"):
        InstanceLabel(np.zeros((0, 3), dtype=np.int32), class_id=0)
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        InstanceLabel(np.array([[1, 2]]), class_id=0)
    with pytest.raises(ValueError, match="x_end < x_begin"):
        InstanceLabel(np.array([[0, 5, 4]]), class_id=0)
    with pytest.raises(ValueError, match="class_id"):
        InstanceLabel(np.array([[0, 1, 1]]), class_id=-1)
    with pytest.raises(TypeError, match="integers"):
        InstanceLabel(np.array([[0.0, 1.0, 1.5]]), class_id=0)


def test_training_example_rejects_bad_input() -> None:
    good = labelled_example(1)
    bad_image = good.image.copy()
    bad_image[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        TrainingExample(bad_image, good.instances, "x", good.bands)
    with pytest.raises(ValueError, match="band names"):
        TrainingExample(good.image, good.instances, "x", ("g", "r"))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        TrainingExample(good.image[0], [], "x", ("g",))
    with pytest.raises(TypeError, match="floating point"):
        TrainingExample(good.image.astype(np.int16), [], "x", good.bands)
    outside = InstanceLabel(np.array([[0, good.width - 1, good.width]]), class_id=0)
    with pytest.raises(ValueError, match="outside"):
        TrainingExample(good.image, [outside], "x", good.bands)
    with pytest.raises(ValueError, match="valid map"):
        TrainingExample(good.image, [], "x", good.bands, valid=np.ones((2, 2), dtype=bool))


def test_to_detectron2_dict_matches_labels() -> None:
    from detectron2.structures import BitMasks

    example = labelled_example(7)
    record = to_detectron2_dict(example)
    assert record["height"] == example.height and record["width"] == example.width
    assert record["image"].dtype == torch.float32
    np.testing.assert_array_equal(record["image"].numpy(), example.image)
    record["image"][0, 0, 0] += 1.0  # The record owns its pixels.
    assert record["image"][0, 0, 0] != example.image[0, 0, 0]
    instances = record["instances"]
    assert len(instances) == len(example.instances)
    np.testing.assert_array_equal(instances.gt_classes.numpy(), [i.class_id for i in example.instances])
    assert instances.gt_classes.dtype == torch.int64
    masks = instances.gt_masks
    assert isinstance(masks, BitMasks)
    for index, instance in enumerate(example.instances):
        np.testing.assert_array_equal(
            masks.tensor[index].numpy(), spans_to_mask(instance.spans, (example.height, example.width))
        )
    # Boxes agree with detectron2's own box-from-mask convention (exclusive upper edges).
    np.testing.assert_allclose(instances.gt_boxes.tensor.numpy(), masks.get_bounding_boxes().tensor.numpy())


def test_to_detectron2_dict_without_instances() -> None:
    image = np.zeros((2, 8, 9), dtype=np.float32)
    record = to_detectron2_dict(TrainingExample(image, [], "empty", ("g", "r")))
    assert len(record["instances"]) == 0
    assert tuple(record["instances"].gt_masks.tensor.shape) == (0, 8, 9)


# ------------------------------------------------------------------------------------------ augmentation


@given(seed=seeds, axis=st.sampled_from(["x", "y"]))
@settings(max_examples=40, deadline=None)
def test_flip_twice_is_identity_and_masks_follow_pixels(seed: int, axis: str) -> None:
    example = labelled_example(seed)
    source_ids = [i.source_id for i in example.instances]
    flipped = flip_example(example, axis)
    assert_marker_consistent(flipped, source_ids)
    np.testing.assert_array_equal(flipped.valid, np.flip(example.valid, axis=1 if axis == "x" else 0))
    assert_same_example(flip_example(flipped, axis), example)


@given(seed=seeds, k=st.integers(-3, 7))
@settings(max_examples=40, deadline=None)
def test_rot90_inverse_is_identity_and_masks_follow_pixels(seed: int, k: int) -> None:
    example = labelled_example(seed)
    source_ids = [i.source_id for i in example.instances]
    rotated = rot90_example(example, k)
    if k % 2:
        assert (rotated.height, rotated.width) == (example.width, example.height)
    assert_marker_consistent(rotated, source_ids)
    np.testing.assert_array_equal(rotated.valid, np.rot90(example.valid, k))
    assert_same_example(rot90_example(rotated, -k), example)
    # Rotating twice by 180 degrees and flipping both axes are the same map.
    assert_same_example(rot90_example(example, 2), flip_example(flip_example(example, "x"), "y"))


@given(seed=seeds)
@settings(max_examples=40, deadline=None)
def test_span_transforms_equal_mask_transforms(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    mask = rng.random(shape) > 0.5
    mask[rng.integers(shape[0]), rng.integers(shape[1])] = True
    spans = mask_to_spans(mask)
    for k in range(4):
        rotated = np.rot90(mask, k)
        np.testing.assert_array_equal(rot90_spans(spans, shape, k), mask_to_spans(rotated))
    np.testing.assert_array_equal(flip_spans(spans, shape, "x"), mask_to_spans(mask[:, ::-1]))
    np.testing.assert_array_equal(flip_spans(spans, shape, "y"), mask_to_spans(mask[::-1]))


@given(seed=seeds, data=st.data())
@settings(max_examples=40, deadline=None)
def test_crop_clips_masks_and_drops_empty_instances(seed: int, data: st.DataObject) -> None:
    example = labelled_example(seed)
    source_ids = [i.source_id for i in example.instances]
    width = data.draw(st.integers(1, example.width))
    height = data.draw(st.integers(1, example.height))
    x0 = data.draw(st.integers(0, example.width - width))
    y0 = data.draw(st.integers(0, example.height - height))
    cropped = crop_example(example, x0, y0, width, height)
    assert (cropped.height, cropped.width) == (height, width)
    assert_marker_consistent(cropped, source_ids)
    np.testing.assert_array_equal(cropped.valid, example.valid[y0 : y0 + height, x0 : x0 + width])
    # Exactly the instances with at least one pixel inside survive, each with its pixels inside the box.
    survivors = {i.source_id for i in cropped.instances}
    for instance in example.instances:
        full = spans_to_mask(instance.spans, (example.height, example.width))
        inside = full[y0 : y0 + height, x0 : x0 + width]
        assert (instance.source_id in survivors) == bool(inside.any())
        if inside.any():
            kept = next(i for i in cropped.instances if i.source_id == instance.source_id)
            np.testing.assert_array_equal(spans_to_mask(kept.spans, (height, width)), inside)
            assert kept.class_id == instance.class_id


def test_crop_rejects_boxes_outside_the_image() -> None:
    example = labelled_example(3)
    with pytest.raises(ValueError, match="exceeds"):
        crop_example(example, 1, 0, example.width, 2)
    with pytest.raises(ValueError, match="positive"):
        crop_example(example, 0, 0, 0, 2)


@given(seed=seeds, crop=st.sampled_from([None, 0.5, 7, 100]))
@settings(max_examples=40, deadline=None)
def test_random_augmentation_is_seeded_and_consistent(seed: int, crop: float | int | None) -> None:
    example = labelled_example(seed, n_bands=6)
    source_ids = [i.source_id for i in example.instances]
    config = AugmentConfig(flips=True, rot90=True, crop_size=crop)
    first = augment_example(example, config, np.random.default_rng(seed))
    second = augment_example(example, config, np.random.default_rng(seed))
    assert_same_example(first, second)
    assert_marker_consistent(first, source_ids)
    assert first.bands == example.bands and first.example_id == example.example_id
    # The crop size is set by the config (sides may swap after a rotation).
    if crop == 0.5:
        expected = {round(0.5 * example.height), round(0.5 * example.width)}
    elif crop is None:
        expected = {example.height, example.width}
    else:
        expected = {min(crop, example.height), min(crop, example.width)}
    assert {first.height, first.width} == expected
    # The input is never modified.
    assert_same_example(example, labelled_example(seed, n_bands=6))


def test_augmentations_cover_all_orientations() -> None:
    example = labelled_example(5)
    config = AugmentConfig(flips=True, rot90=True)
    rng = np.random.default_rng(0)
    images = {augment_example(example, config, rng).image[0].tobytes() for _ in range(200)}
    # Four rotations times the flips give the 8 symmetries of a rectangle's dihedral group (as arrays).
    assert len(images) == 8
    plain = AugmentConfig(flips=False, rot90=False)
    assert_same_example(augment_example(example, plain, rng), example)


def test_random_crop_box_and_config_validation() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        x0, y0, width, height = random_crop_box((30, 40), 0.5, rng)
        assert (width, height) == (20, 15)
        assert 0 <= x0 <= 20 and 0 <= y0 <= 15
    assert random_crop_box((30, 40), 64, rng) == (0, 0, 40, 30)
    with pytest.raises(ValueError, match="fraction"):
        AugmentConfig(crop_size=1.5)
    with pytest.raises(ValueError, match="pixels"):
        AugmentConfig(crop_size=0)
    with pytest.raises(TypeError, match="crop_size"):
        AugmentConfig(crop_size="half")  # type: ignore[arg-type]
