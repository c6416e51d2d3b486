"""One-to-one matching (IoU then distance), candidate pairs, span intersections and DeepDISC matching."""

from __future__ import annotations

import time

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core.footprints import (
    flatten_spans,
    mask_to_spans,
    spans_intersection_area,
)
from lsst.meas.extensions.deepdisc.core.matching import (
    SourceArrays,
    bbox_iou_pairs,
    bbox_overlap_pairs,
    match_catalogs,
    match_deepdisc,
    optimal_assignment,
    pair_intersection_areas,
    sky_to_tangent_plane,
)


def box_sources(boxes: list[tuple[int, int, int, int]], with_spans: bool = True) -> SourceArrays:
    """Sources whose footprints are their full inclusive boxes ``(x_min, y_min, x_max, y_max)``."""
    boxes_array = np.asarray(boxes, dtype=float).reshape(-1, 4)
    spans = None
    if with_spans:
        spans = [
            np.array([(y, x0, x1) for y in range(y0, y1 + 1)], dtype=np.int32).reshape(-1, 3)
            for x0, y0, x1, y1 in boxes
        ]
    return SourceArrays(
        x=(boxes_array[:, 0] + boxes_array[:, 2]) / 2,
        y=(boxes_array[:, 1] + boxes_array[:, 3]) / 2,
        bbox=boxes_array,
        spans=spans,
    )


def random_disks(rng: np.random.Generator, n: int, size: float, max_radius: int) -> SourceArrays:
    x = rng.uniform(0, size, n)
    y = rng.uniform(0, size, n)
    radius = rng.integers(1, max_radius, n)
    spans = []
    for cx, cy, r in zip(x, y, radius):
        dy = np.arange(-r, r + 1)
        half = np.floor(np.sqrt(r**2 - dy**2)).astype(int)
        spans.append(np.stack([int(cy) + dy, int(cx) - half, int(cx) + half], axis=1).astype(np.int32))
    return SourceArrays(x=x, y=y, spans=spans)


def test_perfect_match_has_iou_one() -> None:
    truth = box_sources([(0, 0, 9, 9), (20, 0, 29, 4), (40, 40, 45, 52)])
    result = match_catalogs(truth, box_sources([(0, 0, 9, 9), (20, 0, 29, 4), (40, 40, 45, 52)]))
    assert result.iou_type == "mask"
    np.testing.assert_array_equal(result.truth_index, [0, 1, 2])
    np.testing.assert_array_equal(result.det_index, [0, 1, 2])
    np.testing.assert_array_equal(result.iou, 1.0)
    np.testing.assert_array_equal(result.bbox_iou, 1.0)
    np.testing.assert_array_equal(result.method, "iou")
    assert result.unmatched_truth.size == 0 and result.unmatched_det.size == 0


def test_hungarian_finds_the_assignment_greedy_misses() -> None:
    # Same rows; IoU along x only.  T0-D0 = 9/11 is the best single pair, but taking it leaves T1 with
    # D1 (IoU 6/16 < 0.5).  The optimal assignment is T0-D1 (9/13) and T1-D0 (8/12).
    truth = box_sources([(0, 0, 9, 0), (3, 0, 12, 0)])
    detections = box_sources([(1, 0, 10, 0), (-3, 0, 8, 0)])
    ious = bbox_iou_pairs(truth.bbox, detections.bbox, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(ious, [9 / 11, 9 / 13, 8 / 12, 6 / 16])
    result = match_catalogs(truth, detections, iou_type="bbox", max_distance=0)
    np.testing.assert_array_equal(result.truth_index, [0, 1])
    np.testing.assert_array_equal(result.det_index, [1, 0])
    np.testing.assert_allclose(result.iou, [9 / 13, 8 / 12])


def test_assignment_maximises_pairs_before_quality() -> None:
    # One pair of quality 0.9 versus two pairs of total quality 0.65: two pairs win.
    edges, rows, cols = optimal_assignment(
        np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.9, 0.3, 0.35]), 2, 2
    )
    np.testing.assert_array_equal(rows, [0, 1])
    np.testing.assert_array_equal(cols, [1, 0])
    np.testing.assert_array_equal(edges, [1, 2])
    # Same cardinality: the larger total quality wins.
    _, rows, cols = optimal_assignment(
        np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), np.array([0.9, 0.5, 0.6, 0.55]), 2, 2
    )
    np.testing.assert_array_equal(cols[np.argsort(rows)], [0, 1])


