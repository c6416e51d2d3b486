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

"""Greedy NMS over the pairs of boxes that can suppress each other, for detectron2's RPN and box head.

torchvision's CPU NMS compares every kept box with every later one: ``kept x n`` overlaps, about
``3500 x 6000`` for one FPN level of a 512 px tile, most of them between boxes far apart (the proposals
of a survey tile are a few pixels wide and few suppress each other); its CUDA kernel computes every
overlap in parallel but then walks the boxes one at a time in a single thread block to pick the kept ones
(about a microsecond per box).  Greedy NMS only depends on the pairs whose IoU exceeds the threshold
``t``, and such a pair is close: if ``IoU(a, b) > t`` and ``a`` starts left of ``b``, then ``x1_b - x1_a
< (1 - t) * width_a`` (the overlap along ``x`` exceeds ``t`` times either width), and likewise along
``y``.  `sparse_nms` bins the boxes in rows of ``(1 - t)`` times the largest height and sorts them by row
and ``x1``, takes for each box the boxes of its row and the next within those reaches, computes their IoU as
torchvision does (float32, ``inter / (area_a + area_b - inter) > t``, the threshold in double precision
on the CPU and in single precision on CUDA, as torchvision's kernels compare), and resolves the greedy
order on those pairs in a few vectorised passes: a box is kept once every higher-scored box overlapping
it is suppressed, suppressed once one of them is kept.  The kept boxes are torchvision's, in the same
order (ties in score broken by index, as torchvision's stable sort does).

`sparse_batched_nms` makes ``torchvision.ops.batched_nms`` - detectron2's RPN proposal selection and the
box head's per-class NMS - run `sparse_nms` on large sets for a block of inference.
"""

from __future__ import annotations

__all__ = ["sparse_batched_nms", "sparse_nms"]

import contextlib
from collections.abc import Iterator

import torch

# Greedy passes before the remaining boxes are left to torchvision's NMS (a chain of boxes each
# suppressing the next is resolved one link per pass; survey proposals need a handful).
_MAX_PASSES = 64

# Boxes from which `sparse_batched_nms` runs `sparse_nms` instead of torchvision's kernel, per device type:
# the sparse NMS costs a few dozen small operations (and, on CUDA, host synchronisations) per call, which
# torchvision's kernels beat on small sets.  CPU, one thread, RPN-like sets (``bench/bench_nms_device.py``):
# at IoU 0.7 (the RPN's) 0.39 against 0.69 ms at 500 boxes, 1.74 against 1.07 at 1000, 222 against 13 at
# 10,000; at 0.5 (the box head's) 0.91 against 1.49 ms at 1000 boxes, 3.7 against 2.6 at 2000.  The CUDA
# minimum is an estimate (the kernel's serial pass costs about a microsecond a box) until that script
# measures the crossing on a GPU.  Other devices keep torchvision's.
_SPARSE_MIN_BOXES = {"cpu": 1000, "cuda": 1000}

# Relative and absolute widening of each box's reach along x and of the rows' height along y (the bounds
# are exact in real arithmetic; the IoU test itself decides).
_REACH_SLACK = (1e-3, 1e-3)


