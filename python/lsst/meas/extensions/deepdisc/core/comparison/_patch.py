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

"""One patch's comparison (`compare_to_reference`).

Every method matched to the reference, the match table and the per-method metrics.
"""

from __future__ import annotations

__all__ = ["ComparisonResult", "compare_to_reference", "fill_masked_columns"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from ..blend_outcomes import TRUTH_OUTCOMES, classify_blends
from ..coco import CocoImage, coco_average_precision
from ..matching import SourceArrays, match_catalogs, match_deepdisc
from ..metrics import (
    classification_scores,
    deepdisc_scores,
    detection_scores,
    iou_summary,
)
from ._catalogs import UNKNOWN_CLASS, ComparisonCatalog, _class_index, restrict_match


@dataclass
class ComparisonResult:
    """Output of `compare_to_reference`.

    Attributes
    ----------
    matches : `astropy.table.Table`
        The match table (see the module documentation).
    metrics : `astropy.table.Table`
        One row per method: the scalar metrics of the evaluated set.
    details : `dict` [`str`, `dict`]
        Per method: ``match`` (`~.matching.MatchResult`, whole patch), ``evaluated`` (restricted match),
        ``outcomes`` (`~.blend_outcomes.BlendOutcomes`), ``classification`` (table or `None`).
    """

    matches: Table
    metrics: Table
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def _nan_dict(keys: Sequence[str]) -> dict[str, float]:
    return {key: float("nan") for key in keys}


def _class_metric_keys(class_names: Sequence[str], prefix: str = "") -> list[str]:
    return [f"{prefix}{name}_{metric}" for name in class_names for metric in ("precision", "recall", "f1")]


def _known_classes(class_id: np.ndarray | None, n_classes: int) -> bool:
    return (
        class_id is not None and class_id.size > 0 and bool(np.all((class_id >= 0) & (class_id < n_classes)))
    )


def _coco_metrics(
    reference: ComparisonCatalog,
    detections: SourceArrays,
    image: CocoImage | None,
    truth_ignore: np.ndarray,
    class_names: Sequence[str],
    max_detections: int | None,
) -> dict[str, float]:
    """COCO bbox and segm AP; class-aware when every class is known on both sides, else class-agnostic."""
    keys = [f"coco_{kind}_{name}" for kind in ("bbox", "segm") for name in ("ap", "ap50", "ap75", "ar")]
    out: dict[str, float] = {**_nan_dict(keys), "coco_class_agnostic": float("nan")}
    truth = reference.sources
    if image is None or detections.score is None or truth.bbox is None or not len(truth):
        return out
    if len(detections) and detections.bbox is None:
        return out
    iou_types = ["bbox"]
    if truth.spans is not None and detections.spans is not None:
        iou_types.append("segm")
    n_classes = len(class_names)
    agnostic = not (
        _known_classes(truth.class_id, n_classes) and _known_classes(detections.class_id, n_classes)
    )
    if not len(detections):
        # No detection: AP is 0 wherever there is something to find.
        n_evaluated = int(np.sum(~truth_ignore))
        for kind in iou_types:
            for name in ("ap", "ap50", "ap75", "ar"):
                out[f"coco_{kind}_{name}"] = 0.0 if n_evaluated else float("nan")
        out["coco_class_agnostic"] = float(agnostic)
        return out
    detections = SourceArrays(
        x=detections.x,
        y=detections.y,
        bbox=detections.bbox,
        spans=detections.spans,
        class_id=detections.class_id,
        score=np.nan_to_num(detections.score, nan=0.0),
    )
    scores = coco_average_precision(
        truth,
        detections,
        image,
        iou_types=iou_types,
        class_names=dict(enumerate(class_names)),
        class_agnostic=agnostic,
        truth_ignore=truth_ignore,
        max_detections=max_detections,
    )
    for kind, result in scores.items():
        for name in ("ap", "ap50", "ap75", "ar"):
            out[f"coco_{kind}_{name}"] = float(getattr(result, name))
    out["coco_class_agnostic"] = float(agnostic)
    return out


def _default_image(catalogs: Sequence[ComparisonCatalog]) -> CocoImage | None:
    boxes = [c.sources.bbox for c in catalogs if c.sources.bbox is not None and len(c.sources)]
    boxes = [b[b[:, 2] >= b[:, 0]] for b in boxes]
    boxes = [b for b in boxes if len(b)]
    if not boxes:
        return None
    allbox = np.concatenate(boxes)
    x0, y0 = int(np.floor(allbox[:, 0].min())), int(np.floor(allbox[:, 1].min()))
    x1, y1 = int(np.ceil(allbox[:, 2].max())), int(np.ceil(allbox[:, 3].max()))
    return CocoImage(width=x1 - x0 + 1, height=y1 - y0 + 1, xy0=(x0, y0))


def compare_to_reference(
    reference: ComparisonCatalog,
    methods: Mapping[str, ComparisonCatalog],
    *,
    class_names: Sequence[str] = ("star", "galaxy"),
    min_iou: float = 0.5,
    max_distance: float = 5.0,
    linking_length: float = 5.0,
    image_bbox: tuple[int, int, int, int] | None = None,
    do_coco: bool = True,
    coco_max_detections: int | None = None,
    tract: int = 0,
    patch: int = 0,
    reference_name: str | None = None,
) -> ComparisonResult:
    """Match every method's catalog to the reference and compute the per-patch metrics.

    Parameters
    ----------
    reference : `ComparisonCatalog`
        Truth (or the catalog playing its role).
    methods : `~collections.abc.Mapping` [`str`, `ComparisonCatalog`]
        Catalogs to evaluate, by method name (names must be valid column-name prefixes).
    class_names : `~collections.abc.Sequence` [`str`]
        Class names by class id.
    min_iou, max_distance : `float`
        One-to-one matching (`~.matching.match_catalogs`): IoU threshold and distance-stage radius (pixels).
    linking_length : `float`
        Friends-of-friends linking length of the blend outcomes (pixels).
    image_bbox : `tuple` [`int`, `int`, `int`, `int`], optional
        ``(x0, y0, width, height)`` of the patch, for COCO masks; default: the union of all boxes.
    do_coco : `bool`
        Compute COCO AP (the slowest metric).
    coco_max_detections : `int`, optional
        Keep only this many highest-scoring detections for COCO AP.
    tract, patch : `int`
        Recorded in the tables.
    reference_name : `str`, optional
        Recorded in the tables (default ``reference.name``).

    Returns
    -------
    result : `ComparisonResult`
        Match table, per-method metrics and the intermediate objects.
    """
    class_names = list(class_names)
    _class_index(class_names)
    reference_name = reference_name or reference.name
    for name in methods:
        if not name.isidentifier() or name in ("ref", "det", "row"):
            raise ValueError(f"method name {name!r} cannot prefix column names")
    ref = reference.sources
    keep_ref = np.asarray(reference.in_region, dtype=bool)
    ref_rows = np.flatnonzero(keep_ref)
    n_ref_rows = ref_rows.size
    coco_image = None
    if do_coco:
        if image_bbox is not None:
            x0, y0, width, height = (int(v) for v in image_bbox)
            coco_image = CocoImage(width=width, height=height, xy0=(x0, y0))
        else:
            coco_image = _default_image([reference, *methods.values()])

    ref_columns: dict[str, Any] = {
        "row_type": np.full(n_ref_rows, "reference", dtype="U9"),
        "reference": np.full(n_ref_rows, reference_name, dtype="U16"),
        "tract": np.full(n_ref_rows, tract, dtype=np.int64),
        "patch": np.full(n_ref_rows, patch, dtype=np.int64),
        "ref_id": reference.ids[ref_rows],
        "ref_x": ref.x[ref_rows],
        "ref_y": ref.y[ref_rows],
        "ref_ra": reference.ra[ref_rows],
        "ref_dec": reference.dec[ref_rows],
        "ref_mag": ref.mag[ref_rows],
        "ref_class_id": ref.class_id[ref_rows],
        "ref_class_name": np.array(
            [class_names[c] if 0 <= c < len(class_names) else "" for c in ref.class_id[ref_rows]], dtype="U32"
        ),
        "ref_blendedness": reference.blendedness[ref_rows],
    }
    detection_tables = []
    metric_rows = []
    details: dict[str, dict[str, Any]] = {}
    class_keys = _class_metric_keys(class_names)
    for name, catalog in methods.items():
        det = catalog.sources
        match = match_catalogs(ref, det, min_iou=min_iou, max_distance=max_distance)
        outcomes = classify_blends(ref, det, linking_length=linking_length)
        det_to_ref = match.det_to_truth()
        matched_det = det_to_ref >= 0
        # A matched detection is evaluated with its reference object, an unmatched one by its own position.
        keep_det = np.asarray(catalog.in_region, dtype=bool).copy()
        keep_det[matched_det] = keep_ref[det_to_ref[matched_det]]
        evaluated = restrict_match(match, keep_ref, keep_det)

        # Per reference object: its match in this method (pair = row of the pair in ``match``, or -1).
        pair_of_ref = np.full(match.n_truth, -1, dtype=np.int64)
        pair_of_ref[match.truth_index] = np.arange(match.n_matched)
        pair = pair_of_ref[ref_rows]
        has = pair >= 0
        det_index = np.where(has, match.det_index[np.maximum(pair, 0)] if match.n_matched else 0, 0)
        ref_columns[f"{name}_matched"] = has
        ref_columns[f"{name}_id"] = np.where(has, catalog.ids[det_index] if len(det) else 0, 0).astype(
            np.int64
        )
        match_type = np.full(n_ref_rows, "", dtype="U8")
        match_type[has] = match.method[pair[has]]
        ref_columns[f"{name}_match_type"] = match_type
        for column, values in (
            ("iou", match.iou),
            ("bbox_iou", match.bbox_iou),
            ("mask_iou", match.mask_iou),
            ("distance", match.distance),
        ):
            per_ref = np.full(n_ref_rows, np.nan)
            per_ref[has] = values[pair[has]]
            ref_columns[f"{name}_{column}"] = per_ref
        class_of_match = np.full(n_ref_rows, UNKNOWN_CLASS, dtype=np.int64)
        class_of_match[has] = det.class_id[det_index[has]]
        ref_columns[f"{name}_class_id"] = class_of_match
        mag_of_match = np.full(n_ref_rows, np.nan)
        mag_of_match[has] = det.mag[det_index[has]]
        ref_columns[f"{name}_mag"] = mag_of_match
        score_of_match = np.full(n_ref_rows, np.nan)
        if det.score is not None:
            score_of_match[has] = det.score[det_index[has]]
        ref_columns[f"{name}_score"] = score_of_match
        ref_columns[f"{name}_outcome"] = np.asarray(outcomes.truth["outcome"], dtype="U18")[ref_rows]

        # Unmatched evaluated detections.
        lonely = np.flatnonzero(~matched_det & keep_det)
        detection_tables.append(
            Table(
                {
                    "row_type": np.full(lonely.size, "detection", dtype="U9"),
                    "reference": np.full(lonely.size, reference_name, dtype="U16"),
                    "tract": np.full(lonely.size, tract, dtype=np.int64),
                    "patch": np.full(lonely.size, patch, dtype=np.int64),
                    "det_method": np.full(lonely.size, name, dtype="U16"),
                    "det_id": catalog.ids[lonely],
                    "det_x": det.x[lonely],
                    "det_y": det.y[lonely],
                    "det_mag": det.mag[lonely],
                    "det_class_id": det.class_id[lonely],
                    "det_score": det.score[lonely] if det.score is not None else np.full(lonely.size, np.nan),
                    "det_outcome": np.asarray(outcomes.detections["outcome"], dtype="U18")[lonely],
                }
            )
        )

        # Scalar metrics of the evaluated set.
        row: dict[str, Any] = {"tract": tract, "patch": patch, "method": name, "reference": reference_name}
        scores = detection_scores(evaluated)
        row.update(
            {
                "n_ref": scores.n_truth,
                "n_det": scores.n_det,
                "n_matched": scores.n_matched,
                "completeness": scores.completeness,
                "purity": scores.purity,
                "f1": scores.f1,
            }
        )
        row.update(
            {key: value for key, value in iou_summary(evaluated).as_dict().items() if key != "n_pairs"}
        )
        classification = None
        row.update(_nan_dict(class_keys))
        row["classification_accuracy"] = float("nan")
        det_eval = catalog.subset(keep_det)
        pred_class = det_eval.class_id[evaluated.det_index] if evaluated.n_matched else np.zeros(0, np.int64)
        if np.any(ref.class_id >= 0) and np.any(det.class_id >= 0):
            classification = classification_scores(
                ref.class_id[ref_rows][evaluated.truth_index], pred_class, dict(enumerate(class_names))
            )
            for class_row in classification:
                for metric in ("precision", "recall", "f1"):
                    row[f"{class_row['class_name']}_{metric}"] = float(class_row[metric])
            row["classification_accuracy"] = float(classification.meta["accuracy"])

        ref_eval = reference.subset(keep_ref)
        deepdisc_keys = ["detection_precision", "detection_recall", "detection_f1", "median_bbox_iou"]
        row.update(_nan_dict([f"deepdisc_{key}" for key in deepdisc_keys]))
        row.update(_nan_dict(_class_metric_keys(class_names, "deepdisc_")))
        if ref_eval.bbox is not None and det_eval.bbox is not None:
            known = np.any(ref_eval.class_id >= 0) and np.any(det_eval.class_id >= 0)
            matched_set = deepdisc_scores(
                match_deepdisc(ref_eval, det_eval, min_iou=min_iou),
                ref_eval.class_id if known else None,
                det_eval.class_id if known else None,
                dict(enumerate(class_names)),
            )
            for key, value in matched_set.as_dict().items():
                if key in deepdisc_keys or key in _class_metric_keys(class_names):
                    row[f"deepdisc_{key}"] = float(value)
        if do_coco:
            row.update(
                _coco_metrics(reference, det_eval, coco_image, ~keep_ref, class_names, coco_max_detections)
            )
        truth_outcome = np.asarray(outcomes.truth["outcome"])[keep_ref]
        for outcome in TRUTH_OUTCOMES:
            row[f"n_{outcome}"] = int(np.sum(truth_outcome == outcome))
        row["n_spurious"] = int(np.sum(np.asarray(outcomes.detections["outcome"])[keep_det] == "spurious"))
        metric_rows.append(row)
        details[name] = {
            "match": match,
            "evaluated": evaluated,
            "outcomes": outcomes,
            "classification": classification,
            "keep_det": keep_det,
        }

    matches = Table(ref_columns)
    if detection_tables:
        matches = vstack([matches, *detection_tables], join_type="outer", metadata_conflicts="silent")
        matches = fill_masked_columns(matches)
    matches.meta.update(
        {
            "methods": list(methods),
            "reference": reference_name,
            "class_names": class_names,
            "min_iou": float(min_iou),
            "max_distance": float(max_distance),
            "linking_length": float(linking_length),
            "tract": int(tract),
            "patch": int(patch),
        }
    )
    metrics = _metrics_table(metric_rows)
    metrics.meta.update({"reference": reference_name, "class_names": class_names})
    return ComparisonResult(matches=matches, metrics=metrics, details=details)


def fill_masked_columns(table: Table) -> Table:
    """Replace the masks of an outer ``vstack`` by explicit fill values (Arrow keeps no astropy masks).

    Fill values: NaN for floats, `False` for booleans, ``""`` for strings, ``UNKNOWN_CLASS`` for
    ``*class_id`` columns and 0 for other integers.
    """
    out = Table(meta=dict(table.meta))
    for name in table.colnames:
        column = table[name]
        if hasattr(column, "mask") and np.any(column.mask):
            kind = column.dtype.kind
            fill: Any = np.nan if kind == "f" else False if kind == "b" else "" if kind in "US" else 0
            if name.endswith("class_id"):
                fill = UNKNOWN_CLASS
            out[name] = column.filled(fill)
        else:
            out[name] = np.asarray(column)
    return out


def _metrics_table(rows: list[dict[str, Any]]) -> Table:
    if rows:
        names = list(rows[0])
        return Table(rows=[[row[key] for key in names] for row in rows], names=names)
    return Table(
        {"tract": np.zeros(0, np.int64), "patch": np.zeros(0, np.int64), "method": np.zeros(0, "U16")}
    )
