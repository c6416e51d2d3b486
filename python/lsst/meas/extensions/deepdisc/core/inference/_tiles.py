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

"""Tiling (`InferenceConfig`, `plan_tiles`) and the choice of device."""

from __future__ import annotations

__all__ = ["InferenceConfig", "Tile", "plan_tiles", "select_device"]

import math
from dataclasses import dataclass

import numpy as np
import torch


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
    cpu_bfloat16 : `bool`
        CPU only: run the backbone and the convolutions and fully connected layers of the box and mask
        heads under bfloat16 autocast (oneDNN; fast on CPUs with AMX or AVX512-BF16, slow elsewhere).
        Their outputs return to float32 before the region proposals, the box predictor and the mask
        probabilities.  Not exact: about 1% of the detections of a patch differ (see the benchmark).
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
    masks_of_reported_only : `bool`
        detectron2 R-CNN models with box-relative masks: run the mask head only on the detections a tile
        reports (score, top-k, interior and validity decided from the boxes first), not on every box of
        the tile (`detect_then_segment`).  The same detections, for about half the mask head's work.
        `False` runs the model's own one-step inference.
    separable_roi_align : `bool`
        CPU only: the model's ROIAlign poolers (box and mask heads of detectron2 R-CNNs) pool each region
        as two small matrix products over a window of the feature map
        (`~lsst.meas.extensions.deepdisc.core.models.roi_align.roi_align_levels`) instead of torchvision's
        kernel: the same values up to floating-point summation order, about half the pooling time for
        the proposals of a tile.
    sparse_nms : `bool` or `None`
        detectron2's NMS (the RPN's proposal selection, the box head's per-class NMS) runs
        `~lsst.meas.extensions.deepdisc.core.models.nms.sparse_nms` on large sets of boxes (greedy NMS over
        the pairs of boxes close enough to suppress each other, resolved in vectorised passes) instead of
        torchvision's kernels: the CPU one compares every kept box with every later one, the CUDA one
        picks the kept boxes one at a time in a single thread block.  The same boxes kept (on CUDA up to
        the fused multiply-adds the compiler may put in torchvision's kernel).  `None` (default): on CPUs,
        where the RPN's proposal selection takes an eighth of its time with torchvision's NMS; `True`: on
        CPUs and CUDA devices (its speed on a GPU is measured by ``bench/bench_nms_device.py``, not yet
        run); `False`: torchvision's.
    """

    tile_size: int = 512
    overlap: int = 96
    batch_size: int = 2
    workers: int = 0
    channels_last: bool = True
    device: str = "auto"
    half: bool = False
    cpu_bfloat16: bool = False
    score_threshold: float = 0.0
    merge_iou: float = 0.5
    max_detections_per_tile: int | None = None
    stitch_margin: int = 2
    mask_threshold: float = 0.5
    progress_interval_s: float = 30.0
    masks_of_reported_only: bool = True
    separable_roi_align: bool = True
    sparse_nms: bool | None = None

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