def test_distance_fallback_runs_after_iou_matching() -> None:
    truth = SourceArrays(
        x=[5.0, 30.0, 60.0, 100.0],
        y=[5.0, 30.0, 60.0, 100.0],
        bbox=[(0, 0, 10, 10), (29, 29, 31, 31), (59, 59, 61, 61), (99, 99, 101, 101)],
    )
    detections = SourceArrays(
        # D0 matches T0 by IoU; D1 is a big box around T1 (IoU 9/121) 3 px away; D2 is 7 px from T2;
        # D3 sits 2 px from T0's centre but T0 is already taken by the IoU stage.
        x=[5.0, 33.0, 67.0, 7.0],
        y=[5.0, 30.0, 60.0, 5.0],
        bbox=[(0, 0, 10, 10), (28, 25, 38, 35), (66, 59, 68, 61), (6, 4, 8, 6)],
    )
    result = match_catalogs(truth, detections)
    assert result.iou_type == "bbox"
    np.testing.assert_array_equal(result.truth_index, [0, 1])
    np.testing.assert_array_equal(result.det_index, [0, 1])
    np.testing.assert_array_equal(result.method, ["iou", "distance"])
    np.testing.assert_allclose(result.distance, [0.0, 3.0])
    np.testing.assert_allclose(result.bbox_iou, [1.0, 9 / 121])
    np.testing.assert_array_equal(result.unmatched_truth, [2, 3])
    np.testing.assert_array_equal(result.unmatched_det, [2, 3])
    # A larger radius also picks up T2-D2; none disables the fallback.
    assert match_catalogs(truth, detections, max_distance=7.5).n_matched == 3
    assert match_catalogs(truth, detections, max_distance=0).n_matched == 1
    np.testing.assert_array_equal(result.truth_to_det(), [0, 1, -1, -1])
    np.testing.assert_array_equal(result.det_to_truth(), [0, 1, -1, -1])


def test_mask_iou_differs_from_bbox_iou() -> None:
    # Two L-shaped halves of the same 4x4 box: bbox IoU 1, mask IoU 0 -> no IoU match with masks.
    upper = np.triu(np.ones((4, 4), dtype=bool))
    truth = SourceArrays(x=[1.5], y=[1.5], spans=[mask_to_spans(upper)])
    detections = SourceArrays(x=[1.5], y=[1.5], spans=[mask_to_spans(~upper | np.eye(4, dtype=bool))])
    result = match_catalogs(truth, detections, max_distance=0)
    assert result.n_matched == 0
    by_bbox = match_catalogs(truth, detections, iou_type="bbox", max_distance=0)
    assert by_bbox.n_matched == 1
    # Intersection: the 4 diagonal pixels; union: all 16 pixels.
    assert by_bbox.mask_iou[0] == pytest.approx(4 / 16)
    assert by_bbox.bbox_iou[0] == 1.0


