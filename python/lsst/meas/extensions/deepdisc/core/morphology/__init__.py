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
"""Galaxy morphology: Hubble-type classification of detected galaxies from HDR multi-band cutouts.

The method follows Kang, Shin & Kim: a classifier sees, per galaxy, every band as a high-dynamic-range image
(no 8-bit rendering), a plane of the pixels without data and the galaxy's own dilated object mask, and
predicts one of the Hubble-sequence classes.  Our detections provide all three inputs: the coadd bands, the
NO_DATA plane and a footprint per galaxy.

Pure core (numpy, torch; no Butler).  Modules:

``_cutouts``
    `CutoutConfig`, `make_cutouts` (the ``[N, C + 2, S, S]`` input stacks; large galaxies are binned to
    fit), `band_noise`.
``_models``
    `build_classifier` from plain data: ``compact_cnn`` (CPU) and ``swin`` (shifted-window transformer).
``_package``
    `MorphologyPackage`, the safe file of a trained classifier.
``_training``
    `train_classifier` (imbalance handling: none, balanced sampling, loss weights), `classify`.
``_metrics``
    `evaluate_classification` (`MorphologyEvaluation`): `top_k_accuracy`, `confusion_matrix`,
    `neighbour_fraction`, `accuracy_by_bin`.
``_labels``
    `match_labels`: a labelled catalog (positions and classes) matched to detections one to one.
``_catalog``
    `select_galaxies`, `catalog_cutouts` (from ``object_deepdisc`` rows), `morphology_table` (the output;
    its schema: `morphology_columns`).
"""

from __future__ import annotations

__all__ = [
    "ARCHITECTURES",
    "MORPHOLOGY_FORMAT_NAME",
    "ClassifierTrainingConfig",
    "CutoutConfig",
    "CutoutError",
    "LabelMatch",
    "MorphologyEvaluation",
    "MorphologyPackage",
    "accuracy_by_bin",
    "band_noise",
    "build_classifier",
    "catalog_cutouts",
    "check_classifier_config",
    "class_index",
    "classify",
    "confusion_matrix",
    "drop_bands",
    "evaluate_classification",
    "make_cutouts",
    "match_labels",
    "morphology_columns",
    "morphology_table",
    "neighbour_fraction",
    "select_galaxies",
    "top_k_accuracy",
    "train_classifier",
]

from ._catalog import catalog_cutouts, morphology_columns, morphology_table, select_galaxies
from ._cutouts import CutoutConfig, CutoutError, band_noise, make_cutouts
from ._labels import LabelMatch, match_labels
from ._metrics import (
    MorphologyEvaluation,
    accuracy_by_bin,
    confusion_matrix,
    evaluate_classification,
    neighbour_fraction,
    top_k_accuracy,
)
from ._models import ARCHITECTURES, build_classifier, check_classifier_config
from ._package import MORPHOLOGY_FORMAT_NAME, MorphologyPackage, class_index
from ._training import ClassifierTrainingConfig, classify, drop_bands, train_classifier
