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

"""One-to-one matching of a detection catalog to truth, and DeepDISC's many-to-one convention.

Two conventions are implemented.

**One-to-one matching** (`match_catalogs`), in two stages:

1. *IoU stage.*  Candidate pairs are the truth/detection pairs whose bounding boxes overlap, found with a
   spatial grid (never a dense ``N x M`` matrix).  Their IoU is computed on footprints (``mask`` IoU, on
   spans, without rasterising anything) when both sides have footprints, else on inclusive bounding boxes
   (``bbox`` IoU).  Pairs with ``IoU >= min_iou`` are edges of a bipartite graph; each connected component
   is solved with the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`).  Inside a component the
   assignment has the largest possible number of pairs and, among those, the largest total IoU.
2. *Distance stage.*  Among the truth objects and detections left unmatched by stage 1, pairs whose centres
   are within ``max_distance`` pixels (default 5 px = 1 arcsec at 0.2 arcsec/pixel) are found with a KD-tree
   and assigned the same way: most pairs first, then the smallest total centre distance.  This catches
   detections whose footprints disagree with the truth (e.g. a faint source with a tiny truth mask) while
   remaining one-to-one.  Set ``max_distance=0`` to disable it.

**DeepDISC's convention** (`match_deepdisc`, Merz et al. 2023): every detection is paired with the truth
object of highest *bounding-box* IoU, and the pair counts as a match if that IoU is ``>= 0.5``.  This is not
one-to-one: two detections may share a truth object.  Ties go to the lowest truth index, like
``numpy.argmax`` in DeepDISC's ``get_matched_object_inds``.

Bounding boxes are inclusive pixel ranges ``(x_min, y_min, x_max, y_max)``: a box covers
``x_max - x_min + 1`` columns, so a one-pixel source has area 1.  Positions are parent (patch/tract) pixel
coordinates; catalogs known only on the sky can be projected with `sky_to_tangent_plane`.
"""

from __future__ import annotations

__all__ = [
    "DeepDiscMatch",
    "MatchResult",
    "SourceArrays",
    "bbox_iou_pairs",
    "bbox_overlap_pairs",
    "match_catalogs",
    "match_deepdisc",
    "optimal_assignment",
    "pair_intersection_areas",
    "sky_to_tangent_plane",
]

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from astropy.table import Table
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .footprints import SPAN_DTYPE

IoUType = Literal["auto", "mask", "bbox", "none"]

BBOX_COLUMNS = ("bbox_x_min", "bbox_y_min", "bbox_x_max", "bbox_y_max")
"""Default names of the inclusive bounding-box columns read by `SourceArrays.from_table`."""


def _as_spans(value: Any) -> np.ndarray:
    """One footprint as ``(N, 3)`` spans, accepting ``(N, 3)`` arrays and flattened vectors."""
    if value is None:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    array = np.asarray(value)
    if array.ndim == 1:
        if array.size % 3:
            raise ValueError(f"a flattened footprint must have a multiple of 3 values, got {array.size}")
        return array.astype(SPAN_DTYPE, copy=False).reshape(-1, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"footprint spans must have shape (N, 3) or be flattened, got {array.shape}")
    return array.astype(SPAN_DTYPE, copy=False)


def _bbox_from_spans(spans: Sequence[np.ndarray]) -> np.ndarray:
    """Inclusive bounding boxes of footprints; empty footprints give an empty box (``x_max < x_min``)."""
    counts = np.array([footprint.shape[0] for footprint in spans], dtype=np.int64)
    boxes = np.tile(np.array([0.0, 0.0, -1.0, -1.0]), (counts.size, 1))
    filled = counts > 0
    if filled.any():
        rows = np.concatenate(spans)
        starts = (np.cumsum(counts) - counts)[filled]  # Empty footprints own no rows: starts stay ordered.
        boxes[filled, 0] = np.minimum.reduceat(rows[:, 1], starts)
        boxes[filled, 1] = np.minimum.reduceat(rows[:, 0], starts)
        boxes[filled, 2] = np.maximum.reduceat(rows[:, 2], starts)
        boxes[filled, 3] = np.maximum.reduceat(rows[:, 0], starts)
    return boxes


