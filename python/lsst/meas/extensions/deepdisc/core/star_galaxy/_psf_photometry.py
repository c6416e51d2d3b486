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
"""PSF-matched photometry at detection centroids: a point-source flux and an extended-light excess per band.

Per source and band, two Gaussian matched filters centred on the centroid, both normalised to measure the
total flux of a point source with a Gaussian PSF of the band's FWHM (sigma ``s``):

* the PSF flux ``F_psf = sum(P I) / sum(P P)`` with ``P`` the PSF (width ``s``),
* a wider flux ``F_wide = sum(W I) / sum(W P)`` with ``W`` a Gaussian of width ``WIDE_FACTOR * s``.

A point source gives ``F_wide - F_psf`` near a constant fraction of its flux (zero for a Gaussian PSF; the
PSF's wings add a little); an extended source gives more, since the wide filter collects light that the PSF
filter misses.  The excess ``D = F_wide - F_psf`` is linear in the pixels, so its variance follows exactly
from the variance plane: ``var(D) = sum((a_w W - a_p P)^2 V)``.  Pixels without data get zero weight in all
sums (each normalisation is taken over the valid pixels only).  The centroid is first refined by PSF-weighted
first moments of the band sum (shift at most ``MAX_SHIFT_PIXELS``): the footprint's flux-weighted centroid
of a faint source is pulled by the noise over its footprint, and a miscentred PSF filter loses flux.  Sources
with missing pixels within three PSF sigmas keep their footprint centroid (truncated light biases moments).

These are the inputs of the star-galaxy classifier (`StarGalaxyClassifier`) and useful on their own (the
``<band>_psfFlux`` columns of the detection catalog).
"""

from __future__ import annotations

__all__ = [
    "MAX_SHIFT_PIXELS",
    "WIDE_FACTOR",
    "PsfPhotometry",
    "band_psf_sigmas",
    "psf_photometry",
]

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from ..footprints import pixels_at
from ..multiband import MultibandImage
from ..threads import map_in_threads

WIDE_FACTOR = 2.0
"""Width of the wide filter in units of the PSF sigma."""

MAX_SHIFT_PIXELS = 1.0
"""Largest centroid refinement accepted, in pixels (per axis)."""

_GAUSSIAN_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_MIN_VALID_WEIGHT = 0.5
_CHUNK = 1024  # sources per vectorised batch: bounds the stamp arrays (about 10 MB each at 1" seeing)


@dataclass(frozen=True)
class PsfPhotometry:
    """PSF-matched photometry of ``N`` sources in ``C`` bands (arrays ``[N, C]``; NaN where not measurable).

    Attributes
    ----------
    bands : `tuple` [`str`, ...]
        Bands of the second axis.
    flux, flux_err : `numpy.ndarray`
        PSF flux and its uncertainty (image units).
    excess, excess_err : `numpy.ndarray`
        Wide-filter flux minus PSF flux, and its uncertainty.
    x, y : `numpy.ndarray`
        Refined centroids ``[N]`` (parent pixel coordinates) the filters were centred on.
    """

    bands: tuple[str, ...]
    flux: np.ndarray
    flux_err: np.ndarray
    excess: np.ndarray
    excess_err: np.ndarray
    x: np.ndarray
    y: np.ndarray


def band_psf_sigmas(image: MultibandImage) -> dict[str, float]:
    """Gaussian PSF sigma in pixels per band, from ``metadata["psf_fwhm_arcsec"]`` and the WCS.

    Bands without a finite, positive FWHM are left out; an image without WCS or FWHM gives an empty dict.
    A single FWHM (not a per-band mapping) applies to every band.
    """
    fwhm = image.metadata.get("psf_fwhm_arcsec")
    if fwhm is None or image.wcs is None:
        return {}
    if not isinstance(fwhm, dict):
        fwhm = dict.fromkeys(image.bands, fwhm)
    scale_arcsec = float(np.mean(proj_plane_pixel_scales(image.wcs.celestial))) * 3600.0
    sigmas = {}
    for band in image.bands:
        value = fwhm.get(band)
        if value is None:
            continue
        value = float(value)
        if np.isfinite(value) and value > 0:
            sigmas[band] = value / scale_arcsec / _GAUSSIAN_FWHM_PER_SIGMA
    return sigmas


