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


"""Split a detection whose footprint holds two or more distinct, significant peaks.

A Mask R-CNN sometimes gives one detection to a bright galaxy and its neighbour together: one box, one mask
over both.  The light says otherwise: smoothed with the PSF, the footprint's detection image has one
maximum per object, separated by a saddle.  `split_at_peaks` looks for such footprints (sources only,
never artifacts) and replaces each by one detection per peak, its pixels those of the peak's watershed
basin in the footprint, with the parent's score and tile.  The network classified the blend, not its
parts, so a child's probabilities are even between the source classes (the parent's source mass shared
equally; artifact probabilities kept); the catalog's star-galaxy and reliability classifiers then judge
the children like any detection.

A peak counts when it is a local maximum of the PSF-smoothed, inverse-variance weighted band sum whose
significance (the smoothed value over its noise) is at least ``min_peak_snr``, at least
``min_separation`` PSF sigmas from every brighter accepted peak, and higher than the lowest point of the
straight line to each of them by at least ``min_contrast`` of its own height: a dip, not a shoulder of one
profile.  The defaults ask for bright, well separated peaks, so that faint noise bumps and the structure
of one galaxy do not shred it.  Footprints with saturated or missing pixels are left whole: the hole in
the map at a saturated core is ringed by false peaks.
"""

from __future__ import annotations

__all__ = ["PeakSplitConfig", "find_peaks", "significance_map", "split_at_peaks"]

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .footprints import footprint_pixels, mask_to_spans, pixels_at, spans_area, spans_bbox, spans_to_mask
from .inference import Detections
from .multiband import MultibandImage
from .threads import map_in_threads

_BLOCK_PIXELS = 1 << 16  # pixels per block of rows in significance_map: its buffers stay in the cache


@dataclass(frozen=True)
class PeakSplitConfig:
    """When a footprint is split (see the module documentation).

    Attributes
    ----------
    min_peak_snr : `float`
        Significance a peak needs: the PSF-smoothed detection image over its noise at the peak.
    min_contrast : `float`
        Fraction of its height by which a peak must rise above the lowest point on the way to any
        brighter peak.
    min_separation : `float`
        Distance in PSF sigmas a peak must keep from every brighter peak.
    min_area : `int`
        Footprints smaller than this (pixels) are left whole.
    min_child_area : `int`
        A split whose smallest child would have fewer pixels is not made.
    """

    min_peak_snr: float = 30.0
    min_contrast: float = 0.3
    min_separation: float = 2.5
    min_area: int = 40
    min_child_area: int = 10

    def __post_init__(self) -> None:
        if not self.min_peak_snr > 0:
            raise ValueError(f"min_peak_snr must be positive, got {self.min_peak_snr}")
        if not 0.0 < self.min_contrast < 1.0:
            raise ValueError(f"min_contrast must be in (0, 1), got {self.min_contrast}")
        if not self.min_separation > 0:
            raise ValueError(f"min_separation must be positive, got {self.min_separation}")
        if self.min_area < 2 or self.min_child_area < 1:
            raise ValueError(
                f"min_area >= 2 and min_child_area >= 1, got {self.min_area}, {self.min_child_area}"
            )


