"""Tiled inference: tiling, stitching across tile borders, duplicate merging, batching and memory bounds.

Every test uses an *oracle* stand-in for a detectron2 model: it "detects" the connected components of
``image > threshold`` in each tile it is given, so the true footprints of the simulated sources are known
exactly and the engine's stitching can be checked pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from lsst.meas.extensions.deepdisc.core.footprints import mask_to_spans
from lsst.meas.extensions.deepdisc.core.inference import (
    Detections,
    InferenceConfig,
    paste_box_mask,
    plan_tiles,
    run_tiled_inference,
    select_device,
)
from lsst.meas.extensions.deepdisc.core.multiband import MultibandImage
from lsst.meas.extensions.deepdisc.core.scaling import ScaledCube, ScalingSpec

Instances = pytest.importorskip("detectron2.structures").Instances
Boxes = pytest.importorskip("detectron2.structures").Boxes

THRESHOLD = 0.5


class Oracle(torch.nn.Module):
    """Detects connected components of ``sum(image) > THRESHOLD`` with full-size masks.

    Parameters
    ----------
    jitter : `float`
        Shift every box centre by this many pixels toward the tile centre (``"inward"``) or away from it
        (``"outward"``), as a real model placing boxes slightly differently in two tiles would.
    with_probs : `bool`
        Also return ``class_probs``.
    """

    def __init__(self, jitter: float = 0.0, jitter_mode: str = "inward", with_probs: bool = False) -> None:
        super().__init__()
        self.jitter = jitter
        self.jitter_mode = jitter_mode
        self.with_probs = with_probs
        self.batch_sizes: list[int] = []
        self.tile_shapes: list[tuple[int, ...]] = []

    def _components(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        self.tile_shapes.append(tuple(image.shape))
        summed = image.cpu().numpy().sum(axis=0)
        labels, count = ndimage.label(summed > THRESHOLD)
        slices = ndimage.find_objects(labels)
        boxes = np.array(
            [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.float32
        ).reshape(-1, 4)
        index = np.arange(1, count + 1)
        peaks = np.array(
            [summed[s][labels[s] == label].max() for label, s in zip(index, slices)], dtype=np.float32
        )
        if self.jitter and count:
            height, width = summed.shape
            centre_x = 0.5 * (boxes[:, 0] + boxes[:, 2])
            centre_y = 0.5 * (boxes[:, 1] + boxes[:, 3])
            sign = 1.0 if self.jitter_mode == "inward" else -1.0
            shift_x = sign * self.jitter * np.where(centre_x < width / 2, 1.0, -1.0)
            shift_y = sign * self.jitter * np.where(centre_y < height / 2, 1.0, -1.0)
            boxes += np.stack([shift_x, shift_y, shift_x, shift_y], axis=1).astype(np.float32)
        return labels, boxes, peaks, index

    def _instances(self, image: torch.Tensor, masks: np.ndarray, boxes, peaks) -> Instances:
        count = boxes.shape[0]
        # Class 1 for the brighter half of the amplitude range, 0 otherwise: arbitrary but deterministic.
        classes = (peaks > 1.5).astype(np.int64)
        fields = {
            "pred_boxes": Boxes(torch.from_numpy(boxes)),
            "scores": torch.from_numpy(peaks / 10.0),
            "pred_classes": torch.from_numpy(classes),
            "pred_masks": torch.from_numpy(masks),
        }
        if self.with_probs:
            probs = np.stack([1.0 - 0.1 * classes - 0.45, 0.1 * classes + 0.45], axis=1).astype(np.float32)
            fields["class_probs"] = torch.from_numpy(probs.reshape(count, 2))
        return Instances(tuple(image.shape[1:]), **fields)

    def forward(self, inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        self.batch_sizes.append(len(inputs))
        outputs = []
        for item in inputs:
            image = item["image"]
            assert image.dtype == torch.float32 and (item["height"], item["width"]) == tuple(image.shape[1:])
            labels, boxes, peaks, index = self._components(image)
            masks = labels[None] == index[:, None, None]
            outputs.append({"instances": self._instances(image, masks, boxes, peaks)})
        return outputs


class RawOracle(Oracle):
    """Also offers detectron2's ``inference(inputs, do_postprocess=False)`` with box-relative masks."""

    mask_size = 28

    def inference(self, inputs: list[dict[str, Any]], detected_instances=None, do_postprocess: bool = True):
        if do_postprocess:
            return self.forward(inputs)
        self.batch_sizes.append(len(inputs))
        results = []
        m = self.mask_size
        for item in inputs:
            labels, boxes, peaks, index = self._components(item["image"])
            soft = np.zeros((boxes.shape[0], 1, m, m), dtype=np.float32)
            for k, (sy, sx) in enumerate(ndimage.find_objects(labels)):
                # Sample the component at the M x M cell centres of its (unjittered) box.
                label = index[k]
                rows = sy.start + ((np.arange(m) + 0.5) * (sy.stop - sy.start) / m).astype(int)
                cols = sx.start + ((np.arange(m) + 0.5) * (sx.stop - sx.start) / m).astype(int)
                soft[k, 0] = labels[np.ix_(rows, cols)] == label
            results.append(self._instances(item["image"], soft, boxes, peaks))
        return results


