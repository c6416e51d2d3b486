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
"""LSST observing conditions per band, from the published figures collected by ``surveycodex``.

``surveycodex`` (LSSTDESC) gives, per LSST band, the AB zeropoint (magnitude of a source giving 1 e-/s,
computed with speclite at airmass 1.2), the median dark-sky brightness, the median single-visit PSF FWHM
(Ivezic et al. 2019, Table 2) and the *10-year* total exposure time (Table 1 visit counts x 30 s).  From these
`BandConditions` derives what a 10-year coadd looks like in calibrated units (nJy):

* sky noise per pixel: a sky-dominated coadd, ``sigma_e = sqrt(sky_e-/s/pixel * T)`` electrons over the
  total exposure time ``T``, converted with ``nJy per (e-/s) = 10**(0.4 * (31.4 - zeropoint))``;
* 5-sigma point-source depth: ``5 * sigma_pixel * sqrt(n_eff)`` with ``n_eff = 1 / sum(psf**2)`` the
  noise-equivalent number of pixels of the PSF (gain 1, read noise neglected);
* saturation: a single 30 s visit saturates where sky + source electrons exceed the full well
  (100 000 e-, LSSTCam sensors); the coadd carries the same level in nJy.

For r band this gives a 10-year 5-sigma depth of ~27.4 AB, as in the LSST Science Requirements.
"""

from __future__ import annotations

__all__ = [
    "AB_ZEROPOINT_NJY",
    "BandConditions",
    "lsst_band_conditions",
    "mag_to_njy",
    "njy_to_mag",
]

import math
from dataclasses import dataclass, replace

from ..core.photometry import AB_ZEROPOINT_NJY, mag_to_njy, njy_to_mag

FULL_WELL_ELECTRONS = 100_000.0
VISIT_EXPOSURE_S = 30.0


@dataclass(frozen=True)
class BandConditions:
    """Coadd depth and seeing of one band.

    Parameters
    ----------
    band : `str`
        Band name.
    zeropoint_mag : `float`
        AB magnitude giving 1 e-/s.
    sky_mag_arcsec2 : `float`
        Sky surface brightness (AB mag / arcsec^2).
    exposure_time_s : `float`
        Total coadd exposure time (s).
    psf_fwhm_arcsec : `float`
        PSF FWHM.
    pixel_scale_arcsec : `float`
        Pixel scale.
    """

    band: str
    zeropoint_mag: float
    sky_mag_arcsec2: float
    exposure_time_s: float
    psf_fwhm_arcsec: float
    pixel_scale_arcsec: float = 0.2

    @property
    def njy_per_electron_rate(self) -> float:
        """Flux (nJy) of a source giving 1 e-/s."""
        return 10.0 ** (0.4 * (AB_ZEROPOINT_NJY - self.zeropoint_mag))

    @property
    def njy_per_electron(self) -> float:
        """Flux (nJy) of one electron collected over the whole coadd exposure time."""
        return self.njy_per_electron_rate / self.exposure_time_s

    @property
    def sky_electron_rate_per_pixel(self) -> float:
        """Sky electrons per second per pixel."""
        return 10.0 ** (-0.4 * (self.sky_mag_arcsec2 - self.zeropoint_mag)) * self.pixel_scale_arcsec**2

    @property
    def sky_sigma_njy(self) -> float:
        """Standard deviation of the sky noise per pixel of the coadd (nJy)."""
        sky_electrons = self.sky_electron_rate_per_pixel * self.exposure_time_s
        return math.sqrt(sky_electrons) * self.njy_per_electron

    @property
    def saturation_njy(self) -> float:
        """Pixel value (nJy) above which a single 30 s visit saturates."""
        source_rate = FULL_WELL_ELECTRONS / VISIT_EXPOSURE_S - self.sky_electron_rate_per_pixel
        return source_rate * self.njy_per_electron_rate

    def point_source_depth(self, n_eff_pixels: float, n_sigma: float = 5.0) -> float:
        """AB magnitude of a point source detected at ``n_sigma`` with PSF photometry.

        Parameters
        ----------
        n_eff_pixels : `float`
            Noise-equivalent area of the PSF, ``1 / sum(psf**2)``, in pixels.
        n_sigma : `float`
            Detection significance.
        """
        return float(njy_to_mag(n_sigma * self.sky_sigma_njy * math.sqrt(n_eff_pixels)))

    def gaussian_point_source_depth(self, n_sigma: float = 5.0) -> float:
        """`point_source_depth` for a Gaussian PSF of this FWHM (``n_eff = 4 pi sigma^2``)."""
        sigma_px = self.psf_fwhm_arcsec / self.pixel_scale_arcsec / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return self.point_source_depth(4.0 * math.pi * sigma_px**2, n_sigma)

    def with_depth_offset(self, delta_mag: float) -> BandConditions:
        """Conditions of a coadd ``delta_mag`` deeper (positive) or shallower (scaled exposure time)."""
        return replace(self, exposure_time_s=self.exposure_time_s * 10.0 ** (0.8 * delta_mag))

    def with_fwhm(self, fwhm_arcsec: float) -> BandConditions:
        """Conditions with another PSF FWHM."""
        return replace(self, psf_fwhm_arcsec=float(fwhm_arcsec))


def lsst_band_conditions(band: str, pixel_scale_arcsec: float = 0.2) -> BandConditions:
    """10-year LSST coadd conditions of ``band`` from ``surveycodex``.

    Raises
    ------
    ValueError
        If ``band`` is not an LSST band.
    """
    from surveycodex import get_survey

    survey = get_survey("LSST")
    if band not in survey.available_filters:
        raise ValueError(f"{band!r} is not an LSST band; LSST bands are {list(survey.available_filters)}")
    band_filter = survey.get_filter(band)
    return BandConditions(
        band=band,
        zeropoint_mag=float(band_filter.zeropoint.to_value("mag")),
        sky_mag_arcsec2=float(band_filter.sky_brightness.value),
        exposure_time_s=float(band_filter.full_exposure_time.to_value("s")),
        psf_fwhm_arcsec=float(band_filter.psf_fwhm.to_value("arcsec")),
        pixel_scale_arcsec=pixel_scale_arcsec,
    )
