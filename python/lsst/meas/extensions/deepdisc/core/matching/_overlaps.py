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

"""Pairs of overlapping boxes, their IoU and intersection areas, and optimal assignment."""

from __future__ import annotations

__all__ = ["bbox_iou_pairs", "bbox_overlap_pairs", "optimal_assignment", "pair_intersection_areas"]

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._sources import SourceArrays, _bbox_areas


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
