# This file is part of meas_extensions_deepdisc.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""Artifact metrics and the compare and summary tasks with and without ``truth_artifacts``.

The metrics: mask AP per class, presence and pixel scores, flags of false positives.

The scenes reuse the synthetic 8-object patch of ``test_compare_task`` (4x4 squares) and add a 20x20 ghost
at (60..79, 90..109), clear of every object.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table, vstack
from test_compare_task import (
    CORNERS,
    MAGS,
    TYPES,
    _box,
    _deepdisc,
    _object_column,
    _row,
    _scarlet,
    _task,
    _truth,
)

from lsst.meas.extensions.deepdisc.core.coco import CocoImage
from lsst.meas.extensions.deepdisc.core.comparison import (
    artifact_cover_flags,
    artifact_scores,
    summarize_artifact_metrics,
    truth_artifact_sources,
)
from lsst.meas.extensions.deepdisc.core.footprints import flatten_spans, spans_centroid
from lsst.meas.extensions.deepdisc.core.matching import SourceArrays
from lsst.meas.extensions.deepdisc.core.metrics import presence_scores
from lsst.meas.extensions.deepdisc.core.plots import artifact_metrics_figure, artifact_overlay_box
from lsst.meas.extensions.deepdisc.tasks.compare import CompareDeepDiscConnections
from lsst.meas.extensions.deepdisc.tasks.compare_summary import (
    CompareDeepDiscSummaryConfig,
    CompareDeepDiscSummaryConnections,
    CompareDeepDiscSummaryTask,
)

CLASSES = ("ghost_bright", "ghost_faint", "rays")
IMAGE = CocoImage(width=200, height=200, xy0=(0, 0))


def _sources(footprints: list[np.ndarray], classes: list[str], scores: list[float] | None = None):
    ids = np.array([CLASSES.index(c) for c in classes], dtype=np.int64)
    centres = np.array([spans_centroid(f) for f in footprints]).reshape(-1, 2)
    return SourceArrays(
        x=centres[:, 0],
        y=centres[:, 1],
        spans=footprints,
        class_id=ids,
        score=np.ones(len(footprints)) if scores is None else np.array(scores),
    )


GHOST_A = _box(10, 10, 20, 20)  # ghost_bright
GHOST_B = _box(100, 100, 20, 20)  # ghost_faint
RAY = _box(150, 20, 30, 1)


def test_perfect_artifacts_score_one() -> None:
    truth = _sources([GHOST_A, GHOST_B, RAY], list(CLASSES))
    scores = artifact_scores(truth, _sources([GHOST_A, GHOST_B, RAY], list(CLASSES)), image=IMAGE)
    assert scores.ap == pytest.approx(1.0) and scores.ap50 == pytest.approx(1.0)
    for name in CLASSES:
        assert scores.per_class_ap[name] == pytest.approx(1.0)
    assert scores.pixel_iou == 1.0 and scores.pixel_intersection == 400 + 400 + 30
    assert scores.truth_present and scores.det_present
    flat = scores.as_dict()
    assert flat["artifact_ap_rays"] == pytest.approx(1.0) and flat["artifact_n_truth"] == 3.0


def test_imperfect_artifacts() -> None:
    """Detections: ghost_bright exact, ghost_faint shifted, a spurious ray.

    ghost_faint is shifted by 6 px (mask IoU 14/26 = 0.54: a match at IoU 0.5 only); the ray is where no
    ray is.
    """
    truth = _sources([GHOST_A, GHOST_B], ["ghost_bright", "ghost_faint"])
    shifted = _box(106, 100, 20, 20)
    detected = _sources([GHOST_A, shifted, RAY], list(CLASSES), scores=[0.9, 0.8, 0.7])
    scores = artifact_scores(truth, detected, image=IMAGE)
    assert scores.per_class_ap50["ghost_bright"] == pytest.approx(1.0)
    assert scores.per_class_ap["ghost_bright"] == pytest.approx(1.0)
    assert scores.per_class_ap50["ghost_faint"] == pytest.approx(1.0)
    assert scores.per_class_ap["ghost_faint"] == pytest.approx(0.1)  # 1 of the 10 IoU thresholds.
    assert np.isnan(scores.per_class_ap["rays"])  # No truth ray: the class is not averaged.
    assert scores.ap == pytest.approx((1.0 + 0.1) / 2) and scores.ap50 == pytest.approx(1.0)
    # Pixels: truth 800, detected 830, shared 400 + 14 * 20.
    assert (scores.pixel_intersection, scores.pixel_union) == (680, 800 + 830 - 680)
    assert scores.pixel_iou == pytest.approx(680 / 950)
    # Nothing detected: AP 0 where there is truth; no truth: NaN.
    nothing = artifact_scores(truth, _sources([], []), image=IMAGE)
    assert nothing.ap == 0.0 and nothing.per_class_ap["ghost_faint"] == 0.0
    assert np.isnan(nothing.per_class_ap["rays"]) and nothing.pixel_iou == 0.0 and not nothing.det_present
    empty = artifact_scores(_sources([], []), _sources([], []), image=IMAGE)
    assert np.isnan(empty.ap) and np.isnan(empty.pixel_iou) and not empty.truth_present


