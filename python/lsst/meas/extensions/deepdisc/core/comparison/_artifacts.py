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

"""Artifact metrics (`add_artifact_metrics`, `summarize_artifact_metrics`).

Mask AP per class, has-artifact scores, pixel IoU, and the flags of sources inside artifacts.
"""

from __future__ import annotations

__all__ = [
    "ArtifactScores",
    "add_artifact_metrics",
    "artifact_cover_flags",
    "artifact_scores",
    "deepdisc_artifact_sources",
    "summarize_artifact_metrics",
    "truth_artifact_sources",
]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from ..artifacts import ARTIFACT_CLASS_PREFIX, ARTIFACT_CLASSES
from ..coco import CocoImage, coco_average_precision
from ..footprints import spans_area, spans_covered_area, spans_union
from ..matching import MatchResult, SourceArrays
from ..metrics import (
    presence_scores,
)
from ._catalogs import UNKNOWN_CLASS, ComparisonCatalog, _column, artifact_row_mask
from ._patch import ComparisonResult


def _strip_artifact_prefix(name: str) -> str:
    return name[len(ARTIFACT_CLASS_PREFIX) :] if name.startswith(ARTIFACT_CLASS_PREFIX) else name


def _artifact_class_ids(names: Any, artifact_classes: Sequence[str]) -> np.ndarray:
    """Indices into ``artifact_classes`` of artifact class names, with or without the ``artifact_`` prefix."""
    index = {name: k for k, name in enumerate(artifact_classes)}
    return np.array(
        [index.get(_strip_artifact_prefix(str(name).strip()), UNKNOWN_CLASS) for name in names],
        dtype=np.int64,
    ).reshape(-1)


def _spans_sources(spans: list[np.ndarray], class_id: np.ndarray, score: np.ndarray) -> SourceArrays:
    """Sources from footprints alone: centres are the footprint centroids."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in spans]
    centres = np.array(
        [
            (
                np.sum((a[:, 2] - a[:, 1] + 1) * (a[:, 1] + a[:, 2]) / 2.0) / max(spans_area(a), 1),
                np.sum((a[:, 2] - a[:, 1] + 1) * a[:, 0]) / max(spans_area(a), 1),
            )
            for a in arrays
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    return SourceArrays(
        x=centres[:, 0], y=centres[:, 1], spans=arrays, class_id=class_id, score=np.asarray(score, np.float64)
    )


def truth_artifact_sources(
    table: Table,
    artifact_classes: Sequence[str] = ARTIFACT_CLASSES,
    *,
    class_column: str = "artifact_class",
) -> SourceArrays:
    """A simulation's truth artifacts (``truth_artifacts``) as sources, classes indexing ``artifact_classes``.

    Artifacts with an empty footprint are left out; classes not in ``artifact_classes`` get
    ``UNKNOWN_CLASS`` (they count for the pixel masks and presence, not for AP).
    """
    spans = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in _column(table, "spans", "truth_artifacts")]
    keep = np.array([s.shape[0] > 0 for s in spans], dtype=bool)
    names = _column(table, class_column, "truth_artifacts") if len(table) else np.zeros(0, dtype=str)
    return _spans_sources(
        [s for s, k in zip(spans, keep) if k],
        _artifact_class_ids(np.asarray(names)[keep], artifact_classes),
        np.ones(int(keep.sum())),
    )


def deepdisc_artifact_sources(
    table: Table, artifact_classes: Sequence[str] = ARTIFACT_CLASSES
) -> SourceArrays:
    """The artifact rows of an ``object_deepdisc`` table as sources (classes index ``artifact_classes``)."""
    rows = table[artifact_row_mask(table)]
    spans = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in rows["footprint"]] if len(rows) else []
    names = np.asarray(rows["class_name"]).astype(str) if len(rows) else np.zeros(0, dtype=str)
    score = np.asarray(rows["score"], dtype=np.float64) if "score" in rows.colnames else np.ones(len(rows))
    return _spans_sources(spans, _artifact_class_ids(names, artifact_classes), score)


def artifact_cover_flags(sources: SourceArrays, cover: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each source lies in an artifact mask: the detection task's ``flag_in_artifact`` rule.

    Parameters
    ----------
    sources : `~.matching.SourceArrays`
        Detections; with footprints, the covered fraction of each footprint is used, else whether the
        centre pixel is covered.
    cover : `numpy.ndarray`
        The artifact mask as spans (e.g. `~.footprints.spans_union` of the artifact footprints).
    threshold : `float`
        A source is flagged when more than this fraction of its footprint is covered.

    Returns
    -------
    flagged : `numpy.ndarray`
        One boolean per source.
    """
    n = len(sources)
    cover = np.asarray(cover, dtype=np.int64).reshape(-1, 3)
    if n == 0 or cover.shape[0] == 0:
        return np.zeros(n, dtype=bool)
    if sources.spans is not None:
        area = sources.areas()
        covered = spans_covered_area(sources.spans, cover)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (area > 0) & (covered / np.maximum(area, 1) > threshold)
    x, y = np.rint(sources.x).astype(np.int64), np.rint(sources.y).astype(np.int64)
    return spans_covered_area([np.array([[yy, xx, xx]]) for xx, yy in zip(x, y)], cover) > 0


