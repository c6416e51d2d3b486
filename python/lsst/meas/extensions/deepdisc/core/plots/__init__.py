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

"""Matplotlib figures of the comparison metrics (DeepDISC, scarlet, sep, labels against a reference).

Every builder returns a `matplotlib.figure.Figure` attached to an Agg canvas: no ``pyplot``, no global
state, no display needed, so the figures can be built in pipeline processes and written by the Butler's
``Plot`` storage class (PNG).  Inputs are the tables of `~.comparison`: the per-bin summary of
`~.comparison.summarize_matches` and the match table of `~.comparison.compare_to_reference`.

Methods always get the same colour (`METHOD_COLORS`), classes the same outline colour (`CLASS_COLORS`), so
figures of different tracts can be compared at a glance.

`training_history_figure` draws the loss and validation curves of a training run (`.training`).
`confusion_matrix_figure`, `morphology_accuracy_figure` and `morphology_cutouts_figure` show the morphology
stage (`.morphology`); `star_galaxy_figure` and `reliability_figure` the second stage's two classifiers
(`.star_galaxy`).
"""

from __future__ import annotations

__all__ = [
    "precision_recall_figure",
    "ARTIFACT_COLORS",
    "CLASS_COLORS",
    "METHOD_COLORS",
    "OverlayPanel",
    "artifact_metrics_figure",
    "artifact_overlay_box",
    "blend_outcomes_figure",
    "classification_figure",
    "completeness_purity_figure",
    "confusion_matrix_figure",
    "draw_footprint_outlines",
    "figure_to_png_bytes",
    "iou_figure",
    "lupton_rgb",
    "morphology_accuracy_figure",
    "morphology_cutouts_figure",
    "overlay_figure",
    "plot_training_history",
    "reliability_figure",
    "star_galaxy_figure",
    "training_history_figure",
]

from ._history import plot_training_history, training_history_figure
from ._images import OverlayPanel, draw_footprint_outlines, lupton_rgb, overlay_figure
from ._metrics import (
    ARTIFACT_COLORS,
    CLASS_COLORS,
    METHOD_COLORS,
    artifact_metrics_figure,
    artifact_overlay_box,
    blend_outcomes_figure,
    classification_figure,
    completeness_purity_figure,
    figure_to_png_bytes,
    iou_figure,
    precision_recall_figure,
)
from ._morphology import confusion_matrix_figure, morphology_accuracy_figure, morphology_cutouts_figure
from ._star_galaxy import reliability_figure, star_galaxy_figure