def test_bbox_overlap_pairs_equal_brute_force() -> None:
    rng = np.random.default_rng(5)
    corners_a = rng.uniform(0, 300, (400, 2))
    corners_b = rng.uniform(0, 300, (300, 2))
    boxes_a = np.column_stack([corners_a, corners_a + rng.integers(0, 12, (400, 2))])
    boxes_b = np.column_stack([corners_b, corners_b + rng.integers(0, 12, (300, 2))])
    boxes_a[:3, 2:] = boxes_a[:3, :2] + 150  # A few huge boxes.
    boxes_b[0] = (10, 10, 5, 5)  # Empty box: overlaps nothing.
    boxes_a, boxes_b = np.floor(boxes_a), np.floor(boxes_b)
    ia, ib = bbox_overlap_pairs(boxes_a, boxes_b)
    a, b = boxes_a[:, None, :], boxes_b[None, :, :]
    overlap = (np.minimum(a[..., 2], b[..., 2]) >= np.maximum(a[..., 0], b[..., 0])) & (
        np.minimum(a[..., 3], b[..., 3]) >= np.maximum(a[..., 1], b[..., 1])
    )
    overlap[:, 0] = False
    expected_a, expected_b = np.nonzero(overlap)
    assert ia.size > 200
    np.testing.assert_array_equal(ia, expected_a)
    np.testing.assert_array_equal(ib, expected_b)
    # Any grid size gives the same pairs.
    ia2, ib2 = bbox_overlap_pairs(boxes_a, boxes_b, cell_size=3.0)
    np.testing.assert_array_equal(ia2, expected_a)
    np.testing.assert_array_equal(ib2, expected_b)


def test_pair_intersections_equal_footprint_intersections() -> None:
    rng = np.random.default_rng(11)
    a = random_disks(rng, 200, 120, 8)
    b = SourceArrays(
        x=[0.0] * 150,
        y=[0.0] * 150,
        spans=[
            mask_to_spans(rng.random((9, 9)) < 0.6, (int(x), int(y)))
            for x, y in rng.uniform(0, 120, (150, 2))
        ],
    )
    ia, ib = bbox_overlap_pairs(a.bbox, b.bbox)
    assert ia.size > 50
    expected = [spans_intersection_area(a.spans[i], b.spans[j]) for i, j in zip(ia, ib)]
    np.testing.assert_array_equal(pair_intersection_areas(a, b, ia, ib), expected)


def test_deepdisc_matching_is_many_to_one() -> None:
    truth = box_sources([(0, 0, 9, 9), (50, 0, 59, 9), (100, 0, 109, 9)], with_spans=False)
    detections = box_sources(
        [
            (0, 0, 9, 7),  # T0, IoU 0.8
            (0, 0, 9, 5),  # T0 again, IoU 0.6
            (50, 0, 53, 9),  # T1, IoU 0.4: not matched
            (200, 0, 209, 9),  # nothing
            (102, 0, 109, 9),  # T2, IoU 0.8
        ],
        with_spans=False,
    )
    match = match_deepdisc(truth, detections)
    np.testing.assert_array_equal(match.det_index, [0, 1, 4])
    np.testing.assert_array_equal(match.truth_index, [0, 0, 2])
    np.testing.assert_allclose(match.bbox_iou, [0.8, 0.6, 0.8])
    assert match.n_matched_det == 3 and match.n_truth_recovered == 2
    assert match_deepdisc(truth, detections, min_iou=0.3).n_matched_det == 4


def test_deepdisc_ties_go_to_lowest_truth_index() -> None:
    truth = box_sources([(0, 0, 9, 9), (0, 0, 9, 9)], with_spans=False)
    match = match_deepdisc(truth, box_sources([(0, 0, 9, 9)], with_spans=False))
    np.testing.assert_array_equal(match.truth_index, [0])


def test_from_table_reads_flat_spans_and_bbox_columns() -> None:
    spans = [mask_to_spans(np.ones((3, 4), dtype=bool), (10, 20)), mask_to_spans(np.ones((2, 2), dtype=bool))]
    footprints = np.empty(2, dtype=object)
    footprints[:] = [flatten_spans(s) for s in spans]
    table = Table({"x": [11.5, 0.5], "y": [21.0, 0.5], "footprint": footprints, "class_id": [1, 0]})
    sources = SourceArrays.from_table(table)
    np.testing.assert_array_equal(sources.bbox, [(10, 20, 13, 22), (0, 0, 1, 1)])
    np.testing.assert_array_equal(sources.areas(), [12, 4])
    np.testing.assert_array_equal(sources.class_id, [1, 0])
    assert sources.score is None
    with pytest.raises(KeyError, match="'xc'"):
        SourceArrays.from_table(table, x="xc")


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="y has"):
        SourceArrays(x=[1.0, 2.0], y=[1.0])
    with pytest.raises(ValueError, match="multiple of 3"):
        SourceArrays(x=[1.0], y=[1.0], spans=[np.arange(4)])
    with pytest.raises(ValueError, match="finite"):
        SourceArrays(x=[np.nan], y=[1.0])
    boxes = box_sources([(0, 0, 2, 2)], with_spans=False)
    with pytest.raises(ValueError, match="mask IoU requested"):
        match_catalogs(boxes, boxes, iou_type="mask")
    with pytest.raises(ValueError, match="min_iou"):
        match_catalogs(boxes, boxes, min_iou=0.0)


