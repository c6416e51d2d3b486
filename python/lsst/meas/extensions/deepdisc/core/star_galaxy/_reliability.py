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
"""The reliability classifier: is a detection a real source?  A second opinion on the network's score.

The detection network's score is learned against its training labels, the deblender's children, which
stop short of the faint sources that the truth holds: at 24-26 mag it scores many real sources below its
operating point, next to noise peaks and shreds of bright galaxies.  Measured against the PSF, the real ones
stand out: their PSF-filtered flux is significant in several bands with consistent colours, and they are
not close duplicates of a brighter detection.  This stage reads the star-galaxy features
(`star_galaxy_features`: PSF excess, S/N, colours, neighbour distance, area, the network's class log-odds)
and three more, ``score_logit`` (the network's score), ``detection_snr`` (``log10`` of the footprint S/N)
and ``nodata_fraction``, and gives the probability that a detection is a real source.

The detection task runs the network at the classifier's ``network_threshold`` (lower than the package's
score threshold: the candidates) and keeps the detections whose ``reliability`` reaches the classifier's
``threshold``, chosen on training detections for a target purity, and those the network trusts itself
(`ReliabilityClassifier.trusted`: score at least ``trust_score``, its own operating point, with a footprint
S/N of at least ``trust_snr``).  The classifier learns from a catalog of mostly faint candidates; for bright
sources, a few percent of them, the network's own call is the better one.  Rows the network called an
artifact are not judged.
"""

from __future__ import annotations

__all__ = [
    "RELIABILITY_EXTRA_FEATURES",
    "ReliabilityClassifier",
    "ReliabilityError",
    "fit_reliability",
    "purity_threshold",
    "reliability_feature_names",
    "reliability_features",
]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._classifier import (
    EnsembleClassifier,
    StarGalaxyError,
    feature_names,
    fit_ensemble,
    star_galaxy_features,
)

RELIABILITY_EXTRA_FEATURES = ("score_logit", "detection_snr", "nodata_fraction")
"""Features after the star-galaxy ones (`feature_names`)."""


class ReliabilityError(StarGalaxyError):
    """A reliability classifier or its inputs are not usable (the message says why)."""


def reliability_feature_names(bands: Sequence[str]) -> tuple[str, ...]:
    """The reliability classifier's feature names for ``bands``: the star-galaxy ones, then the extra."""
    return feature_names(bands) + RELIABILITY_EXTRA_FEATURES


