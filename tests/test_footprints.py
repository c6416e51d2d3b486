"""Spans encoding: exact round trips (property-based), geometry, intersections."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lsst.meas.extensions.deepdisc.core.footprints import (
    Footprint,
    flatten_spans,
    mask_to_spans,
    masks_to_spans,
    spans_area,
    spans_bbox,
    spans_centroid,
    spans_intersection_area,
    spans_to_mask,
    unflatten_spans,
)

masks = arrays(
    dtype=bool,
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    elements=st.booleans(),
)
offsets = st.tuples(st.integers(-1000, 1000), st.integers(-1000, 1000))


@given(mask=masks, xy0=offsets)
@settings(max_examples=300, deadline=None)
def test_round_trip_is_exact(mask: np.ndarray, xy0: tuple[int, int]) -> None:
    spans = mask_to_spans(mask, xy0)
    assert spans.dtype == np.int32
    np.testing.assert_array_equal(spans_to_mask(spans, mask.shape, xy0), mask)
    assert spans_area(spans) == int(mask.sum())
    np.testing.assert_array_equal(unflatten_spans(flatten_spans(spans)), spans)


@given(mask=masks, xy0=offsets)
@settings(max_examples=200, deadline=None)
def test_spans_are_canonical(mask: np.ndarray, xy0: tuple[int, int]) -> None:
    spans = mask_to_spans(mask, xy0)
    if len(spans) == 0:
        return
    # Sorted by (y, x0), non-empty, and runs in the same row never touch (they would have been merged).
    order = np.lexsort((spans[:, 1], spans[:, 0]))
    np.testing.assert_array_equal(order, np.arange(len(spans)))
    assert np.all(spans[:, 2] >= spans[:, 1])
    same_row = spans[1:, 0] == spans[:-1, 0]
    assert np.all(spans[1:, 1][same_row] > spans[:-1, 2][same_row] + 1)


@given(
    stack=arrays(
        dtype=bool,
        shape=st.tuples(st.integers(0, 6), st.integers(1, 12), st.integers(1, 12)),
        elements=st.booleans(),
    ),
    xy0=offsets,
)
@settings(max_examples=200, deadline=None)
def test_stacked_masks_give_each_planes_spans(stack: np.ndarray, xy0: tuple[int, int]) -> None:
    origins = np.array([(xy0[0] + 3 * k, xy0[1] - 5 * k) for k in range(stack.shape[0])]).reshape(-1, 2)
    spans = masks_to_spans(stack, origins)
    assert len(spans) == stack.shape[0]
    for plane, origin, got in zip(stack, origins, spans):
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got.reshape(-1, 3), mask_to_spans(plane, tuple(origin)))
        np.testing.assert_array_equal(spans_to_mask(got, plane.shape, tuple(origin)), plane)


@given(a=masks, b=masks)
@settings(max_examples=200, deadline=None)
def test_intersection_matches_pixels(a: np.ndarray, b: np.ndarray) -> None:
    h, w = max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1])
    big_a = np.zeros((h, w), bool)
    big_b = np.zeros((h, w), bool)
    big_a[: a.shape[0], : a.shape[1]] = a
    big_b[: b.shape[0], : b.shape[1]] = b
    expected = int((big_a & big_b).sum())
    assert spans_intersection_area(mask_to_spans(big_a), mask_to_spans(big_b)) == expected
    fa, fb = Footprint.from_mask(big_a), Footprint.from_mask(big_b)
    union = int((big_a | big_b).sum())
    assert fa.iou(fb) == pytest.approx(expected / union if union else 0.0)


def test_geometry_of_known_shape() -> None:
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True  # 3 rows x 6 columns
    mask[7, 1] = True
    fp = Footprint.from_mask(mask, xy0=(100, 200))
    assert fp.area == 19
    assert fp.bbox == (101, 202, 108, 207)
    x, y = spans_centroid(fp.spans)
    ys, xs = np.nonzero(mask)
    assert x == pytest.approx(xs.mean() + 100)
    assert y == pytest.approx(ys.mean() + 200)
    np.testing.assert_array_equal(fp.to_mask(), mask[2:8, 1:9])


def test_empty_and_invalid_inputs() -> None:
    empty = mask_to_spans(np.zeros((4, 4), bool))
    assert empty.shape == (0, 3)
    assert Footprint(empty).is_empty()
    with pytest.raises(ValueError, match="empty footprint"):
        spans_bbox(empty)
    with pytest.raises(ValueError, match="2-d"):
        mask_to_spans(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="outside"):
        spans_to_mask(np.array([[0, 0, 10]], np.int32), (4, 4))
    clipped = spans_to_mask(np.array([[1, -3, 10]], np.int32), (4, 4), clip=True)
    assert clipped[1].all() and clipped.sum() == 4
    with pytest.raises(ValueError, match="multiple of 3"):
        unflatten_spans(np.arange(4))


def test_large_mask_is_fast_enough_to_be_vectorised() -> None:
    rng = np.random.default_rng(1)
    mask = rng.random((2048, 2048)) > 0.5  # ~2M runs: a Python loop would take many seconds
    spans = mask_to_spans(mask)
    np.testing.assert_array_equal(spans_to_mask(spans, mask.shape), mask)
