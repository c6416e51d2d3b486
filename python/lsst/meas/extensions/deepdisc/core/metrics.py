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

"""Detection, classification and segmentation metrics of a catalog against truth.

All metrics are computed from a one-to-one match (`~.matching.match_catalogs`: IoU matches first, then
centre-distance matches among the leftovers) unless stated otherwise.  Counts are plain integers, ratios are
``NaN`` when their denominator is zero.

Detection
    *Completeness* (recall) ``C = N_matched / N_truth``: fraction of truth objects with a matched detection.
    *Purity* (precision) ``P = N_matched / N_det``: fraction of detections with a matched truth object.
    *F1* ``= 2 P C / (P + C)`` (``0`` when ``P = C = 0``).

Detection versus magnitude
    Bins are half-open ``[mag_min, mag_max)``; objects with a non-finite magnitude fall in no bin.
    Completeness in a bin uses the truth objects whose *truth* magnitude is in the bin.  Purity in a bin
    uses the detections whose magnitude is in the bin, where a detection's magnitude is, by default
    (``purity_mag="matched_truth"``), the truth magnitude of its matched truth object and, for an unmatched
    detection, its measured magnitude; with ``purity_mag="measured"`` the measured magnitude is used for
    every detection.  The default puts matched objects in the same bin on both axes, so blending biases of
    the measured flux do not move objects between the completeness and purity bins.  Without measured
    magnitudes, unmatched detections cannot be binned and the purity columns are omitted.

Star/galaxy classification (on matched pairs)
    For each class ``c`` among the matched pairs whose truth and predicted classes are both known
    (``class_id >= 0``): ``TP_c`` = pairs with truth ``c`` predicted ``c``; *precision*
    ``= TP_c / (pairs predicted c)``; *recall* ``= TP_c / (pairs with truth c)``; *F1* their harmonic mean.
    Versus magnitude, pairs are binned by the truth magnitude.  Detection failures do not enter these
    numbers; they are measured by completeness and purity.

Segmentation quality
    Median (and mean) bounding-box IoU and footprint (mask) IoU over the matched pairs.  Footprint IoU is
    computed on spans.  Pairs made by the distance stage are included (they have low IoU by construction);
    ``iou_summary(match, methods=("iou",))`` restricts to IoU-matched pairs.

DeepDISC matched set (Merz et al. 2023)
    Each detection is paired with its highest bounding-box-IoU truth object and kept if that IoU is
    ``>= 0.5`` (`~.matching.match_deepdisc`; not one-to-one).  *Detection precision*
    ``= matched detections / N_det``; *detection recall* ``= distinct truth objects matched / N_truth``;
    *median bbox IoU* over the matched detections; star/galaxy precision, recall and F1 as above but over
    this matched set (a truth object matched by two detections counts twice), which is how the paper's
    classification numbers are defined.

Presence (image level, DeepGhostBusters' "has artifact" scores)
    Each image (patch) is a positive when it has at least one truth object (e.g. an artifact) and is
    predicted positive when it has at least one detection: *precision* ``= TP / (TP + FP)``, *recall*
    ``= TP / (TP + FN)``, *F1* their harmonic mean, *accuracy* ``= (TP + TN) / N_images``
    (`presence_scores`).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "DeepDiscScores",
    "DetectionScores",
    "IoUSummary",
    "classification_scores",
    "classification_scores_vs_mag",
    "deepdisc_scores",
    "detection_scores",
    "detection_scores_vs_mag",
    "iou_summary",
    "magnitude_bin_index",
    "presence_scores",
]

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from astropy.table import Table, vstack

from .matching import DeepDiscMatch, MatchResult

DEFAULT_CLASS_NAMES: dict[int, str] = {0: "star", 1: "galaxy"}
"""Class id to name used when none is given."""


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def _f1(precision: float, recall: float) -> float:
    if np.isnan(precision) or np.isnan(recall):
        return float("nan")
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def _f1_array(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    return np.array([_f1(p, r) for p, r in zip(precision, recall)], dtype=np.float64)


def magnitude_bin_index(mag: np.ndarray, bins: Sequence[float]) -> np.ndarray:
    """Bin of each magnitude for edges ``bins`` (half-open bins); ``-1`` outside the bins or non-finite.

    Raises
    ------
    ValueError
        If fewer than two edges are given or they are not strictly increasing.
    """
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
        raise ValueError(f"magnitude bins must be >= 2 finite, strictly increasing edges, got {bins}")
    mag = np.asarray(mag, dtype=np.float64)
    index = np.searchsorted(edges, mag, side="right") - 1
    index[~np.isfinite(mag) | (index < 0) | (index >= edges.size - 1)] = -1
    return index


def _bin_columns(bins: Sequence[float]) -> dict[str, np.ndarray]:
    edges = np.asarray(bins, dtype=np.float64)
    return {"mag_min": edges[:-1], "mag_max": edges[1:]}


def presence_scores(truth_present: np.ndarray, predicted_present: np.ndarray) -> dict[str, float]:
    """Image-level presence scores (see the module documentation).

    Parameters
    ----------
    truth_present, predicted_present : `numpy.ndarray`
        One boolean per image: whether it has a truth object, and whether it has a detection.

    Returns
    -------
    scores : `dict` [`str`, `float`]
        ``n_images, tp, fp, fn, tn, precision, recall, f1, accuracy`` (ratios NaN on a zero denominator).
    """
    truth = np.asarray(truth_present, dtype=bool).reshape(-1)
    predicted = np.asarray(predicted_present, dtype=bool).reshape(-1)
    if truth.size != predicted.size:
        raise ValueError(f"{truth.size} truth flags but {predicted.size} predicted flags")
    tp = int(np.sum(truth & predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    tn = int(np.sum(~truth & ~predicted))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "n_images": int(truth.size),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "accuracy": _ratio(tp + tn, truth.size),
    }


@dataclass(frozen=True)
class DetectionScores:
    """Completeness, purity and F1 of a one-to-one match (see the module documentation)."""

    n_truth: int
    n_det: int
    n_matched: int
    completeness: float
    purity: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        """Plain dictionary of the fields."""
        return asdict(self)


def detection_scores(match: MatchResult) -> DetectionScores:
    """Overall completeness (recall), purity (precision) and F1 of a match."""
    completeness = _ratio(match.n_matched, match.n_truth)
    purity = _ratio(match.n_matched, match.n_det)
    return DetectionScores(
        n_truth=match.n_truth,
        n_det=match.n_det,
        n_matched=match.n_matched,
        completeness=completeness,
        purity=purity,
        f1=_f1(purity, completeness),
    )


def detection_scores_vs_mag(
    match: MatchResult,
    truth_mag: np.ndarray,
    bins: Sequence[float],
    det_mag: np.ndarray | None = None,
    purity_mag: Literal["matched_truth", "measured"] = "matched_truth",
) -> Table:
    """Completeness, purity and F1 in magnitude bins.

    Parameters
    ----------
    match : `~.matching.MatchResult`
        One-to-one match.
    truth_mag : `numpy.ndarray`
        Truth magnitude of every truth object.
    bins : `~collections.abc.Sequence` [`float`]
        Bin edges.
    det_mag : `numpy.ndarray`, optional
        Measured magnitude of every detection; without it the purity columns are omitted.
    purity_mag : {"matched_truth", "measured"}
        Which magnitude bins a matched detection (see the module documentation).

    Returns
    -------
    table : `astropy.table.Table`
        One row per bin: ``mag_min, mag_max, n_truth, n_truth_matched, completeness`` and, with ``det_mag``,
        ``n_det, n_det_matched, purity, f1``.
    """
    truth_mag = np.asarray(truth_mag, dtype=np.float64)
    if truth_mag.size != match.n_truth:
        raise ValueError(f"truth_mag has {truth_mag.size} values for {match.n_truth} truth objects")
    if purity_mag not in ("matched_truth", "measured"):
        raise ValueError(f"purity_mag must be 'matched_truth' or 'measured', got {purity_mag!r}")
    n_bins = len(bins) - 1
    truth_bin = magnitude_bin_index(truth_mag, bins)
    matched_truth = np.zeros(match.n_truth, dtype=bool)
    matched_truth[match.truth_index] = True
    in_bin = truth_bin >= 0
    n_truth = np.bincount(truth_bin[in_bin], minlength=n_bins)
    n_truth_matched = np.bincount(truth_bin[in_bin & matched_truth], minlength=n_bins)
    completeness = np.array([_ratio(m, n) for m, n in zip(n_truth_matched, n_truth)])
    table = Table(_bin_columns(bins))
    table["n_truth"] = n_truth
    table["n_truth_matched"] = n_truth_matched
    table["completeness"] = completeness
    table["n_truth"].description = "Truth objects with truth magnitude in the bin"
    table["completeness"].description = "n_truth_matched / n_truth"
    if det_mag is not None:
        det_mag = np.asarray(det_mag, dtype=np.float64)
        if det_mag.size != match.n_det:
            raise ValueError(f"det_mag has {det_mag.size} values for {match.n_det} detections")
        effective = det_mag.copy()
        if purity_mag == "matched_truth":
            effective[match.det_index] = truth_mag[match.truth_index]
        det_bin = magnitude_bin_index(effective, bins)
        matched_det = np.zeros(match.n_det, dtype=bool)
        matched_det[match.det_index] = True
        in_bin = det_bin >= 0
        n_det = np.bincount(det_bin[in_bin], minlength=n_bins)
        n_det_matched = np.bincount(det_bin[in_bin & matched_det], minlength=n_bins)
        purity = np.array([_ratio(m, n) for m, n in zip(n_det_matched, n_det)])
        table["n_det"] = n_det
        table["n_det_matched"] = n_det_matched
        table["purity"] = purity
        table["f1"] = _f1_array(purity, completeness)
        table["n_det"].description = f"Detections in the bin ({purity_mag} magnitude for matched ones)"
        table["purity"].description = "n_det_matched / n_det"
    table.meta["purity_mag"] = purity_mag
    return table


def _class_names(class_names: Mapping[int, str] | None) -> dict[int, str]:
    return dict(DEFAULT_CLASS_NAMES if class_names is None else class_names)


def classification_scores(
    true_class: np.ndarray, pred_class: np.ndarray, class_names: Mapping[int, str] | None = None
) -> Table:
    """Per-class precision, recall and F1 of paired labels.

    Parameters
    ----------
    true_class, pred_class : `numpy.ndarray`
        Labels of the same pairs; pairs where either is negative (unknown) are skipped.
    class_names : `~collections.abc.Mapping` [`int`, `str`], optional
        Classes to report (default ``{0: "star", 1: "galaxy"}``).

    Returns
    -------
    table : `astropy.table.Table`
        One row per class: ``class_id, class_name, n_true, n_pred, n_correct, precision, recall, f1``;
        ``meta["accuracy"]`` is the fraction of usable pairs labelled correctly.
    """
    names = _class_names(class_names)
    true_class = np.asarray(true_class, dtype=np.int64).reshape(-1)
    pred_class = np.asarray(pred_class, dtype=np.int64).reshape(-1)
    if true_class.size != pred_class.size:
        raise ValueError(f"{true_class.size} true labels but {pred_class.size} predicted labels")
    usable = (true_class >= 0) & (pred_class >= 0)
    true_class, pred_class = true_class[usable], pred_class[usable]
    rows = []
    for class_id, name in sorted(names.items()):
        n_true = int(np.sum(true_class == class_id))
        n_pred = int(np.sum(pred_class == class_id))
        n_correct = int(np.sum((true_class == class_id) & (pred_class == class_id)))
        precision, recall = _ratio(n_correct, n_pred), _ratio(n_correct, n_true)
        rows.append((class_id, name, n_true, n_pred, n_correct, precision, recall, _f1(precision, recall)))
    table = Table(
        rows=rows or None,
        names=("class_id", "class_name", "n_true", "n_pred", "n_correct", "precision", "recall", "f1"),
        dtype=(np.int64, str, np.int64, np.int64, np.int64, np.float64, np.float64, np.float64),
    )
    table["precision"].description = "n_correct / n_pred"
    table["recall"].description = "n_correct / n_true"
    table.meta["accuracy"] = _ratio(int(np.sum(true_class == pred_class)), true_class.size)
    table.meta["n_pairs"] = int(true_class.size)
    return table


def _pair_labels(
    truth_index: np.ndarray, det_index: np.ndarray, truth_class: np.ndarray, det_class: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    truth_class = np.asarray(truth_class, dtype=np.int64)
    det_class = np.asarray(det_class, dtype=np.int64)
    return truth_class[truth_index], det_class[det_index]


def classification_scores_vs_mag(
    match: MatchResult | DeepDiscMatch,
    truth_class: np.ndarray,
    det_class: np.ndarray,
    truth_mag: np.ndarray,
    bins: Sequence[float],
    class_names: Mapping[int, str] | None = None,
) -> Table:
    """Per-class precision, recall and F1 of matched pairs binned by truth magnitude.

    Returns
    -------
    table : `astropy.table.Table`
        One row per (bin, class): ``mag_min, mag_max`` then the columns of `classification_scores`.
    """
    true_labels, pred_labels = _pair_labels(match.truth_index, match.det_index, truth_class, det_class)
    pair_bin = magnitude_bin_index(np.asarray(truth_mag, dtype=np.float64)[match.truth_index], bins)
    edges = np.asarray(bins, dtype=np.float64)
    tables = []
    for i in range(edges.size - 1):
        selected = pair_bin == i
        table = classification_scores(true_labels[selected], pred_labels[selected], class_names)
        table.add_column(np.full(len(table), edges[i]), name="mag_min", index=0)
        table.add_column(np.full(len(table), edges[i + 1]), name="mag_max", index=1)
        table.meta.clear()
        tables.append(table)
    return vstack(tables, metadata_conflicts="silent")


@dataclass(frozen=True)
class IoUSummary:
    """Median and mean IoU of matched pairs (NaN when no pair or no information)."""

    n_pairs: int
    median_bbox_iou: float
    mean_bbox_iou: float
    median_mask_iou: float
    mean_mask_iou: float

    def as_dict(self) -> dict[str, float]:
        """Plain dictionary of the fields."""
        return asdict(self)


def _nan_stat(values: np.ndarray, func: str) -> float:
    values = values[np.isfinite(values)]
    return float(getattr(np, func)(values)) if values.size else float("nan")


def iou_summary(match: MatchResult, methods: Sequence[str] = ("iou", "distance")) -> IoUSummary:
    """Median and mean bounding-box and footprint IoU over the matched pairs made by ``methods``."""
    selected = np.isin(match.method, list(methods))
    bbox, mask = match.bbox_iou[selected], match.mask_iou[selected]
    return IoUSummary(
        n_pairs=int(selected.sum()),
        median_bbox_iou=_nan_stat(bbox, "median"),
        mean_bbox_iou=_nan_stat(bbox, "mean"),
        median_mask_iou=_nan_stat(mask, "median"),
        mean_mask_iou=_nan_stat(mask, "mean"),
    )


@dataclass(frozen=True)
class DeepDiscScores:
    """DeepDISC matched-set metrics (see the module documentation).

    Attributes
    ----------
    classification : `astropy.table.Table` or `None`
        Per-class precision/recall/F1 over the matched set, when classes are known on both sides.
    """

    n_truth: int
    n_det: int
    n_matched_det: int
    n_truth_recovered: int
    detection_precision: float
    detection_recall: float
    detection_f1: float
    median_bbox_iou: float
    classification: Table | None = None

    def as_dict(self) -> dict[str, float]:
        """Scalar fields, plus ``{class_name}_{precision,recall,f1}`` from the classification table."""
        out: dict[str, float] = {key: value for key, value in asdict(self).items() if key != "classification"}
        if self.classification is not None:
            for row in self.classification:
                for metric in ("precision", "recall", "f1"):
                    out[f"{row['class_name']}_{metric}"] = float(row[metric])
        return out


def deepdisc_scores(
    match: DeepDiscMatch,
    truth_class: np.ndarray | None = None,
    det_class: np.ndarray | None = None,
    class_names: Mapping[int, str] | None = None,
) -> DeepDiscScores:
    """Matched-set metrics of DeepDISC's many-to-one matching."""
    precision = _ratio(match.n_matched_det, match.n_det)
    recall = _ratio(match.n_truth_recovered, match.n_truth)
    classification = None
    if truth_class is not None and det_class is not None:
        true_labels, pred_labels = _pair_labels(match.truth_index, match.det_index, truth_class, det_class)
        classification = classification_scores(true_labels, pred_labels, class_names)
    return DeepDiscScores(
        n_truth=match.n_truth,
        n_det=match.n_det,
        n_matched_det=match.n_matched_det,
        n_truth_recovered=match.n_truth_recovered,
        detection_precision=precision,
        detection_recall=recall,
        detection_f1=_f1(precision, recall),
        median_bbox_iou=_nan_stat(match.bbox_iou, "median"),
        classification=classification,
    )
