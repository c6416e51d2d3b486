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
"""Multi-band HDR cutouts: the morphology classifier's input."""

from __future__ import annotations

__all__ = ["CutoutConfig", "CutoutError", "band_noise", "make_cutouts"]

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..footprints import spans_bbox, spans_to_mask
from ..multiband import MultibandImage


class CutoutError(ValueError):
    """Cutouts cannot be made from these inputs (the message names the problem)."""


@dataclass(frozen=True)
class CutoutConfig:
    """How a galaxy becomes the classifier's input.

    Parameters
    ----------
    size : `int`
        Side of the cutout (pixels, after binning).
    max_binning : `int`
        Largest integer block-averaging factor: a galaxy whose footprint, grown by ``footprint_padding``,
        does not fit in ``size`` pixels is binned by the smallest factor that makes it fit (1: never bin).
    footprint_padding : `float`
        The footprint's larger side times this must fit the cutout.
    mask_dilation : `int`
        Radius (pixels, before binning) of the disc by which the object mask is dilated, so that it covers
        the galaxy's faint outskirts (the paper dilates its object masks).
    softening : `float`
        Flux in units of each band's sky noise where the arcsinh stretch turns from linear to logarithmic:
        ``asinh(f / (softening sigma_b))`` keeps the whole dynamic range (HDR), no clipping, no 8-bit
        rendering.
    """

    size: int = 64
    max_binning: int = 4
    footprint_padding: float = 1.25
    mask_dilation: int = 3
    softening: float = 3.0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise CutoutError(f"cutout size must be at least 8 pixels, got {self.size}")
        if self.max_binning < 1:
            raise CutoutError(f"max_binning must be >= 1, got {self.max_binning}")
        if self.footprint_padding <= 0 or self.softening <= 0 or self.mask_dilation < 0:
            raise CutoutError("footprint_padding and softening must be positive, mask_dilation >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a model package's metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CutoutConfig:
        """Inverse of `to_dict`; unknown keys are an error."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise CutoutError(f"unknown cutout settings {unknown}")
        return cls(**data)

    def channel_names(self, bands: Sequence[str]) -> list[str]:
        """Names of the input planes, in order: the bands, then ``no_data`` and ``object_mask``."""
        return [*bands, "no_data", "object_mask"]


def band_noise(image: MultibandImage, invalid: np.ndarray) -> np.ndarray:
    """Per-band sky noise (nJy): median sqrt(variance) over valid pixels, else a robust image MAD.

    Raises
    ------
    CutoutError
        If a band has no valid pixel or no positive noise.
    """
    valid = ~invalid
    noise = np.empty(len(image.bands))
    for index, band in enumerate(image.bands):
        if image.variance is not None:
            values = image.variance[index][valid]
            values = values[np.isfinite(values) & (values > 0)]
            level = math.sqrt(float(np.median(values))) if values.size else float("nan")
        else:
            values = image.image[index][valid]
            values = values[np.isfinite(values)]
            level = 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 0.0
        if not level > 0:
            raise CutoutError(f"band {band!r} has no valid pixel with a positive noise level")
        noise[index] = level
    return noise


def _binning(footprint_extent: np.ndarray, config: CutoutConfig) -> np.ndarray:
    needed = np.ceil(footprint_extent * config.footprint_padding / config.size)
    return np.clip(needed, 1, config.max_binning).astype(np.int64)


def make_cutouts(
    image: MultibandImage,
    footprints: Sequence[np.ndarray],
    centres: np.ndarray,
    config: CutoutConfig,
    invalid: np.ndarray | None = None,
    noise: np.ndarray | None = None,
    bands: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one input stack per object: HDR bands, the NO_DATA plane and the dilated object mask.

    Parameters
    ----------
    image : `MultibandImage`
        The patch.
    footprints : sequence of `numpy.ndarray`
        ``(N, 3)`` spans of each object (parent coordinates), from the detection catalog.
    centres : `numpy.ndarray`
        ``[n, 2]`` ``(x, y)`` parent coordinates the cutouts are centred on.
    config : `CutoutConfig`
        Cutout settings.
    invalid : `numpy.ndarray`, optional
        ``[H, W]`` pixels without data in some band (default: NO_DATA or non-finite in any band).
    noise : `numpy.ndarray`, optional
        ``[C]`` per-band sky noise of ``image``'s bands (default: `band_noise`).
    bands : sequence of `str`, optional
        The classifier's bands, in its order (default: ``image.bands``); a band ``image`` lacks gets a plane
        of zeros (what a classifier trained with band dropout expects), the others must all be in ``bands``.

    Returns
    -------
    cutouts : `numpy.ndarray`
        ``float32 [n, len(bands) + 2, size, size]``: ``asinh(flux / (softening noise_b))`` per band (0
        where there are no data, outside the patch and for absent bands), then the NO_DATA plane (1: no
        data, also outside the patch) and the object mask (1 on the dilated footprint).
    binning : `numpy.ndarray`
        ``int [n]`` block-averaging factor of each cutout.

    Raises
    ------
    CutoutError
        If the footprints and centres disagree in number or a footprint is empty.
    """
    centres = np.asarray(centres, dtype=float).reshape(-1, 2)
    if len(footprints) != len(centres):
        raise CutoutError(f"{len(footprints)} footprints for {len(centres)} centres")
    bands = list(image.bands) if bands is None else list(bands)
    extra = [band for band in image.bands if band not in bands]
    if extra:
        raise CutoutError(f"image bands {extra} are not classifier bands {bands}; select the bands first")
    # Plane of each image band in the output.
    plane = np.array([bands.index(band) for band in image.bands], dtype=np.int64)
    n_bands = len(bands)
    size = config.size
    if invalid is None:
        invalid = image.invalid_pixels().any(axis=0)
    if noise is None:
        noise = band_noise(image, invalid)
    extents = np.zeros(len(footprints))
    for index, spans in enumerate(footprints):
        spans = np.asarray(spans).reshape(-1, 3)
        if spans.size == 0:
            raise CutoutError(f"object {index} has an empty footprint")
        x0, y0, x1, y1 = spans_bbox(spans)
        extents[index] = max(x1 - x0 + 1, y1 - y0 + 1) + 2 * config.mask_dilation
    binning = _binning(extents, config)
    out = np.zeros((len(footprints), n_bands + 2, size, size), dtype=np.float32)
    height, width = image.shape
    px0, py0 = image.xy0
    scale = np.ones((n_bands, 1, 1), dtype=np.float32)
    scale[plane] = (config.softening * noise).astype(np.float32)[:, None, None]
    for index, spans in enumerate(footprints):
        factor = int(binning[index])
        side = size * factor
        cx, cy = centres[index]
        # Parent box of the unbinned cutout, centred on the object's pixel.
        bx0 = int(math.floor(cx + 0.5)) - side // 2
        by0 = int(math.floor(cy + 0.5)) - side // 2
        # Its overlap with the patch, in patch-array coordinates.
        ax0, ay0 = max(bx0 - px0, 0), max(by0 - py0, 0)
        ax1, ay1 = min(bx0 + side - px0, width), min(by0 + side - py0, height)
        pixels = np.zeros((n_bands, side, side), dtype=np.float32)
        no_data = np.ones((side, side), dtype=np.float32)
        if ax1 > ax0 and ay1 > ay0:
            dy, dx = ay0 - (by0 - py0), ax0 - (bx0 - px0)
            patch_pixels = image.image[:, ay0:ay1, ax0:ax1]
            bad = invalid[ay0:ay1, ax0:ax1] | ~np.isfinite(patch_pixels).all(axis=0)
            pixels[plane, dy : dy + ay1 - ay0, dx : dx + ax1 - ax0] = np.where(bad, 0.0, patch_pixels)
            no_data[dy : dy + ay1 - ay0, dx : dx + ax1 - ax0] = bad
        mask = spans_to_mask(np.asarray(spans).reshape(-1, 3), (side, side), xy0=(bx0, by0), clip=True)
        if config.mask_dilation:
            radius = config.mask_dilation
            yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
            mask = ndimage.binary_dilation(mask, structure=xx**2 + yy**2 <= radius**2)
        planes = np.concatenate([pixels, no_data[None], mask[None].astype(np.float32)])
        if factor > 1:
            planes = planes.reshape(n_bands + 2, size, factor, size, factor).mean(axis=(2, 4))
            planes[:n_bands] *= (
                factor  # A mean of factor**2 pixels has noise sigma / factor: stay in its units.
            )
        planes[:n_bands] = np.arcsinh(planes[:n_bands] / scale)
        out[index] = planes
    return out, binning