def _disc_scene(
    height: int, width: int, centres: list[tuple[int, int]], radius: int = 6, rng_seed: int = 0
) -> np.ndarray:
    """One-band image with a disc of distinct amplitude (1.1, 1.2, ...) per centre ``(x, y)``."""
    rng = np.random.default_rng(rng_seed)
    image = np.zeros((1, height, width), dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    for k, (cx, cy) in enumerate(centres):
        image[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.1 + 0.1 * (k % 9) + 0.001 * k
    image += rng.uniform(0.0, 0.2, size=image.shape).astype(np.float32)  # Noise below the threshold.
    return image


def _true_footprints(image: np.ndarray, xy0: tuple[int, int]) -> list[tuple[int, ...]]:
    """Spans of the connected components of the whole patch (the ground truth)."""
    labels, _ = ndimage.label(image.sum(axis=0) > THRESHOLD)
    footprints = []
    for label, (sy, sx) in enumerate(ndimage.find_objects(labels), start=1):
        origin = (xy0[0] + sx.start, xy0[1] + sy.start)
        footprints.append(tuple(mask_to_spans(labels[sy, sx] == label, origin).ravel()))
    return sorted(footprints)


def _found(detections: Detections) -> list[tuple[int, ...]]:
    return sorted(tuple(f.ravel()) for f in detections.footprints)


def _boundary_scene(tile_size: int = 128, overlap: int = 32) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Sources centred on interior boundaries, on interior corners, at the patch edges and corners."""
    height, width = 300, 350
    tiles = plan_tiles(height, width, tile_size, overlap)
    cuts_x = sorted({t.inner_x0 for t in tiles if t.inner_x0 > 0})
    cuts_y = sorted({t.inner_y0 for t in tiles if t.inner_y0 > 0})
    centres = []
    for cx in cuts_x:  # Straddling vertical borders, and exactly on the corners of four interiors.
        centres += [(cx, 40), (cx - 1, 170)] + [(cx, cy) for cy in cuts_y]
    for cy in cuts_y:  # Straddling horizontal borders.
        centres += [(60, cy), (cuts_x[0] + 50, cy - 1)]
    # Cut by the patch edges and corners (partly outside the image).
    centres += [(2, 70), (width - 2, 230), (180, 1), (300, height - 3), (0, 0), (width - 1, height - 1)]
    return _disc_scene(height, width, centres), centres


XY0 = (1000, 2000)


@given(
    height=st.integers(1, 500),
    width=st.integers(1, 500),
    tile_size=st.integers(4, 200),
    overlap_fraction=st.floats(0.0, 0.95),
)
@settings(max_examples=100, deadline=None)
def test_tile_plans_cover_the_patch_and_interiors_partition_it(
    height: int, width: int, tile_size: int, overlap_fraction: float
) -> None:
    overlap = int(overlap_fraction * (tile_size - 1))
    tiles = plan_tiles(height, width, tile_size, overlap)
    cover = np.zeros((height, width), dtype=np.int32)
    interior = np.zeros((height, width), dtype=np.int32)
    for tile in tiles:
        assert 0 <= tile.y0 < tile.y1 <= height and 0 <= tile.x0 < tile.x1 <= width
        # Full-size tiles whenever the patch is at least a tile long in that direction.
        assert tile.height == min(tile_size, height) and tile.width == min(tile_size, width)
        assert tile.y0 <= tile.inner_y0 < tile.inner_y1 <= tile.y1
        assert tile.x0 <= tile.inner_x0 < tile.inner_x1 <= tile.x1
        # Interior sides shared with a neighbour keep at least half the overlap from the tile edge.
        if tile.inner_x0 > 0:
            assert tile.inner_x0 - tile.x0 >= overlap // 2
        if tile.inner_x1 < width:
            assert tile.x1 - tile.inner_x1 >= overlap // 2
        if tile.inner_y0 > 0:
            assert tile.inner_y0 - tile.y0 >= overlap // 2
        if tile.inner_y1 < height:
            assert tile.y1 - tile.inner_y1 >= overlap // 2
        cover[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
        interior[tile.inner_y0 : tile.inner_y1, tile.inner_x0 : tile.inner_x1] += 1
    assert cover.min() >= 1
    assert np.all(interior == 1)
    assert [t.index for t in tiles] == list(range(len(tiles)))


def test_tile_plan_shifts_the_last_tile_inward_and_rejects_bad_parameters() -> None:
    tiles = plan_tiles(100, 350, 128, 32)
    assert [(t.x0, t.x1) for t in tiles] == [(0, 128), (96, 224), (192, 320), (222, 350)]
    assert [(t.inner_x0, t.inner_x1) for t in tiles] == [(0, 112), (112, 208), (208, 271), (271, 350)]
    assert {(t.y0, t.y1) for t in tiles} == {(0, 100)}  # Smaller than a tile: one unpadded tile.
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 64, 64)
    with pytest.raises(ValueError, match="empty"):
        plan_tiles(0, 100, 64, 8)
    with pytest.raises(ValueError, match="stitch_margin"):
        InferenceConfig(tile_size=64, overlap=8, stitch_margin=4)


def test_border_straddling_and_edge_sources_are_reported_once_with_full_footprints() -> None:
    image, centres = _boundary_scene()
    oracle = Oracle()
    config = InferenceConfig(tile_size=128, overlap=32, batch_size=4, stitch_margin=0)  # exact partition
    detections = run_tiled_inference(oracle, image, xy0=XY0, config=config, use_raw_masks=False)
    truth = _true_footprints(image, XY0)
    assert len(truth) == len(centres)  # The scene's sources do not touch each other.
    assert _found(detections) == truth
    assert not detections.merged_duplicate.any()
    assert detections.stats["tiles"] == 12 and detections.stats["n_merged"] == 0
    # Straddling sources were seen by several tiles; all but one copy were dropped by ownership.
    assert detections.stats["n_outside_interior"] > 0
    # Boxes are in parent coordinates and enclose their footprints.
    for box, spans in zip(detections.boxes, detections.footprints):
        assert box[0] <= spans[:, 1].min() and spans[:, 2].max() + 1 <= box[2]
        assert box[1] <= spans[:, 0].min() and spans[:, 0].max() + 1 <= box[3]
    # No class probabilities from the model: one-hot of the class ids over the model's 2 classes.
    np.testing.assert_array_equal(detections.class_probs, np.eye(2)[detections.class_ids])


def test_box_relative_masks_give_the_same_result_through_the_inference_method() -> None:
    # Rectangles: a box-relative mask of ones pastes back exactly onto the box.
    image = np.zeros((1, 200, 230), dtype=np.float32)
    rng = np.random.default_rng(3)
    for k in range(25):
        y, x = rng.integers(0, 190), rng.integers(0, 215)
        image[0, y : y + rng.integers(3, 10), x : x + rng.integers(3, 14)] = 1.0 + 0.01 * k
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2)
    raw_oracle = RawOracle()
    auto = run_tiled_inference(raw_oracle, image, xy0=XY0, config=config)
    assert auto.stats["raw_masks"] is True
    full = run_tiled_inference(RawOracle(), image, xy0=XY0, config=config, use_raw_masks=False)
    assert full.stats["raw_masks"] is False
    assert _found(auto) == _found(full) == _true_footprints(image, XY0)
    np.testing.assert_array_equal(auto.scores, full.scores)
    with pytest.raises(ValueError, match="inference"):
        run_tiled_inference(Oracle(), image, config=config, use_raw_masks=True)


def test_box_relative_discs_are_close_to_the_truth() -> None:
    image, _ = _boundary_scene()
    config = InferenceConfig(tile_size=128, overlap=32, batch_size=3)
    detections = run_tiled_inference(RawOracle(), image, config=config)
    truth = _true_footprints(image, (0, 0))
    assert len(detections) == len(truth)
    for spans in detections.footprints:
        # Resampling a 28x28 mask back onto a ~13 pixel disc is exact up to a few rim pixels.
        best = max(truth, key=lambda t: _iou(np.array(t).reshape(-1, 3), spans))
        assert _iou(np.array(best).reshape(-1, 3), spans) > 0.8


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    from lsst.meas.extensions.deepdisc.core.footprints import Footprint

    return Footprint(a).iou(Footprint(b))


def test_paste_box_mask_matches_detectron2() -> None:
    mask_ops = pytest.importorskip("detectron2.layers.mask_ops")
    rng = np.random.default_rng(7)
    height, width = 60, 70
    count = 40
    x0 = rng.uniform(-5, width - 5, count)
    y0 = rng.uniform(-5, height - 5, count)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.5, 40, count), y0 + rng.uniform(0.5, 40, count)], axis=1)
    soft = rng.uniform(0, 1, (count, 1, 14, 14)).astype(np.float32)
    soft[:5] = 1.0  # Saturated masks probe the box edges.
    expected = mask_ops.paste_masks_in_image(
        torch.from_numpy(soft[:, 0]),
        torch.from_numpy(boxes.astype(np.float32)),
        (height, width),
        threshold=0.5,
    ).numpy()
    for k in range(count):
        crop, (col0, row0) = paste_box_mask(soft[k, 0], boxes[k].astype(np.float32), height, width)
        mine = np.zeros((height, width), dtype=bool)
        mine[row0 : row0 + crop.shape[0], col0 : col0 + crop.shape[1]] = crop
        np.testing.assert_array_equal(mine, expected[k], err_msg=f"box {k}: {boxes[k]}")
    assert expected.any()


@pytest.mark.parametrize(("chunk", "pixels"), [(64, 1 << 20), (1, 1 << 20), (5, 2000)])
def test_batched_paste_equals_paste_box_mask(
    monkeypatch: pytest.MonkeyPatch, chunk: int, pixels: int
) -> None:
    """The tile's masks pasted in chunks give the spans of `paste_box_mask` one by one, in input order."""
    from lsst.meas.extensions.deepdisc.core.inference import _stitching

    monkeypatch.setattr(_stitching, "_PASTE_CHUNK", chunk)
    monkeypatch.setattr(_stitching, "_PASTE_PIXELS", pixels)
    rng = np.random.default_rng(11)
    tile = plan_tiles(200, 240, 256, 0)[0]
    count = 300
    centre = rng.uniform(-15, 250, (count, 2))
    size = rng.lognormal(2.0, 0.9, (count, 2))
    size[:6] *= -1  # Degenerate boxes paste nothing.
    size[6:9] = 180.0  # Windows larger than a small chunk's pixel budget.
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    yy, xx = np.mgrid[0:28, 0:28]
    radius = np.hypot(
        yy - 13.5 + rng.normal(0, 4, (count, 1, 1)), xx - 13.5 + rng.normal(0, 4, (count, 1, 1))
    )
    soft = np.exp(-(radius**2) / rng.uniform(10, 300, (count, 1, 1))) + rng.normal(0, 0.15, (count, 28, 28))
    masks = torch.from_numpy(soft[:, np.newaxis].astype(np.float32))
    origin = (1000, 2000)
    spans = _stitching._box_masks_to_spans(masks, boxes, tile, 0.5, origin)
    assert len(spans) == count
    for k in range(count):
        crop, (col0, row0) = paste_box_mask(masks[k, 0].numpy(), boxes[k], tile.height, tile.width)
        expected = (
            mask_to_spans(crop, (origin[0] + col0, origin[1] + row0)) if crop.size else np.zeros((0, 3))
        )
        assert spans[k].dtype == np.int32
        np.testing.assert_array_equal(spans[k].reshape(-1, 3), expected, err_msg=f"box {k}: {boxes[k]}")
    assert sum(s.shape[0] == 0 for s in spans) >= 6 and sum(s.shape[0] > 0 for s in spans) > count // 2


@pytest.mark.parametrize("raw", [False, True])
def test_batch_size_does_not_change_the_result(raw: bool) -> None:
    image, _ = _boundary_scene()
    results = []
    for batch_size in (1, 3):
        oracle = RawOracle(with_probs=True)
        config = InferenceConfig(tile_size=128, overlap=32, batch_size=batch_size)
        results.append(run_tiled_inference(oracle, image, xy0=XY0, config=config, use_raw_masks=raw))
        assert max(oracle.batch_sizes) == batch_size
    one, three = results
    assert len(one) == len(three) > 0
    for name in ("boxes", "scores", "class_ids", "class_probs", "tile_index", "merged_duplicate"):
        np.testing.assert_array_equal(getattr(one, name), getattr(three, name), err_msg=name)
    assert all(np.array_equal(a, b) for a, b in zip(one.footprints, three.footprints))
    assert one.stats["batches"] == 12 and three.stats["batches"] == 4
    # The model's class probabilities are passed through.
    assert not np.array_equal(one.class_probs, np.eye(2)[one.class_ids])


class SlowRawOracle(RawOracle):
    """A `RawOracle` whose forward pass takes a while, recording how many run at once."""

    def __init__(self) -> None:
        super().__init__(with_probs=True)
        self.running = 0
        self.most_running = 0
        self.threads: set[int] = set()

    def _timed(self, call: Any) -> Any:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.threads.add(threading.get_ident())
        time.sleep(0.02)  # Long enough for the other worker to start its own call.
        try:
            return call()
        finally:
            self.running -= 1

    def forward(self, inputs):
        return self._timed(lambda: super(SlowRawOracle, self).forward(inputs))

    def inference(self, inputs, detected_instances=None, do_postprocess: bool = True):
        return self._timed(
            lambda: super(SlowRawOracle, self).inference(inputs, detected_instances, do_postprocess)
        )


@pytest.mark.parametrize("raw", [False, True])
def test_concurrent_cpu_workers_give_the_same_detections_in_bounded_batches(raw: bool) -> None:
    image, _ = _boundary_scene()
    config = InferenceConfig(tile_size=128, overlap=32, batch_size=4, device="cpu")
    serial = run_tiled_inference(
        RawOracle(with_probs=True),
        image,
        xy0=XY0,
        config=dataclasses.replace(config, workers=1),
        use_raw_masks=raw,
    )
    threads_before = torch.get_num_threads()
    oracle = SlowRawOracle()
    parallel = run_tiled_inference(
        oracle, image, xy0=XY0, config=dataclasses.replace(config, workers=2), use_raw_masks=raw
    )
    assert torch.get_num_threads() == threads_before  # Each worker's thread share is undone.
    assert parallel.stats["workers"] == 2 and parallel.stats["tiles_per_call"] == 2
    assert serial.stats["workers"] == 1 and serial.stats["tiles_per_call"] == 4
    # Two calls overlapped, on two threads, and never more than the batch was in flight.
    assert oracle.most_running == 2 and len(oracle.threads) == 2 and max(oracle.batch_sizes) == 2
    assert parallel.stats["seconds_forward"] <= parallel.stats["seconds_total"]
    assert len(serial) == len(parallel) > 0
    for name in ("boxes", "scores", "class_ids", "class_probs", "tile_index", "merged_duplicate"):
        np.testing.assert_array_equal(getattr(serial, name), getattr(parallel, name), err_msg=name)
    assert all(np.array_equal(a, b) for a, b in zip(serial.footprints, parallel.footprints))
    assert {k: v for k, v in serial.stats.items() if k.startswith("n_")} == {
        k: v for k, v in parallel.stats.items() if k.startswith("n_")
    }


def test_a_failing_worker_stops_the_run_with_its_error() -> None:
    class Failing(RawOracle):
        def inference(self, inputs, detected_instances=None, do_postprocess: bool = True):
            if len(self.batch_sizes) >= 2:
                raise RuntimeError("tile exploded")
            return super().inference(inputs, detected_instances, do_postprocess)

    image, _ = _boundary_scene()
    config = InferenceConfig(tile_size=128, overlap=32, batch_size=2, workers=2, device="cpu")
    with pytest.raises(RuntimeError, match="tile exploded"):
        run_tiled_inference(Failing(), image, config=config)


def test_duplicates_from_jittered_centres_are_merged() -> None:
    image, centres = _boundary_scene()
    truth = _true_footprints(image, XY0)
    config = InferenceConfig(tile_size=128, overlap=32, batch_size=4)
    # Each tile pulls box centres 2 pixels toward its own middle: a source on an interior boundary is then
    # owned by both tiles (and by four at an interior corner); merging must leave one copy.
    detections = run_tiled_inference(Oracle(jitter=2.0), image, xy0=XY0, config=config)
    assert _found(detections) == truth
    assert detections.stats["n_merged"] > 0
    assert detections.merged_duplicate.sum() > 0
    # The merged copies are exactly the straddling sources, the others were seen by one tile only.
    tiles = plan_tiles(image.shape[1], image.shape[2], 128, 32)
    cuts_x = {t.inner_x0 for t in tiles if t.inner_x0 > 0}
    cuts_y = {t.inner_y0 for t in tiles if t.inner_y0 > 0}
    near_cut = [
        any(abs(cx + 0.5 - c) <= 2.5 for c in cuts_x) or any(abs(cy + 0.5 - c) <= 2.5 for c in cuts_y)
        for cx, cy in centres
    ]
    assert int(detections.merged_duplicate.sum()) == sum(near_cut)
    # Without merging each of those sources would appear more than once.
    unmerged = detections.stats["n_merged"] + len(detections)
    assert unmerged > len(truth)


def test_stitch_margin_recovers_sources_whose_copies_jitter_apart() -> None:
    image, _ = _boundary_scene()
    truth = _true_footprints(image, XY0)
    oracle = Oracle(jitter=2.0, jitter_mode="outward")
    exact_partition = InferenceConfig(tile_size=128, overlap=32, stitch_margin=0)
    exact = run_tiled_inference(oracle, image, xy0=XY0, config=exact_partition)
    # Copies pushed out of every interior are lost with the exact partition ...
    assert len(exact) < len(truth)
    assert set(_found(exact)) < set(truth)
    # ... and recovered, exactly once, with a margin wider than the jitter.
    config = InferenceConfig(tile_size=128, overlap=32, stitch_margin=3)
    margin = run_tiled_inference(oracle, image, xy0=XY0, config=config)
    assert _found(margin) == truth
    assert margin.merged_duplicate.sum() > 0


def test_oracle_never_gets_more_than_a_batch_and_no_patch_sized_array_is_allocated() -> None:
    height = width = 3000
    rng = np.random.default_rng(11)
    centres = [(int(x), int(y)) for x, y in rng.uniform(10, 2990, size=(400, 2))]
    image = np.zeros((1, height, width), dtype=np.float32)
    for k, (cx, cy) in enumerate(centres):
        image[0, cy - 3 : cy + 4, cx - 3 : cx + 4] = 1.0 + 0.001 * k
    valid = np.ones((height, width), dtype=bool)
    oracle = Oracle()
    config = InferenceConfig(tile_size=256, overlap=32, batch_size=2)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        detections = run_tiled_inference(oracle, image, config=config, valid=valid, use_raw_masks=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(detections) == len(_true_footprints(image, (0, 0)))
    assert max(oracle.batch_sizes) == 2
    assert all(shape == (1, 256, 256) for shape in oracle.tile_shapes)
    # A single patch-sized boolean mask would be 9 MB; the peak (engine and oracle together) is bounded by
    # a batch of tiles.
    assert peak < height * width // 2, f"peak traced allocation {peak / 1e6:.1f} MB"


def test_a_cube_scaled_tile_by_tile_gives_the_same_detections_without_the_scaled_patch() -> None:
    image, _ = _boundary_scene()
    patch = MultibandImage(bands=("r",), image=image)
    spec = ScalingSpec("linear", invalid_planes=())
    config = InferenceConfig(tile_size=128, overlap=32, workers=2)
    eager = run_tiled_inference(RawOracle(), spec.apply(patch)[0], xy0=XY0, config=config)
    lazy_cube = spec.scaled_cube(patch)
    assert isinstance(lazy_cube, ScaledCube)
    lazy = run_tiled_inference(RawOracle(), lazy_cube, xy0=XY0, config=config)
    assert len(lazy) == len(eager) > 0 and _found(lazy) == _found(eager)
    np.testing.assert_array_equal(lazy.boxes, eager.boxes)
    # On a large patch, the tiles are scaled as they are read: far less than the scaled patch is allocated.
    big = np.zeros((1, 3000, 3000), dtype=np.float32)
    big[0, 1000:1007, 2000:2007] = 1.0
    lazy_cube = spec.scaled_cube(MultibandImage(bands=("r",), image=big))
    tracemalloc.start()
    try:
        found = run_tiled_inference(Oracle(), lazy_cube, config=InferenceConfig(tile_size=256, overlap=32))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == 1
    assert peak < big.nbytes // 4, f"peak traced allocation {peak / 1e6:.1f} MB"


def test_valid_mask_threshold_and_top_k() -> None:
    image, centres = _boundary_scene()
    config = InferenceConfig(tile_size=128, overlap=32, stitch_margin=0)
    everything = run_tiled_inference(Oracle(), image, config=config)
    valid = np.ones(image.shape[1:], dtype=bool)
    valid[:, :150] = False  # Sources centred in the left part are dropped.
    kept = run_tiled_inference(Oracle(), image, config=config, valid=valid)
    centre_x = kept.centers[:, 0]
    assert np.all(centre_x >= 150)
    assert len(kept) == int(np.sum(everything.centers[:, 0] >= 150)) > 0
    assert kept.stats["n_invalid_centre"] == len(everything) - len(kept)
    # Extra score cut (scores are peak / 10: keep the bright half).
    cut = run_tiled_inference(Oracle(), image, config=dataclasses.replace(config, score_threshold=0.15))
    assert len(cut) == int(np.sum(everything.scores >= 0.15)) and np.all(cut.scores >= 0.15)
    # At most one detection per tile, the highest-scoring one of the tile.
    top = run_tiled_inference(Oracle(), image, config=dataclasses.replace(config, max_detections_per_tile=1))
    assert np.bincount(top.tile_index).max() == 1
    with pytest.raises(ValueError, match="valid"):
        run_tiled_inference(Oracle(), image, config=config, valid=valid[:, :10])


def test_bad_input_and_model_output_raise_clear_errors() -> None:
    config = InferenceConfig(tile_size=64, overlap=16)
    image = np.zeros((1, 100, 100), dtype=np.float32)
    image[0, 70, 80] = np.nan
    with pytest.raises(ValueError, match="non-finite pixels in tile"):
        run_tiled_inference(Oracle(), image, config=config)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        run_tiled_inference(Oracle(), np.zeros((1, 1, 10, 10)), config=config)

    class NoMasks(Oracle):
        def forward(self, inputs):
            return [{"instances": Instances((10, 10), pred_boxes=Boxes(torch.zeros(0, 4)))} for _ in inputs]

    with pytest.raises(ValueError, match="scores"):
        run_tiled_inference(NoMasks(), np.zeros((1, 50, 50), dtype=np.float32), config=config)
    with pytest.raises(RuntimeError if not torch.cuda.is_available() else ValueError):
        select_device("cuda" if not torch.cuda.is_available() else "cuda:99")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("abacus")


def test_empty_patch_devices_half_and_progress_logging(caplog: pytest.LogCaptureFixture) -> None:
    image = np.zeros((3, 150, 170), dtype=np.float32)
    config = InferenceConfig(tile_size=64, overlap=16, half=True, device="cpu", progress_interval_s=1e-9)
    logger = logging.getLogger("test.inference")
    with caplog.at_level(logging.INFO, logger="test.inference"):
        detections = run_tiled_inference(Oracle(), image, config=config, log=logger, num_classes=3)
    assert len(detections) == 0 and detections.num_classes == 3
    assert detections.stats["device"] == "cpu" and detections.stats["half"] is False
    assert detections.stats["seconds_forward"] <= detections.stats["seconds_total"]
    assert detections.stats["mpix_per_s"] > 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("ignored" in m for m in messages)  # fp16 is CUDA only.
    progress = [m for m in messages if "tiles (" in m]
    assert len(progress) == detections.stats["batches"]  # Interval ~0 s: one line per batch.
    assert (
        "ETA" in progress[0] and "MPix/s" in progress[0] and progress[-1].startswith("Tiled inference: 12/12")
    )
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_detections_select_and_empty() -> None:
    empty = Detections.empty(4)
    assert len(empty) == 0 and empty.class_probs.shape == (0, 4)
    image, _ = _boundary_scene()
    detections = run_tiled_inference(Oracle(), image, config=InferenceConfig(tile_size=128, overlap=32))
    subset = detections.select(detections.scores > 0.15)
    assert len(subset) == int(np.sum(detections.scores > 0.15))
    assert all(
        np.array_equal(f, detections.footprints[i])
        for i, f in zip(np.flatnonzero(detections.scores > 0.15), subset.footprints)
    )
    assert subset.stats == detections.stats
    with pytest.raises(ValueError, match="mismatched"):
        Detections(np.zeros((2, 4)), np.zeros(1), np.zeros(2), np.zeros((2, 1)), [], np.zeros(2), np.zeros(2))


def test_a_real_detectron2_mask_rcnn_runs_through_both_mask_paths() -> None:
    config_module = pytest.importorskip("detectron2.config")
    modeling = pytest.importorskip("detectron2.modeling")
    cfg = config_module.get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # Random weights: keep whatever comes out.
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 30
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    torch.manual_seed(0)
    model = modeling.build_model(cfg)
    image = np.random.default_rng(0).normal(size=(3, 150, 140)).astype(np.float32)
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2)
    raw = run_tiled_inference(model, image, xy0=XY0, config=config)
    full = run_tiled_inference(model, image, xy0=XY0, config=config, use_raw_masks=False)
    assert raw.stats["raw_masks"] and not full.stats["raw_masks"]
    assert len(raw) > 0 and raw.num_classes == 2
    # Pasting the 14x14 box-relative masks one box at a time reproduces detectron2's own post-processing.
    assert _found(raw) == _found(full)
    np.testing.assert_allclose(raw.boxes, full.boxes, rtol=0, atol=1e-3)
    # Channels-last weights (the default) change the sums' order only; the model's layout is restored.
    assert raw.stats["channels_last"]
    plain = run_tiled_inference(
        model, image, xy0=XY0, config=dataclasses.replace(config, channels_last=False)
    )
    assert not plain.stats["channels_last"] and len(plain) == len(raw)
    np.testing.assert_allclose(plain.boxes, raw.boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(plain.scores, raw.scores, rtol=0, atol=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_fp16_autocast_matches_cpu() -> None:
    image, _ = _boundary_scene()
    cpu = run_tiled_inference(
        Oracle(), image, config=InferenceConfig(tile_size=128, overlap=32, device="cpu")
    )
    config = InferenceConfig(tile_size=128, overlap=32, device="cuda", half=True)
    for raw in (False, True):
        gpu = run_tiled_inference(RawOracle(), image, config=config, use_raw_masks=raw)
        assert gpu.stats["device"].startswith("cuda") and gpu.stats["half"] is True
        assert _found(gpu) == _found(cpu) if not raw else len(gpu) == len(cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_come_from_pinned_memory_in_one_call_and_match_cpu() -> None:
    image, _ = _boundary_scene()
    config = InferenceConfig(tile_size=128, overlap=32, device="cpu", batch_size=5)
    cpu = run_tiled_inference(RawOracle(), image, config=config)
    oracle = RawOracle()
    gpu = run_tiled_inference(oracle, image, config=dataclasses.replace(config, device="cuda", workers=3))
    # One call per batch on a GPU (workers are a CPU setting), results as on the CPU.
    assert gpu.stats["workers"] == 1 and gpu.stats["tiles_per_call"] == 5 and max(oracle.batch_sizes) == 5
    assert _found(gpu) == _found(cpu)
    np.testing.assert_allclose(gpu.boxes, cpu.boxes, rtol=0, atol=1e-4)


def test_coarse_detections_join_and_duplicates_of_one_class_keep_the_higher_score() -> None:
    from lsst.meas.extensions.deepdisc.core.inference import add_coarse_detections

    def square(x0: int, y0: int, size: int) -> np.ndarray:
        return np.array([[y, x0, x0 + size - 1] for y in range(y0, y0 + size)], dtype=np.int32)

    def detections(rows: list[tuple[int, float, int, int, int]]) -> Detections:
        return Detections(
            boxes=np.array([[x, y, x + s, y + s] for _, _, x, y, s in rows], dtype=float),
            scores=np.array([score for _, score, *_ in rows]),
            class_ids=np.array([cls for cls, *_ in rows]),
            class_probs=np.eye(3)[[cls for cls, *_ in rows]],
            footprints=[square(x, y, s) for _, _, x, y, s in rows],
            tile_index=np.zeros(len(rows)),
            merged_duplicate=np.zeros(len(rows), dtype=bool),
        )

    fine = detections([(0, 0.9, 0, 0, 10), (2, 0.6, 100, 100, 40), (2, 0.9, 300, 300, 40)])
    coarse = detections(
        [(2, 0.8, 100, 100, 40), (2, 0.5, 300, 300, 40), (1, 0.7, 0, 0, 10), (2, 0.7, 500, 0, 8)]
    )
    merged = add_coarse_detections(fine, coarse, merge_iou=0.5)
    # The fine ghost at 100 lost to the coarse one; the coarse one at 300 lost to the fine one; a coarse
    # detection of another class at the same place as a source stays (classes are not merged).
    assert [(int(c), round(float(s), 3)) for c, s in zip(merged.class_ids, merged.scores)] == [
        (0, 0.9),
        (2, 0.9),
        (2, 0.8),
        (1, 0.7),
        (2, 0.7),
    ]
    assert merged.tile_index.tolist() == [0, 0, -1, -1, -1]
    assert merged.merged_duplicate.tolist() == [False, True, True, False, False]
    assert add_coarse_detections(fine, Detections.empty(3), 0.5) is fine


def _random_compact_model(proposals: int, detections: int) -> torch.nn.Module:
    """A g r i compact R18-FPN with seeded random weights, ``proposals`` and ``detections`` per tile."""
    from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model_from_spec

    spec = ModelSpec(
        "compact-R18-FPN",
        ("g", "r", "i"),
        pixel_std=(100.0,) * 3,  # Random weights in a regime with real boxes.
        overrides={"MODEL.RPN.POST_NMS_TOPK_TEST": proposals, "TEST.DETECTIONS_PER_IMAGE": detections},
    )
    torch.manual_seed(0)
    return build_model_from_spec(spec)


def test_cpu_bfloat16_runs_backbone_and_head_layers_in_bfloat16_and_restores_the_model() -> None:
    model = _random_compact_model(proposals=30, detections=10)
    seen: dict[str, set[torch.dtype]] = {}

    def record(name: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            seen.setdefault(name, set()).add(output.dtype)

        return hook

    model.backbone.bottom_up.stem.conv1.register_forward_hook(record("backbone conv"))
    model.roi_heads.box_head.fc1.register_forward_hook(record("box head fc"))
    model.roi_heads.mask_head.mask_fcn1.register_forward_hook(record("mask head conv"))
    model.proposal_generator.rpn_head.conv.register_forward_hook(record("rpn conv"))
    model.roi_heads.box_predictor.cls_score.register_forward_hook(record("box predictor"))
    image = np.random.default_rng(0).normal(size=(3, 150, 140)).astype(np.float32)
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2, cpu_bfloat16=True, device="cpu")
    detections = run_tiled_inference(model, image, xy0=XY0, config=config)
    assert detections.stats["cpu_bfloat16"] is True and len(detections) > 0
    assert seen["backbone conv"] == seen["box head fc"] == seen["mask head conv"] == {torch.bfloat16}
    assert seen["rpn conv"] == seen["box predictor"] == {torch.float32}  # Proposals and scores: float32.
    # The wrappers are gone: a plain run is float32 throughout.
    assert not any("forward" in vars(m) or "layers" in vars(m) for m in model.modules())
    seen.clear()
    run_tiled_inference(model, image, xy0=XY0, config=dataclasses.replace(config, cpu_bfloat16=False))
    assert all(dtypes == {torch.float32} for dtypes in seen.values())


def test_masks_of_reported_only_give_the_same_detections_for_fewer_masks() -> None:
    """The mask head runs on the rows a tile reports only; the detections equal the one-step inference's."""
    from lsst.meas.extensions.deepdisc.core.inference import segments_selected

    model = _random_compact_model(proposals=60, detections=40).eval()
    assert segments_selected(model) and not segments_selected(lambda inputs: inputs)
    segmented: list[int] = []
    model.roi_heads.mask_head.register_forward_hook(
        lambda module, inputs, output: segmented.append(sum(len(i) for i in inputs[1]))
    )
    image = np.random.default_rng(0).normal(size=(3, 150, 140)).astype(np.float32)
    valid = np.ones((150, 140), dtype=bool)
    valid[:, :30] = False  # Centres on invalid pixels are not reported either.
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2, device="cpu", max_detections_per_tile=25)
    staged = run_tiled_inference(model, image, xy0=XY0, config=config, valid=valid)
    staged_masks = sum(segmented)
    segmented.clear()
    one_step = run_tiled_inference(
        model, image, xy0=XY0, config=dataclasses.replace(config, masks_of_reported_only=False), valid=valid
    )
    assert staged.stats["masks_of_reported_only"] and not one_step.stats["masks_of_reported_only"]
    assert len(staged) > 5
    np.testing.assert_array_equal(staged.boxes, one_step.boxes)
    np.testing.assert_array_equal(staged.scores, one_step.scores)
    np.testing.assert_array_equal(staged.class_ids, one_step.class_ids)
    np.testing.assert_array_equal(staged.class_probs, one_step.class_probs)
    np.testing.assert_array_equal(staged.tile_index, one_step.tile_index)
    np.testing.assert_array_equal(staged.merged_duplicate, one_step.merged_duplicate)
    assert all(np.array_equal(a, b) for a, b in zip(staged.footprints, one_step.footprints))
    counts = [name for name in staged.stats if name.startswith("n_")]
    assert {n: staged.stats[n] for n in counts} == {n: one_step.stats[n] for n in counts}
    assert staged.stats["n_outside_interior"] > 0 and staged.stats["n_invalid_centre"] > 0
    # Every reported row was segmented, and fewer than the one-step inference's boxes.
    reported = staged.stats["n_raw"] - sum(
        staged.stats[f"n_{n}"]
        for n in ("below_threshold", "over_max_per_tile", "outside_interior", "invalid_centre")
    )
    assert staged_masks == reported < sum(segmented) == staged.stats["n_raw"]
    # The heads' ReLUs ran in place during the runs and are back as built.
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(relu.inplace for relu in relus)
