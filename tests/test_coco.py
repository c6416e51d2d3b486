"""COCO AP with pycocotools: RLE from spans, hand-checkable AP values, magnitude bins, JSON export."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lsst.meas.extensions.deepdisc.core.coco import (
    CATEGORY_ID_OFFSET,
    CocoImage,
    coco_annotations,
    coco_average_precision,
    coco_ground_truth,
    spans_to_coco_rle,
    spans_to_coco_rles,
    write_coco_json,
)
from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans, spans_to_mask
from lsst.meas.extensions.deepdisc.core.matching import SourceArrays

# pycocotools decode() uses a numpy-1 __array__ protocol.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

XY0 = (1000, 2000)
IMAGE = CocoImage(width=200, height=120, xy0=XY0)


def disks(
    centres: np.ndarray, radii: np.ndarray, shift: tuple[int, int] = (0, 0), **columns: object
) -> SourceArrays:
    """Disk footprints in parent coordinates (image origin ``XY0``), optionally shifted."""
    spans = []
    for (x, y), r in zip(centres, radii):
        dy = np.arange(-r, r + 1)
        half = np.floor(np.sqrt(r**2 - dy**2)).astype(int)
        cx, cy = int(x) + XY0[0] + shift[0], int(y) + XY0[1] + shift[1]
        spans.append(np.stack([cy + dy, cx - half, cx + half], axis=1).astype(np.int32))
    centres = np.asarray(centres, dtype=float)
    return SourceArrays(
        x=centres[:, 0] + XY0[0] + shift[0], y=centres[:, 1] + XY0[1] + shift[1], spans=spans, **columns
    )


CENTRES = np.array([(20, 20), (60, 30), (100, 40), (150, 90)])
RADII = np.array([4, 6, 3, 5])


def test_rle_from_spans_matches_rasterised_mask() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(3, 40, 2)
        mask = rng.random((height + 6, width + 6)) < 0.4
        spans = mask_to_spans(mask, (XY0[0] - 3, XY0[1] - 3))  # Spills over every edge of the image.
        rle = spans_to_coco_rle(spans, int(height), int(width), XY0)
        expected = spans_to_mask(spans, (int(height), int(width)), XY0, clip=True)
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), expected)
        assert mask_utils.area(rle) == expected.sum()
    # A full column continuing into the next column is one run.
    full = spans_to_coco_rle(mask_to_spans(np.ones((4, 2), dtype=bool)), 4, 3)
    np.testing.assert_array_equal(mask_utils.decode(full)[:, :2], 1)
    empty = spans_to_coco_rle(np.zeros((0, 3), dtype=np.int32), 5, 5)
    assert mask_utils.area(empty) == 0


def test_batched_rles_equal_one_by_one() -> None:
    rng = np.random.default_rng(3)
    footprints = [mask_to_spans(rng.random((6, 5)) < 0.5, tuple(rng.integers(-3, 30, 2))) for _ in range(30)]
    footprints[4] = np.zeros((0, 3), dtype=np.int32)
    footprints[7] = mask_to_spans(np.ones((2, 2), dtype=bool), (100, 100))  # Entirely outside the image.
    # A 20-pixel batch limit forces many batches.
    batched = spans_to_coco_rles(footprints, 25, 30, max_pixels_per_batch=20)
    assert len(batched) == 30 and spans_to_coco_rles([], 25, 30) == []
    for spans, rle in zip(footprints, batched):
        assert rle == spans_to_coco_rle(spans, 25, 30)
        np.testing.assert_array_equal(
            mask_utils.decode(rle).astype(bool), spans_to_mask(spans, (25, 30), (0, 0), clip=True)
        )


def test_perfect_detections_have_ap_one() -> None:
    truth = disks(CENTRES, RADII, class_id=[0, 1, 1, 0])
    detections = disks(CENTRES, RADII, class_id=[0, 1, 1, 0], score=[0.9, 0.8, 0.7, 0.6])
    scores = coco_average_precision(truth, detections, IMAGE)
    for iou_type in ("bbox", "segm"):
        result = scores[iou_type]
        assert (result.ap, result.ap50, result.ap75, result.ar) == pytest.approx((1.0, 1.0, 1.0, 1.0))
        assert result.per_class_ap == pytest.approx({"star": 1.0, "galaxy": 1.0})
        assert result.n_truth == 4 and result.n_det == 4


def test_missing_detection_gives_hand_computed_ap() -> None:
    # Three galaxies, two detected perfectly: precision 1 up to recall 2/3, so COCO's 101-point AP is the
    # fraction of recall thresholds 0, 0.01, ..., 1 that are <= 2/3: 67 / 101, at every IoU threshold.
    truth = disks(CENTRES[:3], RADII[:3], class_id=[1, 1, 1])
    detections = disks(CENTRES[:2], RADII[:2], class_id=[1, 1], score=[0.9, 0.8])
    scores = coco_average_precision(truth, detections, IMAGE)
    for result in scores.values():
        assert result.ap == pytest.approx(67 / 101)
        assert result.ap50 == pytest.approx(67 / 101)
        assert result.ar == pytest.approx(2 / 3)
        assert result.per_class_ap["galaxy"] == pytest.approx(67 / 101)
        assert np.isnan(result.per_class_ap["star"])  # No star in the truth.


def test_wrong_class_never_matches_unless_class_agnostic() -> None:
    truth = disks(CENTRES[:2], RADII[:2], class_id=[1, 1])
    detections = disks(CENTRES[:2], RADII[:2], class_id=[1, 0], score=[0.9, 0.8])
    strict = coco_average_precision(truth, detections, IMAGE, iou_types=("bbox",))["bbox"]
    # Galaxy AP: one of two found -> thresholds <= 0.5: 51 / 101.  Star has no truth: not averaged.
    assert strict.ap == pytest.approx(51 / 101)
    agnostic = coco_average_precision(truth, detections, IMAGE, iou_types=("bbox",), class_agnostic=True)
    assert agnostic["bbox"].ap == pytest.approx(1.0) and agnostic["bbox"].per_class_ap == {}


def test_ignored_truth_counts_neither_way() -> None:
    # T0, T1 and T2 all detected; D3 spurious (no truth), highest score.
    truth = disks(CENTRES[:3], RADII[:3], class_id=[1, 1, 1])
    detections = disks(
        np.vstack([CENTRES[:3], CENTRES[3:]]),
        RADII,
        class_id=[1, 1, 1, 1],
        score=[0.5, 0.4, 0.3, 0.9],
    )
    # Ranked D3 (FP), D0 (TP), D1 (TP), D2 (matched to the ignored T2: ignored) -> precision envelope 2/3
    # at every recall -> AP 2/3 over 2 truth objects.
    flagged = coco_average_precision(
        truth, detections, IMAGE, iou_types=("bbox", "segm"), truth_ignore=[False, False, True]
    )
    for scores in flagged.values():
        assert scores.ap == pytest.approx(2 / 3) and scores.n_truth == 2
    # Not ignored, T2 is a true positive: D3 (FP), D0, D1, D2 (TP) -> precision 3/4 at full recall.
    plain = coco_average_precision(truth, detections, IMAGE, iou_types=("bbox",))
    assert plain["bbox"].ap == pytest.approx(3 / 4) and plain["bbox"].n_truth == 3


def test_pseudo_images_reproduce_single_image_cocoeval() -> None:
    rng = np.random.default_rng(8)
    n = 40
    centres = rng.uniform(8, 190, (n, 2))
    centres[:, 1] = rng.uniform(8, 110, n)
    radii = rng.integers(2, 6, n)
    truth = disks(centres, radii, class_id=rng.integers(0, 2, n))
    keep = rng.random(n) < 0.8
    detections = disks(
        centres[keep] + rng.integers(-1, 2, (keep.sum(), 2)),
        np.maximum(radii[keep] + rng.integers(-1, 2, keep.sum()), 1),
        class_id=np.where(rng.random(keep.sum()) < 0.9, truth.class_id[keep], 1 - truth.class_id[keep]),
        score=rng.permutation(keep.sum()) / keep.sum() + 0.01,
    )
    ours = coco_average_precision(truth, detections, IMAGE)
    for iou_type in ("bbox", "segm"):
        # Plain pycocotools on the whole image as one COCO image.
        gt_annotations = coco_annotations(truth, IMAGE)
        dt_annotations = coco_annotations(detections, IMAGE)
        with contextlib.redirect_stdout(io.StringIO()):
            gt, dt = COCO(), COCO()
            categories = [{"id": 1, "name": "star"}, {"id": 2, "name": "galaxy"}]
            gt.dataset = {"images": [IMAGE.record()], "annotations": gt_annotations, "categories": categories}
            dt.dataset = {"images": [IMAGE.record()], "annotations": dt_annotations, "categories": categories}
            gt.createIndex()
            dt.createIndex()
            evaluator = COCOeval(gt, dt, iou_type)
            evaluator.params.maxDets = [1, 100, 1000]  # stats[0] reads maxDets=100
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        assert 0.0 < ours[iou_type].ap < 1.0
        assert ours[iou_type].ap == pytest.approx(evaluator.stats[0], abs=1e-12)
        assert ours[iou_type].ap50 == pytest.approx(evaluator.stats[1], abs=1e-12)
        assert ours[iou_type].ap75 == pytest.approx(evaluator.stats[2], abs=1e-12)


def test_ground_truth_json_round_trip(tmp_path: Path) -> None:
    truth = disks(CENTRES, RADII, class_id=[0, 1, 1, 0], mag=[20.0, np.nan, 22.0, 23.0])
    second = CocoImage(width=50, height=40, xy0=(1000, 2000), image_id=7, file_name="cutout_7.npy")
    small = disks(CENTRES[:1], RADII[:1], class_id=[1])
    dataset = coco_ground_truth([(IMAGE, truth), (second, small)])
    path = write_coco_json(dataset, tmp_path / "truth.json")
    assert json.loads(path.read_text())["annotations"][1]["mag"] is None
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 7]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["star", "galaxy"]
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert [a["category_id"] for a in annotations] == [c + CATEGORY_ID_OFFSET for c in (0, 1, 1, 0)]
    for annotation, spans in zip(annotations, truth.spans):
        expected = spans_to_mask(spans, (IMAGE.height, IMAGE.width), XY0)
        np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), expected)
        assert annotation["area"] == expected.sum()
        x, y, w, h = annotation["bbox"]
        rows, cols = np.nonzero(expected)
        assert (x, y, w, h) == (
            cols.min(),
            rows.min(),
            cols.max() - cols.min() + 1,
            rows.max() - rows.min() + 1,
        )
    assert coco.loadAnns(coco.getAnnIds(imgIds=[7]))[0]["id"] == 5


def test_bad_inputs() -> None:
    truth = disks(CENTRES, RADII, class_id=[0, 1, 1, 0])
    with pytest.raises(ValueError, match="score"):
        coco_average_precision(truth, disks(CENTRES, RADII, class_id=[0, 1, 1, 0]), IMAGE)
    with pytest.raises(ValueError, match=r"class ids \[5\]"):
        coco_average_precision(truth, disks(CENTRES, RADII, class_id=[0, 1, 1, 5], score=[1, 1, 1, 1]), IMAGE)
    boxes_only = SourceArrays(x=[1.0], y=[1.0], bbox=[(0, 0, 2, 2)], class_id=[0], score=[1.0])
    with pytest.raises(ValueError, match="segm AP needs footprints"):
        coco_average_precision(boxes_only, boxes_only, CocoImage(10, 10))
    assert coco_average_precision(boxes_only, boxes_only, CocoImage(10, 10), iou_types=("bbox",))[
        "bbox"
    ].ap == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown COCO iou type"):
        coco_average_precision(boxes_only, boxes_only, CocoImage(10, 10), iou_types=("keypoints",))


def test_no_detections_and_no_truth() -> None:
    truth = disks(CENTRES, RADII, class_id=[0, 1, 1, 0])
    nothing = SourceArrays(x=[], y=[], spans=[], class_id=[], score=[])
    assert coco_average_precision(truth, nothing, IMAGE)["segm"].ap == 0.0
    assert np.isnan(
        coco_average_precision(
            nothing, disks(CENTRES, RADII, class_id=[0, 1, 1, 0], score=[1, 1, 1, 1]), IMAGE
        )["bbox"].ap
    )


def test_max_detections_keeps_the_best_scores() -> None:
    truth = disks(CENTRES, RADII, class_id=[1, 1, 1, 1])
    detections = disks(CENTRES, RADII, class_id=[1, 1, 1, 1], score=[0.1, 0.9, 0.8, 0.7])
    result = coco_average_precision(truth, detections, IMAGE, iou_types=("bbox",), max_detections=3)["bbox"]
    # Three of four found: 76 recall thresholds <= 0.75.
    assert result.n_det == 3 and result.ap == pytest.approx(76 / 101)
