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
"""Morphology labels: a labelled catalog (positions plus a class column) matched to our detections."""

from __future__ import annotations

__all__ = ["LabelMatch", "match_labels"]

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..matching import cos_separation, sky_to_tangent_plane


@dataclass(frozen=True)
class LabelMatch:
    """One-to-one positional matches: ``detection[i]`` carries ``label[i]`` at ``distance[i]`` arcsec."""

    detection: np.ndarray
    label: np.ndarray
    distance: np.ndarray


def match_labels(
    detection_ra: np.ndarray,
    detection_dec: np.ndarray,
    label_ra: np.ndarray,
    label_dec: np.ndarray,
    radius_arcsec: float,
    priority: np.ndarray | None = None,
) -> LabelMatch:
    """Pair every labelled object with the nearest detection within ``radius_arcsec``, one to one.

    Pairs are taken closest first, so a detection between two labelled objects goes to the nearer one and
    the other stays unmatched; it never carries two labels.  With ``priority`` (one value per detection,
    e.g. its score), detections are served in decreasing priority, each its nearest free label: of two
    detections of one object the higher-priority one gets it, the other is a duplicate.

    Parameters
    ----------
    detection_ra, detection_dec, label_ra, label_dec : `numpy.ndarray`
        Positions (degrees).
    radius_arcsec : `float`
        Largest separation of a match.
    priority : `numpy.ndarray`, optional
        Per-detection priority (higher first); default: closest pairs first.

    Returns
    -------
    match : `LabelMatch`
        Indices into the detections and the labels, sorted by detection index.
    """
    if not radius_arcsec > 0:
        raise ValueError(f"the match radius must be positive, got {radius_arcsec}")
    empty = LabelMatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(detection_ra) == 0 or len(label_ra) == 0:
        return empty
    ra0, dec0 = float(np.median(detection_ra)), float(np.median(detection_dec))
    # A survey-wide labelled catalog reaches beyond the tangent plane's hemisphere; those labels are far from
    # every detection anyway.
    label_index = np.flatnonzero(cos_separation(label_ra, label_dec, ra0, dec0) > 0)
    if label_index.size == 0:
        return empty
    dx, dy = sky_to_tangent_plane(detection_ra, detection_dec, ra0, dec0, 1.0)
    lx, ly = sky_to_tangent_plane(
        np.asarray(label_ra)[label_index], np.asarray(label_dec)[label_index], ra0, dec0, 1.0
    )
    pairs = cKDTree(np.column_stack([lx, ly])).query_ball_point(np.column_stack([dx, dy]), r=radius_arcsec)
    det_index = np.repeat(np.arange(len(pairs)), [len(p) for p in pairs])
    if det_index.size == 0:
        return empty
    lab_index = np.concatenate([np.asarray(p, dtype=np.int64) for p in pairs if p])
    distance = np.hypot(dx[det_index] - lx[lab_index], dy[det_index] - ly[lab_index])
    used_det, used_lab = set(), set()
    chosen = []
    if priority is None:
        order = np.argsort(distance, kind="stable")
    else:
        order = np.lexsort((distance, -np.asarray(priority, dtype=np.float64)[det_index]))
    for k in order:
        d, lab = int(det_index[k]), int(lab_index[k])
        if d in used_det or lab in used_lab:
            continue
        used_det.add(d)
        used_lab.add(lab)
        chosen.append(k)
    chosen = np.asarray(sorted(chosen, key=lambda k: det_index[k]), dtype=np.int64)
    return LabelMatch(det_index[chosen], label_index[lab_index[chosen]], distance[chosen])
