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
"""The multi-band image type of the pure core.

`MultibandImage` is what every core algorithm consumes: an ordered tuple of bands, a ``float32`` cube
``[C, H, W]``, an optional variance cube, an optional integer mask cube with named bit planes, an optional
astropy WCS and the parent-coordinate origin ``xy0 = (x0, y0)`` of pixel ``[0, 0]``.  Converters from
`lsst.images.MaskedImage` and ``lsst.afw.image.ExposureF`` live in the Butler adapter layer
(``lsst.meas.extensions.deepdisc.butler.conversions``) so that the core never imports Butler code.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MASK_PLANES", "MissingBandError", "MultibandImage", "same_sky_grid", "set_bit_numbers"]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS

# The bit assignment of a freshly made lsst.afw.image.Mask (afw's default plane dictionary).
DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}


class MissingBandError(KeyError):
    """A band requested by a model or config is not present in the data."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else "missing band"


_BLOCK_PIXELS = 1 << 14  # pixels per block of rows in band_invalid: its buffers stay small


@dataclass
class MultibandImage:
    """Co-registered images of one sky region in several bands.

    Parameters
    ----------
    bands : `tuple` [`str`, ...]
        Band names, in the order of the first axis of the cubes.
    image : `numpy.ndarray`
        ``float32`` cube ``[C, H, W]`` (e.g. nJy per pixel).
    variance : `numpy.ndarray` or `None`
        ``float32`` cube ``[C, H, W]`` or `None`.
    mask : `numpy.ndarray` or `None`
        Integer cube ``[C, H, W]`` of bit masks, or `None`.
    mask_planes : `dict` [`str`, `int`]
        Plane name to bit index.
    wcs : `astropy.wcs.WCS` or `None`
        Pixel-to-sky transform in *parent* pixel coordinates (the WCS of the whole patch/tract).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of pixel ``[0, 0]``.
    metadata : `dict`
        Free-form provenance (units, PSF FWHM per band, data ID, ...).
    """

    bands: tuple[str, ...]
    image: np.ndarray
    variance: np.ndarray | None = None
    mask: np.ndarray | None = None
    mask_planes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_PLANES))
    wcs: WCS | None = None
    xy0: tuple[int, int] = (0, 0)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bands = tuple(self.bands)
        if len(set(self.bands)) != len(self.bands):
            raise ValueError(f"duplicate band names in {self.bands}")
        self.image = np.asarray(self.image, dtype=np.float32)
        if self.image.ndim == 2:
            self.image = self.image[np.newaxis]
        if self.image.ndim != 3:
            raise ValueError(f"image must be [C, H, W], got shape {self.image.shape}")
        if self.image.shape[0] != len(self.bands):
            raise ValueError(
                f"{len(self.bands)} bands {self.bands} but image has {self.image.shape[0]} planes"
            )
        if self.variance is not None:
            self.variance = np.asarray(self.variance, dtype=np.float32).reshape(self.image.shape)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if not np.issubdtype(mask.dtype, np.integer):
                raise TypeError(f"mask must be integer, got {mask.dtype}")
            self.mask = mask.reshape(self.image.shape)
        self.xy0 = (int(self.xy0[0]), int(self.xy0[1]))

    @classmethod
    def from_bands(
        cls,
        images: Mapping[str, np.ndarray],
        variances: Mapping[str, np.ndarray] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> MultibandImage:
        """Stack per-band 2-d arrays (all of one shape) into a multi-band image."""
        bands = tuple(images)
        if not bands:
            raise ValueError("no bands given")
        shapes = {band: np.shape(images[band]) for band in bands}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"bands have different shapes: {shapes}")
        image = np.stack([np.asarray(images[b], dtype=np.float32) for b in bands])
        variance = None if variances is None else np.stack([np.asarray(variances[b]) for b in bands])
        mask = None if masks is None else np.stack([np.asarray(masks[b]) for b in bands])
        return cls(bands=bands, image=image, variance=variance, mask=mask, **kwargs)

    @property
    def height(self) -> int:
        """Number of rows."""
        return int(self.image.shape[1])

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.image.shape[2])

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width

    def band_index(self, band: str) -> int:
        """Position of ``band`` on the first axis; `MissingBandError` names it if absent."""
        try:
            return self.bands.index(band)
        except ValueError:
            raise MissingBandError(
                f"band {band!r} is not available; this image has bands {list(self.bands)}"
            ) from None

    def select_bands(self, bands: Sequence[str]) -> MultibandImage:
        """Return the image with the given bands in the given order.

        The cubes are views of this image's when the bands are at a regular stride (all of them in
        order, say), copies otherwise.

        Raises
        ------
        MissingBandError
            If any band is missing; the message names all missing bands.
        """
        missing = [b for b in bands if b not in self.bands]
        if missing:
            raise MissingBandError(
                f"band(s) {missing} required but not available; this image has bands {list(self.bands)}"
            )
        idx: list[int] | slice = [self.bands.index(b) for b in bands]
        steps = set(np.diff(idx).tolist())
        if len(idx) == 1 or (len(steps) == 1 and steps.pop() > 0):
            # Bands at a regular stride (the usual case: all of them, in order) are views, not copies.
            idx = slice(idx[0], idx[-1] + 1, idx[1] - idx[0] if len(idx) > 1 else 1)
        return MultibandImage(
            bands=tuple(bands),
            image=self.image[idx],
            variance=None if self.variance is None else self.variance[idx],
            mask=None if self.mask is None else self.mask[idx],
            mask_planes=dict(self.mask_planes),
            wcs=self.wcs,
            xy0=self.xy0,
            metadata=dict(self.metadata),
        )

    def plane_bits(self, planes: Sequence[str]) -> int:
        """Bit mask for the named planes; planes this image does not define are ignored."""
        bits = 0
        for name in planes:
            if name in self.mask_planes:
                bits |= 1 << self.mask_planes[name]
        return bits

    def plane_mask(self, planes: Sequence[str], any_band: bool = True) -> np.ndarray:
        """Boolean mask of pixels with any of the named planes set.

        Returns ``[H, W]`` (set in any band) if ``any_band``, else ``[C, H, W]``.
        """
        if self.mask is None:
            shape = self.shape if any_band else self.image.shape
            return np.zeros(shape, dtype=bool)
        hit = (self.mask & self.plane_bits(planes)) != 0
        return hit.any(axis=0) if any_band else hit

    def invalid_pixels(self, planes: Sequence[str] = ("NO_DATA",)) -> np.ndarray:
        """``[C, H, W]`` mask of pixels that carry no usable data: non-finite values or the named planes.

        Built band by band (`band_invalid`).
        """
        bad = np.empty(self.image.shape, dtype=bool)
        for b in range(self.image.shape[0]):
            self.band_invalid(b, planes, out=bad[b])
        return bad

    def band_invalid(
        self, band: int, planes: Sequence[str] = ("NO_DATA",), out: np.ndarray | None = None
    ) -> np.ndarray:
        """``[H, W]`` mask of the pixels of band index ``band`` without usable data (see `invalid_pixels`).

        The mask planes are tested a block of rows at a time through small reused buffers: a whole-band
        temporary of the mask's integer type would cost more than the test.  ``out``, if given, receives the
        result.
        """
        bad = np.empty(self.shape, dtype=bool) if out is None else out
        np.isfinite(self.image[band], out=bad)
        np.logical_not(bad, out=bad)
        bits = self.plane_bits(planes) if self.mask is not None else 0
        if bits:
            height, width = self.shape
            rows = min(height, max(1, _BLOCK_PIXELS // max(width, 1)))
            flags = np.empty((rows, width), dtype=self.mask.dtype)
            hit = np.empty((rows, width), dtype=bool)
            for begin in range(0, height, rows):
                n = min(rows, height - begin)
                np.bitwise_and(self.mask[band, begin : begin + n], bits, out=flags[:n])
                bad[begin : begin + n] |= np.not_equal(flags[:n], 0, out=hit[:n])
        return bad

    def cutout(self, x_begin: int, y_begin: int, x_end: int, y_end: int) -> MultibandImage:
        """Sub-image in *local* pixel indices ``[y_begin:y_end, x_begin:x_end]`` (views, not copies)."""
        if not (0 <= x_begin < x_end <= self.width and 0 <= y_begin < y_end <= self.height):
            raise ValueError(
                f"cutout [{x_begin}:{x_end}, {y_begin}:{y_end}] outside image of shape {self.shape}"
            )
        sl = (slice(None), slice(y_begin, y_end), slice(x_begin, x_end))
        return MultibandImage(
            bands=self.bands,
            image=self.image[sl],
            variance=None if self.variance is None else self.variance[sl],
            mask=None if self.mask is None else self.mask[sl],
            mask_planes=dict(self.mask_planes),
            wcs=self.wcs,
            xy0=(self.xy0[0] + x_begin, self.xy0[1] + y_begin),
            metadata=dict(self.metadata),
        )

    def pixel_to_sky(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parent pixel coordinates to ``(ra, dec)`` in degrees.

        Raises
        ------
        ValueError
            If the image has no WCS.
        """
        if self.wcs is None:
            raise ValueError("this image has no WCS")
        ra, dec = self.wcs.pixel_to_world_values(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        return np.asarray(ra) % 360.0, np.asarray(dec)


def same_sky_grid(
    wcs_a: WCS | None,
    wcs_b: WCS | None,
    shape: tuple[int, int],
    xy0: tuple[int, int],
    tolerance_px: float = 1e-3,
) -> bool:
    """Whether two parent-coordinate WCSs put the corners of an image on the same sky within a tolerance.

    Parameters
    ----------
    wcs_a, wcs_b : `astropy.wcs.WCS` or `None`
        The two WCSs (two missing WCSs agree; one missing does not).
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of its first pixel.
    tolerance_px : `float`
        Largest allowed offset, in pixels of ``wcs_b``.
    """
    if wcs_a is None or wcs_b is None:
        return wcs_a is None and wcs_b is None
    x0, y0 = xy0
    x = np.array([x0, x0 + shape[1] - 1, x0, x0 + shape[1] - 1], dtype=float)
    y = np.array([y0, y0, y0 + shape[0] - 1, y0 + shape[0] - 1], dtype=float)
    ra, dec = wcs_a.pixel_to_world_values(x, y)
    xb, yb = wcs_b.world_to_pixel_values(ra, dec)
    return bool(np.all(np.hypot(xb - x, yb - y) < tolerance_px))


def set_bit_numbers(bits: np.ndarray) -> list[int]:
    """The bit numbers (0 = least significant) set anywhere in an integer array."""
    values = np.asarray(bits).astype(np.int64).ravel()
    combined = int(np.bitwise_or.reduce(values)) if values.size else 0
    return [number for number in range(64) if (combined >> number) & 1]
