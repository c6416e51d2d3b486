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

"""Blend outcomes: how truth objects that sit together on the sky come out of a detection/deblending step.

Truth objects and detections are pooled and grouped by friends-of-friends on their centres (two members are
friends when closer than the linking length, default 5 pixels = 1 arcsec at 0.2 arcsec/pixel; a KD-tree finds
the links).  Inside each group, truth objects and detections are matched one-to-one with the Hungarian
algorithm on centre distance (most pairs first, then the smallest total distance), accepting pairs closer
than ``match_radius`` (default: the linking length).  Each group, with ``N`` truth objects and ``M``
detections, gets one outcome:

``isolated_match``
    ``N = M = 1`` and the two are matched (always the case unless ``match_radius < linking_length``).
``resolved_blend``
    ``N = M > 1`` and every truth object is matched: the blend was fully deblended.
``unrecognized_blend``
    ``N > 1, M = 1``: several truth objects came out as one detection.
``shredded``
    ``N = 1, M > 1``: one truth object was split into several detections.
``missed``
    ``N >= 1, M = 0``.
``spurious``
    ``N = 0, M >= 1``.
``complex``
    anything else: ``N > 1, M > 1`` with ``N != M`` (a mix of merging and shredding), or ``N = M`` with
    some truth object left unmatched.

Every truth object and every detection inherits the outcome of its group, with a flag telling whether it
was matched, so outcomes can be binned by truth magnitude (`BlendOutcomes.fractions_vs_mag`).  This is the
vocabulary of DeepDISC's Roman-Rubin blending metrics; Rubin SITCOMTN-128 calls resolved blends
"recognized blends".
"""

from __future__ import annotations

__all__ = ["OUTCOMES", "TRUTH_OUTCOMES", "BlendOutcomes", "classify_blends"]

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .matching import SourceArrays, optimal_assignment
from .metrics import magnitude_bin_index

OUTCOMES: tuple[str, ...] = (
    "isolated_match",
    "resolved_blend",
    "unrecognized_blend",
    "shredded",
    "missed",
    "spurious",
    "complex",
)
"""Group outcomes, in a fixed order."""

TRUTH_OUTCOMES: tuple[str, ...] = tuple(name for name in OUTCOMES if name != "spurious")
"""Outcomes a truth object can have."""


def _group_outcome(n_truth: np.ndarray, n_det: np.ndarray, n_matched: np.ndarray) -> np.ndarray:
    outcome = np.full(n_truth.size, "complex", dtype=f"U{max(len(name) for name in OUTCOMES)}")
    outcome[(n_truth == 1) & (n_det == 1) & (n_matched == 1)] = "isolated_match"
    outcome[(n_truth > 1) & (n_det == n_truth) & (n_matched == n_truth)] = "resolved_blend"
    outcome[(n_truth > 1) & (n_det == 1)] = "unrecognized_blend"
    outcome[(n_truth == 1) & (n_det > 1)] = "shredded"
    outcome[(n_truth >= 1) & (n_det == 0)] = "missed"
    outcome[(n_truth == 0) & (n_det >= 1)] = "spurious"
    return outcome


@dataclass(frozen=True)
class BlendOutcomes:
    """Result of `classify_blends`.

    Attributes
    ----------
    groups : `astropy.table.Table`
        One row per friends-of-friends group: ``group_id, n_truth, n_det, n_matched, outcome``.
    truth : `astropy.table.Table`
        One row per truth object (input order): ``index, group_id, outcome, matched, det_index`` (``-1``
        when unmatched), ``distance`` (pixels, NaN when unmatched) and ``mag`` when magnitudes were given.
    detections : `astropy.table.Table`
        One row per detection (input order): ``index, group_id, outcome, matched, truth_index``.
    linking_length, match_radius : `float`
        Parameters used (pixels).
    """

    groups: Table
    truth: Table
    detections: Table
    linking_length: float
    match_radius: float

    def counts(self) -> dict[str, int]:
        """Number of groups with each outcome (all outcomes present as keys)."""
        outcome = np.asarray(self.groups["outcome"])
        return {name: int(np.sum(outcome == name)) for name in OUTCOMES}

    def truth_counts(self) -> dict[str, int]:
        """Number of truth objects with each outcome (all truth outcomes present as keys)."""
        outcome = np.asarray(self.truth["outcome"])
        return {name: int(np.sum(outcome == name)) for name in TRUTH_OUTCOMES}

    def fractions_vs_mag(self, bins: Sequence[float], mag: np.ndarray | None = None) -> Table:
        """Fraction of truth objects with each outcome, in truth-magnitude bins.

        Parameters
        ----------
        bins : `~collections.abc.Sequence` [`float`]
            Magnitude bin edges (half-open bins).
        mag : `numpy.ndarray`, optional
            Truth magnitudes; default the ``mag`` column given to `classify_blends`.

        Returns
        -------
        table : `astropy.table.Table`
            One row per bin: ``mag_min, mag_max, n_truth``, then ``n_<outcome>`` and ``frac_<outcome>`` for
            every outcome in `TRUTH_OUTCOMES`, and ``frac_matched`` (matched truth objects).  Fractions of
            a bin sum to 1 (NaN in empty bins).
        """
        if mag is None:
            if "mag" not in self.truth.colnames:
                raise ValueError("no truth magnitudes: pass mag= or give truth.mag to classify_blends")
            mag = np.asarray(self.truth["mag"])
        mag = np.asarray(mag, dtype=np.float64)
        if mag.size != len(self.truth):
            raise ValueError(f"{mag.size} magnitudes for {len(self.truth)} truth objects")
        bin_index = magnitude_bin_index(mag, bins)
        edges = np.asarray(bins, dtype=np.float64)
        n_bins = edges.size - 1
        in_bin = bin_index >= 0
        n_truth = np.bincount(bin_index[in_bin], minlength=n_bins)
        table = Table({"mag_min": edges[:-1], "mag_max": edges[1:], "n_truth": n_truth})
        outcome = np.asarray(self.truth["outcome"])
        with np.errstate(invalid="ignore", divide="ignore"):
            for name in TRUTH_OUTCOMES:
                count = np.bincount(bin_index[in_bin & (outcome == name)], minlength=n_bins)
                table[f"n_{name}"] = count
                table[f"frac_{name}"] = np.where(n_truth > 0, count / np.maximum(n_truth, 1), np.nan)
            matched = np.bincount(bin_index[in_bin & np.asarray(self.truth["matched"])], minlength=n_bins)
            table["frac_matched"] = np.where(n_truth > 0, matched / np.maximum(n_truth, 1), np.nan)
        return table


