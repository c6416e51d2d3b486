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

"""From one tile's model output to spans in patch coordinates, and duplicate merging across tiles."""

from __future__ import annotations

__all__ = ["paste_box_mask"]

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..footprints import SPAN_DTYPE, mask_to_spans, masks_to_spans, spans_area, spans_intersection_area
from ._tiles import InferenceConfig, Tile

# Rows of the crossing-candidates matrix evaluated at once while looking for duplicates (bounds memory).
_MERGE_CHUNK = 256
# Masks resampled together (`_box_masks_to_spans`): at most this many, of similar window sizes (fewer
# padded pixels; 64 was fastest: 5.7x the one-by-one paste on 750 detections of a tile) ...
_PASTE_CHUNK = 64
# ... and at most this many padded pixels (8 MB of float64) per chunk.
_PASTE_PIXELS = 1 << 20


def _paste_windows(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """``int64 [n, 4]`` pixel windows ``col0, row0, col1, row1`` that each box's mask is pasted into.

    The pixels detectron2 samples (values further out are below any threshold >= 0.5), clipped to the
    image; a degenerate box (``x1 <= x0`` or ``y1 <= y0``) gets an empty window.
    """
    x0, y0, x1, y1 = (boxes[:, i].astype(np.float64) for i in range(4))
    col0 = np.clip(np.floor(x0) - 1, 0, width).astype(np.int64)
    row0 = np.clip(np.floor(y0) - 1, 0, height).astype(np.int64)
    col1 = np.maximum(np.minimum(np.ceil(x1) + 1, width).astype(np.int64), col0)
    row1 = np.maximum(np.minimum(np.ceil(y1) + 1, height).astype(np.int64), row0)
    degenerate = (x1 <= x0) | (y1 <= y0)
    col1[degenerate] = col0[degenerate]
    row1[degenerate] = row0[degenerate]
    return np.stack([col0, row0, col1, row1], axis=1)


def _interpolation_weights(
    first: np.ndarray, count: np.ndarray, low: np.ndarray, high: np.ndarray, length: int, size: int
) -> np.ndarray:
    """Bilinear weights ``[k, length, size]``: for each of ``k`` boxes, a ``size``-cell axis over a box side.

    Box ``i``'s side spans ``[low[i], high[i])``; its rows sample pixels ``first[i]`` to
    ``first[i] + count[i] - 1`` (rows past ``count[i]`` are zero).  Pixel ``p`` samples the mask at
    ``(p + 0.5 - low) / (high - low) * size - 0.5`` in cell units (cell centres at integers, zero
    outside) - ``grid_sample(align_corners=False)`` with zero padding.
    """
    pixel = (first[:, None] + np.arange(length)).astype(np.float64)
    position = (pixel + 0.5 - low[:, None]) / (high - low)[:, None] * size - 0.5
    lower = np.floor(position).astype(np.int64)
    frac = position - lower
    in_window = np.arange(length) < count[:, None]
    weights = np.zeros((first.size, length, size), dtype=np.float64)
    box, pixel_index = np.indices(lower.shape)
    for cell, weight in ((lower, 1.0 - frac), (lower + 1, frac)):
        inside = in_window & (cell >= 0) & (cell < size)
        weights[box[inside], pixel_index[inside], cell[inside]] = weight[inside]
    return weights


def _paste_stack(soft: np.ndarray, boxes: np.ndarray, windows: np.ndarray, threshold: float) -> np.ndarray:
    """Soft masks ``[k, M, M]`` resampled into their windows and thresholded, as ``[k, H, W]`` booleans.

    The planes have the largest window's size; each window's pixels are at the top left, `False` past them.
    """
    sizes = windows[:, 2:] - windows[:, :2]
    wide, tall = (int(v) for v in sizes.max(axis=0))
    rows = _interpolation_weights(windows[:, 1], sizes[:, 1], boxes[:, 1], boxes[:, 3], tall, soft.shape[1])
    cols = _interpolation_weights(windows[:, 0], sizes[:, 0], boxes[:, 0], boxes[:, 2], wide, soft.shape[2])
    # Bilinear interpolation is separable: rows @ mask @ cols.T samples every pixel centre at once.
    binary = rows @ soft @ cols.transpose(0, 2, 1) >= threshold
    binary &= np.arange(tall)[None, :, None] < sizes[:, 1, None, None]
    binary &= np.arange(wide)[None, None, :] < sizes[:, 0, None, None]
    return binary


def paste_box_mask(
    soft_mask: np.ndarray, box: Sequence[float], height: int, width: int, threshold: float = 0.5
) -> tuple[np.ndarray, tuple[int, int]]:
    """Resample one box-relative soft mask into its box and threshold it.

    Parameters
    ----------
    soft_mask : `numpy.ndarray`
        ``[M, M]`` (or ``[1, M, M]``) mask probabilities covering the box.
    box : sequence of `float`
        ``x0, y0, x1, y1`` (XYXY) in the image's pixel coordinates.
    height, width : `int`
        Image size; the result is clipped to it.
    threshold : `float`
        Pixels with a resampled value ``>= threshold`` belong to the mask.

    Returns
    -------
    mask : `numpy.ndarray`
        Boolean crop covering the box (plus one pixel of margin, clipped to the image).
    origin : `tuple` [`int`, `int`]
        ``(x, y)`` image pixel of ``mask[0, 0]``.
    """
    soft = np.asarray(soft_mask, dtype=np.float64)
    soft = soft.reshape(1, *soft.shape[-2:])
    boxes = np.asarray(box, dtype=np.float64).reshape(1, 4)
    window = _paste_windows(boxes, height, width)
    size = window[:, 2:] - window[:, :2]
    origin = (int(window[0, 0]), int(window[0, 1]))
    if not (size > 0).all():
        return np.zeros((0, 0), dtype=bool), origin
    return _paste_stack(soft, boxes, window, threshold)[0], origin


@dataclass
class _TileResult:
    """Kept detections of one tile (parent coordinates)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_probs: np.ndarray | None
    footprints: list[np.ndarray]
    tile_index: int


class _Progress:
    """Log progress every ~10% of the tiles or every ``interval_s`` seconds."""

    def __init__(self, total_tiles: int, total_pixels: int, log: Any, interval_s: float) -> None:
        self.total_tiles = total_tiles
        self.total_pixels = total_pixels
        self.log = log
        self.interval_s = interval_s
        self.start = time.perf_counter()
        self.last_time = self.start
        self.next_fraction = 0.1

    def update(self, done_tiles: int) -> None:
        now = time.perf_counter()
        fraction = done_tiles / self.total_tiles
        if fraction < self.next_fraction and now - self.last_time < self.interval_s and fraction < 1.0:
            return
        while self.next_fraction <= fraction:
            self.next_fraction += 0.1
        self.last_time = now
        elapsed = max(now - self.start, 1e-9)
        mpix_per_s = fraction * self.total_pixels / elapsed / 1e6
        eta = elapsed * (1.0 - fraction) / fraction if fraction > 0 else float("nan")
        self.log.info(
            "Tiled inference: %d/%d tiles (%.0f%%), %.3f MPix/s, ETA %.1f s",
            done_tiles,
            self.total_tiles,
            100.0 * fraction,
            mpix_per_s,
            eta,
        )


def _instances_of(output: Any) -> Any:
    """The ``Instances`` of one model output (a ``{"instances": ...}`` dict or ``Instances`` itself)."""
    if isinstance(output, dict):
        if "instances" not in output:
            raise ValueError(f"model output dict has no 'instances' key (keys: {sorted(output)})")
        return output["instances"]
    return output


def _field(instances: Any, name: str, required: bool = True) -> Any:
    value = getattr(instances, name, None)
    if value is None and required:
        raise ValueError(
            f"model output Instances has no {name!r} field; an instance-segmentation model must give "
            "pred_boxes, scores, pred_classes and pred_masks"
        )
    return value


def _is_box_relative(masks: torch.Tensor, tile: Tile, raw: bool) -> bool:
    """Whether ``pred_masks`` are box-relative ``[N, 1, M, M]`` (else full-size ``[N, (1,) H, W]``)."""
    full_shape = (tile.height, tile.width)
    if masks.ndim == 4 and masks.shape[1] == 1:
        return raw or tuple(masks.shape[2:]) != full_shape
    if masks.ndim == 3 and tuple(masks.shape[1:]) == full_shape and not raw:
        return False
    raise ValueError(
        f"pred_masks of shape {tuple(masks.shape)} fit neither full-size [N, {tile.height}, {tile.width}] "
        f"masks nor box-relative [N, 1, M, M] masks{' (expected box-relative for raw masks)' if raw else ''}"
    )


def _full_masks_to_spans(masks: torch.Tensor, threshold: float, origin: tuple[int, int]) -> list[np.ndarray]:
    """Full-size tile masks ``[n, H, W]`` to spans, cropping each to its own extent before the transfer."""
    if masks.ndim == 4:
        masks = masks[:, 0]
    if masks.dtype == torch.bool:
        binary = masks
    elif masks.is_floating_point():
        binary = masks >= threshold
    else:
        binary = masks != 0
    rows_hit = binary.any(dim=2).cpu().numpy()
    cols_hit = binary.any(dim=1).cpu().numpy()
    spans = []
    for i in range(binary.shape[0]):
        rows = np.flatnonzero(rows_hit[i])
        if rows.size == 0:
            spans.append(np.zeros((0, 3), dtype=SPAN_DTYPE))
            continue
        cols = np.flatnonzero(cols_hit[i])
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = binary[i, r0:r1, c0:c1].cpu().numpy()
        spans.append(mask_to_spans(crop, (origin[0] + c0, origin[1] + r0)))
    return spans


def _box_masks_to_spans(
    masks: torch.Tensor, boxes: np.ndarray, tile: Tile, threshold: float, origin: tuple[int, int]
) -> list[np.ndarray]:
    """Box-relative soft masks ``[n, 1, M, M]`` pasted into their boxes (`paste_box_mask`), to spans.

    The masks are resampled together, in chunks of similar window size (`_PASTE_CHUNK` masks and
    `_PASTE_PIXELS` padded pixels at most): the same weights and products as `paste_box_mask`, one
    batched matrix product per chunk instead of two per detection.
    """
    soft = masks[:, 0].float().cpu().numpy()
    n = soft.shape[0]
    spans: list[np.ndarray] = [np.zeros((0, 3), dtype=SPAN_DTYPE)] * n
    if n == 0:
        return spans
    windows = _paste_windows(boxes, tile.height, tile.width)
    sizes = windows[:, 2:] - windows[:, :2]
    order = np.flatnonzero((sizes > 0).all(axis=1))
    order = order[np.argsort(sizes[order, 0] * sizes[order, 1], kind="stable")]
    start = 0
    while start < order.size:
        # The longest run of windows (smallest first) within both limits.
        candidates = order[start : start + _PASTE_CHUNK]
        wide = np.maximum.accumulate(sizes[candidates, 0])
        tall = np.maximum.accumulate(sizes[candidates, 1])
        fits = np.arange(1, candidates.size + 1) * wide * tall <= _PASTE_PIXELS
        chunk = candidates[: max(1, int(np.argmin(fits)) if not fits.all() else fits.size)]
        start += chunk.size
        binary = _paste_stack(
            soft[chunk].astype(np.float64), boxes[chunk].astype(np.float64), windows[chunk], threshold
        )
        origins = windows[chunk, :2] + np.asarray(origin, dtype=np.int64)
        for index, footprint in zip(chunk, masks_to_spans(binary, origins)):
            spans[index] = footprint
    return spans


def _owned_rows(
    instances: Any,
    tile: Tile,
    config: InferenceConfig,
    valid: np.ndarray | None,
    counts: dict[str, int],
) -> np.ndarray:
    """Rows of one tile's detections that the tile reports, highest score first.

    Score threshold, top-k, interior ownership and validity of the box centre: all from the boxes and
    scores, so a model can be asked for masks of these rows only (`_extract_tile` with ``rows``).
    """
    boxes = _tile_boxes(instances)
    scores = _tile_scores(instances)
    n = boxes.shape[0]
    if scores.size != n:
        raise ValueError(f"model output has {n} boxes but {scores.size} scores")
    counts["raw"] += n

    keep = scores >= config.score_threshold
    counts["below_threshold"] += int(n - keep.sum())
    if config.max_detections_per_tile is not None and keep.sum() > config.max_detections_per_tile:
        ranked = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")]
        keep[:] = False
        keep[ranked[: config.max_detections_per_tile]] = True
        counts["over_max_per_tile"] += int(ranked.size - config.max_detections_per_tile)
    center_x = tile.x0 + 0.5 * (boxes[:, 0] + boxes[:, 2])
    center_y = tile.y0 + 0.5 * (boxes[:, 1] + boxes[:, 3])
    owned = tile.interior_contains(center_x, center_y, config.stitch_margin)
    counts["outside_interior"] += int((keep & ~owned).sum())
    keep &= owned
    if valid is not None:
        px = np.clip(np.floor(center_x).astype(np.int64), 0, valid.shape[1] - 1)
        py = np.clip(np.floor(center_y).astype(np.int64), 0, valid.shape[0] - 1)
        on_valid = valid[py, px]
        counts["invalid_centre"] += int((keep & ~on_valid).sum())
        keep &= on_valid

    rows = np.flatnonzero(keep)
    # Highest score first within a tile, so the output order does not depend on the model's.
    return rows[np.argsort(-scores[rows], kind="stable")]


def _tile_scores(instances: Any) -> np.ndarray:
    return _field(instances, "scores").detach().float().cpu().numpy().reshape(-1)


def _tile_boxes(instances: Any) -> np.ndarray:
    boxes_field = _field(instances, "pred_boxes")
    box_tensor = getattr(boxes_field, "tensor", boxes_field)
    return box_tensor.detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)


def _extract_tile(
    instances: Any,
    tile: Tile,
    config: InferenceConfig,
    valid: np.ndarray | None,
    xy0: tuple[int, int],
    raw: bool,
    counts: dict[str, int],
    rows: np.ndarray | None = None,
) -> _TileResult:
    """Filter one tile's detections (`_owned_rows`) and convert them.

    ``rows``: the rows to convert, already chosen by `_owned_rows` (whose counts are then already in
    ``counts``); by default they are chosen here.
    """
    if rows is None:
        rows = _owned_rows(instances, tile, config, valid, counts)
    boxes = _tile_boxes(instances)
    scores = _tile_scores(instances)
    classes = _field(instances, "pred_classes").detach().cpu().numpy().astype(np.int64).reshape(-1)
    probs_field = _field(instances, "class_probs", required=False)
    n = boxes.shape[0]
    if scores.size != n or classes.size != n:
        raise ValueError(f"model output has {n} boxes but {scores.size} scores and {classes.size} classes")
    masks = _field(instances, "pred_masks")
    origin = (xy0[0] + tile.x0, xy0[1] + tile.y0)
    if rows.size:
        selected = masks[torch.as_tensor(rows, device=masks.device)]
        if _is_box_relative(masks, tile, raw):
            footprints = _box_masks_to_spans(selected, boxes[rows], tile, config.mask_threshold, origin)
        else:
            footprints = _full_masks_to_spans(selected, config.mask_threshold, origin)
    else:
        _is_box_relative(masks, tile, raw)  # Validate the mask layout even for tiles without detections.
        footprints = []
    nonempty = np.array([f.shape[0] > 0 for f in footprints], dtype=bool)
    counts["empty_mask"] += int((~nonempty).sum())
    rows = rows[nonempty]
    footprints = [f for f, ok in zip(footprints, nonempty) if ok]

    probs = None
    if probs_field is not None:
        probs = probs_field.detach().float().cpu().numpy()
        if probs.ndim != 2 or probs.shape[0] != n:
            raise ValueError(f"class_probs must be [N={n}, K], got shape {probs.shape}")
        probs = probs[rows]
    parent_boxes = boxes[rows] + np.array([origin[0], origin[1], origin[0], origin[1]], dtype=np.float64)
    return _TileResult(parent_boxes, scores[rows], classes[rows], probs, footprints, tile.index)


def _resolve_num_classes(model: Any, explicit: int | None, results: list[_TileResult]) -> int:
    """Number of classes: explicit, else from the model, else from the outputs."""
    if explicit is not None:
        return int(explicit)
    for owner in (model, getattr(model, "roi_heads", None)):
        value = getattr(owner, "num_classes", None)
        if isinstance(value, int) and value >= 1:
            return value
    widths = {r.class_probs.shape[1] for r in results if r.class_probs is not None}
    if len(widths) > 1:
        raise ValueError(f"class_probs widths differ between tiles: {sorted(widths)}")
    if widths:
        return widths.pop()
    top = max((int(r.class_ids.max()) for r in results if r.class_ids.size), default=0)
    return top + 1


def _footprint_bboxes(footprints: list[np.ndarray]) -> np.ndarray:
    """``int64 [N, 4]`` inclusive ``x_min, y_min, x_max, y_max`` of non-empty footprints (vectorised)."""
    if not footprints:
        return np.zeros((0, 4), dtype=np.int64)
    lengths = np.array([f.shape[0] for f in footprints])
    spans = np.concatenate(footprints).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.stack(
        [
            np.minimum.reduceat(spans[:, 1], starts),
            np.minimum.reduceat(spans[:, 0], starts),
            np.maximum.reduceat(spans[:, 2], starts),
            np.maximum.reduceat(spans[:, 0], starts),
        ],
        axis=1,
    )


def _merge_duplicates(
    scores: np.ndarray,
    tile_index: np.ndarray,
    footprints: list[np.ndarray],
    tiles: list[Tile],
    xy0: tuple[int, int],
    merge_iou: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy cross-tile suppression by footprint IoU.

    Returns ``keep`` and ``merged`` boolean arrays.  Only detections whose footprint leaves its tile's
    interior can overlap a detection of another tile (interiors are disjoint), so candidate pairs are
    searched from those "crossers" only, in bounded chunks.
    """
    n = len(footprints)
    keep = np.ones(n, dtype=bool)
    merged = np.zeros(n, dtype=bool)
    if n < 2:
        return keep, merged
    bbox = _footprint_bboxes(footprints)
    inner = np.array(
        [[t.inner_x0, t.inner_y0, t.inner_x1 - 1, t.inner_y1 - 1] for t in tiles], dtype=np.int64
    )
    inner = inner[tile_index] + np.array([xy0[0], xy0[1], xy0[0], xy0[1]])
    crossing = np.flatnonzero(
        (bbox[:, 0] < inner[:, 0])
        | (bbox[:, 1] < inner[:, 1])
        | (bbox[:, 2] > inner[:, 2])
        | (bbox[:, 3] > inner[:, 3])
    )
    pairs = []
    for start in range(0, crossing.size, _MERGE_CHUNK):
        rows = crossing[start : start + _MERGE_CHUNK]
        touching = (
            (bbox[rows, None, 0] <= bbox[None, :, 2])
            & (bbox[rows, None, 2] >= bbox[None, :, 0])
            & (bbox[rows, None, 1] <= bbox[None, :, 3])
            & (bbox[rows, None, 3] >= bbox[None, :, 1])
            & (tile_index[rows, None] != tile_index[None, :])
        )
        a, b = np.nonzero(touching)
        pairs.append(np.stack([rows[a], b], axis=1))
    if not pairs:
        return keep, merged
    candidates = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    if candidates.size == 0:
        return keep, merged
    areas = np.array([spans_area(f) for f in footprints], dtype=np.int64)
    neighbours: dict[int, list[int]] = {}
    for i, j in candidates:
        inter = spans_intersection_area(footprints[i], footprints[j])
        if inter and inter / (areas[i] + areas[j] - inter) >= merge_iou:
            neighbours.setdefault(int(i), []).append(int(j))
            neighbours.setdefault(int(j), []).append(int(i))
    order = np.lexsort((np.arange(n), -scores.astype(np.float64)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    for i in order:
        if not keep[i] or i not in neighbours:
            continue
        for j in neighbours[i]:
            if keep[j] and rank[j] > rank[i]:
                keep[j] = False
                merged[i] = True
    return keep, merged
