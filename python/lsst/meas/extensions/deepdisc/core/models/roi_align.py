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

"""ROIAlign as two small matrix products per region: the box and mask poolers on a CPU.

torchvision's ROIAlign samples each output bin at ``grid_h x grid_w`` points and interpolates each point
bilinearly from four pixels, channel by channel.  The sample points of a region form a grid: every point
of output row ``p`` has the same ``y``, every point of column ``q`` the same ``x``, and the bilinear
weight of a pixel is the product of a weight along ``y`` and one along ``x``.  So, for region ``n``,

    out[n, c, p, q] = sum over k, j of  Wy[n, p, k] * F[c, y0 + k, x0 + j] * Wx[n, q, j]

where ``Wy`` (``Wx``) holds, for each output row (column), the summed interpolation weights of its
samples over the rows (columns) of a window starting at ``y0`` (``x0``) that covers them, divided by the
number of samples along that axis.  On the level its size selects, a region's window is a few feature
pixels wide (7 x 7 bins over 1.5-7 pixels for most sources), so gathering the window once and contracting
it with ``Wy`` and ``Wx`` reads and multiplies far fewer numbers than four taps per sample per channel.
The values are those of ``torchvision.ops.roi_align`` (the same samples, weights and out-of-map rules) up
to the order of the floating-point sums.

`roi_align_levels` pools regions from several levels of a feature pyramid straight into one output (what
detectron2's ``ROIPooler`` does with one ROIAlign call per level, a zero-filled output and a scatter);
`separable_poolers` makes a model's ``ROIPooler`` modules use it for a block of inference.  Regions are
pooled in groups of one window width (up to 8 pixels; powers of two beyond), so that one wide region does
not widen the others'.

One difference: window pixels that carry zero weight are still multiplied, so a non-finite feature value
next to a region (not only under its samples) makes its output non-finite.
"""

from __future__ import annotations

__all__ = ["roi_align_levels", "roi_align_separable", "separable_poolers"]

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

# Window values (or window-to-bin weights) per chunk of regions: bounds the work buffers (4 Mi floats).
_WINDOW_BUDGET = 1 << 22

# Widest window (pixels) contracted with the Kronecker product of the two axes' weights in one product;
# wider windows go one axis at a time.
_KRONECKER_SIDE = 8