def test_presence_scores() -> None:
    scores = presence_scores([True, True, False, False, True], [True, False, True, False, True])
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (2, 1, 1, 1)
    assert scores["precision"] == pytest.approx(2 / 3) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 / 3) and scores["accuracy"] == pytest.approx(3 / 5)
    none = presence_scores([False, False], [False, False])
    assert np.isnan(none["precision"]) and np.isnan(none["f1"]) and none["accuracy"] == 1.0


def test_cover_flags_use_the_covered_fraction_or_the_centre() -> None:
    inside, half, outside = _box(12, 12, 4, 4), _box(28, 12, 4, 4), _box(50, 50, 4, 4)  # GHOST_A: 10..29
    sources = _sources([inside, half, outside], ["rays"] * 3)
    np.testing.assert_array_equal(artifact_cover_flags(sources, GHOST_A, 0.5), [True, False, False])
    np.testing.assert_array_equal(artifact_cover_flags(sources, GHOST_A, 0.4), [True, True, False])
    centres = SourceArrays(x=np.array([15.0, 50.0]), y=np.array([15.0, 50.0]))
    np.testing.assert_array_equal(artifact_cover_flags(centres, GHOST_A, 0.5), [True, False])
    assert not artifact_cover_flags(sources, np.zeros((0, 3)), 0.5).any()


def test_truth_artifact_table_reading() -> None:
    table = _truth_artifacts()
    table.add_row(table[0])
    table["spans"][1] = np.zeros(0, dtype=np.int32)  # An artifact never above threshold: left out.
    table["artifact_class"][1] = "rays"
    sources = truth_artifact_sources(table, CLASSES)
    assert len(sources) == 1 and list(sources.class_id) == [0]
    assert sources.x[0] == pytest.approx(69.5) and sources.y[0] == pytest.approx(99.5)


# ---------------------------------------------------------------------------------------------------------
# The compare and summary tasks.
# ---------------------------------------------------------------------------------------------------------

GHOST = _box(60, 90, 20, 20)
SPURIOUS = _box(65, 95, 4, 4)  # A false detection inside the ghost.


def _truth_artifacts() -> Table:
    table = Table()
    table["id"] = np.array([1], dtype=np.int64)
    table["artifact_class"] = ["ghost_bright"]
    table["kind"] = ["ghost"]
    table["x"], table["y"] = [69.5], [99.5]
    table["bbox_x0"], table["bbox_y0"], table["bbox_x1"], table["bbox_y1"] = [60], [90], [79], [109]
    table["area"] = [400]
    table["spans"] = _object_column([GHOST])
    table["peak_sb_sigma"] = [3.0]
    return table


def _deepdisc_with_artifacts(detect_ghost: bool = True) -> Table:
    """The perfect catalog, a spurious galaxy inside the ghost and (optionally) the ghost as artifact row."""
    footprints = [_box(x, y) for x, y in CORNERS] + [SPURIOUS]
    classes = list(TYPES) + ["galaxy"]
    mags = list(MAGS) + [25.0]
    if detect_ghost:
        footprints.append(GHOST)
        classes.append("artifact_ghost_bright")
        mags.append(22.0)
    table = _deepdisc(footprints, classes, mags)
    table["is_artifact"] = np.array([c.startswith("artifact_") for c in classes])
    table["flag_in_artifact"] = np.zeros(len(table), dtype=bool)
    table["flag_in_artifact"][len(CORNERS)] = detect_ghost
    return table


def _scarlet_with_spurious() -> tuple[Table, Table]:
    deblend, objects = _scarlet()
    deblend.add_row({"id": 6000, "parent": 0, "deblend_nChild": 0, "x": 66.5, "y": 96.5, "spans": None})
    deblend["spans"][-1] = flatten_spans(SPURIOUS)
    objects.add_row({"objectId": 6000, "refExtendedness": 1.0, "i_cModelFlux": 100.0, "i_cModelFluxErr": 1.0})
    return deblend, objects


@pytest.fixture(scope="module")
def with_truth_artifacts():
    deblend, objects = _scarlet_with_spurious()
    return _task().run(
        _deepdisc_with_artifacts(),
        deblend,
        objects=objects,
        truth=_truth(),
        truth_artifacts=_truth_artifacts(),
        tract=3,
        patch=7,
    )


