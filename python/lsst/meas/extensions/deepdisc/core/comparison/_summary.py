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

"""Tract summaries of stacked match tables.

Metrics per method and magnitude bin (`summarize_matches`) and precision-recall curves over score
thresholds.
"""

from __future__ import annotations

__all__ = [
    "match_table_methods",
    "precision_recall_from_matches",
    "match_table_reference",
    "summarize_matches",
]

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table, vstack

from ..blend_outcomes import OUTCOMES, TRUTH_OUTCOMES, BlendOutcomes
from ..matching import MatchResult
from ..metrics import (
    classification_scores,
    classification_scores_vs_mag,
    detection_scores,
    detection_scores_vs_mag,
    magnitude_bin_index,
)
from ._catalogs import UNKNOWN_CLASS


def precision_recall_from_matches(matches: Table, method: str, thresholds: Sequence[float]) -> Table:
    """Precision (purity) and recall (completeness) of a method's detections above each score threshold.

    The one-to-one matching of the match table (made on the whole catalog) is kept: at threshold ``t``, a
    reference object counts as found when its match scores at least ``t``, and the detections are the
    matched and unmatched ones scoring at least ``t``.  This is exact for thresholds where no match would
    change hands, and a close approximation otherwise.

    Parameters
    ----------
    matches : `astropy.table.Table`
        A (stacked) match table of `compare_to_reference` with ``<method>_score`` and ``det_score``.
    method : `str`
        The method (its detections must carry scores).
    thresholds : sequence of `float`
        Score thresholds.

    Returns
    -------
    curve : `astropy.table.Table`
        ``threshold``, ``n_ref``, ``n_det``, ``n_matched``, ``precision``, ``recall``, ``f1``.

    Raises
    ------
    ValueError
        If the method has no scores in the table.
    """
    row_type = np.asarray(matches["row_type"], dtype=str)
    ref = matches[row_type == "reference"]
    column = f"{method}_score"
    if column not in matches.colnames:
        raise ValueError(f"the match table has no {column!r} column: method {method!r} has no scores")
    matched_scores = np.asarray(ref[column], dtype=np.float64)[np.asarray(ref[f"{method}_matched"], bool)]
    dets = matches[(row_type == "detection") & (np.asarray(matches["det_method"], dtype=str) == method)]
    lonely_scores = np.asarray(dets["det_score"], dtype=np.float64) if len(dets) else np.zeros(0)
    if (
        np.isnan(matched_scores).all()
        and np.isnan(lonely_scores).all()
        and (matched_scores.size or lonely_scores.size)
    ):
        raise ValueError(f"method {method!r} has no detection scores")
    grid = np.asarray(sorted({float(t) for t in thresholds}), dtype=np.float64)
    n_matched = np.array([np.sum(matched_scores >= t) for t in grid], dtype=np.int64)
    n_det = n_matched + np.array([np.sum(lonely_scores >= t) for t in grid], dtype=np.int64)
    n_ref = len(ref)
    precision = np.divide(n_matched, n_det, out=np.full(grid.size, np.nan), where=n_det > 0)
    recall = n_matched / n_ref if n_ref else np.full(grid.size, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    curve = Table()
    curve["threshold"] = grid
    curve["n_ref"] = np.full(grid.size, n_ref, dtype=np.int64)
    curve["n_det"] = n_det
    curve["n_matched"] = n_matched
    curve["precision"] = precision
    curve["recall"] = recall
    curve["f1"] = np.nan_to_num(f1, nan=0.0)
    curve.meta["method"] = method
    return curve


def match_table_methods(matches: Table) -> list[str]:
    """Method names of a match table, from its ``<method>_matched`` columns (in column order)."""
    return [name[: -len("_matched")] for name in matches.colnames if name.endswith("_matched")]


def match_table_reference(matches: Table) -> str:
    """Name of the reference catalog of a match table (its ``reference`` column, else its metadata)."""
    if "reference" in matches.colnames and len(matches):
        names = sorted(set(np.asarray(matches["reference"]).astype(str).tolist()))
        if len(names) > 1:
            raise ValueError(f"the match tables mix references {names}; summarise them separately")
        return names[0]
    return str(matches.meta.get("reference", ""))


def _strings(table: Table, name: str) -> np.ndarray:
    """A string column as a numpy ``str`` array (empty strings when the column is absent)."""
    if name not in table.colnames:
        return np.full(len(table), "", dtype="U1")
    return np.asarray(table[name]).astype(str)


@dataclass(frozen=True)
class _MethodRows:
    """One method's part of a match table, rebuilt as a `~.matching.MatchResult` and aligned arrays.

    Detections are the matched ones first (in reference-row order), then the unmatched detection rows.
    """

    match: MatchResult
    ref_mag: np.ndarray
    ref_class: np.ndarray
    ref_outcome: np.ndarray
    ref_matched: np.ndarray
    det_mag: np.ndarray
    det_class: np.ndarray
    det_outcome: np.ndarray


def _method_rows(matches: Table, method: str) -> _MethodRows:
    row_type = _strings(matches, "row_type")
    ref = matches[row_type == "reference"]
    dets = matches[(row_type == "detection") & (_strings(matches, "det_method") == method)]
    if f"{method}_matched" not in ref.colnames:
        raise KeyError(f"the match table has no columns of method {method!r}")
    matched = np.asarray(ref[f"{method}_matched"], dtype=bool)
    truth_index = np.flatnonzero(matched)
    n_matched = truth_index.size
    n_det = n_matched + len(dets)

    def floats(table: Table, name: str) -> np.ndarray:
        return (
            np.asarray(table[name], dtype=np.float64)
            if name in table.colnames
            else np.full(len(table), np.nan)
        )

    match = MatchResult(
        truth_index=truth_index,
        det_index=np.arange(n_matched),
        iou=floats(ref, f"{method}_iou")[matched],
        bbox_iou=floats(ref, f"{method}_bbox_iou")[matched],
        mask_iou=floats(ref, f"{method}_mask_iou")[matched],
        distance=floats(ref, f"{method}_distance")[matched],
        method=_strings(ref, f"{method}_match_type")[matched],
        unmatched_truth=np.flatnonzero(~matched),
        unmatched_det=np.arange(n_matched, n_det),
        n_truth=len(ref),
        n_det=n_det,
        iou_type="table",
        min_iou=float(matches.meta.get("min_iou", 0.5)),
        max_distance=float(matches.meta.get("max_distance", 0.0)),
    )
    det_class_unmatched = (
        np.asarray(dets["det_class_id"], dtype=np.int64)
        if "det_class_id" in dets.colnames
        else np.full(len(dets), UNKNOWN_CLASS, dtype=np.int64)
    )
    return _MethodRows(
        match=match,
        ref_mag=floats(ref, "ref_mag"),
        ref_class=np.asarray(ref["ref_class_id"], dtype=np.int64),
        ref_outcome=_strings(ref, f"{method}_outcome"),
        ref_matched=matched,
        det_mag=np.concatenate([floats(ref, f"{method}_mag")[matched], floats(dets, "det_mag")]),
        det_class=np.concatenate(
            [np.asarray(ref[f"{method}_class_id"], dtype=np.int64)[matched], det_class_unmatched]
        ),
        det_outcome=np.concatenate([np.full(n_matched, "", dtype="U1"), _strings(dets, "det_outcome")]),
    )


def summarize_matches(
    matches: Table,
    mag_bins: Sequence[float],
    *,
    class_names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> Table:
    """Per-method, per-magnitude-bin metrics of a match table (one patch or many stacked).

    Parameters
    ----------
    matches : `astropy.table.Table`
        Match table(s) from `compare_to_reference`, e.g. ``vstack`` of all patches of a tract.
    mag_bins : `~collections.abc.Sequence` [`float`]
        Reference-magnitude bin edges (half-open bins).
    class_names : `~collections.abc.Sequence` [`str`], optional
        Class names by id (default ``star, galaxy``).
    methods : `~collections.abc.Sequence` [`str`], optional
        Methods to summarise (default: `match_table_methods`).

    Returns
    -------
    summary : `astropy.table.Table`
        One row per (method, bin) plus one ``is_total`` row per method (``mag_min=-inf, mag_max=inf``):
        ``n_ref, n_ref_matched, completeness, n_det, n_det_matched, purity, f1`` (`~.metrics` definitions,
        purity binned by the matched reference magnitude, unmatched detections by their measured one),
        ``<class>_{n_true,precision,recall,f1}``, ``median_bbox_iou, median_mask_iou`` (matched pairs of the
        bin), ``n_<outcome>`` and ``frac_<outcome>`` for every reference outcome, and ``n_spurious``.
    """
    class_names = list(class_names or ("star", "galaxy"))
    reference = match_table_reference(matches)
    names = dict(enumerate(class_names))
    methods = list(methods or match_table_methods(matches))
    edges = np.asarray(mag_bins, dtype=np.float64)
    magnitude_bin_index(np.zeros(0), edges)  # Validates the edges.
    n_bins = edges.size - 1
    blocks = []
    for method in methods:
        rows = _method_rows(matches, method)
        match, ref_mag, ref_class, det_class = rows.match, rows.ref_mag, rows.ref_class, rows.det_class
        binned = detection_scores_vs_mag(match, ref_mag, edges, rows.det_mag)
        total = detection_scores(match)
        block = Table()
        block["method"] = np.full(n_bins + 1, method, dtype="U16")
        block["reference"] = np.full(n_bins + 1, reference, dtype="U16")
        block["is_total"] = np.arange(n_bins + 1) == n_bins
        block["mag_min"] = np.append(edges[:-1], -np.inf)
        block["mag_max"] = np.append(edges[1:], np.inf)
        block["n_ref"] = np.append(binned["n_truth"], total.n_truth).astype(np.int64)
        block["n_ref_matched"] = np.append(binned["n_truth_matched"], total.n_matched).astype(np.int64)
        block["completeness"] = np.append(binned["completeness"], total.completeness)
        block["n_det"] = np.append(binned["n_det"], total.n_det).astype(np.int64)
        block["n_det_matched"] = np.append(binned["n_det_matched"], total.n_matched).astype(np.int64)
        block["purity"] = np.append(binned["purity"], total.purity)
        block["f1"] = np.append(binned["f1"], total.f1)

        # Star/galaxy classification of the matched pairs, per bin and overall.
        usable = bool(np.any(ref_class >= 0) and np.any(det_class >= 0))
        per_bin = classification_scores_vs_mag(match, ref_class, det_class, ref_mag, edges, names)
        overall = classification_scores(ref_class[match.truth_index], det_class[match.det_index], names)
        for class_id, class_name in names.items():
            in_class = per_bin[per_bin["class_id"] == class_id]
            last = overall[overall["class_id"] == class_id]
            block[f"{class_name}_n_true"] = np.append(in_class["n_true"], last["n_true"]).astype(np.int64)
            for metric in ("precision", "recall", "f1"):
                values = np.append(in_class[metric], last[metric]).astype(np.float64)
                block[f"{class_name}_{metric}"] = values if usable else np.full(n_bins + 1, np.nan)

        # IoU of the matched pairs whose reference object is in the bin.
        pair_bin = magnitude_bin_index(ref_mag[match.truth_index], edges)
        for kind, values in (("bbox", match.bbox_iou), ("mask", match.mask_iou)):
            medians = []
            for i in range(n_bins + 1):
                chosen = values if i == n_bins else values[pair_bin == i]
                chosen = chosen[np.isfinite(chosen)]
                medians.append(float(np.median(chosen)) if chosen.size else np.nan)
            block[f"median_{kind}_iou"] = np.array(medians)

        # Blend outcomes of the reference objects (BlendOutcomes only needs its truth table to bin them).
        outcome_table = Table({"outcome": rows.ref_outcome, "matched": rows.ref_matched, "mag": ref_mag})
        fractions = BlendOutcomes(
            groups=Table(), truth=outcome_table, detections=Table(), linking_length=0.0, match_radius=0.0
        ).fractions_vs_mag(edges)
        n_all = len(outcome_table)
        for name in TRUTH_OUTCOMES:
            count = int(np.sum(rows.ref_outcome == name))
            block[f"n_{name}"] = np.append(fractions[f"n_{name}"], count).astype(np.int64)
            block[f"frac_{name}"] = np.append(fractions[f"frac_{name}"], count / n_all if n_all else np.nan)
        spurious = rows.det_outcome == "spurious"
        spurious_bin = magnitude_bin_index(rows.det_mag[spurious], edges)
        block["n_spurious"] = np.append(
            np.bincount(spurious_bin[spurious_bin >= 0], minlength=n_bins), int(spurious.sum())
        ).astype(np.int64)
        blocks.append(block)
    if not blocks:
        raise ValueError("the match table names no method to summarise")
    summary = vstack(blocks, metadata_conflicts="silent")
    summary.meta.update(
        {
            "mag_bins": [float(v) for v in edges],
            "methods": methods,
            "class_names": class_names,
            "reference": reference,
            "outcomes": list(OUTCOMES),
        }
    )
    return summary


# ---------------------------------------------------------------------------------------------------------
# Artifacts (ghosts, rays): truth artifacts, DeepDISC's artifact detections and flags.
# ---------------------------------------------------------------------------------------------------------
