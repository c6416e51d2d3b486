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

"""Block binning of images and footprints: the coarse level at which large, faint artifacts are found.

Ghosts and scattered light have surface brightnesses of a tenth of the pixel noise to a few times it, over
tens to hundreds of pixels.  Binned ``f x f``, the noise of a pixel falls ``f``-fold while the artifact's
level stays, and a 200 px ghost fits in a network tile with its surroundings: DeepGhostBusters found its
artifacts on binned focal-plane images for the same reason.  The detection task runs the model on the
patch binned by ``artifactBinning`` for the artifact classes only, and the training task adds binned
examples of each training patch, with artifacts drawn at the binned scale (`.augment_sky`).

`bin_image` averages the valid pixels of each block (a block with none is 0, or NaN when all its
pixels are, with the mask bits of all its pixels); the variance is that of the mean.  Coordinates: the
binned image has ``xy0 = (0, 0)`` and binned pixel ``(i, j)`` covers parent pixels ``x0 + f i`` to
``x0 + f i + f - 1`` (and the same in ``y``) of the input, ``(x0, y0)`` its ``xy0``; `bin_spans` and
`unbin_spans` map footprints between the two grids.
"""

from __future__ import annotations

__all__ = ["bin_image", "bin_labels", "bin_spans", "unbin_boxes", "unbin_spans"]

from collections.abc import Sequence

import numpy as np
from astropy.table import Column, Table

from .footprints import (
    flatten_spans,
    mask_to_spans,
    spans_bbox,
    spans_centroid,
    spans_to_mask,
    unflatten_spans,
)
from .multiband import MultibandImage
from .threads import map_in_threads


def _check_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"the binning factor must be a positive integer, got {factor}")
    return int(factor)


# Binned rows reduced at once by `bin_image` (bounds its temporaries to a strip of the patch).
_BLOCK_ROWS_PER_CHUNK = 64