def sky_to_tangent_plane(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float, pixel_scale_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection of sky positions to pseudo-pixel coordinates around ``(ra0, dec0)``.

    Use it to match catalogs that have only sky coordinates: distances then come out in pixels of the given
    scale (x grows with right ascension).

    Parameters
    ----------
    ra, dec : `numpy.ndarray`
        Positions in degrees.
    ra0, dec0 : `float`
        Tangent point in degrees.
    pixel_scale_arcsec : `float`
        Arcseconds per output unit.

    Returns
    -------
    x, y : `numpy.ndarray`
        Projected positions.
    """
    if pixel_scale_arcsec <= 0:
        raise ValueError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}")
    ra_rad, dec_rad = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    ra0_rad, dec0_rad = np.radians(ra0), np.radians(dec0)
    cos_c = np.sin(dec0_rad) * np.sin(dec_rad) + np.cos(dec0_rad) * np.cos(dec_rad) * np.cos(ra_rad - ra0_rad)
    if np.any(cos_c <= 0):
        raise ValueError("positions more than 90 degrees from the tangent point cannot be projected")
    xi = np.cos(dec_rad) * np.sin(ra_rad - ra0_rad) / cos_c
    eta = (
        np.cos(dec0_rad) * np.sin(dec_rad) - np.sin(dec0_rad) * np.cos(dec_rad) * np.cos(ra_rad - ra0_rad)
    ) / cos_c
    scale = np.degrees(1.0) * 3600.0 / pixel_scale_arcsec
    return xi * scale, eta * scale


@dataclass(eq=False)
class SourceArrays:
    """A catalog as plain arrays: what matching, metrics, blend outcomes and COCO AP consume.

    Parameters
    ----------
    x, y : `numpy.ndarray`
        Centres in parent pixel coordinates.
    bbox : `numpy.ndarray`, optional
        ``(N, 4)`` inclusive boxes ``(x_min, y_min, x_max, y_max)``; derived from ``spans`` when omitted.
    spans : `list` [`numpy.ndarray`], optional
        One footprint per source, ``(M, 3)`` spans or flattened ``int32`` vectors (parent coordinates).
    class_id : `numpy.ndarray`, optional
        Integer class per source (``0`` = star, ``1`` = galaxy by default; negative = unknown).
    score : `numpy.ndarray`, optional
        Detection confidence, used to rank detections for COCO AP.
    mag : `numpy.ndarray`, optional
        Magnitude per source (truth magnitude for truth, measured magnitude for detections).
    """

    x: np.ndarray
    y: np.ndarray
    bbox: np.ndarray | None = None
    spans: list[np.ndarray] | None = None
    class_id: np.ndarray | None = None
    score: np.ndarray | None = None
    mag: np.ndarray | None = None
    _bank: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        n = self.x.size
        if self.y.size != n:
            raise ValueError(f"x has {n} values but y has {self.y.size}")
        if self.spans is not None:
            self.spans = [_as_spans(footprint) for footprint in self.spans]
            if len(self.spans) != n:
                raise ValueError(f"{len(self.spans)} footprints for {n} sources")
        if self.bbox is None and self.spans is not None:
            self.bbox = _bbox_from_spans(self.spans)
        if self.bbox is not None:
            self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
            if self.bbox.shape[0] != n:
                raise ValueError(f"{self.bbox.shape[0]} bounding boxes for {n} sources")
        for name in ("class_id", "score", "mag"):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.int64 if name == "class_id" else np.float64).reshape(-1)
            if array.size != n:
                raise ValueError(f"{name} has {array.size} values for {n} sources")
            setattr(self, name, array)
        if not (np.all(np.isfinite(self.x)) and np.all(np.isfinite(self.y))):
            raise ValueError("source positions must be finite")

    def __len__(self) -> int:
        return int(self.x.size)

    def select(self, keep: np.ndarray) -> SourceArrays:
        """The sources selected by a boolean mask or an index array, as new `SourceArrays`."""
        keep = np.asarray(keep)
        index = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64).reshape(-1)
        return SourceArrays(
            x=self.x[index],
            y=self.y[index],
            bbox=None if self.bbox is None else self.bbox[index],
            spans=None if self.spans is None else [self.spans[i] for i in index],
            class_id=None if self.class_id is None else self.class_id[index],
            score=None if self.score is None else self.score[index],
            mag=None if self.mag is None else self.mag[index],
        )

    @classmethod
    def from_table(
        cls,
        table: Table,
        *,
        x: str = "x",
        y: str = "y",
        bbox: str | Sequence[str] | None = BBOX_COLUMNS,
        spans: str | None = "footprint",
        class_id: str | None = "class_id",
        score: str | None = "score",
        mag: str | None = None,
    ) -> SourceArrays:
        """Read the arrays from an astropy table; optional columns that are absent are skipped.

        Parameters
        ----------
        table : `astropy.table.Table`
            The catalog.
        x, y : `str`
            Centre columns (required).
        bbox : `str` or `tuple` [`str`, `str`, `str`, `str`] or `None`
            One ``(N, 4)`` column or four inclusive-bound columns ``x_min, y_min, x_max, y_max``.
        spans : `str` or `None`
            Footprint column (object column of flattened ``int32`` spans, or ``(M, 3)`` arrays).
        class_id, score, mag : `str` or `None`
            Optional columns.
        """
        for name in (x, y):
            if name not in table.colnames:
                raise KeyError(f"column {name!r} is missing; the table has {table.colnames}")

        def column(name: str | None) -> np.ndarray | None:
            return np.asarray(table[name]) if name is not None and name in table.colnames else None

        boxes = None
        if isinstance(bbox, str):
            boxes = column(bbox)
        elif bbox is not None and all(name in table.colnames for name in bbox):
            boxes = np.stack([np.asarray(table[name]) for name in bbox], axis=1)
        footprints = list(table[spans]) if spans is not None and spans in table.colnames else None
        return cls(
            x=np.asarray(table[x]),
            y=np.asarray(table[y]),
            bbox=boxes,
            spans=footprints,
            class_id=column(class_id),
            score=column(score),
            mag=column(mag),
        )

    def span_bank(self) -> tuple[np.ndarray, np.ndarray]:
        """All footprints concatenated: ``(S, 4)`` rows ``(source, y, x_begin, x_end)`` and ``offsets``.

        Rows are sorted by ``(source, y, x_begin)``; source ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
        """
        if self.spans is None:
            raise ValueError("these sources have no footprints")
        if self._bank is None:
            counts = np.array([footprint.shape[0] for footprint in self.spans], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            rows = np.empty((int(offsets[-1]), 4), dtype=np.int64)
            rows[:, 0] = np.repeat(np.arange(len(self.spans)), counts)
            if rows.shape[0]:
                rows[:, 1:] = np.concatenate(self.spans)
            order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
            self._bank = (rows[order], offsets)
        return self._bank

    def areas(self) -> np.ndarray:
        """Footprint areas in pixels (bounding-box areas when there are no footprints)."""
        if self.spans is not None:
            bank, _ = self.span_bank()
            lengths = bank[:, 3] - bank[:, 2] + 1
            return np.bincount(bank[:, 0], weights=lengths, minlength=len(self)).astype(np.int64)
        if self.bbox is None:
            raise ValueError("these sources have neither footprints nor bounding boxes")
        return _bbox_areas(self.bbox)


def _bbox_areas(boxes: np.ndarray) -> np.ndarray:
    width = np.clip(boxes[:, 2] - boxes[:, 0] + 1, 0, None)
    height = np.clip(boxes[:, 3] - boxes[:, 1] + 1, 0, None)
    return width * height


def _expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``arange(start, start + count)`` over ranges; also return each element's range index."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    positions = np.arange(total, dtype=np.int64) - first[owner] + np.asarray(starts, dtype=np.int64)[owner]
    return owner, positions


def bbox_overlap_pairs(
    boxes_a: np.ndarray, boxes_b: np.ndarray, cell_size: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of inclusive boxes from two sets that share at least one pixel.

    Boxes are hashed onto a square grid; a pair is reported once, by the cell holding the lower-left corner
    of the pair's intersection, so the work is proportional to the number of boxes and pairs, not ``N x M``.

    Parameters
    ----------
    boxes_a, boxes_b : `numpy.ndarray`
        ``(N, 4)`` and ``(M, 4)`` inclusive boxes ``(x_min, y_min, x_max, y_max)``.  Empty boxes
        (``x_max < x_min``) overlap nothing.
    cell_size : `float`, optional
        Grid cell size in pixels; default twice the median box size.

    Returns
    -------
    index_a, index_b : `numpy.ndarray`
        ``int64`` indices of the overlapping pairs, sorted by ``index_a`` then ``index_b``.
    """
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    valid_a = np.flatnonzero((boxes_a[:, 2] >= boxes_a[:, 0]) & (boxes_a[:, 3] >= boxes_a[:, 1]))
    valid_b = np.flatnonzero((boxes_b[:, 2] >= boxes_b[:, 0]) & (boxes_b[:, 3] >= boxes_b[:, 1]))
    empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    if valid_a.size == 0 or valid_b.size == 0:
        return empty
    a, b = boxes_a[valid_a], boxes_b[valid_b]
    if cell_size is None:
        sizes = np.concatenate([a[:, 2] - a[:, 0], a[:, 3] - a[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]])
        cell_size = max(4.0, 2.0 * float(np.median(sizes) + 1))
    if cell_size <= 0:
        raise ValueError(f"cell_size must be positive, got {cell_size}")
    origin_x = min(a[:, 0].min(), b[:, 0].min())
    origin_y = min(a[:, 1].min(), b[:, 1].min())

    def cells(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cx0 = np.floor((boxes[:, 0] - origin_x) / cell_size).astype(np.int64)
        cy0 = np.floor((boxes[:, 1] - origin_y) / cell_size).astype(np.int64)
        cx1 = np.floor((boxes[:, 2] - origin_x) / cell_size).astype(np.int64)
        cy1 = np.floor((boxes[:, 3] - origin_y) / cell_size).astype(np.int64)
        nx, ny = cx1 - cx0 + 1, cy1 - cy0 + 1
        owner, flat = _expand_ranges(np.zeros(boxes.shape[0], dtype=np.int64), nx * ny)
        cell_x = cx0[owner] + flat % nx[owner]
        cell_y = cy0[owner] + flat // nx[owner]
        return owner, cell_x, cell_y

    owner_a, cell_x_a, cell_y_a = cells(a)
    owner_b, cell_x_b, cell_y_b = cells(b)
    stride = int(max(cell_x_a.max(), cell_x_b.max())) + 1
    key_a = cell_y_a * stride + cell_x_a
    key_b = cell_y_b * stride + cell_x_b
    order_b = np.argsort(key_b, kind="stable")
    key_b, owner_b = key_b[order_b], owner_b[order_b]
    lo = np.searchsorted(key_b, key_a, side="left")
    hi = np.searchsorted(key_b, key_a, side="right")
    entry, positions = _expand_ranges(lo, hi - lo)
    ia, ib = owner_a[entry], owner_b[positions]
    cell = key_a[entry]
    inter_x0 = np.maximum(a[ia, 0], b[ib, 0])
    inter_y0 = np.maximum(a[ia, 1], b[ib, 1])
    inter_x1 = np.minimum(a[ia, 2], b[ib, 2])
    inter_y1 = np.minimum(a[ia, 3], b[ib, 3])
    corner_cell = np.floor((inter_y0 - origin_y) / cell_size).astype(np.int64) * stride + np.floor(
        (inter_x0 - origin_x) / cell_size
    ).astype(np.int64)
    keep = (inter_x1 >= inter_x0) & (inter_y1 >= inter_y0) & (corner_cell == cell)
    ia, ib = valid_a[ia[keep]], valid_b[ib[keep]]
    order = np.lexsort((ib, ia))
    return ia[order], ib[order]


def bbox_iou_pairs(
    boxes_a: np.ndarray, boxes_b: np.ndarray, index_a: np.ndarray, index_b: np.ndarray
) -> np.ndarray:
    """IoU of inclusive boxes for the given pairs (``0`` where the union is empty)."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)[index_a]
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)[index_b]
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1, 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1, 0, None)
    inter = width * height
    union = _bbox_areas(a) + _bbox_areas(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pair_intersection_areas(
    sources_a: SourceArrays, sources_b: SourceArrays, index_a: np.ndarray, index_b: np.ndarray
) -> np.ndarray:
    """Pixels shared by the footprints of each pair, computed on spans for all pairs at once.

    Every span of ``a``'s footprint is joined with the spans of ``b``'s footprint in the same row (binary
    search in a sorted table of ``(source, row)`` keys), so the cost is proportional to the number of spans
    involved, without any rasterisation.
    """
    bank_a, offsets_a = sources_a.span_bank()
    bank_b, offsets_b = sources_b.span_bank()
    index_a = np.asarray(index_a, dtype=np.int64)
    index_b = np.asarray(index_b, dtype=np.int64)
    result = np.zeros(index_a.size, dtype=np.int64)
    if index_a.size == 0 or bank_a.shape[0] == 0 or bank_b.shape[0] == 0:
        return result
    y_min = min(bank_a[:, 1].min(), bank_b[:, 1].min())
    n_rows = int(max(bank_a[:, 1].max(), bank_b[:, 1].max()) - y_min + 1)
    key_b = bank_b[:, 0] * n_rows + (bank_b[:, 1] - y_min)  # Non-decreasing: the bank is sorted.
    pair, rows_a = _expand_ranges(offsets_a[index_a], offsets_a[index_a + 1] - offsets_a[index_a])
    spans_a = bank_a[rows_a]
    wanted = index_b[pair] * n_rows + (spans_a[:, 1] - y_min)
    lo = np.searchsorted(key_b, wanted, side="left")
    hi = np.searchsorted(key_b, wanted, side="right")
    entry, rows_b = _expand_ranges(lo, hi - lo)
    spans_a, spans_b = spans_a[entry], bank_b[rows_b]
    overlap = np.clip(
        np.minimum(spans_a[:, 3], spans_b[:, 3]) - np.maximum(spans_a[:, 2], spans_b[:, 2]) + 1, 0, None
    )
    return np.bincount(pair[entry], weights=overlap, minlength=index_a.size).astype(np.int64)


def optimal_assignment(
    rows: np.ndarray, cols: np.ndarray, quality: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one assignment on a sparse bipartite graph, solved per connected component.

    Among all one-to-one selections of the given edges, the chosen one has the largest number of pairs and,
    among those, the largest total ``quality``.  Each connected component of the graph is solved separately
    with the Hungarian algorithm on its own small dense matrix; components made of a single edge are taken
    directly.

    Parameters
    ----------
    rows, cols : `numpy.ndarray`
        Edge end points (indices into ``range(n_rows)`` and ``range(n_cols)``); at most one edge per pair.
    quality : `numpy.ndarray`
        Edge quality in ``[0, 1]`` (larger is better), e.g. IoU or ``1 - distance / radius``.
    n_rows, n_cols : `int`
        Number of nodes on each side.

    Returns
    -------
    edge_index : `numpy.ndarray`
        Indices of the chosen edges, sorted by row.
    matched_rows, matched_cols : `numpy.ndarray`
        Their end points.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    quality = np.asarray(quality, dtype=np.float64)
    if rows.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    if np.any((quality < 0) | (quality > 1)) or not np.all(np.isfinite(quality)):
        raise ValueError("edge quality must be finite and within [0, 1]")
    graph = coo_matrix((np.ones(rows.size), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2)
    _, labels = connected_components(graph, directed=False)
    edge_label = labels[rows]
    order = np.argsort(edge_label, kind="stable")
    sorted_labels = edge_label[order]
    boundaries = np.flatnonzero(np.diff(sorted_labels)) + 1
    starts = np.concatenate([[0], boundaries])
    sizes = np.diff(np.concatenate([starts, [rows.size]]))
    chosen = [order[starts[sizes == 1]]]
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        edges = order[start : start + size]
        local_rows, row_pos = np.unique(rows[edges], return_inverse=True)
        local_cols, col_pos = np.unique(cols[edges], return_inverse=True)
        # Every edge is worth more than the total quality of any matching, so cardinality comes first;
        # entries that are not edges are worth 0 and are dropped after the assignment.
        bonus = float(min(local_rows.size, local_cols.size) + 1)
        weights = np.zeros((local_rows.size, local_cols.size))
        weights[row_pos, col_pos] = bonus + quality[edges]
        edge_of = np.full(weights.shape, -1, dtype=np.int64)
        edge_of[row_pos, col_pos] = edges
        r, c = linear_sum_assignment(weights, maximize=True)
        picked = edge_of[r, c]
        chosen.append(picked[picked >= 0])
    edge_index = np.concatenate(chosen)
    edge_index = edge_index[np.argsort(rows[edge_index], kind="stable")]
    return edge_index, rows[edge_index], cols[edge_index]


@dataclass(frozen=True)
class MatchResult:
    """Outcome of a one-to-one match (`match_catalogs`).

    Attributes
    ----------
    truth_index, det_index : `numpy.ndarray`
        Matched pairs (``int64``), sorted by truth index.
    iou : `numpy.ndarray`
        IoU of each pair in the kind used for matching (``iou_type``); NaN when ``iou_type`` is ``"none"``.
    bbox_iou, mask_iou : `numpy.ndarray`
        Bounding-box and footprint IoU of each pair (NaN where that information is missing).
    distance : `numpy.ndarray`
        Centre distance of each pair in pixels.
    method : `numpy.ndarray`
        ``"iou"`` or ``"distance"``: the stage that made the pair.
    unmatched_truth, unmatched_det : `numpy.ndarray`
        Sorted indices left unmatched on each side.
    n_truth, n_det : `int`
        Catalog sizes.
    iou_type : `str`
        ``"mask"``, ``"bbox"`` or ``"none"`` (no IoU stage).
    min_iou, max_distance : `float`
        Parameters used.
    """

    truth_index: np.ndarray
    det_index: np.ndarray
    iou: np.ndarray
    bbox_iou: np.ndarray
    mask_iou: np.ndarray
    distance: np.ndarray
    method: np.ndarray
    unmatched_truth: np.ndarray
    unmatched_det: np.ndarray
    n_truth: int
    n_det: int
    iou_type: str
    min_iou: float
    max_distance: float

    @property
    def n_matched(self) -> int:
        """Number of matched pairs."""
        return int(self.truth_index.size)

    def truth_to_det(self) -> np.ndarray:
        """For every truth object, the index of its detection or ``-1``."""
        out = np.full(self.n_truth, -1, dtype=np.int64)
        out[self.truth_index] = self.det_index
        return out

    def det_to_truth(self) -> np.ndarray:
        """For every detection, the index of its truth object or ``-1``."""
        out = np.full(self.n_det, -1, dtype=np.int64)
        out[self.det_index] = self.truth_index
        return out

    def to_table(self) -> Table:
        """The pairs as an astropy table (one row per pair)."""
        table = Table(
            {
                "truth_index": self.truth_index,
                "det_index": self.det_index,
                "iou": self.iou,
                "bbox_iou": self.bbox_iou,
                "mask_iou": self.mask_iou,
                "distance": self.distance,
                "method": self.method.astype("U8"),
            }
        )
        table["iou"].description = f"IoU used for matching ({self.iou_type})"
        table["distance"].description = "Centre distance in pixels"
        table["method"].description = "Matching stage: iou or distance"
        table.meta.update(
            {"n_truth": self.n_truth, "n_det": self.n_det, "iou_type": self.iou_type, "min_iou": self.min_iou}
        )
        return table


def _resolve_iou_type(truth: SourceArrays, detections: SourceArrays, iou_type: IoUType) -> str:
    has_spans = truth.spans is not None and detections.spans is not None
    has_bbox = truth.bbox is not None and detections.bbox is not None
    if iou_type == "auto":
        return "mask" if has_spans else "bbox" if has_bbox else "none"
    if iou_type == "mask" and not has_spans:
        raise ValueError("mask IoU requested but footprints (spans) are missing on at least one side")
    if iou_type == "bbox" and not has_bbox:
        raise ValueError("bbox IoU requested but bounding boxes are missing on at least one side")
    if iou_type not in ("mask", "bbox", "none"):
        raise ValueError(f"unknown iou_type {iou_type!r}; use 'auto', 'mask', 'bbox' or 'none'")
    return iou_type


def _pair_lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, default: float) -> np.ndarray:
    """``values`` at the positions of ``wanted`` in the sorted ``keys``; ``default`` where absent."""
    out = np.full(wanted.size, default, dtype=np.float64)
    if keys.size == 0 or wanted.size == 0:
        return out
    pos = np.clip(np.searchsorted(keys, wanted), 0, keys.size - 1)
    found = keys[pos] == wanted
    out[found] = values[pos[found]]
    return out


def match_catalogs(
    truth: SourceArrays,
    detections: SourceArrays,
    *,
    min_iou: float = 0.5,
    iou_type: IoUType = "auto",
    max_distance: float = 5.0,
) -> MatchResult:
    """Match detections to truth one-to-one: IoU matches first, then centre-distance matches.

    Parameters
    ----------
    truth, detections : `SourceArrays`
        The two catalogs (same parent pixel frame).
    min_iou : `float`
        Smallest IoU for a stage-1 match (default 0.5).
    iou_type : {"auto", "mask", "bbox", "none"}
        IoU on footprints, on bounding boxes, or no IoU stage.  ``"auto"`` picks ``mask`` when both catalogs
        have footprints, else ``bbox`` when both have boxes, else ``none``.
    max_distance : `float`
        Radius in pixels of the stage-2 centre-distance matching among the leftovers (default 5 px =
        1 arcsec at 0.2 arcsec/pixel); ``0`` disables it.

    Returns
    -------
    result : `MatchResult`
        The pairs and the unmatched indices on both sides.
    """
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    kind = _resolve_iou_type(truth, detections, iou_type)
    n_truth, n_det = len(truth), len(detections)
    has_spans = truth.spans is not None and detections.spans is not None
    has_bbox = truth.bbox is not None and detections.bbox is not None

    # Candidate pairs (overlapping boxes) with both IoU flavours where available.
    cand_t = cand_d = np.zeros(0, dtype=np.int64)
    cand_bbox_iou = cand_mask_iou = np.zeros(0)
    if has_bbox:
        cand_t, cand_d = bbox_overlap_pairs(truth.bbox, detections.bbox)
        cand_bbox_iou = bbox_iou_pairs(truth.bbox, detections.bbox, cand_t, cand_d)
        cand_mask_iou = np.full(cand_t.size, np.nan)
        if has_spans:
            inter = pair_intersection_areas(truth, detections, cand_t, cand_d).astype(np.float64)
            union = truth.areas()[cand_t] + detections.areas()[cand_d] - inter
            cand_mask_iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    cand_keys = cand_t * max(n_det, 1) + cand_d  # Sorted: pairs come sorted by (truth, det).

    # Stage 1: IoU.
    pairs_t, pairs_d = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    methods = [np.zeros(0, dtype="U8")]
    if kind != "none":
        cand_iou = cand_mask_iou if kind == "mask" else cand_bbox_iou
        edges = np.flatnonzero(cand_iou >= min_iou)
        _, t, d = optimal_assignment(cand_t[edges], cand_d[edges], cand_iou[edges], n_truth, n_det)
        pairs_t.append(t)
        pairs_d.append(d)
        methods.append(np.full(t.size, "iou", dtype="U8"))

    # Stage 2: centre distance among the leftovers.
    if max_distance > 0:
        free_t = np.setdiff1d(np.arange(n_truth), np.concatenate(pairs_t))
        free_d = np.setdiff1d(np.arange(n_det), np.concatenate(pairs_d))
        if free_t.size and free_d.size:
            tree_t = cKDTree(np.column_stack([truth.x[free_t], truth.y[free_t]]))
            tree_d = cKDTree(np.column_stack([detections.x[free_d], detections.y[free_d]]))
            near = tree_t.sparse_distance_matrix(tree_d, max_distance, output_type="ndarray")
            if near.size:
                quality = 1.0 - near["v"] / (max_distance * (1.0 + 1e-9))
                _, t, d = optimal_assignment(
                    near["i"].astype(np.int64), near["j"].astype(np.int64), quality, free_t.size, free_d.size
                )
                pairs_t.append(free_t[t])
                pairs_d.append(free_d[d])
                methods.append(np.full(t.size, "distance", dtype="U8"))

    truth_index = np.concatenate(pairs_t)
    det_index = np.concatenate(pairs_d)
    method = np.concatenate(methods)
    order = np.argsort(truth_index, kind="stable")
    truth_index, det_index, method = truth_index[order], det_index[order], method[order]
    keys = truth_index * max(n_det, 1) + det_index
    bbox_iou = _pair_lookup(cand_keys, cand_bbox_iou, keys, 0.0 if has_bbox else np.nan)
    mask_iou = _pair_lookup(cand_keys, cand_mask_iou, keys, 0.0 if has_spans else np.nan)
    iou = mask_iou if kind == "mask" else bbox_iou if kind == "bbox" else np.full(keys.size, np.nan)
    distance = np.hypot(
        truth.x[truth_index] - detections.x[det_index], truth.y[truth_index] - detections.y[det_index]
    )
    return MatchResult(
        truth_index=truth_index,
        det_index=det_index,
        iou=iou,
        bbox_iou=bbox_iou,
        mask_iou=mask_iou,
        distance=distance,
        method=method,
        unmatched_truth=np.setdiff1d(np.arange(n_truth), truth_index),
        unmatched_det=np.setdiff1d(np.arange(n_det), det_index),
        n_truth=n_truth,
        n_det=n_det,
        iou_type=kind,
        min_iou=float(min_iou),
        max_distance=float(max_distance),
    )


@dataclass(frozen=True)
class DeepDiscMatch:
    """DeepDISC's many-to-one match: each detection with its best-IoU truth object, if ``IoU >= min_iou``.

    Attributes
    ----------
    det_index, truth_index : `numpy.ndarray`
        Matched detections (sorted) and their best truth object; a truth index may repeat.
    bbox_iou : `numpy.ndarray`
        Bounding-box IoU of each pair.
    n_truth, n_det : `int`
        Catalog sizes.
    min_iou : `float`
        Threshold used.
    """

    det_index: np.ndarray
    truth_index: np.ndarray
    bbox_iou: np.ndarray
    n_truth: int
    n_det: int
    min_iou: float

    @property
    def n_matched_det(self) -> int:
        """Detections whose best truth IoU passes the threshold."""
        return int(self.det_index.size)

    @property
    def n_truth_recovered(self) -> int:
        """Distinct truth objects that are the best match of at least one detection."""
        return int(np.unique(self.truth_index).size)


def match_deepdisc(truth: SourceArrays, detections: SourceArrays, *, min_iou: float = 0.5) -> DeepDiscMatch:
    """DeepDISC's matching: for each detection the truth object of highest bbox IoU, kept if ``>= min_iou``.

    Parameters
    ----------
    truth, detections : `SourceArrays`
        Catalogs with bounding boxes (or footprints to derive them).
    min_iou : `float`
        Threshold on the best IoU (0.5 in DeepDISC).

    Returns
    -------
    match : `DeepDiscMatch`
        The matched detections and their truth objects.
    """
    if truth.bbox is None or detections.bbox is None:
        raise ValueError("DeepDISC matching needs bounding boxes (or footprints) for truth and detections")
    if not 0.0 < min_iou <= 1.0:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    cand_t, cand_d = bbox_overlap_pairs(truth.bbox, detections.bbox)
    iou = bbox_iou_pairs(truth.bbox, detections.bbox, cand_t, cand_d)
    # Best truth per detection; ties go to the lowest truth index (numpy.argmax).
    order = np.lexsort((cand_t, -iou, cand_d))
    cand_t, cand_d, iou = cand_t[order], cand_d[order], iou[order]
    first = np.ones(cand_d.size, dtype=bool)
    first[1:] = cand_d[1:] != cand_d[:-1]
    keep = first & (iou >= min_iou)
    return DeepDiscMatch(
        det_index=cand_d[keep],
        truth_index=cand_t[keep],
        bbox_iou=iou[keep],
        n_truth=len(truth),
        n_det=len(detections),
        min_iou=float(min_iou),
    )
