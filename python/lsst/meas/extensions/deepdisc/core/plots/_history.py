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

"""The training history figure."""

from __future__ import annotations

__all__ = ["plot_training_history", "training_history_figure"]

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def training_history_figure(
    history: Sequence[Mapping[str, Any]], stage_boundary: int | None = None
) -> Figure:
    """Loss components and validation metrics against iteration.

    Parameters
    ----------
    history : `~collections.abc.Sequence` [`dict`]
        `.training.TrainingResult.history` (or the ``history`` of a checkpoint state file).
    stage_boundary : `int`, optional
        Iteration at which stage 2 starts (``heads_iterations``), drawn as a vertical line; by default
        the last validation of stage 1 (exact when ``eval_period`` divides ``heads_iterations``).

    Returns
    -------
    figure : `matplotlib.figure.Figure`
        Two panels: losses (training solid, validation dashed) and validation metrics.

    Raises
    ------
    ValueError
        If ``history`` is empty.
    """
    if not history:
        raise ValueError("the training history is empty: nothing to plot")
    iterations = np.array([entry["iteration"] for entry in history], dtype=np.float64)

    def series(key: str) -> np.ndarray:
        return np.array(
            [np.nan if entry.get(key) is None else float(entry[key]) for entry in history], dtype=np.float64
        )

    keys = {key for entry in history for key in entry}
    # One colour per loss component; training solid, validation dashed; totals thicker.
    components = sorted({key.split("_", 1)[1] for key in keys if key.startswith(("train_loss", "val_loss"))})
    colours = {name: f"C{index % 10}" for index, name in enumerate(components)}
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)  # Renders without pyplot, so no global backend is touched.
    losses, metrics = figure.subplots(1, 2)
    all_positive = True
    for prefix, style in (("train", "-"), ("val", "--")):
        for name in components:
            values = series(f"{prefix}_{name}")
            finite = np.isfinite(values)
            if not finite.any():
                continue
            all_positive &= bool(np.all(values[finite] > 0))
            losses.plot(
                iterations,
                values,
                color=colours[name],
                linestyle=style,
                linewidth=2.2 if name == "loss" else 1.0,
                marker="o",
                markersize=3,
                label=f"{prefix}_{name}",
            )
    if stage_boundary is None:
        # An entry's stage is that of its last iteration: stage 2 began after the last stage-1 entry.
        switch = np.flatnonzero(np.diff(series("stage")) > 0)
        stage_boundary = int(iterations[switch[0]]) if switch.size else None
    for axes in (losses, metrics):
        if stage_boundary is not None:
            axes.axvline(stage_boundary, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("iteration")
    losses.set_ylabel("loss")
    losses.set_title("Losses (solid: training, dashed: validation)")
    if all_positive and components:
        losses.set_yscale("log")
    if components:
        losses.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plotted = False
    for key in ("precision", "recall", "f1", "class_accuracy", "ap", "ap50"):
        values = series(key)
        if np.any(np.isfinite(values)):
            metrics.plot(iterations, values, marker="o", markersize=3, label=key)
            plotted = True
    metrics.set_title("Validation metrics")
    metrics.set_ylim(-0.02, 1.02)
    if plotted:
        metrics.legend(fontsize="small")
    else:
        metrics.text(0.5, 0.5, "no validation metrics", ha="center", va="center", transform=metrics.transAxes)
    figure.tight_layout()
    return figure


def plot_training_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], stage_boundary: int | None = None
) -> Path:
    """Write `training_history_figure` as a PNG file.

    Parameters
    ----------
    history : `~collections.abc.Sequence` [`dict`]
        `.training.TrainingResult.history` (or the ``history`` of a checkpoint state file).
    path : `str` or `os.PathLike`
        Output file (PNG).
    stage_boundary : `int`, optional
        See `training_history_figure`.

    Returns
    -------
    path : `pathlib.Path`
        The file written.
    """
    path = Path(path)
    training_history_figure(history, stage_boundary).savefig(path, dpi=100, format="png")
    return path
