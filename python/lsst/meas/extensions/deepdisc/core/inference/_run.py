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

"""`run_tiled_inference`: batches of tiles through the model, on CPU workers or one GPU stream."""

from __future__ import annotations

__all__ = ["run_tiled_inference"]

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..memory import release_free_memory
from ..models.nms import sparse_batched_nms
from ..models.roi_align import separable_poolers
from ._detections import Detections
from ._staged import detect_then_segment, segments_selected
from ._stitching import (
    _extract_tile,
    _instances_of,
    _merge_duplicates,
    _owned_rows,
    _Progress,
    _resolve_num_classes,
    _TileResult,
)
from ._tiles import InferenceConfig, Tile, plan_tiles, select_device

# The package's logger (the tiled run's progress lines).
_LOG = logging.getLogger(__package__)

# Batches between two returns of the heap's free memory to the system (`..memory.release_free_memory`):
# often enough to keep the workers' arenas from growing by hundreds of MB over a patch, rarely enough
# to cost nothing measurable (every batch costs ~10% of the run, as freed pages fault back in).
_RELEASE_MEMORY_EVERY = 8


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
def _in_place_relus(model: Any) -> Iterator[None]:
    """Make the model's ``torch.nn.ReLU`` modules work in place for a block (restored afterwards).

    Under inference mode nothing keeps a ReLU's input, so rectifying in place gives the same values without
    allocating (and first touching) one more activation the size of the mask head's 28 x 28 maps for every
    detection.
    """
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU) and not m.inplace]
    for relu in relus:
        relu.inplace = True
    try:
        yield
    finally:
        for relu in relus:
            relu.inplace = False


def _float32(value: Any) -> Any:
    """Tensors (alone or the values of a dict) back in float32."""
    if isinstance(value, dict):
        return {key: _float32(item) for key, item in value.items()}
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _bfloat16_callables(model: Any) -> list[tuple[Any, str]]:
    """``(owner, method name)`` of the parts run in bfloat16: backbone, box heads, mask head's layers."""
    parts: list[tuple[Any, str]] = []
    if hasattr(model, "backbone"):
        parts.append((model.backbone, "forward"))
    heads = getattr(model, "roi_heads", None)
    box_heads = getattr(heads, "box_head", None)
    for head in box_heads if isinstance(box_heads, torch.nn.ModuleList) else [box_heads]:
        if isinstance(head, torch.nn.Module):
            parts.append((head, "forward"))
    mask_head = getattr(heads, "mask_head", None)
    if callable(getattr(mask_head, "layers", None)):
        parts.append((mask_head, "layers"))
    return parts


@contextlib.contextmanager
def _cpu_bfloat16(model: Any, enabled: bool) -> Iterator[None]:
    """Run the parts of `_bfloat16_callables` under CPU bfloat16 autocast for a block (float32 outputs).

    The instance attributes that wrap the methods are removed afterwards, so the model is left as it was.
    """
    parts = _bfloat16_callables(model) if enabled else []
    for owner, name in parts:
        method = getattr(owner, name)

        def in_bfloat16(*args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return _float32(_method(*args, **kwargs))

        setattr(owner, name, in_bfloat16)
    try:
        yield
    finally:
        for owner, name in parts:
            delattr(owner, name)


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
    use_bfloat16 = config.cpu_bfloat16 and device.type == "cpu"
    if config.cpu_bfloat16 and not use_bfloat16:
        log.info("bfloat16 autocast requested but ignored on device %s (CPU only)", device)
    raw = _resolve_raw(model, use_raw_masks)
    staged = raw and config.masks_of_reported_only and segments_selected(model)
    separable = config.separable_roi_align and device.type == "cpu" and isinstance(model, torch.nn.Module)
    sparse = (
        (device.type == "cpu" if config.sparse_nms is None else config.sparse_nms)
        and device.type in ("cpu", "cuda")
        and isinstance(model, torch.nn.Module)
    )
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
            if staged:
                outputs = detect_then_segment(
                    model,
                    inputs,
                    lambda index, instances: _owned_rows(
                        instances, batch[index], config, valid, batch_counts
                    ),
                    contiguous_features=not separable_pooling,
                )
            else:
                outputs = model.inference(inputs, do_postprocess=False) if raw else model(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            interval = (forward_start, time.perf_counter())
            if len(outputs) != len(inputs):
                raise ValueError(f"model returned {len(outputs)} outputs for {len(inputs)} input tiles")
            batch_results = [
                _extract_tile(
                    _instances_of(output),
                    tile,
                    config,
                    valid,
                    xy0,
                    raw,
                    batch_counts,
                    rows=np.arange(len(_instances_of(output))) if staged else None,
                )
                for tile, output in zip(batch, outputs)
            ]
        return batch_results, batch_counts, interval

    done = 0
    with (
        _channels_last(model, channels_last),
        _in_place_relus(model) if isinstance(model, torch.nn.Module) else contextlib.nullcontext(),
        _cpu_bfloat16(model, use_bfloat16),
        separable_poolers(model) if separable else contextlib.nullcontext(0) as separable_pooling,
        sparse_batched_nms() if sparse else contextlib.nullcontext(),
        _intra_op_threads(worker_threads),
    ):
        for batch, (batch_results, batch_counts, interval) in zip(
            batches, _in_order(run_batch, batches, workers)
        ):
            results.extend(batch_results)
            for name, value in batch_counts.items():
                counts[name] += value
            forward_intervals.append(interval)
            done += len(batch)
            progress.update(done)
            if len(forward_intervals) % _RELEASE_MEMORY_EVERY == 0:
                release_free_memory()
    release_free_memory()
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
        "cpu_bfloat16": bool(use_bfloat16),
        "raw_masks": bool(raw),
        "masks_of_reported_only": bool(staged),
        "separable_roi_align": bool(separable_pooling),
        "sparse_nms": bool(sparse),
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
