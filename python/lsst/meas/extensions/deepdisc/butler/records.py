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
"""Dimension records for coadds that come from outside the Rubin pipelines (no ``lsst.skymap`` needed).

`register_bands` creates ``band`` records (in dimension universe v8 only ``physical_filter`` records can:
bands not yet known get a ``physical_filter`` ``fits_<band>`` of the instrument ``DeepDiscFITS``).
`register_image_skymap` registers a one-tract skymap made from an image's WCS and a
`~lsst.meas.extensions.deepdisc.core.patch_grid.PatchGrid`: the ``skymap`` record (its ``hash`` is the
geometry's, so another image under the same name is refused), the ``tract`` record whose region is the
image and one ``patch`` record per patch whose region is the patch's inner box, as in a Rubin skymap (the
primary flags of the detection catalog use these regions).
"""

from __future__ import annotations

__all__ = [
    "FITS_INSTRUMENT",
    "SkymapConflictError",
    "register_band_filters",
    "register_bands",
    "register_image_skymap",
]

from collections.abc import Sequence
from typing import Any

from astropy.wcs import WCS

from ..core.patch_grid import PatchGrid
from .regions import pixel_box_region

FITS_INSTRUMENT = "DeepDiscFITS"
"""Instrument whose physical filters carry the bands of ingested FITS coadds."""


class SkymapConflictError(ValueError):
    """A skymap of that name is registered with another geometry."""


def register_bands(butler: Any, bands: Sequence[str]) -> list[str]:
    """Make sure every band has a ``band`` record; returns the bands that were added.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    bands : sequence of `str`
        Band names.
    """
    known = {record.name for record in butler.query_dimension_records("band", explain=False)}
    missing = [band for band in bands if band not in known]
    if missing:
        register_band_filters(butler, FITS_INSTRUMENT, missing, "fits_")
    return missing


def register_band_filters(butler: Any, instrument: str, bands: Sequence[str], filter_prefix: str) -> None:
    """Register a pseudo-instrument and one physical filter per band (``<prefix><band>``); idempotent.

    Band records can only enter the registry through physical filters: this is how data with no obs
    package (ingested FITS coadds, simulations) get their bands.
    """
    registry = butler.registry
    registry.insertDimensionData(
        "instrument",
        {
            "name": instrument,
            "visit_max": 1,
            "visit_system": 0,
            "exposure_max": 1,
            "detector_max": 1,
            "class_name": None,
        },
        skip_existing=True,
    )
    registry.insertDimensionData(
        "physical_filter",
        *[{"instrument": instrument, "name": f"{filter_prefix}{band}", "band": band} for band in bands],
        skip_existing=True,
    )


def register_image_skymap(butler: Any, name: str, wcs: WCS, grid: PatchGrid, tract: int = 0) -> bool:
    """Register a one-tract skymap whose tract is an image; idempotent.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    name : `str`
        Skymap name.
    wcs : `astropy.wcs.WCS`
        The image's celestial WCS in parent pixel coordinates (the tract's pixel grid).
    grid : `~lsst.meas.extensions.deepdisc.core.patch_grid.PatchGrid`
        The patches.
    tract : `int`
        Tract id.

    Returns
    -------
    created : `bool`
        Whether the skymap was new (`False`: it was already there with this geometry).

    Raises
    ------
    SkymapConflictError
        If a skymap of this name exists with another geometry.
    """
    registry = butler.registry
    record = {
        "name": name,
        "hash": grid.geometry_hash(wcs),
        "tract_max": tract + 1,
        "patch_nx_max": grid.nx,
        "patch_ny_max": grid.ny,
    }
    try:
        created = bool(registry.syncDimensionData("skymap", record))
    except Exception as err:  # ConflictingDefinitionError; its import path moved between releases.
        raise SkymapConflictError(
            f"skymap {name!r} is already registered with another geometry (another image, WCS or patch "
            f"size): {err}"
        ) from None
    registry.insertDimensionData(
        "tract",
        {"skymap": name, "id": tract, "region": pixel_box_region(wcs, *grid.tract_box)},
        skip_existing=True,
    )
    registry.insertDimensionData(
        "patch",
        *[
            {
                "skymap": name,
                "tract": tract,
                "id": grid.patch_index(patch_x, patch_y),
                "cell_x": patch_x,
                "cell_y": patch_y,
                "region": pixel_box_region(wcs, *grid.inner_box(patch_x, patch_y)),
            }
            for patch_x, patch_y in grid.patches()
        ],
        skip_existing=True,
    )
    return created
