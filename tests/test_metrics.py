"""Detection, classification, IoU and DeepDISC matched-set metrics on catalogs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core.matching import SourceArrays, match_catalogs, match_deepdisc
from lsst.meas.extensions.deepdisc.core.metrics import (
    classification_scores,
    classification_scores_vs_mag,
    deepdisc_scores,
    detection_scores,
    detection_scores_vs_mag,
    iou_summary,
    magnitude_bin_index,
)


def squares(centres: list[tuple[int, int]], half: int = 3, **columns: list) -> SourceArrays:
    """Square footprints of side ``2 * half + 1`` centred on integer positions."""
    spans = [
        np.array([(y, x - half, x + half) for y in range(y - half, y + half + 1)], dtype=np.int32)
        for x, y in centres
    ]
    xy = np.asarray(centres, dtype=float).reshape(-1, 2)
    return SourceArrays(x=xy[:, 0], y=xy[:, 1], spans=spans, **columns)


def strips(boxes: list[tuple[int, int, int, int]], **columns: list) -> SourceArrays:
    """Full-box footprints ``(x_min, y_min, x_max, y_max)``."""
    spans = [np.array([(y, x0, x1) for y in range(y0, y1 + 1)], dtype=np.int32) for x0, y0, x1, y1 in boxes]
    boxes_array = np.asarray(boxes, dtype=float)
    return SourceArrays(
        x=(boxes_array[:, 0] + boxes_array[:, 2]) / 2,
        y=(boxes_array[:, 1] + boxes_array[:, 3]) / 2,
        spans=spans,
        **columns,
    )


CENTRES = [(10, 10), (50, 10), (90, 10), (10, 50)]


def _classification(truth, detections, match=None) -> Table:
    """Class scores of the one-to-one matched pairs, as the comparison computes them."""
    match = match_catalogs(truth, detections) if match is None else match
    return classification_scores(truth.class_id[match.truth_index], detections.class_id[match.det_index])


def test_perfect_catalog() -> None:
    truth = squares(CENTRES, class_id=[0, 1, 1, 0])
    detections = squares(CENTRES, class_id=[0, 1, 1, 0])
    match = match_catalogs(truth, detections)
    detection = detection_scores(match)
    assert detection.completeness == 1.0
    assert detection.purity == 1.0
    assert detection.f1 == 1.0
    iou = iou_summary(match)
    assert iou.median_mask_iou == 1.0 and iou.median_bbox_iou == 1.0
    classification = _classification(truth, detections, match)
    np.testing.assert_array_equal(classification["f1"], [1.0, 1.0])
    assert classification.meta["accuracy"] == 1.0
    matched_set = deepdisc_scores(match_deepdisc(truth, detections), truth.class_id, detections.class_id)
    assert matched_set.detection_precision == 1.0 and matched_set.detection_recall == 1.0


def test_one_missed() -> None:
    scores = detection_scores(match_catalogs(squares(CENTRES), squares(CENTRES[:3])))
    assert (scores.n_truth, scores.n_det, scores.n_matched) == (4, 3, 3)
    assert scores.completeness == 0.75
    assert scores.purity == 1.0
    assert scores.f1 == pytest.approx(2 * 0.75 / 1.75)


def test_one_spurious() -> None:
    scores = detection_scores(match_catalogs(squares(CENTRES[:3]), squares(CENTRES)))
    assert scores.completeness == 1.0
    assert scores.purity == 0.75
    assert scores.f1 == pytest.approx(6 / 7)


def test_shredded_truth_counts_one_match() -> None:
    # One 20x10 truth split into two 10x10 detections (IoU 0.5 each): one matches, the other is spurious.
    match = match_catalogs(strips([(0, 0, 19, 9)]), strips([(0, 0, 9, 9), (10, 0, 19, 9)]))
    scores = detection_scores(match)
    assert (scores.completeness, scores.purity) == (1.0, 0.5)
    assert scores.f1 == pytest.approx(2 / 3)
    np.testing.assert_allclose(match.mask_iou, [0.5])


def test_merged_blend_counts_one_match() -> None:
    match = match_catalogs(strips([(0, 0, 9, 9), (10, 0, 19, 9)]), strips([(0, 0, 19, 9)]))
    scores = detection_scores(match)
    assert (scores.completeness, scores.purity) == (0.5, 1.0)
    assert match.unmatched_truth.size == 1


def test_swapped_classes_by_hand() -> None:
    centres = [(10 + 40 * i, 10) for i in range(5)]
    truth = squares(centres, class_id=[0, 0, 1, 1, 1])
    detections = squares(centres, class_id=[0, 1, 1, 1, 0])
    classification = _classification(truth, detections)
    star, galaxy = classification
    # Stars: predicted at 0 and 4, true at 0 and 1 -> TP 1, precision 1/2, recall 1/2.
    assert (star["n_true"], star["n_pred"], star["n_correct"]) == (2, 2, 1)
    assert star["precision"] == 0.5 and star["recall"] == 0.5 and star["f1"] == 0.5
    # Galaxies: predicted at 1, 2, 3, true at 2, 3, 4 -> TP 2.
    assert galaxy["precision"] == pytest.approx(2 / 3) and galaxy["recall"] == pytest.approx(2 / 3)
    assert galaxy["f1"] == pytest.approx(2 / 3)
    assert classification.meta["accuracy"] == pytest.approx(3 / 5)


def test_unknown_classes_are_skipped() -> None:
    table = classification_scores([0, 1, -1, 1], [0, -1, 1, 1])
    assert table.meta["n_pairs"] == 2
    np.testing.assert_array_equal(table["n_correct"], [1, 1])


def test_completeness_and_purity_vs_magnitude() -> None:
    centres = [(10 + 30 * i, 10) for i in range(6)]
    truth_mag = np.array([20.5, 21.0, 22.5, 23.0, 24.5, 25.5])
    truth = squares(centres[:5] + [(10, 200)], mag=truth_mag)
    # Truth 3 is missed; a spurious detection sits at (300, 300) with measured mag 24.8; the detection of
    # truth 4 (mag 24.5) is measured at 23.5.
    det_centres = [centres[0], centres[1], centres[2], centres[4], (300, 300), (10, 200)]
    det_mag = np.array([20.6, 20.9, 22.4, 23.5, 24.8, 25.4])
    match = match_catalogs(truth, squares(det_centres))
    bins = [20.0, 22.0, 24.0, 26.0]
    table = detection_scores_vs_mag(match, truth_mag, bins, det_mag)
    np.testing.assert_array_equal(table["n_truth"], [2, 2, 2])
    np.testing.assert_array_equal(table["n_truth_matched"], [2, 1, 2])
    np.testing.assert_allclose(table["completeness"], [1.0, 0.5, 1.0])
    # Matched detections binned by their truth magnitude: bin 3 holds truth 4's, truth 5's and the spurious.
    np.testing.assert_array_equal(table["n_det"], [2, 1, 3])
    np.testing.assert_allclose(table["purity"], [1.0, 1.0, 2 / 3])
    np.testing.assert_allclose(table["f1"], [1.0, 2 / 3, 0.8])
    measured = detection_scores_vs_mag(match, truth_mag, bins, det_mag, purity_mag="measured")
    np.testing.assert_array_equal(measured["n_det"], [2, 2, 2])
    np.testing.assert_allclose(measured["purity"], [1.0, 1.0, 0.5])
    without = detection_scores_vs_mag(match, truth_mag, bins)
    assert "purity" not in without.colnames


def test_classification_vs_magnitude() -> None:
    centres = [(10 + 30 * i, 10) for i in range(4)]
    truth = squares(centres, class_id=[0, 0, 1, 1], mag=[20.0, 23.0, 20.5, 23.5])
    detections = squares(centres, class_id=[0, 1, 1, 1])
    match = match_catalogs(truth, detections)
    bins = [19.0, 22.0, 25.0]
    table = classification_scores_vs_mag(match, truth.class_id, detections.class_id, truth.mag, bins)
    bright = table[table["mag_max"] == 22.0]
    faint = table[table["mag_min"] == 22.0]
    np.testing.assert_array_equal(bright["f1"], [1.0, 1.0])
    assert faint["recall"][0] == 0.0 and np.isnan(faint["precision"][0])  # No star predicted in the bin.
    assert faint["precision"][1] == 0.5 and faint["recall"][1] == 1.0
    np.testing.assert_allclose(detection_scores_vs_mag(match, truth.mag, bins)["completeness"], [1.0, 1.0])


def test_iou_summary_median_and_methods() -> None:
    truth = strips([(0, 0, 9, 9), (100, 0, 109, 9), (200, 0, 209, 9)])
    # IoUs 1, 0.8 (8 of 10 columns) and 0.6.
    detections = strips([(0, 0, 9, 9), (100, 0, 107, 9), (200, 0, 205, 9)])
    summary = iou_summary(match_catalogs(truth, detections))
    assert summary.n_pairs == 3
    assert summary.median_mask_iou == pytest.approx(0.8)
    assert summary.mean_bbox_iou == pytest.approx(0.8)
    tiny_truth = SourceArrays(x=[5.0], y=[5.0], bbox=[(5, 5, 5, 5)])
    tiny_det = SourceArrays(x=[7.0], y=[5.0], bbox=[(7, 5, 7, 5)])
    match = match_catalogs(tiny_truth, tiny_det)
    assert iou_summary(match).median_bbox_iou == 0.0
    assert iou_summary(match, methods=("iou",)).n_pairs == 0
    assert np.isnan(iou_summary(match, methods=("iou",)).median_bbox_iou)


def test_deepdisc_matched_set_by_hand() -> None:
    truth = strips([(0, 0, 9, 9), (50, 0, 59, 9), (100, 0, 109, 9)], class_id=[1, 0, 1])
    detections = strips(
        [(0, 0, 9, 7), (0, 0, 9, 5), (50, 0, 53, 9), (102, 0, 109, 9), (300, 0, 309, 9)],
        class_id=[1, 0, 0, 1, 1],
    )
    scores = deepdisc_scores(match_deepdisc(truth, detections), truth.class_id, detections.class_id)
    # Matched dets 0 -> T0, 1 -> T0, 3 -> T2; truths recovered: T0, T2.
    assert scores.n_matched_det == 3 and scores.n_truth_recovered == 2
    assert scores.detection_precision == pytest.approx(3 / 5)
    assert scores.detection_recall == pytest.approx(2 / 3)
    assert scores.detection_f1 == pytest.approx(2 * (3 / 5) * (2 / 3) / (3 / 5 + 2 / 3))
    assert scores.median_bbox_iou == pytest.approx(0.8)
    # Pairs (true, pred): (1, 1), (1, 0), (1, 1): galaxy precision 1, recall 2/3; star precision 0.
    star, galaxy = scores.classification
    assert galaxy["precision"] == 1.0 and galaxy["recall"] == pytest.approx(2 / 3)
    assert star["precision"] == 0.0 and np.isnan(star["recall"])
    flat = scores.as_dict()
    assert flat["galaxy_recall"] == pytest.approx(2 / 3) and "classification" not in flat


def test_empty_detections_give_nan_purity() -> None:
    scores = detection_scores(match_catalogs(squares(CENTRES), SourceArrays(x=[], y=[], spans=[])))
    assert scores.completeness == 0.0
    assert np.isnan(scores.purity) and np.isnan(scores.f1)


def test_magnitude_bins_validation() -> None:
    np.testing.assert_array_equal(
        magnitude_bin_index([19.0, 20.0, 21.9, 22.0, np.nan], [20, 21, 22]), [-1, 0, 1, -1, -1]
    )
    with pytest.raises(ValueError, match="strictly increasing"):
        magnitude_bin_index([20.0], [22, 21])
