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
"""Tiled instance-segmentation inference over a whole patch, stitched into one detection list.

A patch (thousands of pixels on a side) is cut into overlapping tiles that a detectron2-style model can
digest, the tiles run through the model in batches, and the per-tile detections are stitched back:

1. **Tiling** (`plan_tiles`).  Tiles are ``tile_size`` square with ``overlap`` pixels shared between
   neighbours; the last tile of a row or column is shifted inward, so every tile is full-size whenever the
   patch is at least one tile long in that direction.  A patch smaller than a tile is a single tile of the
   patch's size (the model pads to its size divisibility itself).  Each tile has an *interior*: the tile
   minus half of each overlap it shares with a neighbour (the boundary is the middle of the overlap); on
   the sides at the patch edge the interior extends to the edge.  Interiors partition the patch exactly.
2. **Forward** in batches of tiles under `torch.inference_mode`, on the chosen device, the model's weights
   channels-last.  On a GPU a batch is one call, sent from pinned host memory with one asynchronous copy,
   with optional fp16 autocast.  On the CPU the batch is shared among concurrent calls (``workers``), each
   on its share of torch's threads.
3. **Stitching.**  A detection is kept only from the tile whose interior holds the centre of its box, so a
   source is reported once, with the footprint that tile saw.  That footprint is complete when the source
   extends at most ``overlap // 2`` pixels from its centre pixel: the owning tile then contains all of it.
   Detections are converted to spans in patch (parent) coordinates immediately, tile by tile, so the
   memory peak is set by one batch of tiles, never by the patch size.
4. **Duplicate merging.**  A model does not place a box identically in two tiles; when the two copies of
   a source land in two interiors both are kept, and their masks overlap.  Kept detections of different
   tiles whose footprints have IoU >= ``merge_iou`` are merged greedily by score (non-maximum suppression
   across tiles): the higher score stays and gets ``merged_duplicate = True``.  ``stitch_margin`` widens
   every interior by a few pixels so that a source whose two copies jitter *away* from each other across
   the boundary is still caught by one tile and then de-duplicated, instead of being lost.

Models follow detectron2's ``GeneralizedRCNN`` contract: ``model(list_of_dicts)`` with dicts
``{"image": float32 [C, H, W] tensor, "height": H, "width": W}`` returns ``[{"instances": Instances}]``
with ``pred_boxes`` (XYXY, tile pixels), ``scores``, ``pred_classes``, ``pred_masks`` and optionally
``class_probs [N, K]``.  Full-size masks ``[N, H, W]`` (bool or soft) are accepted, and so are the
box-relative soft masks ``[N, 1, M, M]`` of ``model.inference(inputs, do_postprocess=False)``, which are
resampled into their boxes one at a time (bilinear, the same sampling as detectron2's
``paste_masks_in_image``) so that no full-tile mask is ever built per detection.
"""

from __future__ import annotations

__all__ = [
    "Detections",
    "InferenceConfig",
    "Tile",
    "add_coarse_detections",
    "only_classes",
    "paste_box_mask",
    "plan_tiles",
    "run_tiled_inference",
    "select_device",
]

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .binning import unbin_boxes, unbin_spans
from .footprints import SPAN_DTYPE, Footprint, mask_to_spans, spans_area, spans_intersection_area

_LOG = logging.getLogger(__name__)

# Rows of the crossing-candidates matrix evaluated at once while looking for duplicates (bounds memory).
_MERGE_CHUNK = 256


