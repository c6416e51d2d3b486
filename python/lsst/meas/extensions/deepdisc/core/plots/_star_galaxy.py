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
"""Figures of the second stage: the star-galaxy and the reliability classifiers.

`star_galaxy_figure`: PSF-matched excess and star F1 per magnitude; `reliability_figure`: purity against
real detections kept, for the network score and the reliability.
"""

from __future__ import annotations

__all__ = ["reliability_figure", "star_galaxy_figure"]

import numpy as np
from astropy.table import Table
from matplotlib.figure import Figure

from ._metrics import _new_figure


def star_galaxy_figure(
    excess_fraction: np.ndarray,
    mag: np.ndarray,
    is_star: np.ndarray,
    called_star: np.ndarray,
    metrics: Table,
    title: str = "",
) -> Figure:
    """Two panels: the fractional PSF excess against magnitude, and star F1 per magnitude bin.

    Parameters
    ----------
    excess_fraction, mag, is_star, called_star : `numpy.ndarray`
        Per labelled object: the ``psf_excess_fraction`` feature, the reference magnitude, the true class
        and the classifier's call.
    metrics : `astropy.table.Table`
        ``deepdisc_star_galaxy_metrics`` rows of one split (``mag_min``, ``mag_max``, ``star_f1``,
        ``network_star_f1``, ``n_stars``); the first row (the threshold's range) is left out of the bins.
    """
    excess_fraction = np.asarray(excess_fraction, dtype=float)
    mag = np.asarray(mag, dtype=float)
    is_star = np.asarray(is_star, dtype=bool)
    called_star = np.asarray(called_star, dtype=bool)
    figure = _new_figure(9.0, 3.6)
    left = figure.add_subplot(1, 2, 1)
    galaxies = ~is_star
    left.scatter(mag[galaxies], excess_fraction[galaxies], s=2, c="0.6", alpha=0.4, label="true galaxy")
    left.scatter(mag[is_star], excess_fraction[is_star], s=10, c="tab:cyan", label="true star")
    wrong = is_star != called_star
    left.scatter(
        mag[wrong],
        excess_fraction[wrong],
        s=40,
        facecolors="none",
        edgecolors="tab:red",
        label="misclassified",
    )
    left.set_ylim(-0.2, 1.0)
    left.set_xlabel("reference magnitude")
    left.set_ylabel("PSF excess / PSF flux (all bands)")
    left.legend(fontsize=7, loc="upper left")
    right = figure.add_subplot(1, 2, 2)
    bins = metrics[1:] if len(metrics) > 1 else metrics
    centre = 0.5 * (np.asarray(bins["mag_min"], float) + np.asarray(bins["mag_max"], float))
    right.plot(
        centre, np.asarray(bins["star_f1"], float), "o-", color="tab:blue", label="star-galaxy classifier"
    )
    right.plot(
        centre,
        np.asarray(bins["network_star_f1"], float),
        "s--",
        color="tab:orange",
        label="detection network",
    )
    for x, n in zip(centre, np.asarray(bins["n_stars"])):
        right.annotate(f"{int(n)} stars", (x, 1.06), ha="center", fontsize=7, color="0.4")
    right.set_ylim(0.0, 1.12)
    right.set_xlabel("reference magnitude (bin centre)")
    right.set_ylabel("star F1")
    right.legend(fontsize=7, loc="lower left")
    figure.suptitle(title or "star-galaxy classifier", fontsize=9)
    return figure


def _purity_curve(value: np.ndarray, is_real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real detections kept and purity for every threshold on ``value`` (highest first)."""
    order = np.argsort(-value, kind="stable")
    real = np.cumsum(is_real[order])
    return real, real / np.arange(1, len(order) + 1)


def reliability_figure(
    score: np.ndarray,
    reliability: np.ndarray,
    is_real: np.ndarray,
    threshold: float,
    score_threshold: float | None = None,
    title: str = "",
) -> Figure:
    """Two panels: purity against real detections kept, and the reliability of real and spurious detections.

    Parameters
    ----------
    score, reliability, is_real : `numpy.ndarray`
        Per candidate detection: the network's score, the classifier's reliability, whether it is real.
    threshold : `float`
        The classifier's threshold (marked).
    score_threshold : `float`, optional
        The network's own operating point (marked on the score curve).
    """
    score = np.asarray(score, dtype=float)
    reliability = np.asarray(reliability, dtype=float)
    is_real = np.asarray(is_real, dtype=bool)
    figure = _new_figure(9.0, 3.6)
    left = figure.add_subplot(1, 2, 1)
    for value, cut, colour, label in (
        (score, score_threshold, "tab:orange", "network score"),
        (reliability, threshold, "tab:blue", "reliability"),
    ):
        if not len(value):
            continue
        kept, purity = _purity_curve(value, is_real)
        left.plot(kept, purity, color=colour, label=label)
        if cut is not None:
            chosen = value >= cut
            if chosen.any():
                left.plot([int((chosen & is_real).sum())], [float(is_real[chosen].mean())], "o", color=colour)
    left.set_ylim(0.8, 1.005)
    left.set_xlabel("real detections kept")
    left.set_ylabel("purity")
    left.legend(fontsize=7, loc="lower left")
    right = figure.add_subplot(1, 2, 2)
    bins = np.linspace(0.0, 1.0, 41)
    right.hist(reliability[is_real], bins=bins, color="tab:blue", alpha=0.6, label="real")
    right.hist(reliability[~is_real], bins=bins, color="tab:red", alpha=0.6, label="spurious")
    right.axvline(threshold, color="k", lw=1, ls="--")
    right.set_yscale("log")
    right.set_xlabel("reliability")
    right.set_ylabel("candidate detections")
    right.legend(fontsize=7, loc="upper left")
    figure.suptitle(title or "reliability classifier", fontsize=9)
    return figure
