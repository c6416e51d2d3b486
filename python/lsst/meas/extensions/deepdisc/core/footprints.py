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

"""Footprints as run-length encoded spans.

A span is one run of contiguous pixels in a row, ``(y, x0, x1)`` with ``x1`` *inclusive*, the convention of
``lsst.afw.geom.Span``.  A footprint is an ``int32`` array of shape ``(N, 3)`` of spans sorted by ``(y, x0)``,
in the coordinates of the parent image (patch coordinates, i.e. including ``xy0``).  Spans of one footprint
never overlap or touch in the same row (adjacent runs are merged), so every encoding is canonical and
``mask -> spans -> mask`` round-trips exactly.

For storage in Arrow tables the spans are flattened to ``[y0, x00, x10, y1, x01, x11, ...]`` (a
``list<int32>`` column); `flatten_spans` and `unflatten_spans` convert.
"""

from __future__ import annotations

__all__ = [
    "SPAN_DTYPE",
    "Footprint",
    "flatten_spans",
    "footprint_pixels",
    "pixels_at",
    "mask_to_spans",
    "masks_to_spans",
    "spans_area",
    "spans_bbox",
    "spans_centroid",
    "spans_covered_area",
    "spans_intersection_area",
    "spans_to_mask",
    "spans_union",
    "unflatten_spans",
]

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np

SPAN_DTYPE = np.int32

_EMPTY_SPANS = np.zeros((0, 3), dtype=SPAN_DTYPE)


