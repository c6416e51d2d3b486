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
"""The star-galaxy classifier applied to a detection catalog."""

from __future__ import annotations

__all__ = ["StarGalaxyResult", "apply_star_galaxy", "catalog_features", "measured_bands"]

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from ._classifier import EnsembleClassifier, StarGalaxyClassifier, StarGalaxyError, star_galaxy_features
from ._reliability import ReliabilityClassifier, ReliabilityError, reliability_features

_STAR, _GALAXY = "star", "galaxy"


def measured_bands(catalog: Table) -> list[str]:
    """Bands with PSF photometry in a catalog: a ``<band>_psfFlux`` column with at least one finite value.

    In catalog column order.  A band whose coadd had no PSF FWHM has the column, but only NaN.
    """
    suffix = "_psfFlux"
    return [
        name[: -len(suffix)]
        for name in catalog.colnames
        if name.endswith(suffix) and (len(catalog) == 0 or np.isfinite(np.asarray(catalog[name])).any())
    ]


def catalog_features(
    catalog: Table,
    bands: tuple[str, ...] | list[str],
    absent: tuple[str, ...] | list[str] | None = None,
    kind: type[EnsembleClassifier] = StarGalaxyClassifier,
) -> tuple[np.ndarray, np.ndarray]:
    """A classifier's rows of a catalog (star or galaxy class) and their features.

    Neighbour distances are measured among those rows (artifacts are no neighbours).  ``absent`` (default:
    the classifier's bands that the catalog did not measure, `measured_bands`) are treated as missing.
    ``kind``: `StarGalaxyClassifier` (`star_galaxy_features`) or `ReliabilityClassifier`
    (`reliability_features`).

    Returns
    -------
    eligible : `numpy.ndarray`
        Boolean ``[N]``: the rows classified.
    features : `numpy.ndarray`
        ``[eligible.sum(), F]``.
    """
    eligible = np.isin(np.asarray(catalog["class_name"], dtype=str), [_STAR, _GALAXY])
    columns = {name: np.asarray(catalog[name])[eligible] for name in catalog.colnames if name != "footprint"}
    if absent is None:
        measured = set(measured_bands(catalog))
        absent = [band for band in bands if band not in measured]
    features = reliability_features if issubclass(kind, ReliabilityClassifier) else star_galaxy_features
    return eligible, features(columns, bands, absent)


@dataclass(frozen=True)
class StarGalaxyResult:
    """What `apply_star_galaxy` did: rows classified, stars called, classes changed, threshold used."""

    classified: int
    stars: int
    changed: int
    threshold: float


def apply_star_galaxy(
    catalog: Table,
    classifier: StarGalaxyClassifier,
    class_names: list[str] | tuple[str, ...],
    threshold: float | None = None,
) -> StarGalaxyResult:
    """Set ``star_galaxy_prob`` and the class of a catalog's star and galaxy rows from the classifier.

    Rows the network called an artifact keep their class and get NaN.  ``class_id``/``class_name`` of the
    other rows become ``star`` where the probability reaches the threshold, else ``galaxy``; the network's
    own ``prob_<class>`` columns are left as they are.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        A detection catalog with the PSF photometry columns of the classifier's bands (modified in place).
    classifier : `StarGalaxyClassifier`
        The trained classifier.
    class_names : sequence of `str`
        The model's classes in class-id order; must include ``star`` and ``galaxy``.
    threshold : `float`, optional
        Star-probability threshold (default: the classifier's, chosen on validation).

    Raises
    ------
    StarGalaxyError
        If the model has no star and galaxy classes, the catalog lacks an input column, or it measured
        fewer of the classifier's bands than its ``min_bands``.
    """
    names = list(class_names)
    if _STAR not in names or _GALAXY not in names:
        raise StarGalaxyError(f"the star-galaxy classifier needs classes 'star' and 'galaxy', not {names}")
    threshold = classifier.threshold if threshold is None else float(threshold)
    measured = measured_bands(catalog)
    absent = [band for band in classifier.bands if band not in measured]
    if not classifier.runs_on(measured):
        present = [band for band in classifier.bands if band in measured]
        raise StarGalaxyError(
            f"the star-galaxy classifier needs PSF photometry in {classifier.min_bands} of its bands "
            f"{list(classifier.bands)}; the catalog has it in {present}"
        )
    eligible, features = catalog_features(catalog, classifier.bands, absent)
    probability = np.full(len(catalog), np.nan, dtype=np.float32)
    stars = changed = 0
    if eligible.any():
        prob = classifier.predict(features)
        probability[eligible] = prob
        is_star = prob >= threshold
        new_ids = np.where(is_star, names.index(_STAR), names.index(_GALAXY))
        changed = int(np.sum(new_ids != np.asarray(catalog["class_id"])[eligible]))
        stars = int(is_star.sum())
        catalog["class_id"][eligible] = new_ids
        catalog["class_name"][eligible] = np.asarray(names)[new_ids]
    catalog["star_galaxy_prob"][:] = probability
    return StarGalaxyResult(int(eligible.sum()), stars, changed, threshold)


@dataclass(frozen=True)
class ReliabilityResult:
    """What `judge_reliability` found.

    ``reliability``: per catalog row (NaN where not judged); ``keep``: rows to keep (unjudged rows and those
    reaching ``threshold``); ``judged``, ``dropped``: counts.
    """

    reliability: np.ndarray
    keep: np.ndarray
    threshold: float
    judged: int
    dropped: int


def judge_reliability(
    catalog: Table, classifier: ReliabilityClassifier, threshold: float | None = None
) -> ReliabilityResult:
    """The reliability of a catalog's star and galaxy rows and the rows to keep (the catalog is unchanged).

    A star or galaxy row is kept when its reliability reaches the threshold or the network trusts it
    (`ReliabilityClassifier.trusted`).

    Parameters
    ----------
    catalog : `astropy.table.Table`
        A detection catalog with the classifier's input columns (`reliability_features`).
    classifier : `ReliabilityClassifier`
        The trained classifier.
    threshold : `float`, optional
        Reliability a row needs to be kept (default: the classifier's).

    Raises
    ------
    ReliabilityError
        If the catalog lacks an input column or measured fewer of the classifier's bands than its
        ``min_bands``.
    """
    threshold = classifier.threshold if threshold is None else float(threshold)
    measured = measured_bands(catalog)
    if not classifier.runs_on(measured):
        present = [band for band in classifier.bands if band in measured]
        raise ReliabilityError(
            f"the reliability classifier needs PSF photometry in {classifier.min_bands} of its bands "
            f"{list(classifier.bands)}; the catalog has it in {present}"
        )
    absent = [band for band in classifier.bands if band not in measured]
    eligible, features = catalog_features(catalog, classifier.bands, absent, ReliabilityClassifier)
    reliability = np.full(len(catalog), np.nan, dtype=np.float32)
    keep = np.ones(len(catalog), dtype=bool)
    if eligible.any():
        probability = classifier.predict(features)
        reliability[eligible] = probability
        trusted = classifier.trusted(
            np.asarray(catalog["score"])[eligible], np.asarray(catalog["detection_snr"])[eligible]
        )
        keep[eligible] = (probability >= threshold) | trusted
    return ReliabilityResult(reliability, keep, threshold, int(eligible.sum()), int((~keep).sum()))