@dataclass
class InferenceConfig:
    """How a patch is tiled, batched and stitched.

    Parameters
    ----------
    tile_size : `int`
        Side of the square tiles fed to the model, in pixels.
    overlap : `int`
        Pixels shared by neighbouring tiles; must exceed twice the largest extent of a source from its
        centre for every source to be reported whole.
    batch_size : `int`
        Tiles in flight at once (bounds memory together with ``tile_size``): one forward call on a GPU;
        on the CPU they are shared among the ``workers`` concurrent calls.  The default, 2, suits a CPU
        (one tile per core on two cores; each 512 px tile in flight costs about 0.2 GiB with the compact
        model, and more tiles per call are no faster there); on a GPU 8 to 16 keep it busy.
    workers : `int`
        CPU only: forward calls running at once, each on its share of torch's threads (torch releases
        the GIL, so the tiles of one patch are processed in parallel).  Parallel tiles make better use of
        the cores than more threads in one call, which wait on each other in single-threaded operators
        (NMS, ROIAlign) and at every barrier when other work shares the cores.  0 (default): one per torch
        thread, at most ``batch_size``; 1: one call at a time on all of torch's threads.
    channels_last : `bool`
        Run the model with channels-last (NHWC) weights, faster on CPUs (oneDNN) and on GPU tensor cores.
        Changes the results at the level of float32 rounding only.  The model's layout is restored at the
        end.
    device : `str`
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    half : `bool`
        Run the forward pass under fp16 autocast; honoured on CUDA only (ignored on other devices, with a
        log line).
    score_threshold : `float`
        Extra score cut applied on top of the model's own.
    merge_iou : `float`
        Footprint IoU from which detections of different tiles are considered the same source.
    max_detections_per_tile : `int` or `None`
        Keep at most this many detections (highest scores) per tile.
    stitch_margin : `int`
        Pixels by which tile interiors are widened when deciding which tile keeps a detection.  0 keeps the
        exact partition; a few pixels (the default, 2) protect against centre jitter between tiles
        (duplicates are then merged).  Must stay below ``overlap // 2``.
    mask_threshold : `float`
        Threshold on soft masks (box-relative or full-size).
    progress_interval_s : `float`
        Seconds between progress log lines (one is also logged at every ~10% of the tiles).
    """

    tile_size: int = 512
    overlap: int = 96
    batch_size: int = 2
    workers: int = 0
    channels_last: bool = True
    device: str = "auto"
    half: bool = False
    score_threshold: float = 0.0
    merge_iou: float = 0.5
    max_detections_per_tile: int | None = None
    stitch_margin: int = 2
    mask_threshold: float = 0.5
    progress_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if self.tile_size < 1:
            raise ValueError(f"tile_size must be >= 1, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size={self.tile_size}), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0: automatic), got {self.workers}")
        if not 0.0 < self.merge_iou <= 1.0:
            raise ValueError(f"merge_iou must be in (0, 1], got {self.merge_iou}")
        if self.max_detections_per_tile is not None and self.max_detections_per_tile < 1:
            raise ValueError(
                f"max_detections_per_tile must be >= 1 or None, got {self.max_detections_per_tile}"
            )
        if self.stitch_margin < 0 or (self.stitch_margin > 0 and self.stitch_margin >= self.overlap // 2):
            raise ValueError(
                f"stitch_margin must be >= 0 and below overlap // 2 = {self.overlap // 2}, "
                f"got {self.stitch_margin}"
            )
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")
        if self.progress_interval_s <= 0:
            raise ValueError(f"progress_interval_s must be positive, got {self.progress_interval_s}")


@dataclass(frozen=True)
class Tile:
    """One tile of a patch, in *local* pixel indices of the patch (``[0, H) x [0, W)``, half-open).

    ``y0:y1, x0:x1`` is the region given to the model; ``inner_y0:inner_y1, inner_x0:inner_x1`` is the
    interior that owns the detections centred in it.
    """

    index: int
    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    inner_y0: int
    inner_y1: int
    inner_x0: int
    inner_x1: int

    @property
    def height(self) -> int:
        """Rows of the tile."""
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        """Columns of the tile."""
        return self.x1 - self.x0

    def interior_contains(self, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether local (continuous) positions lie in the interior widened by ``margin`` pixels."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return (
            (x >= self.inner_x0 - margin)
            & (x < self.inner_x1 + margin)
            & (y >= self.inner_y0 - margin)
            & (y < self.inner_y1 + margin)
        )


def _plan_axis(length: int, tile_size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: ``(begin, end, inner_begin, inner_end)``, half-open local indices."""
    if length <= tile_size:
        return [(0, length, 0, length)]
    stride = tile_size - overlap
    count = math.ceil((length - tile_size) / stride) + 1
    # The last tile is shifted inward to end exactly at the patch edge (it overlaps its neighbour more).
    begins = [min(i * stride, length - tile_size) for i in range(count)]
    ends = [b + tile_size for b in begins]
    # Interior boundaries in the middle of each actual overlap; the patch edges close the first and last.
    cuts = [0] + [(begins[i + 1] + ends[i]) // 2 for i in range(count - 1)] + [length]
    return [(begins[i], ends[i], cuts[i], cuts[i + 1]) for i in range(count)]


def plan_tiles(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Cut a ``height x width`` patch into overlapping tiles, in row-major order.

    Parameters
    ----------
    height, width : `int`
        Patch size in pixels.
    tile_size : `int`
        Tile side.
    overlap : `int`
        Pixels shared by neighbouring tiles (``0 <= overlap < tile_size``).

    Returns
    -------
    tiles : `list` [`Tile`]
        Tiles covering the patch; their interiors partition it exactly.  Each interior edge shared with a
        neighbour lies at least ``overlap // 2`` pixels inside the tile.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot tile an empty patch of shape ({height}, {width})")
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size={tile_size}), got {overlap}")
    rows = _plan_axis(int(height), int(tile_size), int(overlap))
    cols = _plan_axis(int(width), int(tile_size), int(overlap))
    tiles = []
    for r, (y0, y1, iy0, iy1) in enumerate(rows):
        for c, (x0, x1, ix0, ix1) in enumerate(cols):
            tiles.append(Tile(len(tiles), r, c, y0, y1, x0, x1, iy0, iy1, ix0, ix1))
    return tiles


def select_device(name: str) -> torch.device:
    """Resolve a device name; ``"auto"`` is CUDA when available, else CPU.

    Raises
    ------
    RuntimeError
        If an explicitly requested accelerator is not available.
    ValueError
        If the name is not a device torch knows.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available on this machine")
    return device


@dataclass
class Detections:
    """Detections of a whole patch, in patch (parent) pixel coordinates.

    Parameters
    ----------
    boxes : `numpy.ndarray`
        ``float64 [N, 4]`` model boxes ``x0, y0, x1, y1`` (detectron2 XYXY: pixel ``i`` spans
        ``[i, i + 1)``), parent coordinates.
    scores : `numpy.ndarray`
        ``float32 [N]`` detection scores.
    class_ids : `numpy.ndarray`
        ``int32 [N]`` predicted classes.
    class_probs : `numpy.ndarray`
        ``float32 [N, K]`` class probabilities (one-hot of ``class_ids`` when the model gives none).
    footprints : `list` [`numpy.ndarray`]
        ``int32 (n, 3)`` spans per detection (see `..footprints`), parent coordinates, never empty.
    tile_index : `numpy.ndarray`
        ``int32 [N]`` index (in `plan_tiles` order) of the tile the detection comes from.
    merged_duplicate : `numpy.ndarray`
        ``bool [N]``: a duplicate of this source from another tile was merged into it.
    stats : `dict`
        Run statistics (tiles, seconds, throughput, device, counts); plain Python values.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_probs: np.ndarray
    footprints: list[np.ndarray]
    tile_index: np.ndarray
    merged_duplicate: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = self.boxes.shape[0]
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)
        self.class_probs = np.asarray(self.class_probs, dtype=np.float32)
        if self.class_probs.ndim != 2 or self.class_probs.shape[0] != n:
            raise ValueError(f"class_probs must be [N={n}, K], got shape {self.class_probs.shape}")
        self.footprints = [np.asarray(f, dtype=SPAN_DTYPE).reshape(-1, 3) for f in self.footprints]
        self.tile_index = np.asarray(self.tile_index, dtype=np.int32).reshape(-1)
        self.merged_duplicate = np.asarray(self.merged_duplicate, dtype=bool).reshape(-1)
        lengths = {
            "scores": self.scores.size,
            "class_ids": self.class_ids.size,
            "footprints": len(self.footprints),
            "tile_index": self.tile_index.size,
            "merged_duplicate": self.merged_duplicate.size,
        }
        wrong = {name: size for name, size in lengths.items() if size != n}
        if wrong:
            raise ValueError(f"{n} boxes but mismatched lengths: {wrong}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (columns of ``class_probs``)."""
        return int(self.class_probs.shape[1])

    @property
    def centers(self) -> np.ndarray:
        """``[N, 2]`` box centres ``(x, y)``, parent coordinates (pixel ``i`` is centred at ``i + 0.5``)."""
        return np.stack([self.boxes[:, [0, 2]].mean(axis=1), self.boxes[:, [1, 3]].mean(axis=1)], axis=1)

    def select(self, index: Any) -> Detections:
        """Subset by boolean mask, integer indices or slice (``stats`` are carried over)."""
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows)
        return Detections(
            boxes=self.boxes[rows],
            scores=self.scores[rows],
            class_ids=self.class_ids[rows],
            class_probs=self.class_probs[rows],
            footprints=[self.footprints[i] for i in rows],
            tile_index=self.tile_index[rows],
            merged_duplicate=self.merged_duplicate[rows],
            stats=dict(self.stats),
        )

    def unbinned(self, factor: int, xy0: tuple[int, int], shape: tuple[int, int]) -> Detections:
        """Detections made on an image binned by ``factor``, in the unbinned image's coordinates.

        The binned image is `.binning.bin_image`'s; the unbinned one has origin ``xy0`` and
        ``shape = (height, width)``.  Each binned pixel of a footprint becomes its whole block.
        """
        return Detections(
            boxes=unbin_boxes(self.boxes, factor, xy0),
            scores=self.scores,
            class_ids=self.class_ids,
            class_probs=self.class_probs,
            footprints=[unbin_spans(f, factor, xy0, shape) for f in self.footprints],
            tile_index=self.tile_index,
            merged_duplicate=self.merged_duplicate,
            stats=dict(self.stats),
        )

    @staticmethod
    def concatenate(parts: Sequence[Detections]) -> Detections:
        """One `Detections` with the rows of ``parts`` in order (``stats`` of the first)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return Detections(
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            class_probs=np.concatenate([p.class_probs for p in parts]),
            footprints=[f for p in parts for f in p.footprints],
            tile_index=np.concatenate([p.tile_index for p in parts]),
            merged_duplicate=np.concatenate([p.merged_duplicate for p in parts]),
            stats=dict(parts[0].stats),
        )

    @staticmethod
    def empty(num_classes: int) -> Detections:
        """No detections, with ``num_classes`` probability columns."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return Detections(
            boxes=np.zeros((0, 4)),
            scores=np.zeros(0),
            class_ids=np.zeros(0),
            class_probs=np.zeros((0, num_classes)),
            footprints=[],
            tile_index=np.zeros(0),
            merged_duplicate=np.zeros(0, dtype=bool),
        )


