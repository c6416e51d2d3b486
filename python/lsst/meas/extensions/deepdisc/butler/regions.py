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
`pixel_box_region` makes such a region from a WCS and a pixel box, and `check_coadd_in_patch` refuses a coadd
whose pixels are not in the patch it is filed under.
"""

from __future__ import annotations

__all__ = [
    "PatchMismatchError",
    "check_coadd_in_patch",
    "inside_region",
    "patch_and_tract_regions",
    "pixel_box_region",
]

from typing import Any

import numpy as np
from astropy.wcs import WCS

from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

from ..core.multiband import MultibandImage


class PatchMismatchError(ValueError):
    """A coadd's pixels are not in the sky region of the patch it is filed under."""


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


def pixel_box_region(wcs: WCS, x_begin: float, y_begin: float, x_end: float, y_end: float) -> ConvexPolygon:
    """Sky polygon of a pixel box: the outer edges of its corner pixels, through a parent-coordinate WCS.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Celestial WCS in parent pixel coordinates.
    x_begin, y_begin, x_end, y_end : `float`
        The box, end exclusive (pixel centres at integers).
    """
    x = np.array([x_begin, x_end, x_end, x_begin], dtype=float) - 0.5
    y = np.array([y_begin, y_begin, y_end, y_end], dtype=float) - 0.5
    ra, dec = wcs.pixel_to_world_values(x, y)
    return ConvexPolygon(
        [UnitVector3d(LonLat.fromDegrees(float(r) % 360.0, float(d))) for r, d in zip(ra, dec)]
    )


def _region_centre(region: Any) -> tuple[float, float] | None:
    """``(ra, dec)`` degrees of the centre of a region's bounding circle, `None` if it has none."""
    try:
        centre = LonLat(region.getBoundingCircle().getCenter())
    except AttributeError:
        return None
    return centre.getLon().asDegrees() % 360.0, centre.getLat().asDegrees()


def check_coadd_in_patch(image: MultibandImage, patch_region: Any | None, data_id: Any) -> None:
    """Refuse a coadd whose centre is not in the sky region of the patch it is filed under.

    A coadd belongs to its patch when the centre of its bounding box, through its own WCS, lies in the
    patch's (inner) region (the outer box of a patch is centred on its inner box), or, for a patch whose
    outer box is clipped at the edge of its tract, when the centre of the patch region lies in the coadd's
    box.  A coadd put under the wrong tract or patch, or given a wrong WCS, is somewhere else on the sky.

    Parameters
    ----------
    image : `~lsst.meas.extensions.deepdisc.core.multiband.MultibandImage`
        The coadd, with its parent-coordinate WCS and ``xy0``.
    patch_region : `lsst.sphgeom.Region` or `None`
        The patch record's region (nothing is checked without one, or without a WCS).
    data_id : `object`
        The data ID, for the message.

    Raises
    ------
    PatchMismatchError
        If the coadd's centre is outside the patch region; the message gives both positions and the fix.
    """
    if patch_region is None or image.wcs is None:
        return
    x_centre = image.xy0[0] + (image.width - 1) / 2.0
    y_centre = image.xy0[1] + (image.height - 1) / 2.0
    ra, dec = image.pixel_to_sky(np.array([x_centre]), np.array([y_centre]))
    if inside_region(patch_region, ra, dec)[0]:
        return
    centre = _region_centre(patch_region)
    if centre is not None:
        x, y = image.wcs.world_to_pixel_values(centre[0], centre[1])
        if (
            np.isfinite(x)
            and np.isfinite(y)
            and image.xy0[0] - 0.5 <= x < image.xy0[0] + image.width - 0.5
            and image.xy0[1] - 0.5 <= y < image.xy0[1] + image.height - 0.5
        ):
            return
    where = (
        ""
        if centre is None
        else f" (the patch region is centred at RA, Dec = {centre[0]:.5f}, {centre[1]:.5f})"
    )
    raise PatchMismatchError(
        f"the coadd of {dict(getattr(data_id, 'required', data_id))} is not in the sky "
        f"region of that patch: its pixel box x0, y0 = {image.xy0}, {image.width}x{image.height} px has its "
        f"centre at RA, Dec = {float(ra[0]):.5f}, {float(dec[0]):.5f}{where}.  It was filed under the wrong "
        "tract/patch, or its WCS is wrong; ingest it again with deepdisc-ingest-fits without "
        "--tract/--patch, which makes a skymap from the image's own WCS"
    )