@dataclass(frozen=True)
class ArtifactScores:
    """DeepGhostBusters-style artifact metrics of one patch (see ``metrics.rst``).

    Attributes
    ----------
    artifact_classes : `tuple` [`str`, ...]
        Evaluated classes (without the ``artifact_`` prefix).
    n_truth, n_det : `int`
        Truth artifacts and detected artifacts of the patch.
    pixel_intersection, pixel_union : `int`
        Pixels in both / either of the union of the truth artifacts and the union of the detected ones.
    pixel_iou : `float`
        ``pixel_intersection / pixel_union`` (NaN when both masks are empty).
    ap, ap50 : `float`
        COCO mask (segm) AP over IoU 0.50:0.95 and at 0.50, averaged over the classes with truth artifacts
        (NaN without truth artifacts; 0 when there are truth artifacts but no detections).
    per_class_ap, per_class_ap50 : `dict` [`str`, `float`]
        The same per class (NaN for classes without truth artifacts).
    """

    artifact_classes: tuple[str, ...]
    n_truth: int
    n_det: int
    pixel_intersection: int
    pixel_union: int
    pixel_iou: float
    ap: float
    ap50: float
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]

    @property
    def truth_present(self) -> bool:
        """The patch has at least one truth artifact."""
        return self.n_truth > 0

    @property
    def det_present(self) -> bool:
        """DeepDISC found at least one artifact in the patch."""
        return self.n_det > 0

    def as_dict(self) -> dict[str, float]:
        """Flat ``artifact_``-prefixed metrics (floats, so that other methods' rows can hold NaN)."""
        out = {
            "artifact_n_truth": float(self.n_truth),
            "artifact_n_det": float(self.n_det),
            "artifact_truth_present": float(self.truth_present),
            "artifact_det_present": float(self.det_present),
            "artifact_pixel_intersection": float(self.pixel_intersection),
            "artifact_pixel_union": float(self.pixel_union),
            "artifact_pixel_iou": self.pixel_iou,
            "artifact_ap": self.ap,
            "artifact_ap50": self.ap50,
        }
        for name in self.artifact_classes:
            out[f"artifact_ap_{name}"] = self.per_class_ap.get(name, float("nan"))
            out[f"artifact_ap50_{name}"] = self.per_class_ap50.get(name, float("nan"))
        return out


def artifact_scores(
    truth: SourceArrays,
    detected: SourceArrays,
    *,
    artifact_classes: Sequence[str] = ARTIFACT_CLASSES,
    image: CocoImage | None = None,
) -> ArtifactScores:
    """Artifact AP per class (mask IoU, COCO), pixel IoU of the artifact masks and counts of one patch.

    Parameters
    ----------
    truth, detected : `~.matching.SourceArrays`
        `truth_artifact_sources` and `deepdisc_artifact_sources` of the patch (whole patch: artifacts are
        not restricted to the inner region).
    artifact_classes : sequence of `str`
        Classes evaluated (the ``class_id`` of both catalogs index them; unknown classes are left out of AP).
    image : `~.coco.CocoImage`, optional
        The patch (COCO masks); default: the union of both catalogs' boxes.
    """
    classes = tuple(artifact_classes)
    truth_union = spans_union(truth.spans or [])
    det_union = spans_union(detected.spans or [])
    intersection = int(spans_covered_area([det_union], truth_union)[0])
    union = spans_area(truth_union) + spans_area(det_union) - intersection
    nan = float("nan")
    per_class_ap = dict.fromkeys(classes, nan)
    per_class_ap50 = dict.fromkeys(classes, nan)
    ap = ap50 = nan
    known_truth = truth.class_id >= 0 if truth.class_id is not None else np.zeros(len(truth), bool)
    known_det = detected.class_id >= 0 if detected.class_id is not None else np.zeros(len(detected), bool)
    if known_truth.any() and not known_det.any():
        ap = ap50 = 0.0
        for k in np.unique(truth.class_id[known_truth]):
            per_class_ap[classes[k]] = per_class_ap50[classes[k]] = 0.0
    elif known_truth.any():
        truth_known, det_known = truth.select(known_truth), detected.select(known_det)
        if image is None:
            boxes = np.concatenate([truth_known.bbox, det_known.bbox])
            x0, y0 = int(np.floor(boxes[:, 0].min())), int(np.floor(boxes[:, 1].min()))
            x1, y1 = int(np.ceil(boxes[:, 2].max())), int(np.ceil(boxes[:, 3].max()))
            image = CocoImage(width=x1 - x0 + 1, height=y1 - y0 + 1, xy0=(x0, y0))
        segm = coco_average_precision(
            truth_known, det_known, image, iou_types=("segm",), class_names=dict(enumerate(classes))
        )["segm"]
        ap, ap50 = segm.ap, segm.ap50
        per_class_ap.update(segm.per_class_ap)
        per_class_ap50.update(segm.per_class_ap50)
    return ArtifactScores(
        artifact_classes=classes,
        n_truth=len(truth),
        n_det=len(detected),
        pixel_intersection=intersection,
        pixel_union=int(union),
        pixel_iou=intersection / union if union > 0 else nan,
        ap=ap,
        ap50=ap50,
        per_class_ap=per_class_ap,
        per_class_ap50=per_class_ap50,
    )


