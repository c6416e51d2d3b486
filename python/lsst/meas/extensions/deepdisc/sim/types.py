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
"""Data contract between the pixel simulation (`scene`, `deblend`) and the repository writer (`repo`).

Coordinates are *parent* (tract) pixel coordinates throughout, as in Rubin coadds: a patch's pixel
``[0, 0]`` sits at ``PatchGeometry.x0, y0`` and the tract WCS maps parent pixels to the sky.
"""

from __future__ import annotations

__all__ = ["DeblendedBlend", "DeblendedSource", "PatchGeometry", "SimulatedPatch"]

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from ..core.multiband import MultibandImage


@dataclass(frozen=True)
class PatchGeometry:
    """Where a patch lies in its tract.

    Parameters
    ----------
    tract, patch : `int`
        Tract id and sequential patch index (``patch = patch_y * n_patches_x + patch_x``).
    patch_x, patch_y : `int`
        Patch index along x and y in the tract.
    x0, y0, width, height : `int`
        Patch bounding box in tract pixel coordinates (including the overlap border).
    wcs : `astropy.wcs.WCS`
        TAN projection of the whole tract (parent pixel coordinates).
    pixel_scale_arcsec : `float`
        Pixel scale.
    """

    tract: int
    patch: int
    patch_x: int
    patch_y: int
    x0: int
    y0: int
    width: int
    height: int
    wcs: WCS
    pixel_scale_arcsec: float = 0.2


@dataclass
class DeblendedSource:
    """One deblended source model, in the (narrow) model-PSF space as scarlet stores it.

    The source's model is ``spectrum[:, None, None] * morph`` placed with its lower-left corner at
    ``origin = (y0, x0)`` (scarlet's ``(y, x)`` order); the observed-PSF model is obtained by convolving each
    band with the difference kernel from the model PSF to the observed PSF.
    """

    source_id: int
    parent_id: int
    peak: tuple[float, float]  # (x, y) parent coordinates
    origin: tuple[int, int]  # (y0, x0) of the morphology box
    spectrum: np.ndarray  # [C] per-band amplitude at the morph peak (nJy/pix); flux = spectrum * morph.sum()
    morph: np.ndarray  # [h, w], float32, max 1 (scarlet convention)
    is_isolated: bool = False


@dataclass
class DeblendedBlend:
    """A parent footprint and the sources the deblender fitted in it.

    A parent may have no children when the deblender skipped or failed on it (see the ``object_deblend``
    flags).
    """

    parent_id: int
    origin: tuple[int, int]  # (y0, x0) of the parent bbox
    shape: tuple[int, int]  # (height, width) of the parent bbox
    spans: np.ndarray  # (N, 3) parent footprint spans, parent coordinates
    children: list[DeblendedSource] = field(default_factory=list)


@dataclass
class SimulatedPatch:
    """Everything the repository writer puts in the Butler for one patch.

    Parameters
    ----------
    geometry : `PatchGeometry`
        Patch placement.
    image : `MultibandImage`
        The coadd: nJy image, variance, mask (Rubin plane names), tract WCS, ``xy0`` = patch origin.
    psf_images : `dict` [`str`, `numpy.ndarray`]
        Per-band observed PSF image (odd size, sums to 1) at the patch centre.
    psf_fwhm_arcsec : `dict` [`str`, `float`]
        Per-band PSF FWHM.
    model_psf : `numpy.ndarray`
        The deblender's narrow model PSF (2-d, sums to 1).
    truth : `astropy.table.Table`
        ``truth_patch``: one row per simulated object (footprint spans as an object column of int32 arrays).
    blends : `list` [`DeblendedBlend`]
        The deblender's output (isolated sources are single-child blends with ``is_isolated``).
    object_deblend : `astropy.table.Table`
        Deblended catalog with footprints (object column), parent/child rows (empty when the patch was
        simulated without object tables).
    object_patch : `astropy.table.Table`
        Object table: objectId, parentObjectId, coord_ra/dec, per-band fluxes, refExtendedness, ... (empty
        likewise).
    metadata : `dict`
        Seed, preset, depth per band, blended fraction, counts.
    truth_artifacts : `astropy.table.Table`, optional
        ``truth_artifacts``: one row per image artifact with a footprint in the patch (`sim.artifacts`);
        `None` for presets without artifacts.
    """

    geometry: PatchGeometry
    image: MultibandImage
    psf_images: dict[str, np.ndarray]
    psf_fwhm_arcsec: dict[str, float]
    model_psf: np.ndarray
    truth: Table
    blends: list[DeblendedBlend]
    object_deblend: Table
    object_patch: Table
    metadata: dict[str, Any] = field(default_factory=dict)
    truth_artifacts: Table | None = None