def _padded(array: np.ndarray, factor: int, fill: float | int) -> np.ndarray:
    """``[C, H, W]`` padded with ``fill`` at the end of both axes to multiples of ``factor``."""
    channels, height, width = array.shape
    bh, bw = -(-height // factor), -(-width // factor)
    if (bh * factor, bw * factor) == (height, width):
        return array
    padded = np.full((channels, bh * factor, bw * factor), fill, dtype=array.dtype)
    padded[:, :height, :width] = array
    return padded


def _block_reduce(
    array: np.ndarray, factor: int, fill: float | int, ufunc: np.ufunc, dtype: np.dtype | None = None
) -> np.ndarray:
    """``ufunc`` over each ``factor x factor`` block of ``[C, H, W]`` padded with ``fill``: ``[C, H/f, W/f]``.

    The block's columns are combined first (``factor`` strided slices, one whole-array operation each,
    rather than a reduction over a short last axis), then its rows; ``dtype``: the accumulator's type.
    """
    array = _padded(array, factor, fill)
    columns = array[:, :, 0::factor].astype(dtype or array.dtype)
    for k in range(1, factor):
        ufunc(columns, array[:, :, k::factor], out=columns)
    blocks = columns[:, 0::factor].copy()
    for k in range(1, factor):
        ufunc(blocks, columns[:, k::factor], out=blocks)
    return blocks


def bin_image(
    image: MultibandImage, factor: int, invalid_planes: Sequence[str] = ("NO_DATA",), threads: int = 1
) -> MultibandImage:
    """Bin a multi-band image ``factor x factor`` (the mean of the valid pixels of each block).

    Parameters
    ----------
    image : `MultibandImage`
        The image.  Pixels that are not finite or have one of ``invalid_planes`` set are left out of the
        means; a partial block at the right or top edge averages the pixels it has.
    factor : `int`
        Block size (1 returns ``image`` itself).
    invalid_planes : sequence of `str`
        Mask planes of pixels without data (planes the image's mask does not define are ignored).
    threads : `int`
        Bands binned at once (`~.threads.map_in_threads`); the result is the same for any count.

    Returns
    -------
    binned : `MultibandImage`
        ``ceil(H / f) x ceil(W / f)`` pixels, ``xy0 = (0, 0)``, no WCS; variance of the mean where the input
        has a variance; mask bits OR-ed over the valid pixels of a block (over all of them when none is).
    """
    factor = _check_factor(factor)
    if factor == 1:
        return image
    channels, height, width = image.image.shape
    bh, bw = -(-height // factor), -(-width // factor)
    known = [plane for plane in invalid_planes if plane in image.mask_planes]
    invalid_bits = image.plane_bits(known) if image.mask is not None and known else 0
    binned = np.empty((channels, bh, bw), dtype=np.float32)
    variance = None if image.variance is None else np.empty((channels, bh, bw), dtype=np.float32)
    mask = None if image.mask is None else np.empty((channels, bh, bw), dtype=image.mask.dtype)
    # Band by band and a few block rows at a time: the temporaries stay small whatever the patch size
    # (each block is reduced on its own, so the result does not depend on the chunking).
    step = factor * _BLOCK_ROWS_PER_CHUNK

    def bin_band(band: int) -> None:
        for row0 in range(0, height, step):
            rows = slice(row0, min(row0 + step, height))
            out = slice(row0 // factor, row0 // factor + -(-(rows.stop - row0) // factor))
            _bin_rows(image, band, rows, factor, invalid_bits, binned, variance, mask, out)

    map_in_threads(bin_band, range(channels), threads)
    return MultibandImage(
        bands=image.bands,
        image=binned,
        variance=variance,
        mask=mask,
        mask_planes=dict(image.mask_planes),
        xy0=(0, 0),
    )


def _bin_rows(
    image: MultibandImage,
    band: int,
    rows: slice,
    factor: int,
    invalid_bits: int,
    binned: np.ndarray,
    variance: np.ndarray | None,
    mask: np.ndarray | None,
    out: slice,
) -> None:
    """`bin_image` of the rows ``rows`` of one band, written into rows ``out`` of the binned planes."""
    flux = image.image[band : band + 1, rows]
    valid = np.isfinite(flux)
    bits_in = None if image.mask is None else image.mask[band : band + 1, rows]
    if bits_in is not None and invalid_bits:
        valid &= (bits_in & invalid_bits) == 0
    n_valid = _block_reduce(valid, factor, False, np.add, np.dtype(np.int32))
    has_valid = n_valid > 0
    all_valid = bool(valid.all())  # Most strips: the pixels are used as they are.
    safe_n = np.maximum(n_valid, 1).astype(np.float32)
    # Sums of float32 pixels in float64 (then float32): exact for any block order to float32 rounding.
    plane = (
        _block_reduce(
            flux if all_valid else np.where(valid, flux, 0.0), factor, 0.0, np.add, np.dtype(np.float64)
        )
        / safe_n
    ).astype(np.float32)
    if not has_valid.all():
        # Blocks without a valid pixel: NaN where all their pixels are (an absent band), else 0.
        all_nan = _block_reduce(np.isnan(flux), factor, True, np.logical_and)
        plane = np.where(has_valid, plane, np.where(all_nan, np.float32(np.nan), np.float32(0.0)))
    binned[band : band + 1, out] = plane
    if variance is not None:
        var_in = image.variance[band : band + 1, rows]
        var = _block_reduce(
            var_in if all_valid else np.where(valid, var_in, 0.0),
            factor,
            0.0,
            np.add,
            np.dtype(np.float64),
        )
        variance[band : band + 1, out] = np.where(has_valid, var / np.float64(safe_n) ** 2, np.inf)
    if mask is not None:
        all_bits = _block_reduce(bits_in, factor, 0, np.bitwise_or)
        valid_bits = (
            all_bits if all_valid else _block_reduce(np.where(valid, bits_in, 0), factor, 0, np.bitwise_or)
        )
        mask[band : band + 1, out] = np.where(has_valid, valid_bits, all_bits)


def bin_spans(spans: np.ndarray, factor: int, xy0: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A parent-coordinate footprint on the binned grid of `bin_image`.

    A binned pixel belongs to the footprint when at least half of its pixels do; a footprint too small to
    fill half a block keeps the block of its centroid, so that no source disappears.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(n, 3)`` spans in the parent coordinates of the unbinned image.
    factor : `int`
        Block size.
    xy0 : `tuple` [`int`, `int`]
        ``xy0`` of the unbinned image.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the binned image (the result is clipped to it).

    Returns
    -------
    binned : `numpy.ndarray`
        Spans on the binned grid (empty when the footprint lies outside it).
    """
    factor = _check_factor(factor)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
    if spans.shape[0] == 0:
        return np.empty((0, 3), dtype=np.int32)
    x_min, y_min, x_max, y_max = spans_bbox(spans)
    bx0 = (x_min - xy0[0]) // factor
    by0 = (y_min - xy0[1]) // factor
    bx1 = (x_max - xy0[0]) // factor + 1
    by1 = (y_max - xy0[1]) // factor + 1
    # The footprint on the unbinned pixels of the blocks it touches, then counted per block.
    origin = (xy0[0] + bx0 * factor, xy0[1] + by0 * factor)
    local = spans_to_mask(spans, ((by1 - by0) * factor, (bx1 - bx0) * factor), xy0=origin)
    counts = local.reshape(by1 - by0, factor, bx1 - bx0, factor).sum(axis=(1, 3))
    keep = counts * 2 >= factor * factor
    if not keep.any():
        cx, cy = spans_centroid(spans)
        keep[int(cy - origin[1]) // factor, int(cx - origin[0]) // factor] = True
    # Clipped to the binned image.
    height, width = shape
    ys = slice(max(0, -by0), max(0, min(by1, height) - by0))
    xs = slice(max(0, -bx0), max(0, min(bx1, width) - bx0))
    keep = keep[ys, xs]
    if keep.size == 0 or not keep.any():
        return np.empty((0, 3), dtype=np.int32)
    return mask_to_spans(keep, xy0=(bx0 + xs.start, by0 + ys.start))


def bin_labels(labels: Table, factor: int, xy0: tuple[int, int], shape: tuple[int, int]) -> Table:
    """A label table (``footprint`` column, `.labels.build_labels`) on the binned grid of `bin_image`.

    Footprints go through `bin_spans`; labels that end up outside the binned image are dropped.  The other
    columns are kept as they are.
    """
    footprints = []
    keep = np.zeros(len(labels), dtype=bool)
    for row, value in enumerate(labels["footprint"]):
        array = np.asarray(value)
        spans = array.reshape(-1, 3) if array.ndim == 2 else unflatten_spans(array)
        binned = bin_spans(spans, factor, xy0, shape)
        keep[row] = len(binned) > 0
        if keep[row]:
            footprints.append(flatten_spans(binned))
    out = labels[keep]
    column = Column(np.empty(len(footprints), dtype=object), name="footprint")
    column[:] = footprints
    out.replace_column("footprint", column)
    return out


def unbin_spans(spans: np.ndarray, factor: int, xy0: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """A binned-grid footprint in the parent coordinates of the unbinned image (each block in full).

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(n, 3)`` spans on the binned grid (``xy0 = (0, 0)``).
    factor : `int`
        Block size.
    xy0 : `tuple` [`int`, `int`]
        ``xy0`` of the unbinned image.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the unbinned image (partial edge blocks are clipped to it).

    Returns
    -------
    spans : `numpy.ndarray`
        ``int32 (n * factor, 3)`` spans, sorted by ``(y, x0)``.
    """
    factor = _check_factor(factor)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
    height, width = shape
    offsets = np.arange(factor, dtype=np.int64)
    y = (spans[:, :1] * factor + offsets[None, :]).reshape(-1)
    x0 = np.repeat(spans[:, 1] * factor, factor)
    x1 = np.minimum(np.repeat(spans[:, 2] * factor + factor - 1, factor), width - 1)
    keep = (y < height) & (x0 <= x1)
    out = np.stack([y[keep] + xy0[1], x0[keep] + xy0[0], x1[keep] + xy0[0]], axis=1)
    order = np.lexsort((out[:, 1], out[:, 0]))
    return out[order].astype(np.int32)


def unbin_boxes(boxes: np.ndarray, factor: int, xy0: tuple[int, int]) -> np.ndarray:
    """``[N, 4]`` XYXY boxes on the binned grid in the parent coordinates of the unbinned image."""
    factor = _check_factor(factor)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * factor
    return boxes + np.array([xy0[0], xy0[1], xy0[0], xy0[1]], dtype=np.float64)