def _stamp_axis(centre: np.ndarray, half: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One axis of the stamps: indices, in-image flags and offsets from the centre, ``[N, S]`` each.

    The indices run around the nearest pixel, clipped to the image; the offsets are the (clipped) pixel
    centres' from the sub-pixel centre.
    """
    index = np.rint(centre).astype(np.int64)[:, None] + np.arange(-half, half + 1)
    inside = (index >= 0) & (index < size)
    index = np.clip(index, 0, size - 1)
    return index, inside, index - centre[:, None]


def _stamps(
    x: np.ndarray, y: np.ndarray, half: int, width: int, height: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stamps of side ``S = 2 half + 1`` around the sources.

    Returns the ``[N, S, S]`` flat pixel index of the stamps (for `..footprints.pixels_at`), the
    ``[N, S, S]`` in-image mask, and the ``[N, S]`` row (``dy``) and column (``dx``) offsets of the pixel
    centres from the centroids.
    """
    rows, inside_y, dy = _stamp_axis(y, half, height)
    cols, inside_x, dx = _stamp_axis(x, half, width)
    return rows[:, :, None] * width + cols[:, None, :], inside_y[:, :, None] & inside_x[:, None, :], dy, dx


def _gaussian(offset: np.ndarray, sigma: float) -> np.ndarray:
    """One axis of a normalised circular Gaussian: the 2-d one is ``_gaussian(dy) x _gaussian(dx)``."""
    return np.exp(-(offset * offset) / (2.0 * sigma * sigma)) / (np.sqrt(2.0 * np.pi) * sigma)


def _weighted_sums(along_y: np.ndarray, stamps: np.ndarray, along_x: np.ndarray) -> np.ndarray:
    """``sum_ij along_y[n, i] stamps[n, i, j] along_x[n, j]`` per source: a separable weight's sums."""
    return np.einsum("ni,ni->n", along_y, np.einsum("nij,nj->ni", stamps, along_x))


def _refine_centroids(
    image: MultibandImage, x: np.ndarray, y: np.ndarray, sigma: float, planes: Sequence[str], iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-weighted first moments of the band sum, shifts clipped to `MAX_SHIFT_PIXELS` from the start."""
    half = int(np.ceil(3.0 * sigma))
    total = np.zeros(image.shape, dtype=np.float32)
    any_invalid = np.zeros(image.shape, dtype=bool)
    invalid = np.empty(image.shape, dtype=bool)
    valid = np.empty(image.shape, dtype=bool)
    for b in range(len(image.bands)):
        image.band_invalid(b, planes, out=invalid)
        # Invalid pixels add nothing (the sum never holds a negative zero, so skipping a +0.0 is exact).
        np.add(total, image.image[b], out=total, where=np.logical_not(invalid, out=valid))
        any_invalid |= invalid
    del invalid, valid
    x, y = x.copy(), y.copy()
    for begin in range(0, len(x), _CHUNK):  # Sources are independent: the stamps stay small.
        chunk = slice(begin, min(begin + _CHUNK, len(x)))
        x[chunk], y[chunk] = _refine_chunk(total, any_invalid, x[chunk], y[chunk], half, sigma, iterations)
    return x, y


def _refine_chunk(
    total: np.ndarray,
    any_invalid: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    half: int,
    sigma: float,
    iterations: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`_refine_centroids` for some sources, given the band sum and where any band is invalid."""
    height, width = total.shape
    x0, y0 = x.copy(), y.copy()
    for _ in range(iterations):
        stamp, inside, dy, dx = _stamps(x, y, half, width, height)
        values = np.where(inside, pixels_at(total, stamp), 0.0).astype(np.float64)
        weight_y, weight_x = _gaussian(dy, sigma), _gaussian(dx, sigma)
        norm = _weighted_sums(weight_y, values, weight_x)
        with np.errstate(invalid="ignore", divide="ignore"):
            shift_x = _weighted_sums(weight_y, values, weight_x * dx) / norm
            shift_y = _weighted_sums(weight_y * dy, values, weight_x) / norm
        # Moments of a Gaussian-weighted Gaussian underestimate the offset by half: double them.
        # Truncated light biases the moments: sources near missing pixels keep their centroid.
        complete = ~(pixels_at(any_invalid, stamp) | ~inside).any(axis=(1, 2))
        good = np.isfinite(shift_x) & np.isfinite(shift_y) & (norm > 0) & complete
        x = np.where(good, np.clip(x + 2.0 * shift_x, x0 - MAX_SHIFT_PIXELS, x0 + MAX_SHIFT_PIXELS), x)
        y = np.where(good, np.clip(y + 2.0 * shift_y, y0 - MAX_SHIFT_PIXELS, y0 + MAX_SHIFT_PIXELS), y)
    return x, y


def _measure_band(
    pixels_2d: np.ndarray,
    variance_2d: np.ndarray | None,
    invalid_2d: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sigma: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PSF flux, its error, excess, its error and the usable flag of sources in one band (local pixels).

    Both filters are circular Gaussians, products of one Gaussian per axis, so every sum over a stamp is
    two small matrix products (`_weighted_sums`) instead of ``[N, S, S]`` weight arrays.
    """
    height, width = pixels_2d.shape
    half = int(np.ceil(3.0 * WIDE_FACTOR * sigma))
    stamp, inside, dy, dx = _stamps(x, y, half, width, height)
    valid = inside & ~pixels_at(invalid_2d, stamp)
    pixels = np.where(valid, pixels_at(pixels_2d, stamp), 0.0).astype(np.float64)
    weight = valid.astype(np.float64)
    psf_y, psf_x = _gaussian(dy, sigma), _gaussian(dx, sigma)
    wide_y, wide_x = _gaussian(dy, WIDE_FACTOR * sigma), _gaussian(dx, WIDE_FACTOR * sigma)
    psf_norm = _weighted_sums(psf_y**2, weight, psf_x**2)
    # Enough of the PSF's weight must fall on valid pixels to call it a measurement.
    usable = psf_norm >= _MIN_VALID_WEIGHT * (psf_y**2).sum(axis=1) * (psf_x**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        a_psf = 1.0 / psf_norm
        a_wide = 1.0 / _weighted_sums(wide_y * psf_y, weight, wide_x * psf_x)
        f_psf = a_psf * _weighted_sums(psf_y, pixels, psf_x)
        f_wide = a_wide * _weighted_sums(wide_y, pixels, wide_x)
    flux_err = np.full(len(x), np.nan)
    excess_err = np.full(len(x), np.nan)
    if variance_2d is not None:
        variance = np.where(valid, pixels_at(variance_2d, stamp), 0.0).astype(np.float64)
        good = np.isfinite(variance) & (variance > 0)
        bad_variance = (valid & ~good).any(axis=(1, 2))
        variance = np.where(good, variance, 0.0)
        with np.errstate(invalid="ignore"):
            psf_psf = _weighted_sums(psf_y**2, variance, psf_x**2)
            var_psf = a_psf**2 * psf_psf
            # sum((a_w W - a_p P)^2 V), expanded into separable sums (the two filters are comparable in
            # size, so nothing cancels beyond float64 rounding; clipped at 0 against that rounding).
            var_excess = np.maximum(
                a_wide**2 * _weighted_sums(wide_y**2, variance, wide_x**2)
                - 2.0 * a_wide * a_psf * _weighted_sums(wide_y * psf_y, variance, wide_x * psf_x)
                + var_psf,
                0.0,
            )
        flux_err = np.where(bad_variance, np.nan, np.sqrt(var_psf))
        excess_err = np.where(bad_variance, np.nan, np.sqrt(var_excess))
    return f_psf, flux_err, f_wide - f_psf, excess_err, usable


def psf_photometry(
    image: MultibandImage,
    x: np.ndarray,
    y: np.ndarray,
    sigmas: dict[str, float] | None = None,
    *,
    invalid_planes: Sequence[str] = ("NO_DATA",),
    refine_iterations: int = 2,
    threads: int = 1,
) -> PsfPhotometry:
    """PSF flux and extended-light excess of sources at ``(x, y)`` in every band of ``image``.

    Parameters
    ----------
    image : `MultibandImage`
        The coadd bands (with a variance plane for the errors; without one they are NaN).
    x, y : `numpy.ndarray`
        Source centroids in parent pixel coordinates (pixel ``i`` centred on ``i``).
    sigmas : `dict` [`str`, `float`], optional
        Gaussian PSF sigma in pixels per band (default: `band_psf_sigmas`).  Bands without one are NaN.
    invalid_planes : sequence of `str`
        Mask planes of pixels without data (given zero weight).
    refine_iterations : `int`
        Centroid refinement iterations (0: use ``x, y`` as given).
    threads : `int`
        Bands measured at once (`~..threads.map_in_threads`); each band's columns are the same for any
        count.  Every thread holds one band's invalid-pixel plane and a chunk's stamps.

    Returns
    -------
    photometry : `PsfPhotometry`
    """
    sigmas = band_psf_sigmas(image) if sigmas is None else dict(sigmas)
    x = np.asarray(x, dtype=np.float64) - image.xy0[0]
    y = np.asarray(y, dtype=np.float64) - image.xy0[1]
    n, n_bands = len(x), len(image.bands)
    shape = (n, n_bands)
    flux, flux_err = np.full(shape, np.nan), np.full(shape, np.nan)
    excess, excess_err = np.full(shape, np.nan), np.full(shape, np.nan)
    known = [sigmas[b] for b in image.bands if b in sigmas]
    if n == 0 or not known:
        return PsfPhotometry(
            image.bands, flux, flux_err, excess, excess_err, x + image.xy0[0], y + image.xy0[1]
        )
    finite = np.isfinite(x) & np.isfinite(y)
    xs, ys = np.where(finite, x, 0.0), np.where(finite, y, 0.0)
    if refine_iterations > 0:
        xs, ys = _refine_centroids(image, xs, ys, float(np.median(known)), invalid_planes, refine_iterations)
    buffers = threading.local()  # One invalid-pixel plane per thread, reused for its bands.

    def measure(b: int) -> None:
        sigma = sigmas.get(image.bands[b])
        if sigma is None:
            return
        variance = None if image.variance is None else image.variance[b]
        if not hasattr(buffers, "invalid"):
            buffers.invalid = np.empty(image.shape, dtype=bool)
        invalid = image.band_invalid(b, invalid_planes, out=buffers.invalid)
        for begin in range(0, n, _CHUNK):
            chunk = slice(begin, min(begin + _CHUNK, n))
            measured = _measure_band(image.image[b], variance, invalid, xs[chunk], ys[chunk], sigma)
            usable = finite[chunk] & measured[4]
            flux[chunk, b] = np.where(usable, measured[0], np.nan)
            excess[chunk, b] = np.where(usable, measured[2], np.nan)
            flux_err[chunk, b] = np.where(usable, measured[1], np.nan)
            excess_err[chunk, b] = np.where(usable, measured[3], np.nan)

    map_in_threads(measure, range(n_bands), threads)
    x_out = np.where(finite, xs, np.nan) + image.xy0[0]
    y_out = np.where(finite, ys, np.nan) + image.xy0[1]
    return PsfPhotometry(image.bands, flux, flux_err, excess, excess_err, x_out, y_out)