def add_coarse_detections(detections: Detections, coarse: Detections, merge_iou: float) -> Detections:
    """Add detections from a coarser pass (for instance the binned artifact pass) to a patch's detections.

    A coarse detection whose footprint overlaps a detection of the same class with an IoU of at least
    ``merge_iou`` is one object found twice: the higher score stays (with ``merged_duplicate`` set).
    Coarse rows get ``tile_index = -1``.

    Parameters
    ----------
    detections : `Detections`
        The patch's detections.
    coarse : `Detections`
        The coarse pass's, already in the same parent coordinates (`Detections.unbinned`).
    merge_iou : `float`
        Footprint IoU above which two detections of one class are the same object.

    Returns
    -------
    detections : `Detections`
        ``detections`` (minus the duplicates that lost) followed by the kept coarse detections.
    """
    if len(coarse) == 0:
        return detections
    coarse = coarse.select(slice(None))
    coarse.tile_index = np.full(len(coarse), -1, dtype=np.int32)
    keep_fine = np.ones(len(detections), dtype=bool)
    keep_coarse = np.ones(len(coarse), dtype=bool)
    fine_merged = detections.merged_duplicate.copy()
    coarse.merged_duplicate = coarse.merged_duplicate.copy()
    same_class = np.flatnonzero(np.isin(detections.class_ids, np.unique(coarse.class_ids)))
    for j in range(len(coarse)):
        box = coarse.boxes[j]
        for i in same_class:
            if not keep_fine[i] or detections.class_ids[i] != coarse.class_ids[j]:
                continue
            other = detections.boxes[i]
            if other[0] >= box[2] or other[2] <= box[0] or other[1] >= box[3] or other[3] <= box[1]:
                continue
            iou = Footprint(detections.footprints[i]).iou(Footprint(coarse.footprints[j]))
            if iou <= 0.0 or iou < merge_iou:
                continue
            if coarse.scores[j] > detections.scores[i]:
                keep_fine[i] = False
                coarse.merged_duplicate[j] = True
            else:
                keep_coarse[j] = False
                fine_merged[i] = True
                break
    fine = detections.select(slice(None))
    fine.merged_duplicate = fine_merged
    return Detections.concatenate([fine.select(keep_fine), coarse.select(keep_coarse)])