def add_artifact_metrics(
    result: ComparisonResult,
    catalogs: Mapping[str, ComparisonCatalog],
    *,
    in_truth_artifact: Mapping[str, np.ndarray] | None = None,
    n_artifact_rows: Mapping[str, int] | None = None,
    scores: ArtifactScores | None = None,
    scores_method: str = "deepdisc",
) -> None:
    """Add the artifact columns to the per-patch metrics of `compare_to_reference`, in place.

    Parameters
    ----------
    result : `ComparisonResult`
        The comparison (its ``details`` give every method's evaluated match).
    catalogs : `~collections.abc.Mapping` [`str`, `ComparisonCatalog`]
        The compared catalogs, with ``artifact_flagged`` (missing flags count as unflagged).
    in_truth_artifact : `~collections.abc.Mapping` [`str`, `numpy.ndarray`], optional
        Per method, whether each detection lies in a truth artifact (`artifact_cover_flags` against the
        truth artifacts); adds the false-positive columns.
    n_artifact_rows : `~collections.abc.Mapping` [`str`, `int`], optional
        Per method, its evaluated artifact rows (DeepDISC's artifact detections in the region), counted as
        false detections by ``purity_all_rows``.
    scores : `ArtifactScores`, optional
        The patch's artifact scores, written in the row of ``scores_method`` (NaN in the others).

    Notes
    -----
    Columns (see ``metrics.rst``): ``n_artifact_rows``, ``n_det_artifact_flagged``,
    ``n_matched_artifact_flagged``, ``purity_artifact_flagged``, ``completeness_artifact_flagged``,
    ``purity_all_rows``; with ``in_truth_artifact``: ``n_fp``, ``n_fp_in_truth_artifact``,
    ``n_fp_in_truth_artifact_flagged``, ``frac_fp_in_truth_artifact``,
    ``frac_fp_in_truth_artifact_flagged``; with ``scores``: the keys of `ArtifactScores.as_dict`.
    A false positive is an evaluated detection without a match.
    """
    columns: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        columns.setdefault(key, []).append(value)

    nan = float("nan")
    for row in result.metrics:
        name = str(row["method"])
        detail = result.details[name]
        evaluated: MatchResult = detail["evaluated"]
        keep_det = np.asarray(detail["keep_det"], dtype=bool)
        catalog = catalogs[name]
        all_flags = catalog.artifact_flagged
        flagged = np.zeros(keep_det.sum(), bool) if all_flags is None else all_flags[keep_det]
        n_det, n_matched, n_ref = evaluated.n_det, evaluated.n_matched, evaluated.n_truth
        n_flagged = int(flagged.sum())
        matched_flagged = int(flagged[evaluated.det_index].sum()) if n_matched else 0
        extra = int((n_artifact_rows or {}).get(name, 0))
        put("n_artifact_rows", extra)
        put("n_det_artifact_flagged", n_flagged)
        put("n_matched_artifact_flagged", matched_flagged)
        put("purity_artifact_flagged", _safe_ratio(n_matched - matched_flagged, n_det - n_flagged))
        put("completeness_artifact_flagged", _safe_ratio(n_matched - matched_flagged, n_ref))
        put("purity_all_rows", _safe_ratio(n_matched, n_det + extra))
        if in_truth_artifact is not None:
            inside = np.asarray(in_truth_artifact.get(name, np.zeros(keep_det.size, bool)), dtype=bool)
            false_positive = evaluated.unmatched_det
            inside_fp = inside[keep_det][false_positive]
            caught = int(np.sum(inside_fp & flagged[false_positive]))
            put("n_fp", false_positive.size)
            put("n_fp_in_truth_artifact", int(inside_fp.sum()))
            put("n_fp_in_truth_artifact_flagged", caught)
            put("frac_fp_in_truth_artifact", _safe_ratio(int(inside_fp.sum()), false_positive.size))
            put("frac_fp_in_truth_artifact_flagged", _safe_ratio(caught, int(inside_fp.sum())))
        if scores is not None:
            for key, value in scores.as_dict().items():
                put(key, value if name == scores_method else nan)
    for key, values in columns.items():
        result.metrics[key] = np.asarray(values, dtype=np.int64 if key.startswith("n_") else np.float64)


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def summarize_artifact_metrics(metrics: Table) -> Table | None:
    """Tract-level artifact metrics from stacked per-patch metrics tables (`add_artifact_metrics`).

    Counts are summed over patches, so ratios are exact tract values; presence scores use the patches that
    report ``artifact_truth_present``; AP is the mean over the patches with truth artifacts (COCO AP is not
    additive); the pixel IoU is the summed intersection over the summed union.

    Returns
    -------
    summary : `astropy.table.Table` or `None`
        One row per method (columns listed in ``metrics.rst``); `None` when the tables have no artifact
        columns.
    """
    if "n_det_artifact_flagged" not in metrics.colnames:
        return None
    methods = list(dict.fromkeys(np.asarray(metrics["method"]).astype(str)))

    def total(rows: Table, name: str) -> float:
        if name not in rows.colnames:
            return float("nan")
        values = np.asarray(rows[name], dtype=np.float64)
        return float(np.nansum(values)) if np.isfinite(values).any() else float("nan")

    out_rows = []
    for method in methods:
        rows = metrics[np.asarray(metrics["method"]).astype(str) == method]
        n_ref, n_det, n_matched = (total(rows, k) for k in ("n_ref", "n_det", "n_matched"))
        flagged, matched_flagged = (
            total(rows, "n_det_artifact_flagged"),
            total(rows, "n_matched_artifact_flagged"),
        )
        out: dict[str, Any] = {"method": method, "n_patches": len(rows)}
        out["purity"] = _safe_ratio(n_matched, n_det)
        out["purity_artifact_flagged"] = _safe_ratio(n_matched - matched_flagged, n_det - flagged)
        out["completeness"] = _safe_ratio(n_matched, n_ref)
        out["completeness_artifact_flagged"] = _safe_ratio(n_matched - matched_flagged, n_ref)
        out["purity_all_rows"] = _safe_ratio(n_matched, n_det + total(rows, "n_artifact_rows"))
        out["n_det_artifact_flagged"] = flagged
        n_fp, inside, caught = (
            total(rows, k) for k in ("n_fp", "n_fp_in_truth_artifact", "n_fp_in_truth_artifact_flagged")
        )
        out["n_fp"], out["n_fp_in_truth_artifact"], out["n_fp_in_truth_artifact_flagged"] = (
            n_fp,
            inside,
            caught,
        )
        out["frac_fp_in_truth_artifact"] = _safe_ratio(inside, n_fp)
        out["frac_fp_in_truth_artifact_flagged"] = _safe_ratio(caught, inside)
        present = (
            np.asarray(rows["artifact_truth_present"], dtype=np.float64)
            if "artifact_truth_present" in rows.colnames
            else np.full(len(rows), np.nan)
        )
        reported = np.isfinite(present)
        presence = (
            presence_scores(
                present[reported] > 0, np.asarray(rows["artifact_det_present"], np.float64)[reported] > 0
            )
            if reported.any()
            else None
        )
        out["artifact_n_patches"] = int(reported.sum())
        for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
            out[f"artifact_presence_{key}"] = float(presence[key]) if presence else float("nan")
        intersection = (
            total(rows[reported], "artifact_pixel_intersection") if reported.any() else float("nan")
        )
        union = total(rows[reported], "artifact_pixel_union") if reported.any() else float("nan")
        out["artifact_pixel_iou"] = _safe_ratio(intersection, union) if np.isfinite(union) else float("nan")
        with_truth = reported & (present > 0)
        for name in [c for c in metrics.colnames if c.startswith(("artifact_ap", "artifact_n_"))]:
            counts = name.startswith("artifact_n_")
            values = np.asarray(rows[name], dtype=np.float64)[reported if counts else with_truth]
            values = values[np.isfinite(values)]
            if counts:
                out[name] = float(values.sum()) if values.size else float("nan")
            else:
                out[name] = float(values.mean()) if values.size else float("nan")
        out_rows.append(out)
    names = list(dict.fromkeys(key for row in out_rows for key in row))
    table = Table(rows=[[row.get(key, float("nan")) for key in names] for row in out_rows], names=names)
    table.meta["ap_aggregation"] = "mean over patches with truth artifacts"
    return table