def test_positions_only_match_by_distance() -> None:
    truth = SourceArrays(x=[0.0, 10.0], y=[0.0, 0.0])
    result = match_catalogs(truth, SourceArrays(x=[10.5, 0.2, 40.0], y=[0.0, 0.0, 0.0]))
    assert result.iou_type == "none"
    np.testing.assert_array_equal(result.det_index, [1, 0])
    assert np.all(np.isnan(result.iou))
    np.testing.assert_array_equal(result.unmatched_det, [2])


def test_empty_catalogs() -> None:
    truth = box_sources([(0, 0, 3, 3)])
    empty = SourceArrays(x=[], y=[], spans=[])
    result = match_catalogs(truth, empty)
    assert result.n_matched == 0 and result.n_det == 0
    np.testing.assert_array_equal(result.unmatched_truth, [0])
    assert match_catalogs(empty, truth).unmatched_det.tolist() == [0]


def test_sky_to_tangent_plane_scale() -> None:
    x, y = sky_to_tangent_plane(np.array([150.0, 150.0 + 1 / 3600]), np.array([0.0, 0.0]), 150.0, 0.0, 0.2)
    np.testing.assert_allclose(x, [0.0, 5.0], atol=1e-9)
    np.testing.assert_allclose(y, 0.0, atol=1e-9)
    _, y = sky_to_tangent_plane(np.array([10.0]), np.array([-30.0 + 2 / 3600]), 10.0, -30.0, 0.2)
    np.testing.assert_allclose(y, [10.0], rtol=1e-6)


def test_ten_thousand_sources_match_in_seconds() -> None:
    rng = np.random.default_rng(2)
    truth = random_disks(rng, 10_000, 3000, 7)
    jitter = rng.integers(-1, 2, (10_000, 2))
    detections = SourceArrays(
        x=truth.x + jitter[:, 0],
        y=truth.y + jitter[:, 1],
        spans=[s + np.array([j[1], j[0], j[0]], dtype=np.int32) for s, j in zip(truth.spans, jitter)],
    )
    order = rng.permutation(10_000)
    detections = SourceArrays(
        x=detections.x[order], y=detections.y[order], spans=[detections.spans[i] for i in order]
    )
    start = time.perf_counter()
    result = match_catalogs(truth, detections)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"matching 10k sources took {elapsed:.1f} s"
    # Unshifted sources must be matched to their own detection with IoU 1.
    unshifted = np.flatnonzero(np.all(jitter == 0, axis=1))
    det_of = result.truth_to_det()
    np.testing.assert_array_equal(order[det_of[unshifted]], unshifted)
    assert result.n_matched > 9_500


def test_empty_footprints_overlap_nothing() -> None:
    spans = [mask_to_spans(np.ones((3, 3), dtype=bool)), np.zeros((0, 3), dtype=np.int32)]
    sources = SourceArrays(x=[1.0, 1.0], y=[1.0, 1.0], spans=spans)
    np.testing.assert_array_equal(sources.bbox[0], [0, 0, 2, 2])
    assert sources.bbox[1, 2] < sources.bbox[1, 0]
    np.testing.assert_array_equal(sources.areas(), [9, 0])
    result = match_catalogs(sources, sources, max_distance=0)
    np.testing.assert_array_equal(result.truth_index, [0])
    np.testing.assert_array_equal(result.unmatched_det, [1])