@contextlib.contextmanager
def only_classes(
    model: Any, class_ids: Sequence[int] | None, score_threshold: float | None = None
) -> Iterator[None]:
    """Make ``model`` report only ``class_ids`` while in the block.

    `None` means all classes; ``score_threshold``, if given, replaces the model's while in the block
    (``inference_class_ids`` of `.models.roi_heads`).
    """
    heads = getattr(model, "roi_heads", None)
    if class_ids is not None and not hasattr(heads, "inference_class_ids"):
        raise ValueError(f"model heads {type(heads).__name__} cannot restrict the classes they report")
    predictor = getattr(heads, "box_predictor", None)
    predictors = list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]
    if score_threshold is not None and not all(hasattr(p, "test_score_thresh") for p in predictors):
        raise ValueError(f"model heads {type(heads).__name__} have no score threshold to set")
    previous_ids = getattr(heads, "inference_class_ids", None)
    previous_thresholds = [getattr(p, "test_score_thresh", None) for p in predictors]
    if class_ids is not None:
        heads.inference_class_ids = tuple(int(c) for c in class_ids)
    if score_threshold is not None:
        for p in predictors:
            p.test_score_thresh = float(score_threshold)
    try:
        yield
    finally:
        if class_ids is not None:
            heads.inference_class_ids = previous_ids
        if score_threshold is not None:
            for p, value in zip(predictors, previous_thresholds):
                p.test_score_thresh = value


