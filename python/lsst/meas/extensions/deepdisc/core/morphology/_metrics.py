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
"""Classification metrics of the morphology paper: top-k accuracy, confusion matrix, accuracy per bin."""

from __future__ import annotations

__all__ = [
    "MorphologyEvaluation",
    "accuracy_by_bin",
    "confusion_matrix",
    "evaluate_classification",
    "neighbour_fraction",
    "top_k_accuracy",
]

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of objects whose true class is among the ``k`` most probable (NaN without objects)."""
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return float("nan")
    if not 1 <= k <= probabilities.shape[1]:
        raise ValueError(f"k must be in [1, {probabilities.shape[1]}], got {k}")
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def neighbour_fraction(matrix: np.ndarray) -> float:
    """Fraction of the misclassifications that land on a neighbouring type (classes in sequence order)."""
    matrix = np.asarray(matrix)
    true, pred = np.indices(matrix.shape)
    wrong = matrix[true != pred].sum()
    if wrong == 0:
        return float("nan")
    return float(matrix[np.abs(true - pred) == 1].sum() / wrong)


def accuracy_by_bin(values: np.ndarray, correct: np.ndarray, edges: np.ndarray) -> Table:
    """Top-1 accuracy in bins of ``values`` (size, magnitude): ``lo``, ``hi``, ``n``, ``accuracy``, ``error``.

    The error is the binomial standard error (NaN for empty bins).
    """
    values = np.asarray(values, dtype=float)
    correct = np.asarray(correct, dtype=bool)
    edges = np.asarray(edges, dtype=float)
    which = np.digitize(values, edges) - 1
    rows = []
    for index in range(len(edges) - 1):
        chosen = correct[which == index]
        n = int(chosen.size)
        accuracy = float(chosen.mean()) if n else float("nan")
        error = float(np.sqrt(accuracy * (1 - accuracy) / n)) if n else float("nan")
        rows.append((edges[index], edges[index + 1], n, accuracy, error))
    return Table(
        rows=rows, names=("lo", "hi", "n", "accuracy", "error"), dtype=(float, float, int, float, float)
    )


@dataclass
class MorphologyEvaluation:
    """Classification results against labels.

    Parameters
    ----------
    n : `int`
        Objects evaluated.
    top1, top2, top3 : `float`
        Top-k accuracies.
    confusion : `numpy.ndarray`
        ``[true, predicted]`` counts.
    neighbour_fraction : `float`
        Fraction of the errors that land on a neighbouring type.
    per_class_recall : `dict` [`str`, `float`]
        Fraction of each true class classified correctly.
    by_size, by_magnitude : `astropy.table.Table` or `None`
        `accuracy_by_bin` tables.
    """

    n: int
    top1: float
    top2: float
    top3: float
    confusion: np.ndarray
    neighbour_fraction: float
    per_class_recall: dict[str, float]
    by_size: Table | None = None
    by_magnitude: Table | None = None

    def summary(self) -> dict[str, float]:
        """Plain numbers (package metadata, reports)."""
        out = {"n": self.n, "top1": self.top1, "top2": self.top2, "top3": self.top3}
        out["neighbour_fraction"] = self.neighbour_fraction
        out.update({f"recall_{name}": value for name, value in self.per_class_recall.items()})
        return out


def evaluate_classification(
    probabilities: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    size: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    size_edges: Sequence[float] = (0.0, 0.4, 0.6, 0.8, 1.0, 1.5, 2.5, 6.0),
    magnitude_edges: Sequence[float] = (16.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0),
) -> MorphologyEvaluation:
    """Top-1/2/3 accuracy, confusion matrix and accuracy against size and magnitude (the paper's metrics).

    Parameters
    ----------
    probabilities : `numpy.ndarray`
        ``[N, K]`` class probabilities.
    labels : `numpy.ndarray`
        ``[N]`` true class indices.
    class_names : sequence of `str`
        The ``K`` classes, in sequence order.
    size, magnitude : `numpy.ndarray`, optional
        Per-object size (e.g. half-light radius, arcsec) and magnitude for the binned accuracies.
    """
    probabilities = np.asarray(probabilities, dtype=float)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    predicted = np.argmax(probabilities, axis=1) if len(labels) else np.zeros(0, np.int64)
    matrix = confusion_matrix(labels, predicted, k)
    totals = matrix.sum(axis=1)
    recall = {
        name: float(matrix[i, i] / totals[i]) if totals[i] else float("nan")
        for i, name in enumerate(class_names)
    }
    correct = predicted == labels
    return MorphologyEvaluation(
        n=len(labels),
        top1=top_k_accuracy(probabilities, labels, 1),
        top2=top_k_accuracy(probabilities, labels, min(2, k)),
        top3=top_k_accuracy(probabilities, labels, min(3, k)),
        confusion=matrix,
        neighbour_fraction=neighbour_fraction(matrix),
        per_class_recall=recall,
        by_size=None if size is None else accuracy_by_bin(size, correct, np.asarray(size_edges)),
        by_magnitude=None
        if magnitude is None
        else accuracy_by_bin(magnitude, correct, np.asarray(magnitude_edges)),
    )
