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
"""Sky background and noise of an image that comes without them (e.g. another survey's coadd).

`clipped_stats` gives a sigma-clipped median and standard deviation (median absolute deviation), the
robust statistics of the sky pixels of an image with sources on it.  `mesh_background` estimates a smooth
background: the clipped median in every cell of a coarse mesh, a 3x3 median over the interior cells (so
that a cell filled by a bright galaxy does not bias it), then bilinear interpolation between the cell centres
(flat beyond the outermost centres).  `measure_background` decides whether an image still has its sky: the
clipped median of the sky pixels is compared with their scatter.  `noise_variance` is a variance plane for
an image that has none: the sky scatter, plus the Poisson variance of the sources when the gain is known.
"""

from __future__ import annotations

__all__ = [
    "BackgroundEstimate",
    "DEFAULT_MESH_SIZE",
    "DEFAULT_SIGNIFICANCE",
    "clipped_stats",
    "measure_background",
    "mesh_background",
    "noise_variance",
]

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

DEFAULT_MESH_SIZE = 128
"""Side of a background mesh cell (pixels)."""

DEFAULT_SIGNIFICANCE = 0.5
"""A sky level above this many sky-noise sigmas (in absolute value) counts as an unsubtracted background.

The clipped median of a sky-subtracted coadd stays within ~0.1 sigma of zero even in crowded fields (faint
sources lift it slightly); an unsubtracted sky is tens to thousands of sigmas.
"""

_MAD_TO_SIGMA = 1.4826