def test_purity_with_and_without_artifact_flags(with_truth_artifacts) -> None:
    metrics = with_truth_artifacts.metrics
    deepdisc = _row(metrics, "deepdisc")
    # The artifact row is not a source: 9 source detections, the spurious one flagged in the ghost.
    assert (deepdisc["n_det"], deepdisc["n_matched"], deepdisc["n_artifact_rows"]) == (9, 8, 1)
    assert deepdisc["purity"] == pytest.approx(8 / 9)
    assert deepdisc["purity_artifact_flagged"] == 1.0
    assert deepdisc["purity_all_rows"] == pytest.approx(8 / 10)  # The artifact row taken for a source.
    assert deepdisc["completeness_artifact_flagged"] == 1.0
    assert deepdisc["coco_class_agnostic"] == 0.0  # Artifact rows do not turn COCO AP class-agnostic.
    # Scarlet's spurious leaf lies in DeepDISC's artifact mask: flagged by the same overlap rule.
    scarlet = _row(metrics, "scarlet")
    assert (scarlet["n_det"], scarlet["n_det_artifact_flagged"]) == (9, 1)
    assert scarlet["purity"] == pytest.approx(8 / 9) and scarlet["purity_artifact_flagged"] == 1.0
    assert scarlet["purity_all_rows"] == scarlet["purity"]
    for row in (deepdisc, scarlet):
        assert (row["n_fp"], row["n_fp_in_truth_artifact"], row["n_fp_in_truth_artifact_flagged"]) == (
            1,
            1,
            1,
        )
        assert row["frac_fp_in_truth_artifact"] == 1.0 and row["frac_fp_in_truth_artifact_flagged"] == 1.0


def test_patch_artifact_scores_are_in_the_deepdisc_row(with_truth_artifacts) -> None:
    metrics = with_truth_artifacts.metrics
    deepdisc, scarlet = _row(metrics, "deepdisc"), _row(metrics, "scarlet")
    assert deepdisc["artifact_ap_ghost_bright"] == pytest.approx(1.0)
    assert deepdisc["artifact_ap50"] == pytest.approx(1.0) and np.isnan(deepdisc["artifact_ap_rays"])
    assert deepdisc["artifact_pixel_iou"] == 1.0
    assert deepdisc["artifact_truth_present"] == 1.0 and deepdisc["artifact_det_present"] == 1.0
    assert np.isnan(scarlet["artifact_ap"]) and np.isnan(scarlet["artifact_pixel_iou"])
    assert with_truth_artifacts.artifacts.n_truth == 1
    assert with_truth_artifacts.artifactOverlay is None  # No image given, no overlay.


def test_missed_ghost_leaves_the_spurious_source_unflagged() -> None:
    deblend, objects = _scarlet_with_spurious()
    result = _task(doCocoAp=False).run(
        _deepdisc_with_artifacts(detect_ghost=False),
        deblend,
        objects=objects,
        truth=_truth(),
        truth_artifacts=_truth_artifacts(),
    )
    deepdisc, scarlet = _row(result.metrics, "deepdisc"), _row(result.metrics, "scarlet")
    assert deepdisc["purity_artifact_flagged"] == deepdisc["purity"] == pytest.approx(8 / 9)
    assert (
        deepdisc["frac_fp_in_truth_artifact"] == 1.0 and deepdisc["frac_fp_in_truth_artifact_flagged"] == 0.0
    )
    assert scarlet["n_det_artifact_flagged"] == 0
    assert deepdisc["artifact_ap"] == 0.0 and deepdisc["artifact_det_present"] == 0.0


def test_no_truth_artifacts_and_no_artifact_classes_give_no_artifact_section() -> None:
    deblend, objects = _scarlet()
    plain = _task(doCocoAp=False).run(
        _deepdisc([_box(x, y) for x, y in CORNERS], list(TYPES), list(MAGS)),
        deblend,
        objects=objects,
        truth=_truth(),
    )
    assert not [c for c in plain.metrics.colnames if "artifact" in c or c.startswith("n_fp")]
    assert plain.artifacts is None and plain.artifactOverlay is None
    # A model with artifact classes on a repository without truth_artifacts: flags only, no truth section.
    deblend, objects = _scarlet_with_spurious()
    flags_only = _task(doCocoAp=False).run(
        _deepdisc_with_artifacts(), deblend, objects=objects, truth=_truth()
    )
    deepdisc = _row(flags_only.metrics, "deepdisc")
    assert (
        deepdisc["purity_artifact_flagged"] == 1.0
        and "n_fp_in_truth_artifact" not in flags_only.metrics.colnames
    )
    assert "artifact_ap" not in flags_only.metrics.colnames and flags_only.artifacts is None
    # doArtifacts=False: the truth artifacts are ignored and no artifact column appears.
    off = _task(doCocoAp=False, doArtifacts=False).run(
        _deepdisc_with_artifacts(),
        deblend,
        objects=objects,
        truth=_truth(),
        truth_artifacts=_truth_artifacts(),
    )
    assert not [c for c in off.metrics.colnames if "artifact" in c]


