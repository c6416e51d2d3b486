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
"""Sky regions of the skymap's patches and tracts, from a quantum's expanded data ID.

In a Butler registry the ``patch`` dimension record's region is the patch's *inner* region (the part of the
tract the patch is responsible for, without its overlap border) and the ``tract`` record's region is the
tract's; `patch_and_tract_regions` reads both and `inside_region` tests positions against them.
"""

from __future__ import annotations

__all__ = ["inside_region", "patch_and_tract_regions"]

from typing import Any

import numpy as np


def inside_region(region: Any, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Whether each position is in a sphgeom region; positions with unknown coordinates count as inside.

    Parameters
    ----------
    region : `lsst.sphgeom.Region`
        Anything with a vectorised ``contains(lon, lat)`` in radians.
    ra_deg, dec_deg : `numpy.ndarray`
        Positions in degrees.
    """
    ra_deg = np.asarray(ra_deg, dtype=np.float64)
    dec_deg = np.asarray(dec_deg, dtype=np.float64)
    known = np.isfinite(ra_deg) & np.isfinite(dec_deg)
    inside = np.ones(ra_deg.size, dtype=bool)
    if known.any():
        inside[known] = np.asarray(
            region.contains(np.radians(ra_deg[known]), np.radians(dec_deg[known])), dtype=bool
        )
    return inside


def patch_and_tract_regions(data_id: Any) -> tuple[Any | None, Any | None]:
    """The ``patch`` and ``tract`` record regions of an expanded data ID (`None` where unavailable)."""
    regions = []
    for element in ("patch", "tract"):
        region = None
        try:
            if data_id.hasRecords():
                record = data_id.records[element]
                region = None if record is None else record.region
        except (AttributeError, KeyError, LookupError):
            region = None
        regions.append(region)
    return regions[0], regions[1]