def _overlap_ratio(
    columns: torch.Tensor, areas: torch.Tensor, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """IoU of the box pairs ``(a, b)`` as torchvision's CPU kernel computes it (float32, same order).

    ``columns`` is ``[4, N]``: the boxes' ``x1, y1, x2, y2`` as contiguous rows.
    """
    x1, y1, x2, y2 = columns
    width = torch.minimum(x2.index_select(0, a), x2.index_select(0, b))
    width -= torch.maximum(x1.index_select(0, a), x1.index_select(0, b))
    height = torch.minimum(y2.index_select(0, a), y2.index_select(0, b))
    height -= torch.maximum(y1.index_select(0, a), y1.index_select(0, b))
    inter = width.clamp_min_(0) * height.clamp_min_(0)
    return inter / (areas.index_select(0, a) + areas.index_select(0, b) - inter)


def _candidate_pairs(boxes: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of boxes close enough along x and y to have an IoU above ``threshold``, each once.

    Boxes of positive width and height only (the others overlap nothing).  If ``IoU(a, b) > t`` then the
    overlap along each axis exceeds ``t`` times either box's extent, so ``|y1_a - y1_b| < (1 - t) h`` and
    ``|x1_a - x1_b| < (1 - t) w`` of the box that starts first.  The boxes are binned in rows of
    ``(1 - t)`` times the largest height (a pair lies in one row or two adjacent ones) and sorted by row,
    then ``x1``; each box takes the later boxes of its row that start within its reach along x, and the
    boxes of the next row that start within its reach ahead or the largest reach behind.
    """
    empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    x1, y1 = boxes[:, 0].double(), boxes[:, 1].double()
    width, height = boxes[:, 2].double() - x1, boxes[:, 3].double() - y1
    valid = torch.nonzero((width > 0) & (height > 0)).squeeze(1)
    if len(valid) < 2:
        return empty, empty
    x1, y1, width, height = x1[valid], y1[valid], width[valid], height[valid]
    scale = (1.0 - threshold) * (1.0 + _REACH_SLACK[0])
    extremes = torch.stack([height.max(), width.max(), x1.min(), x1.max(), y1.min()]).tolist()
    row_height = extremes[0] * scale + _REACH_SLACK[1]
    behind = extremes[1] * scale + _REACH_SLACK[1]
    # Keys: row * stride + x (x from the leftmost start): a row's queries never reach into another row's keys.
    stride = extremes[3] - extremes[2] + behind + 1.0
    row = torch.floor((y1 - extremes[4]) / row_height)
    x = x1 - extremes[2]
    keys, order = torch.sort(row * stride + x, stable=True)
    row, x = row[order], x[order]
    ahead = x + width[order] * scale + _REACH_SLACK[1]
    position = torch.arange(len(keys), device=boxes.device)
    same_end = torch.searchsorted(keys, row * stride + ahead, right=True)
    next_start = torch.searchsorted(keys, (row + 1) * stride + x - behind)
    next_end = torch.searchsorted(keys, (row + 1) * stride + ahead, right=True)
    starts = torch.cat([position + 1, next_start])
    counts = torch.cat([(same_end - position - 1).clamp_min(0), (next_end - next_start).clamp_min(0)])
    total = int(counts.sum())
    if total == 0:
        return empty, empty
    first = torch.repeat_interleave(torch.cat([position, position]), counts, output_size=total)
    offsets = torch.cumsum(counts, 0) - counts
    step = torch.arange(total, device=boxes.device)
    second = torch.repeat_interleave(starts - offsets, counts, output_size=total) + step
    by_key = valid.index_select(0, order)
    return by_key.index_select(0, first), by_key.index_select(0, second)


def _suppressing_pairs(boxes: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of boxes whose IoU exceeds ``threshold`` (in ``(0, 1)``), each once: ``(a, b)`` indices."""
    a, b = _candidate_pairs(boxes, threshold)
    if len(a) == 0:
        return a, b
    columns = boxes.t().contiguous()
    areas = (columns[2] - columns[0]) * (columns[3] - columns[1])
    ratio = _overlap_ratio(columns, areas, a, b)
    # torchvision's CPU kernel compares with the threshold in double precision, its CUDA kernel in single
    # (as a float32 tensor compares with a Python float).
    close = ratio > threshold if boxes.is_cuda else ratio.double() > threshold
    return a[close], b[close]


def sparse_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms(boxes, scores, iou_threshold)``, comparing only boxes that can suppress.

    Parameters
    ----------
    boxes : `torch.Tensor`
        ``[N, 4]`` float boxes ``x1, y1, x2, y2``.
    scores : `torch.Tensor`
        ``[N]`` scores.
    iou_threshold : `float`
        A box is suppressed by a kept, higher-scored one whose IoU with it exceeds this.

    Returns
    -------
    keep : `torch.Tensor`
        int64 indices of the kept boxes, in decreasing score order: torchvision's.  Thresholds outside
        ``(0, 1)``, non-finite values and chains of suppressions longer than the passes allowed go to
        torchvision's NMS itself.
    """
    from torchvision.ops import nms

    n = len(boxes)
    if (
        n == 0
        or not 0.0 < iou_threshold < 1.0
        or not bool(torch.isfinite(boxes).all() & torch.isfinite(scores).all())
    ):
        return nms(boxes, scores, iou_threshold)
    rank_order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty_like(rank_order)
    rank[rank_order] = torch.arange(n, device=boxes.device)
    a, b = _suppressing_pairs(boxes, iou_threshold)
    # Each pair as (higher-ranked, lower-ranked), in ranks.
    ra, rb = rank[a], rank[b]
    source, target = torch.minimum(ra, rb), torch.maximum(ra, rb)
    indegree = torch.bincount(target, minlength=n)
    state = torch.where(indegree == 0, 1, 0).to(torch.int8)  # 1 kept, 2 suppressed, 0 undecided.
    for _ in range(_MAX_PASSES):
        undecided = state == 0
        if not bool(undecided.any()):
            break
        source_state = state[source]
        by_kept = torch.bincount(target[source_state == 1], minlength=n) > 0
        by_suppressed = torch.bincount(target[source_state == 2], minlength=n)
        state.masked_fill_(undecided & by_kept, 2)
        state.masked_fill_(undecided & ~by_kept & (by_suppressed == indegree), 1)
    else:
        if bool((state == 0).any()):
            return nms(boxes, scores, iou_threshold)
    return rank_order[state == 1]


@contextlib.contextmanager
def sparse_batched_nms() -> Iterator[None]:
    """Make ``torchvision.ops.batched_nms`` run `sparse_nms` on large sets for a block (restored after).

    Swaps the ``nms`` that ``torchvision.ops.boxes`` calls from its ``batched_nms`` (detectron2's
    ``batched_nms`` is torchvision's on float boxes: the RPN's per-level proposal selection and the box
    head's per-class NMS) for one that runs `sparse_nms` on sets of at least ``_SPARSE_MIN_BOXES`` boxes of
    the device type and torchvision's kernel on the others.  torchvision's own choice between one NMS with
    the categories offset apart and one NMS per category stays.  Process-wide for the block; the kept boxes
    are the same, so other users of that function in the process see the same result.
    """
    from torchvision.ops import boxes as box_ops

    torchvision_nms = box_ops.nms

    def dispatched(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        if len(boxes) < _SPARSE_MIN_BOXES.get(boxes.device.type, len(boxes) + 1):
            return torchvision_nms(boxes, scores, iou_threshold)
        return sparse_nms(boxes, scores, iou_threshold)

    box_ops.nms = dispatched
    try:
        yield
    finally:
        box_ops.nms = torchvision_nms
