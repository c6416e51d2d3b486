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
"""Figures of the morphology stage: confusion matrix, accuracy against size and magnitude, cutouts."""

from __future__ import annotations

__all__ = ["confusion_matrix_figure", "morphology_accuracy_figure", "morphology_cutouts_figure"]

from collections.abc import Sequence

import numpy as np
from astropy.table import Table
from matplotlib.figure import Figure

from ._metrics import _new_figure


def confusion_matrix_figure(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix (true class in rows), with the counts written in every cell."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    n = len(class_names)
    figure = _new_figure(1.0 + 0.75 * n, 0.8 + 0.7 * n)
    axes = figure.add_subplot()
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                colour = "white" if fractions[i, j] > 0.6 else "black"
                axes.text(
                    j,
                    i,
                    f"{fractions[i, j]:.2f}\n({int(matrix[i, j])})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color=colour,
                )
    axes.set_xticks(range(n), class_names)
    axes.set_yticks(range(n), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axes.set_title(title or f"top-1 accuracy {accuracy:.3f} ({int(matrix.sum())} galaxies)", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    return figure


def morphology_accuracy_figure(bins: dict[str, Table], title: str = "") -> Figure:
    """Top-1 accuracy with binomial errors in bins of each quantity (``{"size (arcsec)": table, ...}``).

    Each table has the columns of `~..morphology.accuracy_by_bin`.
    """
    figure = _new_figure(4.0 * len(bins), 3.2)
    for index, (label, table) in enumerate(bins.items()):
        axes = figure.add_subplot(1, len(bins), index + 1)
        centre = 0.5 * (np.asarray(table["lo"]) + np.asarray(table["hi"]))
        filled = np.asarray(table["n"]) > 0
        axes.errorbar(
            centre[filled],
            np.asarray(table["accuracy"])[filled],
            yerr=np.asarray(table["error"])[filled],
            marker="o",
            capsize=3,
        )
        for x, n in zip(centre[filled], np.asarray(table["n"])[filled]):
            axes.annotate(str(n), (x, 0.02), ha="center", fontsize=7, color="grey")
        axes.set_ylim(0.0, 1.02)
        axes.set_xlabel(label)
        axes.set_ylabel("top-1 accuracy")
        axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


def morphology_cutouts_figure(
    cutouts: np.ndarray,
    true_labels: Sequence[str],
    predicted: Sequence[str],
    bands: Sequence[str],
    per_row: int = 6,
    title: str = "",
) -> Figure:
    """Colour composites of classifier inputs, titled ``true -> predicted`` (red when they differ).

    ``cutouts`` are `~..morphology.make_cutouts` stacks (the arcsinh bands, then no_data and object_mask);
    the composite uses i, r, g when present (else the last three bands) and outlines the object mask.
    """
    n = len(cutouts)
    rows = max(1, int(np.ceil(n / per_row)))
    figure = _new_figure(1.6 * per_row, 1.75 * rows)
    names = list(bands)
    chosen = [names.index(b) for b in ("i", "r", "g") if b in names]
    if len(chosen) < 3:
        chosen = list(range(max(0, len(names) - 3), len(names)))[::-1]
    for index in range(n):
        axes = figure.add_subplot(rows, per_row, index + 1)
        planes = np.asarray(cutouts[index], dtype=float)
        rgb = np.stack([planes[c] for c in (chosen * 3)[:3]], axis=-1)
        top = np.percentile(rgb, 99.5) or 1.0
        axes.imshow(np.clip(rgb / top, 0.0, 1.0), origin="lower")
        axes.contour(planes[len(names) + 1], levels=[0.5], colors="cyan", linewidths=0.5)
        wrong = true_labels[index] != predicted[index]
        axes.set_title(
            f"{true_labels[index]} -> {predicted[index]}", fontsize=7, color="red" if wrong else "black"
        )
        axes.set_xticks([])
        axes.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=9)
    return figure