def _interpolation_matrix(first: int, stop: int, low: float, high: float, size: int) -> np.ndarray:
    """Bilinear weights ``[stop - first, size]`` sampling a ``size``-cell axis spread over ``[low, high)``.

    Pixel ``p`` samples the mask at ``(p + 0.5 - low) / (high - low) * size - 0.5`` in cell units (cell
    centres at integers, zero outside) - ``grid_sample(align_corners=False)`` with zero padding.
    """
    position = (np.arange(first, stop, dtype=np.float64) + 0.5 - low) / (high - low) * size - 0.5
    lower = np.floor(position).astype(np.int64)
    frac = position - lower
    weights = np.zeros((position.size, size), dtype=np.float64)
    rows = np.arange(position.size)
    for cell, weight in ((lower, 1.0 - frac), (lower + 1, frac)):
        inside = (cell >= 0) & (cell < size)
        weights[rows[inside], cell[inside]] = weight[inside]
    return weights


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
    soft = soft.reshape(soft.shape[-2:])
    x0, y0, x1, y1 = (float(v) for v in box)
    # The pixel range detectron2 samples: values further out are below any threshold >= 0.5.
    col0 = int(min(max(math.floor(x0) - 1, 0), width))
    row0 = int(min(max(math.floor(y0) - 1, 0), height))
    col1 = int(max(min(math.ceil(x1) + 1, width), col0))
    row1 = int(max(min(math.ceil(y1) + 1, height), row0))
    if x1 <= x0 or y1 <= y0 or col1 == col0 or row1 == row0:
        return np.zeros((0, 0), dtype=bool), (col0, row0)
    rows = _interpolation_matrix(row0, row1, y0, y1, soft.shape[0])
    cols = _interpolation_matrix(col0, col1, x0, x1, soft.shape[1])
    # Bilinear interpolation is separable: rows @ mask @ cols.T samples every pixel centre at once.
    return (rows @ soft @ cols.T) >= threshold, (col0, row0)


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
    """Box-relative soft masks ``[n, 1, M, M]`` pasted one by one into their boxes, to spans."""
    soft = masks[:, 0].float().cpu().numpy()
    spans = []
    for i in range(soft.shape[0]):
        crop, (col0, row0) = paste_box_mask(soft[i], boxes[i], tile.height, tile.width, threshold)
        spans.append(
            mask_to_spans(crop, (origin[0] + col0, origin[1] + row0))
            if crop.size
            else np.zeros((0, 3), dtype=SPAN_DTYPE)
        )
    return spans


def _extract_tile(
    instances: Any,
    tile: Tile,
    config: InferenceConfig,
    valid: np.ndarray | None,
    xy0: tuple[int, int],
    raw: bool,
    counts: dict[str, int],
) -> _TileResult:
    """Filter one tile's detections (score, top-k, interior ownership, validity) and convert them."""
    boxes_field = _field(instances, "pred_boxes")
    box_tensor = getattr(boxes_field, "tensor", boxes_field)
    boxes = box_tensor.detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4)
    scores = _field(instances, "scores").detach().float().cpu().numpy().reshape(-1)
    classes = _field(instances, "pred_classes").detach().cpu().numpy().astype(np.int64).reshape(-1)
    probs_field = _field(instances, "class_probs", required=False)
    n = boxes.shape[0]
    if scores.size != n or classes.size != n:
        raise ValueError(f"model output has {n} boxes but {scores.size} scores and {classes.size} classes")
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
    rows = rows[np.argsort(-scores[rows], kind="stable")]
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