def reliability_features(
    columns: Mapping[str, Any], bands: Sequence[str], absent: Sequence[str] = ()
) -> np.ndarray:
    """The ``[N, F]`` reliability features of detection-catalog rows (`reliability_feature_names` order).

    ``columns`` holds what `star_galaxy_features` reads plus ``score``, ``detection_snr`` and
    ``nodata_fraction``.

    Raises
    ------
    ReliabilityError
        If a needed column is missing.
    """
    missing = [name for name in ("score", "detection_snr", "nodata_fraction") if name not in columns]
    if missing:
        raise ReliabilityError(f"the catalog lacks the reliability classifier's input columns {missing}")
    try:
        base = star_galaxy_features(columns, bands, absent)
    except ReliabilityError:
        raise
    except StarGalaxyError as err:
        raise ReliabilityError(str(err).replace("star-galaxy", "reliability")) from None
    score = np.clip(np.asarray(columns["score"], dtype=np.float64), 1e-4, 1.0 - 1e-4)
    snr = np.asarray(columns["detection_snr"], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        extra = np.stack(
            [
                np.log(score / (1.0 - score)),
                np.log10(np.clip(snr, 1.0, 1e6)),
                np.asarray(columns["nodata_fraction"], dtype=np.float64),
            ],
            axis=1,
        )
    return np.concatenate([base, extra], axis=1)


@dataclass
class ReliabilityClassifier(EnsembleClassifier):
    """A trained reliability classifier (`EnsembleClassifier` over `reliability_features`).

    Its probability is that of a real source; ``threshold`` the reliability a detection needs to be kept.

    Parameters
    ----------
    network_threshold : `float`
        The network score threshold of the detections it was trained on: the detection task runs the
        network there, so that the candidates are those it learned to judge.
    trust_score, trust_snr : `float` or `None`, `float`
        Detections scoring at least ``trust_score`` with a ``detection_snr`` of at least ``trust_snr`` are
        kept whatever their reliability (`trusted`); `None`: none.
    """

    network_threshold: float = 0.2
    trust_score: float | None = None
    trust_snr: float = 50.0

    FORMAT: ClassVar[str] = "deepdisc-reliability-classifier"
    FORMAT_VERSION: ClassVar[int] = 1
    WHAT: ClassVar[str] = "reliability classifier"
    ERROR: ClassVar[type[ValueError]] = ReliabilityError

    def __post_init__(self) -> None:
        super().__post_init__()
        value = float(self.network_threshold)
        if not 0.0 < value < 1.0:
            raise ReliabilityError(f"network_threshold must be in (0, 1), got {value}")
        self.network_threshold = value
        if self.trust_score is not None:
            trust = float(self.trust_score)
            if not value <= trust <= 1.0:
                raise ReliabilityError(f"trust_score must be in [network_threshold, 1], got {trust}")
            self.trust_score = trust
        self.trust_snr = float(self.trust_snr)
        if not self.trust_snr >= 0.0:
            raise ReliabilityError(f"trust_snr must be >= 0, got {self.trust_snr}")

    def trusted(self, score: np.ndarray, detection_snr: np.ndarray) -> np.ndarray:
        """Which detections the network's own call keeps (score >= trust_score, S/N >= trust_snr)."""
        score = np.asarray(score, dtype=np.float64)
        if self.trust_score is None:
            return np.zeros(score.shape, dtype=bool)
        with np.errstate(invalid="ignore"):
            return (score >= self.trust_score) & (
                np.asarray(detection_snr, dtype=np.float64) >= self.trust_snr
            )

    @classmethod
    def names_for(cls, bands: Sequence[str]) -> tuple[str, ...]:
        """`reliability_feature_names` of ``bands``."""
        return reliability_feature_names(bands)

    def _extra_dict(self) -> dict[str, Any]:
        return {
            "network_threshold": self.network_threshold,
            "trust_score": self.trust_score,
            "trust_snr": self.trust_snr,
        }

    @classmethod
    def _extra_kwargs(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        missing = [key for key in ("network_threshold", "trust_score", "trust_snr") if key not in data]
        if missing:
            raise ReliabilityError(f"malformed reliability classifier: no {', '.join(missing)}")
        return {key: data[key] for key in ("network_threshold", "trust_score", "trust_snr")}


def fit_reliability(
    features: np.ndarray,
    is_real: np.ndarray,
    bands: Sequence[str],
    network_threshold: float,
    trust_score: float | None = None,
    trust_snr: float = 50.0,
    **kwargs: Any,
) -> ReliabilityClassifier:
    """Train a `ReliabilityClassifier` on labelled detections (threshold 0.5; see `purity_threshold`).

    ``kwargs``: the network and schedule of `fit_ensemble` (``hidden``, ``ensemble``, ``epochs``,
    ``learning_rate``, ``weight_decay``, ``positive_weight``, ``seed``).
    """
    return fit_ensemble(
        ReliabilityClassifier,
        features,
        is_real,
        bands,
        network_threshold=network_threshold,
        trust_score=trust_score,
        trust_snr=trust_snr,
        **kwargs,
    )


def purity_threshold(
    probability: np.ndarray, is_real: np.ndarray, min_purity: float, kept_anyway: np.ndarray | None = None
) -> tuple[float, float, float]:
    """The lowest reliability threshold whose kept detections reach ``min_purity``.

    Over the grid 0.05, 0.075 ... 0.975; where no threshold reaches it, the purest one.  ``kept_anyway``
    (the `ReliabilityClassifier.trusted` detections) are kept at every threshold.

    Returns
    -------
    threshold, purity, kept : `float`
        The threshold, the purity of the detections it keeps and the fraction of the real ones it keeps.
    """
    probability = np.asarray(probability, dtype=np.float64)
    is_real = np.asarray(is_real, dtype=bool)
    if not is_real.any():
        raise ReliabilityError("choosing a reliability threshold needs real detections")
    grid = np.round(np.arange(0.05, 0.976, 0.025), 3)
    purity = np.array([is_real[probability >= t].mean() if (probability >= t).any() else 0.0 for t in grid])
    reaching = np.flatnonzero(purity >= min_purity)
    index = int(reaching[0]) if reaching.size else int(np.argmax(purity))
    threshold = float(grid[index])
    kept = float(np.sum(is_real & (probability >= threshold)) / is_real.sum())
    return threshold, float(purity[index]), kept
