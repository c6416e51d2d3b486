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
"""Source models in model-PSF space and their rendering to the observed PSF of each band.

Deblended models follow scarlet's convention: a source is ``spectrum[:, None, None] * morph`` in the frame
of a narrow *model PSF* (a pixel-integrated circular Gaussian of sigma ~0.8 px), and its observed image in
band ``b`` is that model convolved with the difference kernel ``K_b`` such that ``model_psf * K_b = psf_b``.
``morph`` has maximum 1, so ``spectrum`` is the model's value (nJy per pixel) at the morphology's peak and
the model's total flux is ``spectrum * morph.sum()``.
`difference_kernels` computes ``K_b`` from the PSF images by division in Fourier space, as scarlet does, so
anyone holding the stored PSF images and model PSF can re-render a model (`render_source`,
`render_sources`).
"""

from __future__ import annotations

__all__ = [
    "KernelBank",
    "difference_kernels",
    "gaussian_mixture_morph",
    "gaussian_morph",
    "integrated_gaussian",
    "model_psf_variance",
    "paste",
    "render_source",
    "render_sources",
]

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import fft as sfft
from scipy.signal import fftconvolve
from scipy.special import erf

from .types import DeblendedSource


def integrated_gaussian(
    sigma: float, size: int, offset: tuple[float, float] = (0.0, 0.0), normalize: bool = True
) -> np.ndarray:
    """Circular Gaussian integrated over square pixels, on an odd ``size x size`` grid.

    Parameters
    ----------
    sigma : `float`
        Standard deviation (pixels).
    size : `int`
        Odd side of the image; the Gaussian is centred on the central pixel plus ``offset``.
    offset : `tuple` [`float`, `float`]
        ``(dx, dy)`` sub-pixel shift of the centre.
    normalize : `bool`
        Rescale to a unit sum (otherwise the flux inside the grid is kept).

    Returns
    -------
    image : `numpy.ndarray`
        ``float64`` array ``[size, size]``.
    """
    if size % 2 == 0 or size < 1:
        raise ValueError(f"size must be odd and positive, got {size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    half = size // 2
    edges = np.arange(-half, half + 2) - 0.5
    scale = sigma * np.sqrt(2.0)
    profile_x = np.diff(0.5 * erf((edges - offset[0]) / scale))
    profile_y = np.diff(0.5 * erf((edges - offset[1]) / scale))
    image = np.outer(profile_y, profile_x)
    return image / image.sum() if normalize else image


def model_psf_variance(model_psf: np.ndarray) -> float:
    """Second moment per axis (pixels^2) of a centred model PSF image."""
    model = np.asarray(model_psf, dtype=float)
    half_y, half_x = model.shape[0] // 2, model.shape[1] // 2
    dy = np.arange(-half_y, half_y + 1)[:, None]
    dx = np.arange(-half_x, half_x + 1)[None, :]
    return float(0.5 * np.sum(model * (dx**2 + dy**2)) / model.sum())


def gaussian_morph(
    covariance: np.ndarray, center: tuple[float, float], box: tuple[int, int, int, int]
) -> np.ndarray:
    """Elliptical Gaussian sampled at pixel centres of ``box``, maximum 1.

    Parameters
    ----------
    covariance : `numpy.ndarray`
        ``2 x 2`` covariance in ``(x, y)`` (pixels^2), positive definite.
    center : `tuple` [`float`, `float`]
        ``(x, y)`` centre (parent coordinates).
    box : `tuple` [`int`, `int`, `int`, `int`]
        ``(x_begin, y_begin, x_end, y_end)`` (end exclusive).

    Returns
    -------
    morph : `numpy.ndarray`
        ``float32`` ``[y_end - y_begin, x_end - x_begin]`` with maximum 1.
    """
    return gaussian_mixture_morph(np.ones(1), np.asarray(covariance, dtype=float)[None], center, box)


def gaussian_mixture_morph(
    amplitudes: np.ndarray,
    covariances: np.ndarray,
    center: tuple[float, float],
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Concentric mixture of elliptical Gaussians sampled at pixel centres of ``box``, maximum 1.

    Parameters
    ----------
    amplitudes : `numpy.ndarray`
        ``[K]`` flux of each component.
    covariances : `numpy.ndarray`
        ``[K, 2, 2]`` covariances in ``(x, y)`` (pixels^2), positive definite.
    center : `tuple` [`float`, `float`]
        ``(x, y)`` centre (parent coordinates).
    box : `tuple` [`int`, `int`, `int`, `int`]
        ``(x_begin, y_begin, x_end, y_end)`` (end exclusive).

    Returns
    -------
    morph : `numpy.ndarray`
        ``float32`` ``[y_end - y_begin, x_end - x_begin]`` with maximum 1.
    """
    x_begin, y_begin, x_end, y_end = box
    dx = (np.arange(x_begin, x_end) - center[0])[None, :]
    dy = (np.arange(y_begin, y_end) - center[1])[:, None]
    morph = np.zeros((y_end - y_begin, x_end - x_begin))
    for amplitude, covariance in zip(amplitudes, covariances):
        inverse = np.linalg.inv(covariance)
        quad = inverse[0, 0] * dx**2 + 2.0 * inverse[0, 1] * dx * dy + inverse[1, 1] * dy**2
        morph += amplitude / (2.0 * np.pi * np.sqrt(np.linalg.det(covariance))) * np.exp(-0.5 * quad)
    peak = morph.max()
    if not peak > 0:
        raise ValueError(f"the profile vanishes in box {box}")
    return (morph / peak).astype(np.float32)


def difference_kernels(psf_images: dict[str, np.ndarray], model_psf: np.ndarray) -> dict[str, np.ndarray]:
    """Kernels ``K_b`` with ``model_psf * K_b = psf_b``, by division in Fourier space.

    Parameters
    ----------
    psf_images : `dict` [`str`, `numpy.ndarray`]
        Per-band observed PSF images (odd square, unit sum, all of one size).
    model_psf : `numpy.ndarray`
        Model PSF (odd square, unit sum, no larger than the PSF images), narrower than every observed PSF.

    Returns
    -------
    kernels : `dict` [`str`, `numpy.ndarray`]
        Per-band kernels of the PSF images' size, unit sum.
    """
    sizes = {np.shape(p) for p in psf_images.values()}
    if len(sizes) != 1:
        raise ValueError(f"PSF images must share one shape, got {sizes}")
    shape = sizes.pop()
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] % 2 == 0:
        raise ValueError(f"PSF images must be odd squares, got {shape}")
    model = np.asarray(model_psf, dtype=float)
    if (
        model.ndim != 2
        or model.shape[0] % 2 == 0
        or model.shape[0] != model.shape[1]
        or model.shape[0] > shape[0]
    ):
        raise ValueError(f"model PSF must be an odd square no larger than the PSFs, got {model.shape}")
    pad = (shape[0] - model.shape[0]) // 2
    model = np.pad(model, pad)
    # Twice the PSF size keeps the circular division free of wrap-around.
    fft_size = 2 * shape[0]
    model_ft = np.fft.rfft2(np.fft.ifftshift(_embed(model, fft_size)))
    tiny = np.abs(model_ft).max() * 1e-9
    kernels = {}
    half = shape[0] // 2
    for band, psf in psf_images.items():
        psf_ft = np.fft.rfft2(np.fft.ifftshift(_embed(np.asarray(psf, dtype=float), fft_size)))
        kernel = np.fft.fftshift(
            np.fft.irfft2(psf_ft / np.where(np.abs(model_ft) > tiny, model_ft, tiny), s=(fft_size, fft_size))
        )
        centre = fft_size // 2
        kernel = kernel[centre - half : centre + half + 1, centre - half : centre + half + 1]
        kernels[band] = kernel / kernel.sum()
    return kernels


def _embed(image: np.ndarray, size: int) -> np.ndarray:
    """Centre an odd image in a ``size x size`` zero array (centre pixel at ``size // 2``)."""
    out = np.zeros((size, size))
    half = image.shape[0] // 2
    centre = size // 2
    out[centre - half : centre + half + 1, centre - half : centre + half + 1] = image
    return out


def render_source(
    source: DeblendedSource, kernels: dict[str, np.ndarray], bands: Sequence[str]
) -> tuple[tuple[int, int], np.ndarray]:
    """Observed-PSF image of one model (full convolution, so the box grows by the kernel radius).

    Returns
    -------
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` parent coordinates of the returned cube's ``[0, 0]`` pixel.
    cube : `numpy.ndarray`
        ``[C, h + k - 1, w + k - 1]`` ``float64`` observed model, in the order of ``bands``.
    """
    if len(source.spectrum) != len(bands):
        raise ValueError(
            f"source {source.source_id} has {len(source.spectrum)} spectrum values for {len(bands)} bands"
        )
    half = next(iter(kernels.values())).shape[0] // 2
    morph = np.asarray(source.morph, dtype=float)
    cube = np.stack(
        [source.spectrum[i] * fftconvolve(morph, kernels[b], mode="full") for i, b in enumerate(bands)]
    )
    return (source.origin[0] - half, source.origin[1] - half), cube


def paste(
    canvas: np.ndarray, stamp: np.ndarray, origin: tuple[int, int], canvas_origin: tuple[int, int]
) -> None:
    """Add ``stamp`` (``[..., h, w]``, corner at parent ``(y0, x0)``) into ``canvas``, clipped."""
    y0 = origin[0] - canvas_origin[0]
    x0 = origin[1] - canvas_origin[1]
    height, width = canvas.shape[-2:]
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = min(stamp.shape[-2], height - y0)
    sx1 = min(stamp.shape[-1], width - x0)
    if sy1 <= sy0 or sx1 <= sx0:
        return
    canvas[..., y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += stamp[..., sy0:sy1, sx0:sx1]


def render_sources(
    sources: Iterable[DeblendedSource],
    kernels: dict[str, np.ndarray],
    bands: Sequence[str],
    shape: tuple[int, int],
    xy0: tuple[int, int],
) -> np.ndarray:
    """Sum of the observed-PSF images of ``sources`` on a ``[C, *shape]`` grid whose ``[0, 0]`` is at ``xy0``.

    The models are convolved in model space first and summed afterwards, so the result is exact inside the
    grid for every model that lies in it.
    """
    canvas = np.zeros((len(bands), *shape))
    for source in sources:
        origin, cube = render_source(source, kernels, bands)
        paste(canvas, cube, origin, (xy0[1], xy0[0]))
    return canvas


class KernelBank:
    """Full 2-d convolutions of many small images with one fixed set of per-band kernels.

    The kernels' Fourier transforms are cached per padded shape, so convolving an image with all ``C``
    kernels costs one forward and ``C`` inverse FFTs (one when the bands are summed with weights).

    Parameters
    ----------
    kernels : `numpy.ndarray`
        ``[C, k, k]`` kernels (odd ``k``).
    max_cached_pixels : `int`
        Padded shapes larger than this are not cached (memory).
    """

    def __init__(self, kernels: np.ndarray, max_cached_pixels: int = 256 * 256):
        self.kernels = np.asarray(kernels, dtype=np.float64)
        shape = self.kernels.shape
        if self.kernels.ndim != 3 or shape[1] != shape[2] or shape[1] % 2 == 0:
            raise ValueError(f"kernels must be [C, k, k] with odd k, got {shape}")
        self.size = shape[1]
        self.half = self.size // 2
        self.max_cached_pixels = max_cached_pixels
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def _kernel_ft(self, shape: tuple[int, int]) -> np.ndarray:
        cached = self._cache.get(shape)
        if cached is None:
            cached = sfft.rfft2(self.kernels, s=shape, axes=(-2, -1), workers=1)
            if shape[0] * shape[1] <= self.max_cached_pixels:
                self._cache[shape] = cached
        return cached

    def convolve(self, image: np.ndarray, band_weights: np.ndarray | None = None) -> np.ndarray:
        """Full convolution of ``image`` ``[h, w]`` with every kernel.

        Parameters
        ----------
        image : `numpy.ndarray`
            2-d image.
        band_weights : `numpy.ndarray`, optional
            ``[C]`` weights: return ``sum_b band_weights[b] * (image * K_b)`` instead of the cube.

        Returns
        -------
        result : `numpy.ndarray`
            ``[C, h + k - 1, w + k - 1]``, or ``[h + k - 1, w + k - 1]`` with ``band_weights``; parent pixel
            ``(y0, x0)`` of the image maps to ``(y0 - half, x0 - half)`` of the result.
        """
        image = np.asarray(image, dtype=np.float64)
        out_shape = (image.shape[0] + self.size - 1, image.shape[1] + self.size - 1)
        fft_shape = (sfft.next_fast_len(out_shape[0], real=True), sfft.next_fast_len(out_shape[1], real=True))
        image_ft = sfft.rfft2(image, s=fft_shape, workers=1)
        kernel_ft = self._kernel_ft(fft_shape)
        if band_weights is not None:
            combined = np.tensordot(np.asarray(band_weights, dtype=np.float64), kernel_ft, axes=1) * image_ft
            return sfft.irfft2(combined, s=fft_shape, workers=1)[: out_shape[0], : out_shape[1]]
        result = sfft.irfft2(kernel_ft * image_ft[None], s=fft_shape, axes=(-2, -1), workers=1)
        return result[:, : out_shape[0], : out_shape[1]]