def _axis_weights(
    start: torch.Tensor, length: torch.Tensor, bins: int, sampling_ratio: int, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Interpolation weights of every output bin along one axis.

    Parameters
    ----------
    start, length : `torch.Tensor`
        ``[N]`` region start and extent along the axis, in feature pixels (after scale and alignment).
    bins : `int`
        Output bins along the axis.
    sampling_ratio : `int`
        Samples per bin along the axis; ``<= 0``: ``ceil(length / bins)`` per region (adaptive).
    size : `torch.Tensor`
        ``[N]`` int64, the extent along the axis of each region's feature map.

    Returns
    -------
    first : `torch.Tensor`
        ``[N]`` int64, the first pixel of each region's window.
    extent : `torch.Tensor`
        ``[N]`` int64, the window's width (pixels from ``first`` that samples interpolate from).
    taps : `tuple`
        ``(offsets [N, bins, 2G], weights [N, bins, 2G])``: the window offset and weight of the two pixels
        each of the (up to ``G``) samples of a bin interpolates from, divided by the region's samples per
        bin along this axis (zero for samples off the map, as torchvision's).
    """
    dtype = start.dtype
    bin_size = length / bins
    if sampling_ratio > 0:
        grid = torch.full_like(start, sampling_ratio, dtype=torch.int64)
    else:
        grid = torch.ceil(length / bins).to(torch.int64)
    most = max(int(grid.max()), 1) if grid.numel() else 1
    step = torch.arange(bins, dtype=dtype, device=start.device)
    sample = torch.arange(most, dtype=dtype, device=start.device) + 0.5
    grid_f = grid.clamp_min(1).to(dtype)[:, None, None]
    size = size[:, None, None]
    # Sample positions as torchvision computes them: start + p * bin + (i + 0.5) * bin / grid.
    pos = (
        start[:, None, None]
        + step[None, :, None] * bin_size[:, None, None]
        + sample[None, None, :] * bin_size[:, None, None] / grid_f
    )
    present = torch.arange(most, device=start.device)[None, None, :] < grid[:, None, None]
    inside = present & (pos >= -1.0) & (pos <= size.to(dtype))
    pos = pos.clamp_min(0.0)
    low = pos.floor().to(torch.int64)
    at_end = low >= size - 1
    low = torch.where(at_end, (size - 1).expand_as(low), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
    scale = inside.to(dtype) / grid_f
    first = low.flatten(1).min(dim=1).values
    extent = high.flatten(1).max(dim=1).values - first + 1
    offsets = torch.cat([low, high], dim=2) - first[:, None, None]
    weights = torch.cat([(1.0 - frac) * scale, frac * scale], dim=2)
    return first, extent, (offsets, weights)


def _contract(
    window: torch.Tensor, y_matrix: torch.Tensor, x_matrix: torch.Tensor, out: torch.Tensor
) -> None:
    """``out[n, c, (p, q)] = sum over k, j of Wy[n, p, k] * window[n, (k, j), c] * Wx[n, q, j]``.

    Narrow windows: one product per region with the window-to-bin weights ``Wy (x) Wx``,
    ``[C, side**2] @ [side**2, bins]``, the output's own layout.  Wider ones: along ``y``, then ``x``
    (work linear in the side rather than quadratic).
    """
    n, side, out_h, out_w = y_matrix.shape[0], y_matrix.shape[2], y_matrix.shape[1], x_matrix.shape[1]
    channels = window.shape[1]
    if side <= _KRONECKER_SIDE:
        weights = (
            y_matrix.transpose(1, 2)[:, :, None, :, None] * x_matrix.transpose(1, 2)[:, None, :, None, :]
        )
        torch.bmm(
            window.view(n, side * side, channels).transpose(1, 2),
            weights.reshape(n, side * side, -1),
            out=out,
        )
        return
    # [n, out_h, side] @ [n, side, side * C] -> [n, out_h, side (x), C] -> [n, C * out_h, side].
    along_y = torch.bmm(y_matrix, window.view(n, side, side * channels))
    along_y = along_y.view(n, out_h, side, channels).permute(0, 3, 1, 2).reshape(n, channels * out_h, side)
    torch.bmm(along_y, x_matrix.transpose(1, 2).contiguous(), out=out.view(n, channels * out_h, out_w))


def _window_matrix(offsets: torch.Tensor, weights: torch.Tensor, width: int) -> torch.Tensor:
    """``[N, bins, width]``: the taps' weights summed into the window's pixels."""
    matrix = weights.new_zeros((offsets.shape[0], offsets.shape[1], width))
    return matrix.scatter_add_(2, offsets, weights)


def roi_align_levels(
    features: Sequence[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor | None,
    output_size: int | tuple[int, int],
    spatial_scales: Sequence[float],
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """ROIAlign of each region on its own level of a feature pyramid, computed as two matrix products.

    Parameters
    ----------
    features : sequence of `torch.Tensor`
        ``[B, C, H_l, W_l]`` feature maps, one per level (any memory layout; channels-last is read
        without a copy).
    rois : `torch.Tensor`
        ``[K, 5]`` regions: batch index, x1, y1, x2, y2.
    levels : `torch.Tensor` or `None`
        ``[K]`` the level of each region (`None`: all on the first).
    output_size : `int` or `tuple` [`int`, `int`]
        Output bins ``(height, width)``.
    spatial_scales : sequence of `float`
        Feature pixels per unit of the region coordinates, per level.
    sampling_ratio : `int`
        Samples per bin along each axis; ``<= 0``: adaptive, ``ceil(region extent / bins)``.
    aligned : `bool`
        Shift the regions by -0.5 pixel (detectron2's ``ROIAlignV2``); `False` also widens regions
        narrower than one pixel to one, as the legacy ROIAlign does.

    Returns
    -------
    pooled : `torch.Tensor`
        ``[K, C, output height, output width]``, contiguous; region ``k`` as
        ``torchvision.ops.roi_align(features[levels[k]], rois[k:k+1], ...)``.
    """
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be [K, 5] (batch index, x1, y1, x2, y2), got {tuple(rois.shape)}")
    if len(features) != len(spatial_scales) or not features:
        raise ValueError(f"{len(features)} feature maps for {len(spatial_scales)} spatial scales")
    if any(level.dim() != 4 for level in features):
        raise ValueError(f"feature maps must be [B, C, H, W], got {[tuple(f.shape) for f in features]}")
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    channels = features[0].shape[1]
    count = rois.shape[0]
    device, dtype = features[0].device, features[0].dtype
    pooled = torch.empty((count, channels, out_h, out_w), dtype=dtype, device=device)
    if count == 0:
        return pooled
    if levels is None:
        levels = torch.zeros(count, dtype=torch.int64, device=device)
    used = [int(level) for level in torch.unique(levels).tolist()]
    # One table of pixel rows [sum of B * H * W over the levels used, C]; free for one channels-last map.
    tables = [features[level].permute(0, 2, 3, 1).reshape(-1, channels) for level in used]
    pixels = tables[0] if len(tables) == 1 else torch.cat(tables)
    # Per level: the first row of its table in ``pixels`` (levels not used keep 0), its size and scale.
    bases = torch.zeros(len(features), dtype=torch.int64)
    bases[used] = torch.tensor([0] + [table.shape[0] for table in tables[:-1]]).cumsum(0)
    sizes = torch.tensor([tuple(level_map.shape[2:]) for level_map in features], dtype=torch.int64)
    scales = torch.tensor(list(spatial_scales), dtype=dtype)
    levels = levels.to(device=device, dtype=torch.int64)
    bases, sizes, scales = bases.to(device)[levels], sizes.to(device)[levels], scales.to(device)[levels]
    height, width = sizes[:, 0], sizes[:, 1]

    boxes = rois.to(dtype)
    shift = 0.5 if aligned else 0.0
    x_start = boxes[:, 1] * scales - shift
    y_start = boxes[:, 2] * scales - shift
    roi_w = (boxes[:, 3] * scales - shift) - x_start
    roi_h = (boxes[:, 4] * scales - shift) - y_start
    if not aligned:
        roi_w = roi_w.clamp_min(1.0)
        roi_h = roi_h.clamp_min(1.0)
    y_first, y_extent, (y_offsets, y_weights) = _axis_weights(y_start, roi_h, out_h, sampling_ratio, height)
    x_first, x_extent, (x_offsets, x_weights) = _axis_weights(x_start, roi_w, out_w, sampling_ratio, width)
    # The first pixel row of each region's window in the table.
    corner = bases + (boxes[:, 0].to(torch.int64) * height + y_first) * width + x_first
    # Regions grouped by window side: the exact extent up to _KRONECKER_SIDE, powers of two beyond.
    extent = torch.maximum(y_extent, x_extent)
    wide = torch.pow(2, torch.ceil(torch.log2(extent.to(torch.float64)))).to(torch.int64)
    group = torch.where(extent <= _KRONECKER_SIDE, extent, wide)
    sides, counts = torch.unique(group, return_counts=True)
    order = torch.argsort(group, stable=True)
    span = torch.arange(int(sides.max()), device=device)
    scratch: torch.Tensor | None = None
    done = 0
    for side, members in zip(sides.tolist(), counts.tolist()):
        per_chunk = max(1, _WINDOW_BUDGET // (side * side * max(channels, out_h * out_w)))
        for begin in range(done, done + members, per_chunk):
            rows = order[begin : min(begin + per_chunk, done + members)]
            n = len(rows)
            # Window pixels past a region's own map edge are read clamped to that edge (zero weight).
            dy = torch.minimum(span[None, :side], (height[rows] - 1 - y_first[rows])[:, None])
            dx = torch.minimum(span[None, :side], (width[rows] - 1 - x_first[rows])[:, None])
            index = corner[rows][:, None, None] + dy[:, :, None] * width[rows][:, None, None] + dx[:, None, :]
            window = torch.nn.functional.embedding(index.reshape(-1), pixels)
            y_matrix = _window_matrix(y_offsets[rows], y_weights[rows], side)
            x_matrix = _window_matrix(x_offsets[rows], x_weights[rows], side)
            if n == count:  # One group, one chunk: straight into the output.
                _contract(window, y_matrix, x_matrix, pooled.view(n, channels, -1))
                return pooled
            if scratch is None:
                scratch = pooled.new_empty(min(per_chunk, count) * channels * out_h * out_w)
            result = scratch[: n * channels * out_h * out_w].view(n, channels, out_h * out_w)
            _contract(window, y_matrix, x_matrix, result)
            pooled.index_copy_(0, rows, result.view(n, channels, out_h, out_w))
        done += members
    return pooled


def roi_align_separable(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """``torchvision.ops.roi_align(input, rois, ...)`` computed as two small matrix products per region.

    Same arguments and result as ``torchvision.ops.roi_align`` with regions given as one ``[K, 5]`` tensor
    (``batch index, x1, y1, x2, y2``), up to floating-point summation order; the one-level case of
    `roi_align_levels`.  Faster than torchvision's kernel on CPUs for regions a few feature pixels wide.
    """
    return roi_align_levels([input], rois, None, output_size, [spatial_scale], sampling_ratio, aligned)


def _pool_separably(pooler: Any, x: list[torch.Tensor], box_lists: list[Any]) -> torch.Tensor:
    """detectron2 ``ROIPooler.forward`` with its ROIAlign levels pooled by `roi_align_levels`."""
    from detectron2.modeling.poolers import assign_boxes_to_levels, convert_boxes_to_pooler_format

    if len(x) != len(pooler.level_poolers) or len(box_lists) != x[0].shape[0]:
        raise ValueError(
            f"{len(x)} feature maps of batch {x[0].shape[0]} for {len(pooler.level_poolers)} levels and "
            f"{len(box_lists)} box lists"
        )
    rois = convert_boxes_to_pooler_format(box_lists)
    levels = None
    if len(pooler.level_poolers) > 1:
        levels = assign_boxes_to_levels(
            box_lists, pooler.min_level, pooler.max_level, pooler.canonical_box_size, pooler.canonical_level
        )
    first = pooler.level_poolers[0]
    return roi_align_levels(
        x,
        rois,
        levels,
        tuple(first.output_size),
        [level.spatial_scale for level in pooler.level_poolers],
        first.sampling_ratio,
        first.aligned,
    )


def _separable(pooler: Any) -> bool:
    """Whether ``pooler`` is a detectron2 ``ROIPooler`` whose levels are all (non-rotated) ROIAlign."""
    from detectron2.layers import ROIAlign
    from detectron2.modeling.poolers import ROIPooler

    if not isinstance(pooler, ROIPooler) or len(pooler.level_poolers) == 0:
        return False
    first = pooler.level_poolers[0]
    return all(
        type(level) is ROIAlign
        and tuple(level.output_size) == tuple(first.output_size)
        and level.sampling_ratio == first.sampling_ratio
        and level.aligned == first.aligned
        for level in pooler.level_poolers
    )


@contextlib.contextmanager
def separable_poolers(model: torch.nn.Module) -> Iterator[int]:
    """Make the model's ROIAlign ``ROIPooler`` modules pool with `roi_align_levels` for a block.

    For inference on a CPU (no gradient is defined for the window indices, and torchvision's CUDA
    kernel is already fast).  Yields the number of poolers changed; restored afterwards (a ``forward`` set
    on a pooler itself before the block, such as a profiler's wrapper, comes back).
    """
    poolers = [module for module in model.modules() if _separable(module)]
    previous = [vars(pooler).get("forward") for pooler in poolers]
    for pooler in poolers:
        pooler.forward = _pool_separably.__get__(pooler)
    try:
        yield len(poolers)
    finally:
        for pooler, forward in zip(poolers, previous):
            if forward is None:
                del pooler.forward
            else:
                pooler.forward = forward
