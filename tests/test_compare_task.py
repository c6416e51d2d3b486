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

"""CompareDeepDiscTask and CompareDeepDiscSummaryTask.

``run()`` on synthetic catalogs with known answers (perfect, one missed, one shredded, one merged, swapped
classes; scarlet as the reference; an inner region), then the whole ``DeepDiscCompare.yaml`` pipeline in a
real ``pipetask run`` on the tiny simulated repository with a random-init model package.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table, vstack
from matplotlib.image import imread

from lsst.meas.extensions.deepdisc.butler.afw_catalog import source_catalog_to_table
from lsst.meas.extensions.deepdisc.core.footprints import flatten_spans, spans_centroid
from lsst.meas.extensions.deepdisc.tasks.compare import (
    CompareDeepDiscConfig,
    CompareDeepDiscConnections,
    CompareDeepDiscTask,
)
from lsst.meas.extensions.deepdisc.tasks.compare_summary import (
    CompareDeepDiscSummaryConfig,
    CompareDeepDiscSummaryTask,
)

# ---------------------------------------------------------------------------------------------------------
# Synthetic scene: 4x4 squares.  Objects 0 and 1 touch (a resolved pair), the others are isolated.
# ---------------------------------------------------------------------------------------------------------

CORNERS = [(20, 20), (24, 20), (60, 20), (100, 20), (20, 60), (60, 60), (100, 60), (20, 100)]
TYPES = ["star", "galaxy", "galaxy", "star", "galaxy", "star", "galaxy", "galaxy"]
MAGS = [20.5, 21.5, 22.5, 23.5, 24.5, 25.5, 26.5, 27.5]
N_OBJECTS = len(CORNERS)
SWAP = {"star": "galaxy", "galaxy": "star"}


def _box(x0: int, y0: int, width: int = 4, height: int = 4) -> np.ndarray:
    return np.array([(y, x0, x0 + width - 1) for y in range(y0, y0 + height)], dtype=np.int32)


def _flux(mag: float) -> float:
    return 10.0 ** ((31.4 - mag) / 2.5)


def _object_column(footprints: list[np.ndarray]) -> np.ndarray:
    column = np.empty(len(footprints), dtype=object)
    for k, spans in enumerate(footprints):
        column[k] = flatten_spans(spans)
    return column


def _truth() -> Table:
    footprints = [_box(x, y) for x, y in CORNERS]
    table = Table()
    table["id"] = np.arange(1001, 1001 + N_OBJECTS, dtype=np.int64)
    table["x"] = [spans_centroid(f)[0] for f in footprints]
    table["y"] = [spans_centroid(f)[1] for f in footprints]
    table["ra"] = np.full(N_OBJECTS, np.nan)
    table["dec"] = np.full(N_OBJECTS, np.nan)
    table["type"] = TYPES
    table["is_star"] = [t == "star" for t in TYPES]
    table["mag_i"] = MAGS
    table["footprint_area"] = [16] * N_OBJECTS
    table["spans"] = _object_column(footprints)
    return table


def _deepdisc(footprints: list[np.ndarray], classes: list[str], mags: list[float]) -> Table:
    n = len(footprints)
    table = Table()
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["coord_ra"] = np.full(n, np.nan)
    table["coord_dec"] = np.full(n, np.nan)
    table["centroid_x"] = [spans_centroid(f)[0] for f in footprints]
    table["centroid_y"] = [spans_centroid(f)[1] for f in footprints]
    table["bbox_x0"] = [int(f[:, 1].min()) for f in footprints]
    table["bbox_y0"] = [int(f[:, 0].min()) for f in footprints]
    table["bbox_x1"] = [int(f[:, 2].max()) for f in footprints]
    table["bbox_y1"] = [int(f[:, 0].max()) for f in footprints]
    table["footprint"] = _object_column(footprints)
    table["score"] = np.linspace(0.99, 0.6, n)
    table["class_name"] = classes
    table["i_footprintFlux"] = [_flux(m) for m in mags]
    return table


def _scarlet() -> tuple[Table, Table]:
    """Perfect scarlet children plus a parent row for the pair (which the comparison must ignore)."""
    footprints = [_box(x, y) for x, y in CORNERS]
    ids = np.arange(5001, 5001 + N_OBJECTS, dtype=np.int64)
    parent_id = 5000
    deblend = Table()
    deblend["id"] = np.concatenate([[parent_id], ids])
    deblend["parent"] = np.array([0, parent_id, parent_id] + [0] * (N_OBJECTS - 2), dtype=np.int64)
    deblend["deblend_nChild"] = np.array([2] + [0] * N_OBJECTS, dtype=np.int32)
    deblend["x"] = [23.5] + [spans_centroid(f)[0] for f in footprints]
    deblend["y"] = [21.5] + [spans_centroid(f)[1] for f in footprints]
    deblend["spans"] = _object_column([_box(20, 20, width=8), *footprints])
    objects = Table()
    objects["objectId"] = deblend["id"]
    objects["refExtendedness"] = [1.0] + [0.0 if t == "star" else 1.0 for t in TYPES]
    objects["i_cModelFlux"] = [_flux(20.0)] + [_flux(m) for m in MAGS]
    objects["i_cModelFluxErr"] = np.ones(N_OBJECTS + 1)
    return deblend, objects


def _scenario(name: str) -> Table:
    """DeepDISC catalogs of the scenarios; see each test for the expected numbers."""
    footprints = [_box(x, y) for x, y in CORNERS]
    classes, mags = list(TYPES), list(MAGS)
    if name == "missed":  # Object 4 (galaxy, mag 24.5) is not detected.
        del footprints[4], classes[4], mags[4]
    elif name == "shredded":  # Object 2 (galaxy, mag 22.5) comes out as its left and right halves.
        x, y = CORNERS[2]
        footprints[2:3] = [_box(x, y, width=2), _box(x + 2, y, width=2)]
        classes[2:3] = ["galaxy", "galaxy"]
        mags[2:3] = [23.25, 23.25]
    elif name == "merged":  # Objects 0 and 1 come out as one detection leaning towards object 1.
        footprints[0:2] = [_box(21, 20, width=7)]
        classes[0:2] = ["galaxy"]
        mags[0:2] = [20.2]
    elif name == "swapped":
        classes = [SWAP[c] for c in classes]
    elif name != "perfect":
        raise ValueError(name)
    return _deepdisc(footprints, classes, mags)


def _task(**overrides: object) -> CompareDeepDiscTask:
    config = CompareDeepDiscConfig()
    config.doSepBaseline = False
    config.doOverlayPlot = False
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    return CompareDeepDiscTask(config=config)


def _run(name: str, **overrides: object):
    deblend, objects = _scarlet()
    return _task(**overrides).run(_scenario(name), deblend, objects=objects, truth=_truth(), tract=3, patch=7)


def _row(metrics: Table, method: str):
    rows = metrics[np.asarray(metrics["method"]).astype(str) == method]
    assert len(rows) == 1
    return rows[0]


@pytest.fixture(scope="module")
def results():
    """Every scenario run once (COCO AP is the slow part)."""
    return {name: _run(name) for name in ("perfect", "missed", "shredded", "merged", "swapped")}


def test_perfect_catalog_scores_one_everywhere(results) -> None:
    metrics = results["perfect"].metrics
    deepdisc = _row(metrics, "deepdisc")
    assert (deepdisc["n_ref"], deepdisc["n_det"], deepdisc["n_matched"]) == (8, 8, 8)
    for key in (
        "completeness",
        "purity",
        "f1",
        "median_bbox_iou",
        "median_mask_iou",
        "classification_accuracy",
    ):
        assert deepdisc[key] == 1.0, key
    for key in ("star_precision", "star_recall", "galaxy_f1", "deepdisc_detection_f1", "deepdisc_galaxy_f1"):
        assert deepdisc[key] == 1.0, key
    for key in ("coco_bbox_ap", "coco_segm_ap", "coco_bbox_ar", "coco_segm_ap50"):
        assert deepdisc[key] == pytest.approx(1.0), key
    assert deepdisc["coco_class_agnostic"] == 0.0
    assert (deepdisc["n_isolated_match"], deepdisc["n_resolved_blend"]) == (6, 2)
    assert deepdisc["n_missed"] == deepdisc["n_shredded"] == deepdisc["n_spurious"] == 0
    # Scarlet's leaves are the same footprints; its parent row must not count as a detection.
    scarlet = _row(metrics, "scarlet")
    assert (scarlet["n_det"], scarlet["completeness"], scarlet["purity"]) == (8, 1.0, 1.0)
    assert scarlet["star_f1"] == scarlet["galaxy_f1"] == 1.0
    assert set(np.asarray(metrics["reference"]).astype(str)) == {"truth"}
    assert set(metrics["tract"]) == {3} and set(metrics["patch"]) == {7}


def test_match_table_has_one_row_per_reference_object(results) -> None:
    matches = results["perfect"].comparison
    assert len(matches) == N_OBJECTS and set(np.asarray(matches["row_type"]).astype(str)) == {"reference"}
    np.testing.assert_array_equal(matches["ref_id"], np.arange(1001, 1001 + N_OBJECTS))
    np.testing.assert_array_equal(matches["deepdisc_id"], np.arange(1, N_OBJECTS + 1))
    np.testing.assert_array_equal(matches["scarlet_id"], np.arange(5001, 5001 + N_OBJECTS))
    np.testing.assert_allclose(matches["deepdisc_mag"], MAGS)
    np.testing.assert_allclose(matches["ref_mag"], MAGS)
    assert list(np.asarray(matches["ref_class_name"]).astype(str)) == TYPES
    assert set(np.asarray(matches["deepdisc_match_type"]).astype(str)) == {"iou"}
    assert list(np.asarray(matches["deepdisc_outcome"]).astype(str)[:3]) == [
        "resolved_blend",
        "resolved_blend",
        "isolated_match",
    ]


def test_one_missed_object(results) -> None:
    deepdisc = _row(results["missed"].metrics, "deepdisc")
    assert (deepdisc["n_det"], deepdisc["n_matched"]) == (7, 7)
    assert deepdisc["completeness"] == pytest.approx(7 / 8)
    assert deepdisc["purity"] == 1.0
    assert deepdisc["f1"] == pytest.approx(14 / 15)
    assert deepdisc["galaxy_recall"] == 1.0  # Classification is scored on matched pairs only.
    assert deepdisc["deepdisc_detection_recall"] == pytest.approx(7 / 8)
    assert deepdisc["coco_bbox_ar"] == pytest.approx((1.0 + 4 / 5) / 2)  # Star recall 1, galaxy 4/5.
    # Galaxy precision stays 1 up to recall 4/5: 81 of COCO's 101 recall points.
    assert deepdisc["coco_bbox_ap"] == pytest.approx((1.0 + 81 / 101) / 2)
    assert (deepdisc["n_missed"], deepdisc["n_isolated_match"], deepdisc["n_resolved_blend"]) == (1, 5, 2)
    matches = results["missed"].comparison
    missed = matches[matches["ref_id"] == 1005][0]
    assert not missed["deepdisc_matched"] and missed["deepdisc_id"] == 0
    assert missed["deepdisc_outcome"] == "missed" and np.isnan(missed["deepdisc_iou"])


def test_one_shredded_object(results) -> None:
    deepdisc = _row(results["shredded"].metrics, "deepdisc")
    assert (deepdisc["n_det"], deepdisc["n_matched"]) == (9, 8)
    assert deepdisc["completeness"] == 1.0
    assert deepdisc["purity"] == pytest.approx(8 / 9)
    assert deepdisc["f1"] == pytest.approx(16 / 17)
    assert deepdisc["median_mask_iou"] == 1.0
    assert deepdisc["mean_mask_iou"] == pytest.approx((7 + 0.5) / 8)  # Each half covers half the object.
    # DeepDISC's many-to-one matching accepts both halves (bbox IoU 0.5 each).
    assert deepdisc["deepdisc_detection_precision"] == 1.0 and deepdisc["deepdisc_detection_recall"] == 1.0
    assert (deepdisc["n_shredded"], deepdisc["n_isolated_match"], deepdisc["n_spurious"]) == (1, 5, 0)
    # COCO: the half matches at the IoU threshold 0.50 only, so galaxy recall is 1 once and 4/5 nine times.
    assert deepdisc["coco_bbox_ar"] == pytest.approx((1.0 + (1.0 + 9 * 0.8) / 10) / 2)
    matches = results["shredded"].comparison
    detections = matches[np.asarray(matches["row_type"]).astype(str) == "detection"]
    assert len(detections) == 1
    assert detections["det_method"][0] == "deepdisc" and detections["det_outcome"][0] == "shredded"
    assert detections["det_mag"][0] == pytest.approx(23.25)


def test_one_merged_pair(results) -> None:
    deepdisc = _row(results["merged"].metrics, "deepdisc")
    assert (deepdisc["n_det"], deepdisc["n_matched"]) == (7, 7)
    assert deepdisc["completeness"] == pytest.approx(7 / 8) and deepdisc["purity"] == 1.0
    assert (deepdisc["n_unrecognized_blend"], deepdisc["n_isolated_match"]) == (2, 6)
    assert deepdisc["classification_accuracy"] == 1.0  # The merged detection matched the galaxy.
    matches = results["merged"].comparison
    pair = matches[np.isin(matches["ref_id"], [1001, 1002])]
    assert list(pair["deepdisc_matched"]) == [False, True]
    assert pair["deepdisc_iou"][1] == pytest.approx(16 / 28)


def test_swapped_classes(results) -> None:
    deepdisc = _row(results["swapped"].metrics, "deepdisc")
    assert deepdisc["completeness"] == deepdisc["purity"] == 1.0
    for key in ("star_precision", "star_recall", "star_f1", "galaxy_precision", "galaxy_recall", "galaxy_f1"):
        assert deepdisc[key] == 0.0, key
    assert deepdisc["classification_accuracy"] == 0.0
    assert deepdisc["deepdisc_star_recall"] == 0.0
    assert deepdisc["coco_bbox_ap"] == 0.0 and deepdisc["coco_segm_ap"] == 0.0  # Wrong class never matches.
    assert np.all(
        np.asarray(results["swapped"].comparison["deepdisc_class_id"])
        != results["swapped"].comparison["ref_class_id"]
    )


def test_empty_catalogs_give_defined_metrics() -> None:
    deblend, objects = _scarlet()
    nothing = _task().run(_scenario("perfect")[:0], deblend, objects=objects, truth=_truth())
    deepdisc = _row(nothing.metrics, "deepdisc")
    assert (deepdisc["n_det"], deepdisc["completeness"], deepdisc["n_missed"]) == (0, 0.0, N_OBJECTS)
    assert np.isnan(deepdisc["purity"]) and deepdisc["coco_bbox_ap"] == 0.0
    no_truth = _task().run(_scenario("perfect"), deblend, objects=objects, truth=_truth()[:0])
    deepdisc = _row(no_truth.metrics, "deepdisc")
    assert (deepdisc["n_ref"], deepdisc["purity"], deepdisc["n_spurious"]) == (0, 0.0, N_OBJECTS)
    assert np.isnan(deepdisc["completeness"])
    rows = np.asarray(no_truth.comparison["row_type"]).astype(str)
    assert list(rows) == ["detection"] * (2 * N_OBJECTS)
    summary = CompareDeepDiscSummaryTask().run([no_truth.comparison]).summary
    total = summary[summary["is_total"] & (np.asarray(summary["method"]).astype(str) == "deepdisc")][0]
    assert (total["n_ref"], total["n_det"], total["n_spurious"]) == (0, N_OBJECTS, N_OBJECTS)


def test_scarlet_is_the_reference_without_truth() -> None:
    deblend, objects = _scarlet()
    result = _task(doTruth=False, doCocoAp=False).run(_scenario("missed"), deblend, objects=objects)
    assert list(np.asarray(result.metrics["method"]).astype(str)) == ["deepdisc"]
    deepdisc = _row(result.metrics, "deepdisc")
    assert deepdisc["reference"] == "scarlet"
    assert deepdisc["n_ref"] == N_OBJECTS and deepdisc["completeness"] == pytest.approx(7 / 8)
    assert "coco_bbox_ap" not in result.metrics.colnames  # doCocoAp=False.
    np.testing.assert_array_equal(result.comparison["ref_id"], np.arange(5001, 5001 + N_OBJECTS))
    with pytest.raises(ValueError, match="no truth catalog"):
        _task().run(_scenario("perfect"), deblend, objects=objects)


def _labels() -> Table:
    """Training labels: the truth footprints, but the last object is missing."""
    detections = _scenario("perfect")[:-1]
    labels = Table()
    labels["source_id"] = np.arange(7001, 7001 + len(detections), dtype=np.int64)
    for name in ("centroid_x", "centroid_y", "coord_ra", "coord_dec", "footprint", "class_name"):
        labels[name] = detections[name]
    labels["mag"] = MAGS[:-1]
    return labels


def test_labels_are_a_method_with_truth_and_the_reference_without() -> None:
    deblend, objects = _scarlet()
    with_truth = _task(doLabels=True, doCocoAp=False).run(
        _scenario("perfect"), deblend, objects=objects, truth=_truth(), labels=_labels()
    )
    labels = _row(with_truth.metrics, "labels")
    assert labels["completeness"] == pytest.approx(7 / 8) and labels["galaxy_f1"] == 1.0
    as_reference = _task(doTruth=False, doLabels=True, doCocoAp=False).run(
        _scenario("perfect"), deblend, objects=objects, labels=_labels()
    )
    assert list(np.asarray(as_reference.metrics["method"]).astype(str)) == ["deepdisc", "scarlet"]
    deepdisc = _row(as_reference.metrics, "deepdisc")
    assert deepdisc["reference"] == "labels" and deepdisc["n_ref"] == 7
    assert deepdisc["completeness"] == 1.0 and deepdisc["purity"] == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="no label table"):
        _task(doTruth=False, doLabels=True).run(_scenario("perfect"), deblend, objects=objects)


class _HalfPlane:
    """A stand-in sphgeom region: everything with longitude below 0.5 degree."""

    def contains(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        return np.degrees(lon) < 0.5


def test_inner_region_limits_what_is_counted() -> None:
    truth = _truth()
    deblend, objects = _scarlet()
    inside_truth = np.array([x < 50 for x in truth["x"]])  # Objects 0, 1, 4, 7.
    truth["ra"] = np.where(inside_truth, 0.0, 1.0)
    truth["dec"] = 0.0
    detections = _scenario("perfect")
    detections["coord_ra"] = truth["ra"]
    detections["coord_dec"] = 0.0
    # An extra unmatched detection outside the region belongs to the neighbouring patch.
    extra = _deepdisc([_box(140, 140)], ["galaxy"], [25.0])
    extra["coord_ra"], extra["coord_dec"] = 1.0, 0.0
    extra["id"] = 99
    detections = vstack([detections, extra])
    result = _task(doCocoAp=False).run(
        detections, deblend, objects=objects, truth=truth, inner_region=_HalfPlane()
    )
    deepdisc = _row(result.metrics, "deepdisc")
    assert (deepdisc["n_ref"], deepdisc["n_det"], deepdisc["n_matched"]) == (4, 4, 4)
    assert deepdisc["purity"] == 1.0
    np.testing.assert_array_equal(result.comparison["ref_id"], [1001, 1002, 1005, 1008])


def test_summary_of_two_patches_adds_them_up(results) -> None:
    config = CompareDeepDiscSummaryConfig()
    config.magBins = [20.0, 22.0, 24.0, 26.0, 28.0]
    config.validate()
    task = CompareDeepDiscSummaryTask(config=config)
    result = task.run([results["perfect"].comparison, results["missed"].comparison], tract=3)
    summary = result.summary
    deepdisc = summary[np.asarray(summary["method"]).astype(str) == "deepdisc"]
    total = deepdisc[deepdisc["is_total"]][0]
    assert (total["n_ref"], total["n_ref_matched"], total["n_det"]) == (16, 15, 15)
    assert total["completeness"] == pytest.approx(15 / 16) and total["purity"] == 1.0
    binned = deepdisc[~deepdisc["is_total"]]
    np.testing.assert_array_equal(binned["n_ref"], [4, 4, 4, 4])
    np.testing.assert_allclose(binned["completeness"], [1.0, 1.0, 0.75, 1.0])  # Object 4 has mag 24.5.
    np.testing.assert_allclose(binned["frac_missed"], [0.0, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(binned["star_precision"], [1.0, 1.0, 1.0, np.nan])  # No star in the last bin.
    np.testing.assert_allclose(binned["median_mask_iou"], [1.0, 1.0, 1.0, 1.0])
    assert set(np.asarray(summary["method"]).astype(str)) == {"deepdisc", "scarlet"}
    assert set(np.asarray(summary["reference"]).astype(str)) == {"truth"}
    for name in (
        "completenessPurityPlot",
        "classificationPlot",
        "iouPlot",
        "blendOutcomesPlot",
        "precisionRecallPlot",
    ):
        assert getattr(result, name).axes, name
    # The precision-recall curve of the scored method: scores run from 0.99 down to 0.6 over the catalog.
    curve = result.precisionRecall
    assert set(np.asarray(curve["method"]).astype(str)) == {"deepdisc"}
    low = curve[np.isclose(curve["threshold"], 0.0)][0]
    assert (low["n_ref"], low["n_matched"], low["n_det"]) == (16, 15, 15)
    assert np.all(np.diff(np.asarray(curve["n_det"])) <= 0) and np.all(
        np.diff(np.asarray(curve["recall"])) <= 0
    )
    assert curve[np.isclose(curve["threshold"], 0.95)][0]["n_det"] < 15
    with pytest.raises(ValueError, match="not in the match tables"):
        config.methods = ["sep"]
        CompareDeepDiscSummaryTask(config=config).run([results["perfect"].comparison])


def test_connections_follow_the_config() -> None:
    config = CompareDeepDiscConfig()
    connections = CompareDeepDiscConnections(config=config)
    assert {"deepdisc", "deblend", "objects", "truth", "coadds"} <= set(connections.inputs)
    assert "labels" not in connections.inputs and "overlayPlot" in connections.outputs
    config.doTruth = False
    config.doLabels = True
    config.doSepBaseline = False
    config.doOverlayPlot = False
    config.deblendStorageClass = "SourceCatalog"
    connections = CompareDeepDiscConnections(config=config)
    assert "truth" not in connections.inputs and "coadds" not in connections.inputs
    assert "labels" in connections.inputs and "overlayPlot" not in connections.outputs
    assert connections.deblend.storageClass == "SourceCatalog"
    assert config.reference_name == "labels"
    config.minIou = 0.0
    with pytest.raises(Exception, match="minIou"):
        config.validate()


def test_source_catalog_conversion_reads_footprints_through_afw() -> None:
    afw_table = pytest.importorskip("lsst.afw.table", reason="lsst.afw is not installed")
    import lsst.afw.detection as afw_detection
    import lsst.afw.geom as afw_geom

    schema = afw_table.SourceTable.makeMinimalSchema()
    n_child_key = schema.addField("deblend_nChild", type="I", doc="Number of children")
    catalog = afw_table.SourceCatalog(schema)
    for source_id, parent, n_child, spans, peak in (
        (7, 0, 2, [(5, 2, 6), (6, 2, 6)], (4.0, 5.0)),
        (8, 7, 0, [(5, 2, 3)], (2.0, 5.0)),
        (9, 7, 0, [(5, 5, 6), (6, 5, 5)], None),
    ):
        record = catalog.addNew()
        record.setId(source_id)
        record.setParent(parent)
        record.set(n_child_key, n_child)
        footprint = afw_detection.Footprint(afw_geom.SpanSet([afw_geom.Span(*span) for span in spans]))
        if peak is not None:
            footprint.addPeak(peak[0], peak[1], 1.0)
        record.setFootprint(footprint)
    table = source_catalog_to_table(catalog)
    np.testing.assert_array_equal(table["id"], [7, 8, 9])
    np.testing.assert_array_equal(table["deblend_nChild"], [2, 0, 0])
    np.testing.assert_array_equal(table["spans"][2], [5, 5, 6, 6, 5, 5])
    assert (table["x"][1], table["y"][1]) == (2.0, 5.0)
    assert (table["x"][2], table["y"][2]) == pytest.approx(spans_centroid(np.array([[5, 5, 6], [6, 5, 5]])))
    assert len(_task(doCocoAp=False).run(_scenario("perfect"), table, truth=_truth()).metrics) == 2


# ---------------------------------------------------------------------------------------------------------
# The whole pipeline under pipetask.
# ---------------------------------------------------------------------------------------------------------

# lsst.images resolves its schema URL through lsst.resources' HTTP support when it reads a coadd.
needs_requests = pytest.mark.skipif(
    importlib.util.find_spec("requests") is None,
    reason="reading lsst.images files needs `requests` (lsst-resources HTTP support), not installed",
)
PIPETASK = Path(sys.executable).with_name("pipetask")
OUTPUT = "u/test/deepdisc_compare"
PLOTS = (
    "deepdisc_completeness_purity_plot",
    "deepdisc_classification_plot",
    "deepdisc_iou_plot",
    "deepdisc_blend_outcomes_plot",
    "deepdisc_precision_recall_plot",
)


@pytest.fixture(scope="module")
def pipeline_run(tiny_repo, tmp_path_factory, package_root):
    """Model package created and ingested with the CLI, then one pipetask run of DeepDiscCompare.yaml."""
    from lsst.meas.extensions.deepdisc.cli.model import main

    work = tmp_path_factory.mktemp("compare_pipeline")
    package = work / "compare-random.deepdisc.zip"
    create = ["create", "--architecture", "compact-R18-FPN", "--bands", *tiny_repo.bands, "--random-init"]
    # A random network detects noise everywhere: cap its detections to keep the comparison quick.
    create += ["--override", "TEST.DETECTIONS_PER_IMAGE=300", "--name", "compare-random"]
    assert main([*create, "--output", str(package)]) == 0
    assert main(["ingest", tiny_repo.root, str(package), "--name", "compare-random"]) == 0
    env = dict(os.environ, MEAS_EXTENSIONS_DEEPDISC_DIR=str(package_root), OMP_NUM_THREADS="1")
    command = [
        str(PIPETASK),
        "run",
        "--register-dataset-types",
        "-b",
        tiny_repo.root,
        "-i",
        f"{tiny_repo.collection},pretrained_models/compare-random",
        "-o",
        OUTPUT,
        "-p",
        str(package_root / "pipelines" / "DeepDiscCompare.yaml"),
        "-d",
        f"skymap='{tiny_repo.skymap}' AND tract=0",
        "-c",
        "detect:tileSize=256",
        "-c",
        "detect:tileOverlap=32",
        "-j",
        "1",
    ]
    process = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    from lsst.daf.butler import Butler

    butler = Butler.from_config(tiny_repo.root, collections=[OUTPUT])
    yield butler, work
    butler.close()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("tiny_repo_pipetask")  # The worker that already holds the tiny repository.
@needs_requests
def test_pipeline_writes_summary_counting_inner_truth_once(pipeline_run, tiny_repo) -> None:
    butler, _ = pipeline_run
    tract_id = {"skymap": tiny_repo.skymap, "tract": 0}
    summary = butler.get("deepdisc_comparison_summary", tract_id)
    assert set(np.asarray(summary["method"]).astype(str)) == {"deepdisc", "scarlet", "sep"}
    # Every truth object with a footprint is counted once, in the patch whose inner region holds it.
    expected = 0
    for data_id in tiny_repo.data_ids:
        truth = butler.get("truth_patch", data_id)
        expected += int(np.sum(np.asarray(truth["is_inner"]) & (np.asarray(truth["footprint_area"]) > 0)))
        metrics = butler.get("deepdisc_comparison_metrics", data_id)
        comparison = butler.get("deepdisc_comparison", data_id)
        n_reference_rows = int(np.sum(np.asarray(comparison["row_type"]).astype(str) == "reference"))
        assert set(np.asarray(metrics["n_ref"])) == {n_reference_rows}
    totals = summary[np.asarray(summary["is_total"], dtype=bool)]
    assert set(np.asarray(totals["n_ref"])) == {expected}
    for row in totals:
        assert 0.0 <= row["completeness"] <= 1.0 and 0.0 <= row["purity"] <= 1.0
    assert expected > 100


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("tiny_repo_pipetask")
@needs_requests
def test_pipeline_writes_png_plots(pipeline_run, tiny_repo) -> None:
    butler, work = pipeline_run
    tract_id = {"skymap": tiny_repo.skymap, "tract": 0}
    refs = [(name, tract_id) for name in PLOTS]
    refs += [("deepdisc_overlay_plot", data_id) for data_id in tiny_repo.data_ids]
    for name, data_id in refs:
        # The Plot storage class writes PNG files and cannot read them back: fetch the file itself.
        png = butler.getURI(name, data_id).read()
        assert png.startswith(b"\x89PNG\r\n\x1a\n"), name
        saved = work / f"{name}_{data_id.get('patch', 'tract')}.png"
        saved.write_bytes(png)
        height, width = imread(saved).shape[:2]
        assert height > 200 and width > 200, name


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xdist_group("tiny_repo_pipetask")
@needs_requests
def test_pipeline_artifact_outputs_follow_truth_artifacts(pipeline_run, tiny_repo) -> None:
    """The optional truth_artifacts: without it (and a model without artifact classes) no artifact section."""
    from lsst.daf.butler import MissingDatasetTypeError

    butler, _ = pipeline_run
    for data_id in tiny_repo.data_ids:
        mask = butler.get("object_deepdisc_artifact_mask", data_id)
        assert len(mask) == 0 and "spans" in mask.colnames  # The random model has no artifact class.
        try:
            has_truth = butler.find_dataset("truth_artifacts", data_id) is not None
        except MissingDatasetTypeError:
            has_truth = False
        metrics = butler.get("deepdisc_comparison_metrics", data_id)
        assert ("artifact_ap" in metrics.colnames) == has_truth
        assert ("n_fp_in_truth_artifact" in metrics.colnames) == has_truth
    tract_id = {"skymap": tiny_repo.skymap, "tract": 0}
    summary = butler.get("deepdisc_comparison_summary", tract_id)
    plots = butler.query_datasets("deepdisc_artifact_plot", explain=False)
    assert ("purity_artifact_flagged" in summary.colnames) == bool(plots)
