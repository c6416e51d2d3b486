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
"""The operating point of a detection model: precision and recall against score, and the threshold chosen.

A model's catalog carries every detection above a low score threshold; which threshold a science user
should apply is a property of the trained model, measured on validation data.  `precision_recall_curve`
matches the detections above each threshold of a grid one-to-one to the reference (IoU first, then centre
distance, `.matching.match_catalogs`) and pools the counts over the images; `choose_operating_point`
applies one of two rules:

``"best_f1"``
    the threshold with the largest F1 (ties: the lower threshold);
``"min_precision"``
    the lowest threshold whose precision is at least ``min_precision`` (e.g. 0.98); when none reaches it,
    the best-F1 threshold, and the result says so (``rule_met`` false).

The training task uses them to choose a package's score threshold on its validation examples.  The
comparison summary draws the curve of finished catalogs from their match tables instead
(`.comparison.precision_recall_from_matches`), without matching again.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_THRESHOLDS",
    "OPERATING_RULES",
    "choose_operating_point",
    "precision_recall_curve",
]

from collections.abc import Sequence
from typing import Any

import numpy as np

from .matching import SourceArrays, match_catalogs

OPERATING_RULES = ("best_f1", "min_precision")
"""Rules of `choose_operating_point`."""

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9)
"""Score thresholds of the curve when none are given."""


def precision_recall_curve(
    references: Sequence[SourceArrays],
    detections: Sequence[SourceArrays],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    min_iou: float = 0.5,
    iou_type: str = "auto",
    max_distance: float = 3.0,
) -> list[dict[str, float]]:
    """Precision, recall and F1 of the detections above each score threshold, pooled over images.

    Parameters
    ----------
    references, detections : sequence of `.matching.SourceArrays`
        Per image, the reference catalog and the detections (with ``score``), in one pixel frame.
    thresholds : sequence of `float`
        Score thresholds, each in ``[0, 1]``.
    min_iou, iou_type, max_distance
        Matching parameters (`.matching.match_catalogs`).

    Returns
    -------
    curve : `list` [`dict`]
        One entry per threshold, in increasing order: ``threshold``, ``precision``, ``recall``, ``f1``,
        ``n_detections``, ``n_matched``, ``n_reference``.

    Raises
    ------
    ValueError
        If the sequences differ in length, a threshold is outside ``[0, 1]`` or a detection catalog has no
        scores.
    """
    if len(references) != len(detections):
        raise ValueError(f"{len(references)} reference catalogs for {len(detections)} detection catalogs")
    grid = sorted({float(t) for t in thresholds})
    if not grid or grid[0] < 0.0 or grid[-1] > 1.0:
        raise ValueError(f"thresholds must be a non-empty set of values in [0, 1], got {list(thresholds)}")
    n_reference = sum(len(reference) for reference in references)
    curve = []
    for threshold in grid:
        n_detections = n_matched = 0
        for reference, found in zip(references, detections):
            if found.score is None:
                raise ValueError("detections without scores have no precision-recall curve")
            kept = found.select(found.score >= threshold)
            n_detections += len(kept)
            if len(reference) and len(kept):
                match = match_catalogs(
                    reference, kept, min_iou=min_iou, iou_type=iou_type, max_distance=max_distance
                )
                n_matched += match.n_matched
        precision = n_matched / n_detections if n_detections else 1.0
        recall = n_matched / n_reference if n_reference else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        curve.append(
            {
                "threshold": threshold,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "n_detections": n_detections,
                "n_matched": n_matched,
                "n_reference": n_reference,
            }
        )
    return curve


def choose_operating_point(
    curve: Sequence[dict[str, float]], rule: str = "best_f1", min_precision: float = 0.98
) -> dict[str, Any]:
    """The threshold a rule picks on a `precision_recall_curve`.

    Returns
    -------
    point : `dict`
        The chosen curve entry plus ``rule``, ``min_precision`` and ``rule_met`` (false when
        ``"min_precision"`` fell back to the best F1).
    """
    if rule not in OPERATING_RULES:
        raise ValueError(f"rule must be one of {OPERATING_RULES}, got {rule!r}")
    if not curve:
        raise ValueError("an empty curve has no operating point")
    ordered = sorted(curve, key=lambda entry: entry["threshold"])
    f1 = np.array([entry["f1"] for entry in ordered])
    best = ordered[int(np.argmax(f1))]  # argmax takes the first (lowest-threshold) maximum.
    chosen, met = best, True
    if rule == "min_precision":
        passing = [
            entry for entry in ordered if entry["precision"] >= min_precision and entry["n_detections"]
        ]
        chosen, met = (passing[0], True) if passing else (best, False)
    return {**chosen, "rule": rule, "min_precision": min_precision, "rule_met": met}
