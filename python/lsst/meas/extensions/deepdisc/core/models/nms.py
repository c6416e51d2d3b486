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

"""Greedy NMS over the pairs of boxes that can suppress each other: the RPN's NMS on a CPU.

torchvision's CPU NMS compares every kept box with every later one: ``kept x n`` overlaps, about
``3500 x 6000`` for one FPN level of a 512 px tile, most of them between boxes far apart (the proposals
of a survey tile are a few pixels wide and few suppress each other).  Greedy NMS only depends on the pairs
whose IoU exceeds the threshold ``t``, and such a pair is close: if ``IoU(a, b) > t`` and ``a`` starts
left of ``b``, then ``x1_b - x1_a <= (1 - t) * width_a`` (the overlap along ``x`` is at least ``t``
times either width).  `sparse_nms` sorts the boxes by ``x1``, takes for each box the boxes starting
within that reach, computes their IoU exactly as torchvision does (float32, ``inter / (area_a + area_b -
inter) > t``), and resolves the greedy order on those pairs in a few vectorised passes: a box is kept once
every higher-scored box overlapping it is suppressed, suppressed once one of them is kept.  The kept boxes
are torchvision's, in the same order (ties in score broken by index, as torchvision's stable sort does).

`batched_sparse_nms` is ``torchvision.ops.batched_nms`` with it; `sparse_proposal_nms` makes detectron2's
RPN (``find_top_rpn_proposals``) use it for a block of inference.
"""

from __future__ import annotations

__all__ = ["batched_sparse_nms", "sparse_nms", "sparse_proposal_nms"]

import contextlib
from collections.abc import Iterator

import torch

# Greedy passes before the remaining boxes are left to torchvision's NMS (a chain of boxes each
# suppressing the next is resolved one link per pass; survey proposals need a handful).
_MAX_PASSES = 64

# Box coordinates (4 per box) above which torchvision's CPU ``batched_nms`` runs one NMS per category
# (below: one NMS with the categories offset apart), mirrored by `batched_sparse_nms`.
_TORCHVISION_PER_CATEGORY_NUMEL = 4000

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
    first = torch.repeat_interleave(position, counts)
    starts = torch.cumsum(counts, 0) - counts
    second = first + 1 + torch.arange(total, device=boxes.device) - starts.index_select(0, first)
    a, b = order.index_select(0, first), order.index_select(0, second)
    columns = boxes.t().contiguous()
    areas = (columns[2] - columns[0]) * (columns[3] - columns[1])
    close = _overlap_ratio(columns, areas, a, b).double() > threshold
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
        or not bool(torch.isfinite(boxes).all())
        or not bool(torch.isfinite(scores).all())
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
        state[undecided & by_kept] = 2
        state[undecided & ~by_kept & (by_suppressed == indegree)] = 1
    else:
        if bool((state == 0).any()):
            return nms(boxes, scores, iou_threshold)
    return rank_order[state == 1]


def batched_sparse_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """``torchvision.ops.batched_nms`` (NMS within each category) with `sparse_nms` on large CPU sets.

    The result is torchvision's: its coordinate-offset path for small sets (and on other devices) is
    called as it is; large sets run `sparse_nms` per category and sort the kept boxes by decreasing score
    with the same expression as torchvision's per-category path.
    """
    from torchvision.ops import boxes as box_ops

    if boxes.device.type != "cpu" or boxes.numel() <= _TORCHVISION_PER_CATEGORY_NUMEL:
        return box_ops.batched_nms(boxes, scores, idxs, iou_threshold)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for category in torch.unique(idxs):
        members = torch.where(idxs == category)[0]
        keep_mask[members[sparse_nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def _float_batched_sparse_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """detectron2's ``batched_nms`` (torchvision's on float boxes) with `batched_sparse_nms`."""
    return batched_sparse_nms(boxes.float(), scores, idxs, iou_threshold)


@contextlib.contextmanager
def sparse_proposal_nms() -> Iterator[None]:
    """Make detectron2's RPN proposal selection use `batched_sparse_nms` for a block (restored after).

    Swaps the ``batched_nms`` that ``detectron2.modeling.proposal_generator.proposal_utils`` calls (the
    RPN's per-level NMS) for the block, process-wide; the result is the same, so other users of that
    function in the process see the same proposals.
    """
    from detectron2.modeling.proposal_generator import proposal_utils

    previous = proposal_utils.batched_nms
    proposal_utils.batched_nms = _float_batched_sparse_nms
    try:
        yield
    finally:
        proposal_utils.batched_nms = previous
