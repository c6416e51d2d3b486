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

"""AB magnitudes and fluxes in nJy, the Rubin catalogs' flux unit: one definition for the whole package."""

from __future__ import annotations

__all__ = ["AB_ZEROPOINT_NJY", "mag_to_njy", "njy_to_mag"]

import numpy as np

AB_ZEROPOINT_NJY = 31.4
"""AB magnitude of a flux of 1 nJy: ``m = 31.4 - 2.5 log10(f / nJy)``."""


def mag_to_njy(mag: float | np.ndarray) -> float | np.ndarray:
    """Flux in nJy of an AB magnitude."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_ZEROPOINT_NJY))


def njy_to_mag(flux: float | np.ndarray) -> float | np.ndarray:
    """AB magnitude of a flux in nJy; NaN where the flux is not positive or not finite."""
    flux = np.asarray(flux, dtype=float)
    good = np.isfinite(flux) & (flux > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = AB_ZEROPOINT_NJY - 2.5 * np.log10(np.where(good, flux, 1.0))
    return np.where(good, mag, np.nan)