def _as_cube(scaled: Any) -> Any:
    # A cube scaled window by window (`..scaling.ScaledCube`) stays lazy: tiles are read by slicing.
    lazy = not isinstance(scaled, np.ndarray) and hasattr(scaled, "shape") and hasattr(scaled, "__getitem__")
    cube = scaled if lazy and len(scaled.shape) == 3 else np.asarray(scaled)
    if cube.ndim == 2:
        cube = cube[np.newaxis]
    if cube.ndim != 3:
        raise ValueError(f"scaled image must be [C, H, W] (or [H, W]), got shape {cube.shape}")
    if cube.dtype.kind not in "fiu":
        raise TypeError(f"scaled image must be numeric, got dtype {cube.dtype}")
    if cube.shape[1] == 0 or cube.shape[2] == 0:
        raise ValueError(f"scaled image is empty: shape {cube.shape}")
    return cube


def _resolve_raw(model: Any, use_raw_masks: bool | None) -> bool:
    has_inference = callable(getattr(model, "inference", None))
    if use_raw_masks is None:
        return has_inference
    if use_raw_masks and not has_inference:
        raise ValueError(
            "use_raw_masks=True needs a model with detectron2's inference(inputs, do_postprocess=)"
        )
    return bool(use_raw_masks)


def _finite_or_absent(pixels: np.ndarray) -> bool:
    """Whether every plane is finite or all NaN (a band the model is told is absent)."""
    planes = pixels.reshape(pixels.shape[0], -1)
    return bool(np.all(np.isfinite(planes).all(axis=1) | np.isnan(planes).all(axis=1)))


_COUNT_NAMES = (
    "raw",
    "below_threshold",
    "over_max_per_tile",
    "outside_interior",
    "invalid_centre",
    "empty_mask",
)


def _tile_pixels(cube: np.ndarray, tile: Tile) -> np.ndarray:
    """The float32 ``[C, h, w]`` input of one tile (a copy), checked for non-finite pixels."""
    pixels = np.ascontiguousarray(cube[:, tile.y0 : tile.y1, tile.x0 : tile.x1], dtype=np.float32)
    if not np.isfinite(pixels).all() and not _finite_or_absent(pixels):
        raise ValueError(
            f"scaled image has non-finite pixels in tile {tile.index} (rows {tile.y0}:{tile.y1}, "
            f"columns {tile.x0}:{tile.x1}); scalings must replace invalid pixels"
        )
    return pixels


def _batch_inputs(cube: np.ndarray, batch: Sequence[Tile], device: torch.device) -> list[dict[str, Any]]:
    """The model inputs of a batch of tiles, on ``device``.

    On CUDA the tiles are gathered in one pinned host buffer and sent with a single asynchronous copy
    (PyTorch's pinned-memory cache keeps the buffer until the copy is done, so it is never overwritten
    early); elsewhere each tile is a tensor of its own.
    """
    pixels = [_tile_pixels(cube, tile) for tile in batch]
    if device.type == "cuda" and len({p.shape for p in pixels}) == 1:
        host = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.float32, pin_memory=True)
        for index, plane in enumerate(pixels):
            host[index].copy_(torch.from_numpy(plane))
        tensors = list(host.to(device, non_blocking=True).unbind(0))
    elif device.type == "cuda":
        tensors = [torch.from_numpy(p).pin_memory().to(device, non_blocking=True) for p in pixels]
    else:
        tensors = [torch.from_numpy(p).to(device) for p in pixels]
    return [
        {"image": tensor, "height": tile.height, "width": tile.width} for tensor, tile in zip(tensors, batch)
    ]