def test_connections_make_truth_artifacts_optional() -> None:
    from lsst.meas.extensions.deepdisc.tasks.compare import CompareDeepDiscConfig

    config = CompareDeepDiscConfig()
    connections = CompareDeepDiscConnections(config=config)
    assert "truthArtifacts" in connections.prerequisiteInputs
    assert connections.truthArtifacts.minimum == 0 and connections.truthArtifacts.name == "truth_artifacts"
    assert "artifactOverlayPlot" in connections.outputs
    config.doArtifacts = False
    connections = CompareDeepDiscConnections(config=config)
    assert "truthArtifacts" not in connections.prerequisiteInputs
    assert "artifactOverlayPlot" not in connections.outputs
    summary = CompareDeepDiscSummaryConfig()
    assert {"metrics"} <= set(CompareDeepDiscSummaryConnections(config=summary).inputs)
    summary.doArtifacts = False
    assert "metrics" not in CompareDeepDiscSummaryConnections(config=summary).inputs


def test_summary_aggregates_artifact_metrics_over_patches(with_truth_artifacts) -> None:
    deblend, objects = _scarlet_with_spurious()
    missed = _task(doCocoAp=False).run(
        _deepdisc_with_artifacts(detect_ghost=False),
        deblend,
        objects=objects,
        truth=_truth(),
        truth_artifacts=_truth_artifacts(),
        patch=8,
    )
    deblend, objects = _scarlet()
    clean = _task(doCocoAp=False).run(
        _deepdisc([_box(x, y) for x, y in CORNERS], list(TYPES), list(MAGS)),
        deblend,
        objects=objects,
        truth=_truth(),
        truth_artifacts=_truth_artifacts()[:0],
        patch=9,
    )
    patches = [with_truth_artifacts, missed, clean]
    artifacts = summarize_artifact_metrics(vstack([p.metrics for p in patches], join_type="outer"))
    deepdisc = artifacts[artifacts["method"] == "deepdisc"][0]
    # Presence: patch 7 TP, patch 8 FN, patch 9 TN.
    assert (deepdisc["artifact_presence_tp"], deepdisc["artifact_presence_fn"]) == (1, 1)
    assert deepdisc["artifact_presence_precision"] == 1.0 and deepdisc["artifact_presence_recall"] == 0.5
    # Pixel IoU is summed over patches: patch 7 shares 400 of 400 pixels, patch 8 adds 400 to the union.
    assert deepdisc["artifact_pixel_iou"] == pytest.approx(400 / 800)
    assert deepdisc["artifact_ap_ghost_bright"] == pytest.approx(0.5)  # Mean of 1 and 0.
    # 2 false positives in truth artifacts (patches 7 and 8), one flagged.
    assert (deepdisc["n_fp_in_truth_artifact"], deepdisc["n_fp_in_truth_artifact_flagged"]) == (2, 1)
    assert deepdisc["frac_fp_in_truth_artifact_flagged"] == 0.5
    assert deepdisc["purity"] == pytest.approx(24 / 26) and deepdisc[
        "purity_artifact_flagged"
    ] == pytest.approx(24 / 25)

    config = CompareDeepDiscSummaryConfig()
    config.magBins = [20.0, 24.0, 28.0]
    task = CompareDeepDiscSummaryTask(config=config)
    result = task.run([p.comparison for p in patches], tract=3, metrics=[p.metrics for p in patches])
    summary = result.summary
    total = summary[(np.asarray(summary["method"]).astype(str) == "deepdisc") & summary["is_total"]][0]
    assert total["frac_fp_in_truth_artifact_flagged"] == 0.5
    assert total["purity_artifact_flagged"] == pytest.approx(24 / 25)
    assert np.all(np.isnan(summary["purity_artifact_flagged"][~summary["is_total"]]))
    assert result.artifactPlot is not None and len(result.artifactPlot.axes) == 3
    # Without metrics (or without artifact columns): no artifact columns and no plot.
    plain = task.run([p.comparison for p in patches], tract=3)
    assert plain.artifactPlot is None and "purity_artifact_flagged" not in plain.summary.colnames


def test_artifact_plots() -> None:
    assert artifact_overlay_box([GHOST], (0, 0, 200, 200), margin=5) == (55, 85, 30, 30)
    assert artifact_overlay_box([GHOST], (0, 0, 70, 200), margin=5) == (55, 85, 15, 30)
    assert artifact_overlay_box([], (0, 0, 200, 200)) is None
    empty = Table({"method": np.array([], dtype=str)})
    assert len(artifact_metrics_figure(empty).axes) == 3