def significance_map(
    image: MultibandImage, sigma: float, planes: Sequence[str] = ("NO_DATA", "SAT"), threads: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """PSF-smoothed S/N map of the inverse-variance weighted band sum, and where it cannot be trusted.

    Parameters
    ----------
    image : `~.multiband.MultibandImage`
        The unscaled coadd.
    sigma : `float`
        PSF sigma in pixels: the smoothing.
    planes : sequence of `str`
        Mask planes of pixels that are unusable (no data, saturated).
    threads : `int`
        Blocks of rows summed at once (`~.threads.map_in_threads`); the map is the same for any count.

    Returns
    -------
    significance : `numpy.ndarray`
        ``float32 [H, W]``: at each pixel, the S/N of a point source there (a Gaussian matched filter).
    unusable : `numpy.ndarray`
        ``bool [H, W]``: some band has no usable value or variance there, or a ``planes`` bit; there the
        map has a dip that is not in the sky.
    """
    # float32 throughout, a block of rows at a time through buffers that stay in the cache: on an LSST
    # patch a fresh temporary plane per operation cost several times the arithmetic.
    snr = np.empty(image.shape, dtype=np.float32)
    unusable = np.empty(image.shape, dtype=bool)
    bits = image.plane_bits(planes) if image.mask is not None else 0
    height, width = image.shape
    rows = min(height, max(1, _BLOCK_PIXELS // max(width, 1)))
    # One set of buffers per thread for all its blocks: fresh ones would each be mapped and faulted in again.
    buffers = threading.local()

    def sum_rows(block: slice) -> None:
        if not hasattr(buffers, "rows"):
            buffers.rows = _RowBuffers((rows, width), image.mask.dtype if bits else None)
        _significance_rows(image, block, bits, snr[block], unusable[block], buffers.rows)

    blocks = [slice(begin, min(begin + rows, height)) for begin in range(0, height, rows)]
    map_in_threads(sum_rows, blocks, threads)
    # A Gaussian of sigma s (unit sum) lowers white noise by 2 sqrt(pi) s: the smoothed S/N map.
    ndimage.gaussian_filter(snr, sigma, output=snr, mode="nearest")
    snr *= np.float32(2.0 * np.sqrt(np.pi) * sigma)
    return snr, unusable


class _RowBuffers:
    """Scratch planes of `_significance_rows` for blocks of up to ``shape`` pixels."""

    def __init__(self, shape: tuple[int, int], mask_dtype: np.dtype | None) -> None:
        self.total = np.empty(shape, dtype=np.float32)
        self.weights = np.empty(shape, dtype=np.float32)
        self.weight = np.empty(shape, dtype=np.float32)
        self.good = np.empty(shape, dtype=bool)
        self.scratch = np.empty(shape, dtype=bool)
        self.flags = None if mask_dtype is None else np.empty(shape, dtype=mask_dtype)


def _significance_rows(
    image: MultibandImage,
    block: slice,
    bits: int,
    snr: np.ndarray,
    unusable: np.ndarray,
    buffers: _RowBuffers,
) -> None:
    """`significance_map` before smoothing, for the rows ``block``: writes ``snr`` and ``unusable``."""
    n = snr.shape[0]
    total, weights, weight = buffers.total[:n], buffers.weights[:n], buffers.weight[:n]
    good, scratch = buffers.good[:n], buffers.scratch[:n]
    flags = None if buffers.flags is None else buffers.flags[:n]
    total.fill(0.0)
    weights.fill(0.0)
    unusable.fill(False)
    for b in range(len(image.bands)):
        pixels = image.image[b, block]
        np.isfinite(pixels, out=good)
        if image.variance is not None:
            variance = image.variance[b, block]
            good &= np.isfinite(variance, out=scratch)
            good &= np.greater(variance, 0, out=scratch)
        if flags is not None:
            good &= np.equal(np.bitwise_and(image.mask[b, block], bits, out=flags), 0, out=scratch)
        unusable |= np.logical_not(good, out=scratch)
        weight.fill(0.0)
        if image.variance is not None:
            np.divide(np.float32(1.0), variance, out=weight, where=good)
        else:
            weight[good] = 1.0
        # Unusable pixels add nothing (their weight is zero), and the sums never hold a negative zero.
        np.add(weights, weight, out=weights)
        np.multiply(pixels, weight, out=weight, where=good)
        np.add(total, weight, out=total, where=good)
    snr.fill(0.0)
    np.greater(weights, 0, out=good)
    np.sqrt(weights, out=weights)
    np.divide(total, weights, out=snr, where=good)


def find_peaks(
    significance: np.ndarray, maxima: np.ndarray, sigma: float, config: PeakSplitConfig
) -> list[tuple[int, int]]:
    """Distinct significant peaks ``(row, column)`` among candidate maxima, highest first.

    Parameters
    ----------
    significance : `numpy.ndarray`
        Smoothed S/N map (`significance_map`, or a cut-out of it).
    maxima : `numpy.ndarray`
        Boolean, same shape: the local maxima to consider (those of a footprint).
    sigma : `float`
        PSF sigma in pixels (the unit of ``config.min_separation``).
    config : `PeakSplitConfig`
        Thresholds.
    """
    local_max = maxima & (significance >= config.min_peak_snr)
    rows, cols = np.nonzero(local_max)
    order = np.argsort(-significance[rows, cols], kind="stable")
    accepted: list[tuple[int, int]] = []
    for r, c in zip(rows[order], cols[order]):
        height = significance[r, c]
        distinct = True
        for ar, ac in accepted:
            distance = np.hypot(r - ar, c - ac)
            if distance < config.min_separation * sigma:
                distinct = False
                break
            steps = np.linspace(0.0, 1.0, int(np.ceil(2 * distance)) + 1)
            line = significance[
                np.rint(r + steps * (ar - r)).astype(int), np.rint(c + steps * (ac - c)).astype(int)
            ]
            if height - line.min() < config.min_contrast * height:
                distinct = False
                break
        if distinct:
            accepted.append((int(r), int(c)))
    return accepted


def split_at_peaks(
    detections: Detections,
    image: MultibandImage,
    artifact_classes: np.ndarray,
    *,
    sigma: float,
    config: PeakSplitConfig | None = None,
    invalid_planes: Sequence[str] = ("NO_DATA",),
    saturated_planes: Sequence[str] = ("SAT",),
    threads: int = 1,
) -> tuple[Detections, int]:
    """Detections with every footprint of several distinct peaks split into one detection per peak.

    Parameters
    ----------
    detections : `~.inference.Detections`
        Detections on ``image`` (parent coordinates).
    image : `~.multiband.MultibandImage`
        The unscaled coadd.
    artifact_classes : `numpy.ndarray`
        Boolean per class: artifact classes are never split.
    sigma : `float`
        PSF sigma in pixels (the smoothing, and the unit of ``min_separation``).
    config : `PeakSplitConfig`, optional
        Thresholds (defaults if `None`).
    invalid_planes, saturated_planes : sequence of `str`
        Mask planes of pixels without data and of saturated pixels: a footprint with such a pixel (or a
        non-finite value or variance) in any band is left whole.
    threads : `int`
        Threads of the significance map (`significance_map`).

    Returns
    -------
    detections : `~.inference.Detections`
        A child takes its parent's place in the order; children have the parent's score, class id and
        tile, even source-class probabilities (see the module documentation), a box around their own
        pixels, ``merged_duplicate`` false and ``split_from`` the parent's row (the catalog's families
        link them).
    n_split : `int`
        Number of footprints split.
    """
    config = config or PeakSplitConfig()
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    artifact_classes = np.asarray(artifact_classes, dtype=bool)
    if not len(detections):
        return detections, 0
    significance, unusable = significance_map(
        image, sigma, (*invalid_planes, *saturated_planes), threads=threads
    )
    # Which footprints could split, all at once: two or more local maxima above the significance asked
    # for, no unusable pixel (a saturated core is ringed by false peaks), enough pixels, not an artifact.
    owner, linear = footprint_pixels(detections.footprints, image.xy0, image.shape)
    maxima = (significance >= config.min_peak_snr) & (
        significance == ndimage.maximum_filter(significance, size=3)
    )
    n = len(detections)
    n_maxima = np.bincount(owner, weights=pixels_at(maxima, linear), minlength=n)
    n_unusable = np.bincount(owner, weights=pixels_at(unusable, linear), minlength=n)
    area = np.bincount(owner, minlength=n)
    del unusable, owner, linear
    candidate = (
        (n_maxima >= 2)
        & (n_unusable == 0)
        & (area >= config.min_area)
        & ~artifact_classes[detections.class_ids]
    )
    rows: list[int] = []
    footprints: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    split = 0
    for index, spans in enumerate(detections.footprints):
        children = (
            _split_one(spans, image.xy0, significance, maxima, sigma, config) if candidate[index] else None
        )
        if children is None:
            rows.append(index)
            footprints.append(spans)
            boxes.append(detections.boxes[index])
            continue
        split += 1
        for child in children:
            rows.append(index)
            footprints.append(child)
            x0, y0, x1, y1 = spans_bbox(child)
            boxes.append(np.array([x0, y0, x1 + 1, y1 + 1], dtype=np.float64))
    if not split:
        return detections, 0
    rows_array = np.asarray(rows, dtype=np.int64)
    is_child = (
        np.r_[False, rows_array[1:] == rows_array[:-1]] | np.r_[rows_array[:-1] == rows_array[1:], False]
    )
    # The network classified the blend, not the children: between source classes they are undecided.
    class_probs = detections.class_probs[rows_array].copy()
    sources = ~artifact_classes
    class_probs[np.ix_(is_child, sources)] = class_probs[np.ix_(is_child, sources)].mean(
        axis=1, keepdims=True
    )
    result = Detections(
        boxes=np.asarray(boxes),
        scores=detections.scores[rows_array],
        class_ids=detections.class_ids[rows_array],
        class_probs=class_probs,
        footprints=footprints,
        tile_index=detections.tile_index[rows_array],
        merged_duplicate=detections.merged_duplicate[rows_array] & ~is_child,
        stats=dict(detections.stats),
        split_from=np.where(
            is_child, rows_array + int(detections.split_from.max()) + 1, detections.split_from[rows_array]
        ),
    )
    return result, split


def _split_one(
    spans: np.ndarray,
    xy0: tuple[int, int],
    significance: np.ndarray,
    maxima: np.ndarray,
    sigma: float,
    config: PeakSplitConfig,
) -> list[np.ndarray] | None:
    """The children's spans of one footprint, or `None` when it has fewer than two distinct peaks."""
    x_min, y_min, x_max, y_max = spans_bbox(spans)
    box_xy0 = (x_min, y_min)
    box = (slice(y_min - xy0[1], y_max - xy0[1] + 1), slice(x_min - xy0[0], x_max - xy0[0] + 1))
    local = significance[box]
    footprint = spans_to_mask(spans, local.shape, box_xy0)
    peaks = find_peaks(local, footprint & maxima[box], sigma, config)
    if len(peaks) < 2:
        return None
    basins = _flood(local, footprint, peaks)
    children = [mask_to_spans(footprint & (basins == label), box_xy0) for label in range(1, len(peaks) + 1)]
    if min(spans_area(child) for child in children) < config.min_child_area:
        return None
    return children


def _flood(significance: np.ndarray, footprint: np.ndarray, peaks: list[tuple[int, int]]) -> np.ndarray:
    """Basins of the peaks in the footprint: labels ``1..len(peaks)`` (0 outside).

    Every footprint pixel climbs to its highest neighbour (8-connected, within the footprint) until it
    reaches a local maximum - the pointers are followed all at once by repeated doubling - and takes that
    maximum's label; a maximum that is not one of the peaks (a bump too faint, too close or too shallow
    to count) gives its pixels to the nearest peak.
    """
    height, width = footprint.shape
    values = np.where(footprint, significance, -np.inf)
    index = np.arange(height * width).reshape(height, width)
    padded = np.pad(values, 1, constant_values=-np.inf)
    padded_index = np.pad(index, 1)
    best, uphill = values.copy(), index.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                higher = neighbour > best
                best = np.where(higher, neighbour, best)
                uphill = np.where(
                    higher, padded_index[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width], uphill
                )
    top = uphill.reshape(-1)
    while True:  # Pointer doubling: log2(longest path) rounds.
        following = top[top]
        if np.array_equal(following, top):
            break
        top = following
    centres = np.asarray(peaks, dtype=np.int64)
    roots = np.unique(top[footprint.reshape(-1)])
    root_rows, root_cols = np.divmod(roots, width)
    nearest = np.argmin(
        (root_rows[:, None] - centres[:, 0]) ** 2 + (root_cols[:, None] - centres[:, 1]) ** 2, axis=1
    )
    label_of_root = np.zeros(height * width, dtype=np.int32)
    label_of_root[roots] = nearest + 1
    return np.where(footprint, label_of_root[top].reshape(height, width), 0)