def clipped_stats(
    values: np.ndarray, n_sigma: float = 3.0, iterations: int = 5, axis: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped median and robust standard deviation (1.4826 x median absolute deviation).

    Parameters
    ----------
    values : `numpy.ndarray`
        Values; NaN are ignored.
    n_sigma : `float`
        Clipping threshold.
    iterations : `int`
        Clipping rounds.
    axis : `int`, optional
        Axis to reduce (all values when `None`).

    Returns
    -------
    median, sigma : `numpy.ndarray`
        NaN where no value is left.
    """
    data = np.array(values, dtype=np.float32)
    if axis is None:
        data = data.ravel()
        axis = 0
    median = sigma = np.full(np.delete(data.shape, axis), np.nan)
    for _ in range(max(iterations, 1)):
        if np.all(np.isnan(data)):
            break
        with np.errstate(invalid="ignore"), _quiet_nan_warnings():
            median = np.nanmedian(data, axis=axis)
            deviation = np.abs(data - np.expand_dims(median, axis))
            sigma = _MAD_TO_SIGMA * np.nanmedian(deviation, axis=axis)
            clip = deviation > n_sigma * np.expand_dims(sigma, axis)
        if not np.any(clip):
            break
        data[clip] = np.nan
    return np.asarray(median, dtype=np.float64), np.asarray(sigma, dtype=np.float64)


@contextmanager
def _quiet_nan_warnings() -> Iterator[None]:
    """Silence numpy's "All-NaN slice" and "Mean of empty slice" warnings (empty cells are expected)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _interpolation_weights(centres: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower cell index, upper cell index and weight of the upper one for pixel positions ``0..n-1``."""
    positions = np.arange(n, dtype=np.float64)
    if centres.size == 1:
        zeros = np.zeros(n, dtype=int)
        return zeros, zeros, np.zeros(n)
    lower = np.clip(np.searchsorted(centres, positions) - 1, 0, centres.size - 2)
    weight = np.clip((positions - centres[lower]) / (centres[lower + 1] - centres[lower]), 0.0, 1.0)
    return lower, lower + 1, weight


def mesh_background(
    image: np.ndarray,
    valid: np.ndarray | None = None,
    mesh_size: int = DEFAULT_MESH_SIZE,
    n_sigma: float = 3.0,
) -> np.ndarray:
    """Smooth background of an image from sigma-clipped medians on a coarse mesh.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image.
    valid : `numpy.ndarray`, optional
        Boolean mask of pixels to use (default: the finite ones).
    mesh_size : `int`
        Side of a mesh cell in pixels; an image smaller than one cell gets a constant background.
    n_sigma : `float`
        Clipping threshold within a cell.

    Returns
    -------
    background : `numpy.ndarray`
        ``float32`` array of the image's shape.

    Raises
    ------
    ValueError
        If ``mesh_size`` is not positive or no pixel is valid.
    """
    if mesh_size < 1:
        raise ValueError(f"mesh_size must be positive, got {mesh_size}")
    image = np.asarray(image)
    height, width = image.shape
    usable = np.isfinite(image) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(image))
    if not usable.any():
        raise ValueError("no valid pixel to estimate the background from")
    ny, nx = -(-height // mesh_size), -(-width // mesh_size)
    cells = np.full((ny, nx), np.nan)
    for row in range(ny):
        y0, y1 = row * mesh_size, min((row + 1) * mesh_size, height)
        strip = np.where(usable[y0:y1], image[y0:y1], np.nan).astype(np.float32)
        padded = np.full((y1 - y0, nx * mesh_size), np.nan, dtype=np.float32)
        padded[:, :width] = strip
        blocks = padded.reshape(y1 - y0, nx, mesh_size).transpose(1, 0, 2).reshape(nx, -1)
        cells[row], _ = clipped_stats(blocks, n_sigma=n_sigma, axis=1)
    empty = ~np.isfinite(cells)
    if empty.all():
        raise ValueError("no valid pixel to estimate the background from")
    while empty.any():  # Cells without data take the mean of their neighbours that have some.
        padded = np.pad(cells, 1, constant_values=np.nan)
        neighbours = np.stack([padded[dy : dy + ny, dx : dx + nx] for dy in range(3) for dx in range(3)])
        with _quiet_nan_warnings():
            fill = np.nanmean(neighbours, axis=0)
        cells[empty] = fill[empty]
        empty = ~np.isfinite(cells)
    if ny >= 3 and nx >= 3:
        # Interior cells only: at the edges a padded 3x3 median is biased on a sloping sky.
        from scipy.ndimage import median_filter

        cells[1:-1, 1:-1] = median_filter(cells, size=3)[1:-1, 1:-1]
    y_centres = np.array([(r * mesh_size + min((r + 1) * mesh_size, height) - 1) / 2.0 for r in range(ny)])
    x_centres = np.array([(c * mesh_size + min((c + 1) * mesh_size, width) - 1) / 2.0 for c in range(nx)])
    x_lo, x_hi, x_w = _interpolation_weights(x_centres, width)
    rows = cells[:, x_lo] * (1.0 - x_w) + cells[:, x_hi] * x_w  # (ny, width)
    y_lo, y_hi, y_w = _interpolation_weights(y_centres, height)
    background = rows[y_lo] * (1.0 - y_w)[:, None] + rows[y_hi] * y_w[:, None]
    return background.astype(np.float32)


@dataclass(frozen=True)
class BackgroundEstimate:
    """What `measure_background` found.

    Attributes
    ----------
    level : `float`
        Clipped median of the valid pixels (the sky level if it was not subtracted), image units.
    sigma : `float`
        Robust standard deviation of the sky pixels around the background, image units.
    significance : `float`
        ``level / sigma``.
    significant : `bool`
        Whether ``abs(significance)`` exceeds the threshold: the sky was not subtracted.
    background : `numpy.ndarray`
        The mesh background (`mesh_background`), image units.
    """

    level: float
    sigma: float
    significance: float
    significant: bool
    background: np.ndarray

    @property
    def range(self) -> tuple[float, float]:
        """Smallest and largest value of the mesh background."""
        return float(np.min(self.background)), float(np.max(self.background))


def measure_background(
    image: np.ndarray,
    valid: np.ndarray | None = None,
    mesh_size: int = DEFAULT_MESH_SIZE,
    threshold: float = DEFAULT_SIGNIFICANCE,
) -> BackgroundEstimate:
    """Measure an image's sky level and noise and decide whether the sky is still in it.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image.
    valid : `numpy.ndarray`, optional
        Pixels to use (default: the finite ones).
    mesh_size : `int`
        Mesh cell size of the background model.
    threshold : `float`
        Level, in sky-noise sigmas, above which the background counts as not subtracted.

    Returns
    -------
    estimate : `BackgroundEstimate`

    Raises
    ------
    ValueError
        If no pixel is valid.
    """
    image = np.asarray(image)
    usable = np.isfinite(image) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(image))
    if not usable.any():
        raise ValueError("the image has no valid pixel")
    background = mesh_background(image, usable, mesh_size)
    level, _ = clipped_stats(image[usable])
    _, sigma = clipped_stats((image - background)[usable])
    level, sigma = float(level), float(sigma)
    if not np.isfinite(sigma) or sigma <= 0:
        # A constant image (or one quantised to a few values): no noise to compare the level with.
        significance = np.inf if level != 0 else 0.0
    else:
        significance = level / sigma
    return BackgroundEstimate(
        level=level,
        sigma=sigma,
        significance=float(significance),
        significant=bool(abs(significance) > threshold),
        background=background,
    )


def noise_variance(
    image: np.ndarray, sky_sigma: float, gain: float | None = None, background: np.ndarray | float = 0.0
) -> np.ndarray:
    """Variance plane for an image without one: sky variance plus, with a gain, the sources' Poisson term.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-d image in counts (or any unit whose relation to electrons ``gain`` gives).
    sky_sigma : `float`
        Robust standard deviation of the sky pixels (image units); it already holds the sky's Poisson noise.
    gain : `float`, optional
        Electrons per image unit; adds ``max(image - background, 0) / gain``.
    background : `numpy.ndarray` or `float`
        Sky under the sources (image units), left out of the Poisson term.

    Returns
    -------
    variance : `numpy.ndarray`
        ``float64`` variance in image units squared (the sky variance where the image is not finite).

    Raises
    ------
    ValueError
        If ``gain`` is not positive or ``sky_sigma`` is not finite.
    """
    if not np.isfinite(sky_sigma):
        raise ValueError(f"the sky noise is not finite ({sky_sigma})")
    image = np.asarray(image, dtype=np.float64)
    variance = np.full(image.shape, float(sky_sigma) ** 2)
    if gain is not None:
        if not gain > 0:
            raise ValueError(f"gain must be positive, got {gain}")
        with np.errstate(invalid="ignore"):
            source = np.clip(image - background, 0.0, None) / gain
        variance += np.where(np.isfinite(source), source, 0.0)
    return variance
