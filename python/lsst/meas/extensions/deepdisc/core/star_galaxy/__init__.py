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
"""Star-galaxy separation measured against the PSF: the second stage after the detection network.

At 22-24 mag the detection network calls most point sources galaxies: it sees colour and shape, but not the
PSF, whose width changes from patch to patch.  This stage measures every detection against each band's PSF
(Gaussian matched filters at the refined centroid: a PSF flux and the extended-light excess of a twice-wider
filter) and a small classifier turns those measurements, the colours and the network's own log-odds into a
star probability.  A model package may carry a trained classifier (``star_galaxy``); the detection task then
sets ``class_name`` of its star and galaxy rows from it and writes ``star_galaxy_prob``.

Pure core (numpy, torch for fitting only; no Butler).  Modules:

``_psf_photometry``
    `psf_photometry` (`PsfPhotometry`), `band_psf_sigmas` (from the coadds' PSF FWHM and WCS).
``_classifier``
    `star_galaxy_features`, `StarGalaxyClassifier` (plain arrays, safe YAML), `fit_star_galaxy`,
    `best_f1_threshold`, `star_f1`.
``_reliability``
    `reliability_features`, `ReliabilityClassifier` (is a detection a real source?), `fit_reliability`,
    `purity_threshold`.
``_catalog``
    `catalog_features` (a classifier's rows and inputs of a detection catalog), `measured_bands`,
    `apply_star_galaxy`, `judge_reliability`.

Both classifiers are `EnsembleClassifier` s (`fit_ensemble`): the same small networks, stored the same way.
"""

from __future__ import annotations

__all__ = [
    "FEATURE_NAMES_BASE",
    "RELIABILITY_EXTRA_FEATURES",
    "EnsembleClassifier",
    "ReliabilityClassifier",
    "ReliabilityError",
    "ReliabilityResult",
    "fit_ensemble",
    "fit_reliability",
    "judge_reliability",
    "purity_threshold",
    "reliability_feature_names",
    "reliability_features",
    "MAX_SHIFT_PIXELS",
    "WIDE_FACTOR",
    "PsfPhotometry",
    "StarGalaxyClassifier",
    "StarGalaxyError",
    "StarGalaxyResult",
    "apply_star_galaxy",
    "band_psf_sigmas",
    "best_f1_threshold",
    "catalog_features",
    "feature_names",
    "fit_star_galaxy",
    "measured_bands",
    "psf_photometry",
    "star_f1",
    "star_galaxy_features",
]

from ._catalog import (
    ReliabilityResult,
    StarGalaxyResult,
    apply_star_galaxy,
    catalog_features,
    judge_reliability,
    measured_bands,
)
from ._classifier import (
    FEATURE_NAMES_BASE,
    EnsembleClassifier,
    StarGalaxyClassifier,
    StarGalaxyError,
    best_f1_threshold,
    feature_names,
    fit_ensemble,
    fit_star_galaxy,
    star_f1,
    star_galaxy_features,
)
from ._psf_photometry import MAX_SHIFT_PIXELS, WIDE_FACTOR, PsfPhotometry, band_psf_sigmas, psf_photometry
from ._reliability import (
    RELIABILITY_EXTRA_FEATURES,
    ReliabilityClassifier,
    ReliabilityError,
    fit_reliability,
    purity_threshold,
    reliability_feature_names,
    reliability_features,
)
