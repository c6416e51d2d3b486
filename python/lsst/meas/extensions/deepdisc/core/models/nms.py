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
<= (1 - t) * width_a`` (the overlap along ``x`` is at least ``t`` times either width).  `sparse_nms`
sorts the boxes by ``x1``, takes for each box the boxes starting within that reach, computes their IoU as
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
# torchvision's kernels beat on small sets (CPU, one thread: 90 us against 320 us at 256 boxes, 470
# against 430 at 512, 1.9 ms against 0.7 at 1000).  The CUDA minimum is an estimate (the kernel's serial
# pass costs about a microsecond a box, the sparse NMS a few dozen launches and syncs) until
# ``bench/bench_nms_device.py`` measures the crossing on a GPU.  Other devices keep torchvision's.
_SPARSE_MIN_BOXES = {"cpu": 512, "cuda": 1000}

# IoU thresholds from which `sparse_batched_nms` runs `sparse_nms`, per device type: a lower threshold
# reaches further along x and keeps more pairs, and on the CPU the sparse NMS only matches torchvision's at
# the box head's 0.5 (RPN-like sets of 1000-10,000 boxes: 0.66-1.07x; 4.2-4.5x at the RPN's 0.7 from 2000
# boxes; ``bench/bench_nms_device.py``).
_SPARSE_MIN_IOU = {"cpu": 0.6, "cuda": 0.0}

# Relative and absolute widening of each box's reach along x (the bound is exact in real arithmetic;
# the IoU test itself decides).
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


def _suppressing_pairs(boxes: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of boxes whose IoU exceeds ``threshold`` (in ``(0, 1)``), each once: ``(a, b)`` indices."""
    x1, order = torch.sort(boxes[:, 0], stable=True)
    width = boxes[order, 2] - x1
    reach = x1 + (1.0 - threshold) * width * (1.0 + _REACH_SLACK[0]) + _REACH_SLACK[1]
    end = torch.searchsorted(x1, reach, right=True)
    position = torch.arange(len(x1), device=boxes.device)
    counts = torch.where(width > 0, (end - position - 1).clamp_min(0), torch.zeros_like(end))
    total = int(counts.sum())
    if total == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes.device)
        return empty, empty
    first = torch.repeat_interleave(position, counts, output_size=total)  # No second sync on CUDA.
    starts = torch.cumsum(counts, 0) - counts
    second = first + 1 + torch.arange(total, device=boxes.device) - starts.index_select(0, first)
    a, b = order.index_select(0, first), order.index_select(0, second)
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
    the device type at IoU thresholds of at least ``_SPARSE_MIN_IOU`` (on a CPU, the RPN's 0.7 but not the
    box head's 0.5), and torchvision's kernel on the others.  torchvision's own choice between one NMS with
    the categories offset apart and one NMS per category stays.  Process-wide for the block; the kept boxes
    are the same, so other users of that function in the process see the same result.
    """
    from torchvision.ops import boxes as box_ops

    torchvision_nms = box_ops.nms

    def dispatched(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        device = boxes.device.type
        if (
            device not in _SPARSE_MIN_BOXES
            or len(boxes) < _SPARSE_MIN_BOXES[device]
            or iou_threshold < _SPARSE_MIN_IOU[device]
        ):
            return torchvision_nms(boxes, scores, iou_threshold)
        return sparse_nms(boxes, scores, iou_threshold)

    box_ops.nms = dispatched
    try:
        yield
    finally:
        box_ops.nms = torchvision_nms