def _plan_workers(config: InferenceConfig, device: torch.device, n_tiles: int) -> tuple[int, int | None]:
    """Concurrent forward calls and torch threads for each (`None`: leave the thread count alone)."""
    if device.type != "cpu":
        return 1, None
    threads = torch.get_num_threads()
    workers = config.workers or min(threads, config.batch_size)
    workers = max(1, min(workers, n_tiles))
    if workers == 1:
        return 1, None
    return workers, max(1, threads // workers)


@contextlib.contextmanager
def _channels_last(model: Any, enabled: bool) -> Iterator[None]:
    """Hold the model's 4-d weights in channels-last layout for a block (restored afterwards)."""
    if not enabled:
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


@contextlib.contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """Torch's intra-op thread count for a block (restored afterwards); `None` changes nothing."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _in_order(function: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(function, items)`` with up to ``workers`` calls running at once, results in order.

    Torch releases the GIL inside its operators, so threads overlap the forward passes of different tiles.
    Pending calls are cancelled when the consumer stops early or a call raises.
    """
    if workers == 1:
        yield from map(function, items)
        return
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deepdisc-tiles")
    try:
        futures = [executor.submit(function, item) for item in items]
        for future in futures:
            yield future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping ``(start, end)`` intervals."""
    total = 0.0
    reach = -math.inf
    for begin, end in sorted(intervals):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def run_tiled_inference(
    model: Callable[..., Any],
    scaled: np.ndarray,
    *,
    xy0: tuple[int, int] = (0, 0),
    config: InferenceConfig | None = None,
    valid: np.ndarray | None = None,
    log: logging.Logger | Any | None = None,
    use_raw_masks: bool | None = None,
    num_classes: int | None = None,
) -> Detections:
    """Detect and segment sources over a whole patch, tile by tile.

    Parameters
    ----------
    model : callable
        A detectron2-style model (see the module docstring).  If it is a `torch.nn.Module` it is put in
        eval mode and moved to the selected device (in place).
    scaled : `numpy.ndarray` or `..scaling.ScaledCube`
        ``[C, H, W]`` scaled image of the patch (the model's input scaling already applied), finite; a
        `..scaling.ScaledCube` is scaled tile by tile as the tiles are read (never held whole).
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of ``scaled[:, 0, 0]``.
    config : `InferenceConfig`, optional
        Tiling, batching and stitching parameters (defaults if `None`).
    valid : `numpy.ndarray`, optional
        ``[H, W]`` boolean; detections whose box centre falls on a `False` pixel are dropped.
    log : `logging.Logger`, optional
        Where progress goes (this module's logger by default).
    use_raw_masks : `bool`, optional
        `True`: call ``model.inference(inputs, do_postprocess=False)`` and paste the box-relative masks
        (bounded memory, preferred for real models); `False`: call ``model(inputs)``; `None`: `True` when
        the model has an ``inference`` method.
    num_classes : `int`, optional
        Number of classes ``K``; by default from ``model.num_classes``, ``model.roi_heads.num_classes``,
        the width of ``class_probs`` or the largest class id seen.

    Returns
    -------
    detections : `Detections`
        One row per source; ``stats`` holds timings (``seconds_total``, ``seconds_forward``), throughput
        (``mpix_per_s`` of patch pixels), the device and counts of what was dropped where.

    Raises
    ------
    ValueError
        On malformed input (shape, non-finite pixels in a tile, ``valid`` of the wrong shape) or model
        output that does not follow the contract.
    """
    config = config or InferenceConfig()
    log = log or _LOG
    cube = _as_cube(scaled)
    _, height, width = cube.shape
    xy0 = (int(xy0[0]), int(xy0[1]))
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != (height, width):
            raise ValueError(f"valid must be [H, W] = {(height, width)}, got shape {valid.shape}")
        valid = valid.astype(bool, copy=False)
    tiles = plan_tiles(height, width, config.tile_size, config.overlap)
    device = select_device(config.device)
    use_half = config.half and device.type == "cuda"
    if config.half and not use_half:
        log.info("fp16 autocast requested but ignored on device %s (CUDA only)", device)
    raw = _resolve_raw(model, use_raw_masks)
    if isinstance(model, torch.nn.Module):
        model.eval()
        model.to(device)

    workers, worker_threads = _plan_workers(config, device, len(tiles))
    per_call = config.batch_size if workers == 1 else max(1, math.ceil(config.batch_size / workers))
    channels_last = config.channels_last and isinstance(model, torch.nn.Module) and device.type != "mps"
    counts = dict.fromkeys(_COUNT_NAMES, 0)
    results: list[_TileResult] = []
    progress = _Progress(len(tiles), height * width, log, config.progress_interval_s)
    forward_intervals: list[tuple[float, float]] = []
    start = time.perf_counter()
    batches = [tiles[i : i + per_call] for i in range(0, len(tiles), per_call)]

    def run_batch(batch: list[Tile]) -> tuple[list[_TileResult], dict[str, int], tuple[float, float]]:
        inputs = _batch_inputs(cube, batch, device)
        batch_counts = dict.fromkeys(_COUNT_NAMES, 0)
        forward_start = time.perf_counter()
        autocast = torch.autocast("cuda", dtype=torch.float16) if use_half else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            outputs = model.inference(inputs, do_postprocess=False) if raw else model(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            interval = (forward_start, time.perf_counter())
            if len(outputs) != len(inputs):
                raise ValueError(f"model returned {len(outputs)} outputs for {len(inputs)} input tiles")
            batch_results = [
                _extract_tile(_instances_of(output), tile, config, valid, xy0, raw, batch_counts)
                for tile, output in zip(batch, outputs)
            ]
        return batch_results, batch_counts, interval

    done = 0
    with _channels_last(model, channels_last), _intra_op_threads(worker_threads):
        for batch, (batch_results, batch_counts, interval) in zip(
            batches, _in_order(run_batch, batches, workers)
        ):
            results.extend(batch_results)
            for name, value in batch_counts.items():
                counts[name] += value
            forward_intervals.append(interval)
            done += len(batch)
            progress.update(done)
    forward_seconds = _union_length(forward_intervals)

    n_classes = _resolve_num_classes(model, num_classes, results)
    detections = _assemble(results, n_classes)
    keep, merged = _merge_duplicates(
        detections.scores, detections.tile_index, detections.footprints, tiles, xy0, config.merge_iou
    )
    detections.merged_duplicate = merged
    detections = detections.select(keep)
    total_seconds = time.perf_counter() - start
    detections.stats = {
        "tiles": len(tiles),
        "batches": len(batches),
        "batch_size": config.batch_size,
        "tiles_per_call": per_call,
        "workers": workers,
        "threads_per_worker": worker_threads if worker_threads is not None else torch.get_num_threads(),
        "channels_last": bool(channels_last),
        "tile_size": config.tile_size,
        "overlap": config.overlap,
        "stitch_margin": config.stitch_margin,
        "height": int(height),
        "width": int(width),
        "device": str(device),
        "half": bool(use_half),
        "raw_masks": bool(raw),
        "seconds_total": total_seconds,
        "seconds_forward": forward_seconds,
        "seconds_postprocess": total_seconds - forward_seconds,
        "mpix_per_s": height * width / 1e6 / max(total_seconds, 1e-9),
        **{f"n_{name}": int(value) for name, value in counts.items()},
        "n_merged": int((~keep).sum()),
        "n_detections": len(detections),
    }
    log.info(
        "Tiled inference done: %d detections from %d tiles in %.2f s (forward %.2f s, %.3f MPix/s, %s)",
        len(detections),
        len(tiles),
        total_seconds,
        forward_seconds,
        detections.stats["mpix_per_s"],
        device,
    )
    return detections


def _assemble(results: list[_TileResult], num_classes: int) -> Detections:
    """Concatenate tile results into `Detections`, filling one-hot probabilities where none were given."""
    results = [r for r in results if r.scores.size]
    if not results:
        return Detections.empty(num_classes)
    class_ids = np.concatenate([r.class_ids for r in results])
    if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= num_classes):
        raise ValueError(f"class ids {class_ids.min()}..{class_ids.max()} outside [0, {num_classes})")
    probs = []
    for r in results:
        if r.class_probs is None:
            probs.append(np.eye(num_classes, dtype=np.float32)[r.class_ids])
        elif r.class_probs.shape[1] != num_classes:
            raise ValueError(f"class_probs have {r.class_probs.shape[1]} columns for {num_classes} classes")
        else:
            probs.append(r.class_probs)
    return Detections(
        boxes=np.concatenate([r.boxes for r in results]),
        scores=np.concatenate([r.scores for r in results]),
        class_ids=class_ids,
        class_probs=np.concatenate(probs),
        footprints=[f for r in results for f in r.footprints],
        tile_index=np.concatenate([np.full(r.scores.size, r.tile_index) for r in results]),
        merged_duplicate=np.zeros(class_ids.size, dtype=bool),
    )