def classify_blends(
    truth: SourceArrays,
    detections: SourceArrays,
    *,
    linking_length: float = 5.0,
    match_radius: float | None = None,
) -> BlendOutcomes:
    """Group truth and detections by friends-of-friends, match inside groups and classify the outcomes.

    Parameters
    ----------
    truth, detections : `~.matching.SourceArrays`
        Catalogs; only centres (and ``truth.mag``, if present) are used.
    linking_length : `float`
        Friends-of-friends linking length in pixels (default 5 = 1 arcsec at 0.2 arcsec/pixel).
    match_radius : `float`, optional
        Largest centre distance of a match inside a group; default ``linking_length``.

    Returns
    -------
    outcomes : `BlendOutcomes`
        Per-group, per-truth and per-detection outcome tables.
    """
    if linking_length <= 0:
        raise ValueError(f"linking_length must be positive, got {linking_length}")
    radius = float(linking_length if match_radius is None else match_radius)
    if radius <= 0:
        raise ValueError(f"match_radius must be positive, got {radius}")
    n_truth, n_det = len(truth), len(detections)
    n_all = n_truth + n_det
    points = np.column_stack(
        [np.concatenate([truth.x, detections.x]), np.concatenate([truth.y, detections.y])]
    )
    is_truth = np.arange(n_all) < n_truth

    # Friends-of-friends: connected components of the graph of pairs closer than the linking length.
    if n_all:
        links = cKDTree(points).query_pairs(linking_length, output_type="ndarray")
        graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n_all, n_all))
        n_groups, labels = connected_components(graph, directed=False)
    else:
        n_groups, labels = 0, np.zeros(0, dtype=np.int64)
    truth_group, det_group = labels[:n_truth], labels[n_truth:]

    # Candidate truth-detection pairs within the match radius and in the same group, solved per group.
    truth_to_det = np.full(n_truth, -1, dtype=np.int64)
    distance = np.full(n_truth, np.nan)
    if n_truth and n_det:
        near = cKDTree(points[:n_truth]).sparse_distance_matrix(
            cKDTree(points[n_truth:]), radius, output_type="ndarray"
        )
        i, j, d = near["i"].astype(np.int64), near["j"].astype(np.int64), near["v"]
        same = truth_group[i] == det_group[j]
        i, j, d = i[same], j[same], d[same]
        _, t, k = optimal_assignment(i, j, 1.0 - d / (radius * (1.0 + 1e-9)), n_truth, n_det)
        truth_to_det[t] = k
        distance[t] = np.hypot(truth.x[t] - detections.x[k], truth.y[t] - detections.y[k])
    det_to_truth = np.full(n_det, -1, dtype=np.int64)
    matched_truth = truth_to_det >= 0
    det_to_truth[truth_to_det[matched_truth]] = np.flatnonzero(matched_truth)

    group_n_truth = np.bincount(labels[is_truth], minlength=n_groups)
    group_n_det = np.bincount(labels[~is_truth], minlength=n_groups)
    group_n_matched = np.bincount(truth_group[matched_truth], minlength=n_groups)
    group_outcome = _group_outcome(group_n_truth, group_n_det, group_n_matched)

    groups = Table(
        {
            "group_id": np.arange(n_groups, dtype=np.int64),
            "n_truth": group_n_truth,
            "n_det": group_n_det,
            "n_matched": group_n_matched,
            "outcome": group_outcome,
        }
    )
    truth_table = Table(
        {
            "index": np.arange(n_truth, dtype=np.int64),
            "group_id": truth_group.astype(np.int64),
            "outcome": group_outcome[truth_group] if n_truth else np.zeros(0, dtype="U18"),
            "matched": matched_truth,
            "det_index": truth_to_det,
            "distance": distance,
        }
    )
    if truth.mag is not None:
        truth_table["mag"] = truth.mag
    det_table = Table(
        {
            "index": np.arange(n_det, dtype=np.int64),
            "group_id": det_group.astype(np.int64),
            "outcome": group_outcome[det_group] if n_det else np.zeros(0, dtype="U18"),
            "matched": det_to_truth >= 0,
            "truth_index": det_to_truth,
        }
    )
    for table in (groups, truth_table, det_table):
        table["outcome"].description = "Outcome of the friends-of-friends group: " + ", ".join(OUTCOMES)
        table.meta.update({"linking_length": float(linking_length), "match_radius": radius})
    return BlendOutcomes(
        groups=groups,
        truth=truth_table,
        detections=det_table,
        linking_length=float(linking_length),
        match_radius=radius,
    )