def mask_to_spans(mask: np.ndarray, xy0: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Encode a 2-d boolean mask as spans.

    Parameters
    ----------
    mask : `numpy.ndarray`
        2-d array; non-zero pixels belong to the footprint.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of ``mask[0, 0]``.

    Returns
    -------
    spans : `numpy.ndarray`
        ``int32`` array of shape ``(N, 3)``: ``y, x_begin, x_end`` (inclusive), sorted by row then column.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-d, got shape {mask.shape}")
    if not mask.any():
        return _EMPTY_SPANS.copy()
    return masks_to_spans(mask[np.newaxis], np.asarray([xy0]))[0]


def masks_to_spans(masks: np.ndarray, xy0s: np.ndarray) -> list[np.ndarray]:
    """Encode a stack of 2-d boolean masks as spans, all at once (`mask_to_spans` of each plane).

    Parameters
    ----------
    masks : `numpy.ndarray`
        ``[K, H, W]`` array; non-zero pixels belong to the footprints.
    xy0s : `numpy.ndarray`
        ``[K, 2]`` parent coordinates ``(x0, y0)`` of each ``masks[k, 0, 0]``.

    Returns
    -------
    spans : `list` [`numpy.ndarray`]
        The ``K`` planes' spans (``int32 (N_k, 3)``, sorted by row then column), in order.
    """
    masks = np.asarray(masks)
    xy0s = np.asarray(xy0s, dtype=np.int64).reshape(-1, 2)
    if masks.ndim != 3 or xy0s.shape[0] != masks.shape[0]:
        raise ValueError(f"masks must be [K, H, W] with K origins, got {masks.shape} and {xy0s.shape[0]}")
    if masks.shape[0] == 0:
        return []
    # Pad with a False column on both sides so every run has a rising and a falling edge in its row.
    padded = np.zeros((masks.shape[0], masks.shape[1], masks.shape[2] + 2), dtype=np.int8)
    padded[:, :, 1:-1] = masks.astype(bool, copy=False)
    edges = np.diff(padded, axis=2)
    plane, rows_start, cols_start = np.nonzero(edges == 1)
    _, _, cols_end = np.nonzero(edges == -1)
    # np.nonzero scans in C order, plane by plane and row by row, so starts and ends pair up run by run.
    spans = np.empty((plane.size, 3), dtype=SPAN_DTYPE)
    spans[:, 0] = rows_start + xy0s[plane, 1]
    spans[:, 1] = cols_start + xy0s[plane, 0]
    spans[:, 2] = cols_end - 1 + xy0s[plane, 0]
    return np.split(spans, np.cumsum(np.bincount(plane, minlength=masks.shape[0]))[:-1])


def spans_to_mask(
    spans: np.ndarray, shape: tuple[int, int], xy0: tuple[int, int] = (0, 0), clip: bool = False
) -> np.ndarray:
    """Decode spans into a boolean mask.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(N, 3)`` spans in parent coordinates.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the output mask.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of the output's ``[0, 0]`` pixel.
    clip : `bool`
        If `True`, silently drop the parts of spans outside the mask; otherwise raise `ValueError`.

    Returns
    -------
    mask : `numpy.ndarray`
        Boolean array of the given shape.
    """
    height, width = shape
    out = np.zeros((height, width), dtype=bool)
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
    if spans.size == 0:
        return out
    y = spans[:, 0] - xy0[1]
    x0 = spans[:, 1] - xy0[0]
    x1 = spans[:, 2] - xy0[0]
    if np.any(x1 < x0):
        raise ValueError("invalid spans: x_end < x_begin")
    outside = (y < 0) | (y >= height) | (x0 < 0) | (x1 >= width)
    if np.any(outside):
        if not clip:
            raise ValueError(
                f"{int(outside.sum())} span(s) fall outside the {height}x{width} mask at xy0={xy0}"
            )
        keep = (y >= 0) & (y < height) & (x1 >= 0) & (x0 < width)
        y, x0, x1 = y[keep], np.clip(x0[keep], 0, width - 1), np.clip(x1[keep], 0, width - 1)
    # Vectorised fill through a per-row cumulative sum of +1/-1 run markers.
    marks = np.zeros((height, width + 1), dtype=np.int32)
    np.add.at(marks, (y, x0), 1)
    np.add.at(marks, (y, x1 + 1), -1)
    out[:] = np.cumsum(marks, axis=1)[:, :width] > 0
    return out


def footprint_pixels(
    footprints: Sequence[np.ndarray], xy0: tuple[int, int], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel of many footprints as one flat list, for vectorised sums over footprints.

    Parameters
    ----------
    footprints : sequence of `numpy.ndarray`
        Spans per footprint (parent coordinates).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of the image's ``[0, 0]`` pixel.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image.

    Returns
    -------
    owner : `numpy.ndarray`
        ``int32``: per pixel, the index of its footprint (``np.bincount(owner, weights=...)`` sums over
        footprints).
    linear : `numpy.ndarray`
        ``int64``: per pixel, the flat index ``y * width + x`` into the image's arrays (`pixels_at`).

    Raises
    ------
    ValueError
        If a footprint falls outside the image (naming the first ones).
    """
    height, width = shape
    lengths = np.array([f.shape[0] for f in footprints], dtype=np.int64)
    spans = np.concatenate(footprints).astype(np.int64) if len(footprints) else np.zeros((0, 3), np.int64)
    span_owner = np.repeat(np.arange(len(footprints)), lengths)
    local_y = spans[:, 0] - xy0[1]
    local_x0 = spans[:, 1] - xy0[0]
    local_x1 = spans[:, 2] - xy0[0]
    outside = (local_y < 0) | (local_y >= height) | (local_x0 < 0) | (local_x1 >= width)
    if np.any(outside):
        rows = np.unique(span_owner[outside])
        raise ValueError(
            f"footprints of detections {rows[:10].tolist()} fall outside the image (xy0={tuple(xy0)}, "
            f"shape={tuple(shape)})"
        )
    run = local_x1 - local_x0 + 1
    owner = np.repeat(span_owner, run).astype(np.int32)
    # Every pixel: its span's first flat index plus the pixel's offset within the span.
    first_pixel = np.repeat(np.cumsum(run) - run, run)
    linear = np.repeat(local_y * width + local_x0, run) + (np.arange(first_pixel.size) - first_pixel)
    return owner, linear.astype(np.int64)


def pixels_at(plane: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Values of a 2-d plane at flat pixel indices ``y * width + x`` (as `footprint_pixels` gives them).

    A gather through `numpy.take` on the flattened plane, several times faster than 2-d fancy indexing;
    ``linear`` may have any shape, and so has the result.
    """
    return np.take(np.ascontiguousarray(plane).reshape(-1), linear)


def spans_area(spans: np.ndarray) -> int:
    """Number of pixels covered by the spans."""
    spans = np.asarray(spans).reshape(-1, 3)
    return int(np.sum(spans[:, 2].astype(np.int64) - spans[:, 1] + 1))


def spans_bbox(spans: np.ndarray) -> tuple[int, int, int, int]:
    """Inclusive bounding box ``(x_min, y_min, x_max, y_max)`` of the spans.

    Raises
    ------
    ValueError
        If the footprint is empty.
    """
    spans = np.asarray(spans).reshape(-1, 3)
    if spans.shape[0] == 0:
        raise ValueError("an empty footprint has no bounding box")
    return (
        int(spans[:, 1].min()),
        int(spans[:, 0].min()),
        int(spans[:, 2].max()),
        int(spans[:, 0].max()),
    )


def spans_centroid(spans: np.ndarray) -> tuple[float, float]:
    """Unweighted centroid ``(x, y)`` of the footprint's pixels (pixel centres at integer positions)."""
    spans = np.asarray(spans, dtype=np.float64).reshape(-1, 3)
    lengths = spans[:, 2] - spans[:, 1] + 1
    total = lengths.sum()
    if total == 0:
        raise ValueError("an empty footprint has no centroid")
    x = np.sum(lengths * (spans[:, 1] + spans[:, 2]) / 2.0) / total
    y = np.sum(lengths * spans[:, 0]) / total
    return float(x), float(y)


def spans_intersection_area(a: np.ndarray, b: np.ndarray) -> int:
    """Number of pixels shared by two footprints, computed on spans (no rasterisation)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1, 3)
    b = np.asarray(b, dtype=np.int64).reshape(-1, 3)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return 0
    common_rows = np.intersect1d(a[:, 0], b[:, 0])
    if common_rows.size == 0:
        return 0
    a = a[np.isin(a[:, 0], common_rows)]
    b = b[np.isin(b[:, 0], common_rows)]
    # Pairwise overlap of all spans in the same row; footprints are small, the product stays small.
    same_row = a[:, None, 0] == b[None, :, 0]
    lo = np.maximum(a[:, None, 1], b[None, :, 1])
    hi = np.minimum(a[:, None, 2], b[None, :, 2])
    overlap = np.where(same_row, np.clip(hi - lo + 1, 0, None), 0)
    return int(overlap.sum())


def _as_span_array(footprints: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """All footprints as one ``int64`` ``(S, 3)`` span array, plus the owner index of every span."""
    arrays = [np.asarray(f, dtype=np.int64).reshape(-1, 3) for f in footprints]
    counts = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    spans = np.concatenate(arrays) if arrays and counts.sum() else np.zeros((0, 3), dtype=np.int64)
    return spans, np.repeat(np.arange(len(arrays)), counts)


# Pixel (x, y) -> y * _ROW + (x + _X_SHIFT): one sortable int64 key, rows far apart (x within +-2**31).
_ROW = np.int64(1) << np.int64(33)
_X_SHIFT = np.int64(1) << np.int64(31)


def spans_union(footprints: Sequence[np.ndarray]) -> np.ndarray:
    """Union of footprints: canonical spans (sorted, runs that overlap or touch in a row merged).

    Parameters
    ----------
    footprints : sequence of `numpy.ndarray`
        ``(N, 3)`` spans (or flattened span vectors) in the same coordinates.

    Returns
    -------
    spans : `numpy.ndarray`
        ``int32`` ``(M, 3)`` spans of every pixel covered by at least one footprint.
    """
    spans, _ = _as_span_array(footprints)
    if spans.shape[0] == 0:
        return _EMPTY_SPANS.copy()
    if np.any(spans[:, 2] < spans[:, 1]):
        raise ValueError("invalid spans: x_end < x_begin")
    spans = spans[np.lexsort((spans[:, 1], spans[:, 0]))]
    start = spans[:, 0] * _ROW + spans[:, 1] + _X_SHIFT
    end = spans[:, 0] * _ROW + spans[:, 2] + _X_SHIFT
    # Running maximum of the run ends: keys of later rows are larger, so it never leaks across rows.
    reach = np.maximum.accumulate(end)
    new_run = np.ones(spans.shape[0], dtype=bool)
    new_run[1:] = start[1:] > reach[:-1] + 1
    first = np.flatnonzero(new_run)
    last = np.append(first[1:], spans.shape[0]) - 1
    out = np.empty((first.size, 3), dtype=SPAN_DTYPE)
    out[:, 0] = spans[first, 0]
    out[:, 1] = spans[first, 1]
    out[:, 2] = reach[last] - spans[first, 0] * _ROW - _X_SHIFT
    return out


def spans_covered_area(footprints: Sequence[np.ndarray], cover: np.ndarray) -> np.ndarray:
    """Number of pixels of each footprint that lie in ``cover``, computed on spans (no rasterisation).

    Parameters
    ----------
    footprints : sequence of `numpy.ndarray`
        ``(N, 3)`` spans (or flattened span vectors), one footprint per entry.
    cover : `numpy.ndarray`
        The covering pixel set as spans; need not be canonical (it goes through `spans_union`).

    Returns
    -------
    covered : `numpy.ndarray`
        ``int64`` count per footprint (``len(footprints)`` values).
    """
    spans, owner = _as_span_array(footprints)
    covered = np.zeros(len(footprints), dtype=np.int64)
    union = spans_union([cover]).astype(np.int64)
    if spans.shape[0] == 0 or union.shape[0] == 0:
        return covered
    starts = union[:, 0] * _ROW + union[:, 1] + _X_SHIFT
    ends = union[:, 0] * _ROW + union[:, 2] + _X_SHIFT
    before = np.concatenate([[0], np.cumsum(ends - starts + 1)[:-1]])

    def pixels_up_to(key: np.ndarray) -> np.ndarray:
        """Number of cover pixels whose key is <= ``key`` (monotonic in the key)."""
        position = np.searchsorted(starts, key, side="right") - 1
        inside = position >= 0
        p = np.maximum(position, 0)
        return np.where(inside, before[p] + np.minimum(key, ends[p]) - starts[p] + 1, 0)

    row = spans[:, 0] * _ROW + _X_SHIFT
    per_span = pixels_up_to(row + spans[:, 2]) - pixels_up_to(row + spans[:, 1] - 1)
    return np.bincount(owner, weights=per_span, minlength=len(footprints)).astype(np.int64)


def flatten_spans(spans: np.ndarray) -> np.ndarray:
    """Flatten ``(N, 3)`` spans to the ``int32`` vector stored in Arrow ``list<int32>`` columns."""
    return np.ascontiguousarray(np.asarray(spans, dtype=SPAN_DTYPE).reshape(-1))


def unflatten_spans(flat: np.ndarray) -> np.ndarray:
    """Inverse of `flatten_spans`."""
    flat = np.asarray(flat, dtype=SPAN_DTYPE)
    if flat.size % 3:
        raise ValueError(f"a flattened span list must have a multiple of 3 values, got {flat.size}")
    return flat.reshape(-1, 3)


@dataclass(frozen=True, eq=False)
class Footprint:
    """A set of pixels stored as spans, in parent (patch) coordinates.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(N, 3)`` ``int32`` spans ``(y, x_begin, x_end)``, as produced by `mask_to_spans`.
    """

    spans: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray, xy0: tuple[int, int] = (0, 0)) -> Self:
        """Build a footprint from a boolean mask whose ``[0, 0]`` pixel is at ``xy0``."""
        return cls(mask_to_spans(mask, xy0))

    @classmethod
    def from_flat(cls, flat: np.ndarray) -> Self:
        """Build a footprint from a flattened span vector (see `flatten_spans`)."""
        return cls(unflatten_spans(flat))

    @property
    def area(self) -> int:
        """Number of pixels."""
        return spans_area(self.spans)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Inclusive bounding box ``(x_min, y_min, x_max, y_max)``."""
        return spans_bbox(self.spans)

    @property
    def centroid(self) -> tuple[float, float]:
        """Unweighted centroid ``(x, y)``."""
        return spans_centroid(self.spans)

    def is_empty(self) -> bool:
        """Whether the footprint has no pixels."""
        return self.spans.shape[0] == 0

    def to_mask(self, shape: tuple[int, int] | None = None, xy0: tuple[int, int] | None = None) -> np.ndarray:
        """Rasterise; by default onto the footprint's own bounding box (then ``xy0`` is the bbox origin)."""
        if shape is None or xy0 is None:
            x_min, y_min, x_max, y_max = self.bbox
            return spans_to_mask(self.spans, (y_max - y_min + 1, x_max - x_min + 1), (x_min, y_min))
        return spans_to_mask(self.spans, shape, xy0)

    def flat(self) -> np.ndarray:
        """Flattened span vector for Arrow storage."""
        return flatten_spans(self.spans)

    def intersection_area(self, other: Footprint) -> int:
        """Number of pixels shared with ``other``."""
        return spans_intersection_area(self.spans, other.spans)

    def iou(self, other: Footprint) -> float:
        """Intersection over union with ``other`` (0 when both are empty)."""
        inter = self.intersection_area(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0
