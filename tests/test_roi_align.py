"""The separable ROIAlign (`core.models.roi_align`) against torchvision's and detectron2's poolers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from lsst.meas.extensions.deepdisc.core.models import roi_align as separable
from lsst.meas.extensions.deepdisc.core.models.roi_align import (
    roi_align_levels,
    roi_align_separable,
    separable_poolers,
)


def _regions(generator: torch.Generator, count: int, batch: int, extent: tuple[float, float]) -> torch.Tensor:
    """``[count, 5]`` regions: small and wide ones, some off the map, some degenerate, some reversed."""
    width, height = extent
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 1.3, height * 1.3]) - 8.0
    size = torch.rand(count, 2, generator=generator) ** 3 * torch.tensor([width, height])
    rois = torch.cat(
        [torch.randint(0, batch, (count, 1), generator=generator).float(), corner, corner + size], dim=1
    )
    rois[:6, 3:] = rois[:6, 1:3]  # Zero-size regions.
    rois[6:9, 3:] = rois[6:9, 1:3] - 2.0  # x2 < x1, y2 < y1.
    return rois


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 3])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (3, 5)])
def test_equals_torchvision_roi_align(
    aligned: bool, sampling_ratio: int, output_size: tuple[int, int]
) -> None:
    generator = torch.Generator().manual_seed(sampling_ratio * 10 + output_size[1])
    features = torch.randn(2, 5, 37, 45, generator=generator)
    for scale in (1.0, 0.25):
        rois = _regions(generator, 400, 2, (45 / scale, 37 / scale))
        expected = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
        got = roi_align_separable(features, rois, output_size, scale, sampling_ratio, aligned)
        assert got.shape == expected.shape and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)
        # Channels-last maps are read as they are, to the same values.
        channels_last = features.contiguous(memory_format=torch.channels_last)
        got = roi_align_separable(channels_last, rois, output_size, scale, sampling_ratio, aligned)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-6)


def test_window_groups_and_chunks_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow and wide windows (both contractions), many chunks, one group only: the same values."""
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1, 4, 64, 64, generator=generator)
    rois = _regions(generator, 300, 1, (64.0, 64.0))
    expected = roi_align(features, rois, (7, 7), 1.0, 0, True)
    monkeypatch.setattr(separable, "_WINDOW_BUDGET", 3000)  # A few regions per chunk.
    torch.testing.assert_close(
        roi_align_separable(features, rois, 7, 1.0, 0, True), expected, rtol=1e-5, atol=2e-6
    )
    # All regions with one window side: computed straight into the output.
    small = torch.tensor([[0.0, 10.2, 11.7, 12.0, 13.1], [0.0, 30.5, 2.1, 32.0, 3.9]])
    torch.testing.assert_close(
        roi_align_separable(features, small, 7, 1.0, 0, True),
        roi_align(features, small, (7, 7), 1.0, 0, True),
        rtol=1e-5,
        atol=2e-6,
    )
    assert roi_align_separable(features, rois[:0], 7).shape == (0, 4, 7, 7)


def test_levels_equal_one_call_per_level() -> None:
    generator = torch.Generator().manual_seed(2)
    scales = [0.25, 0.125, 0.0625]
    features = [torch.randn(2, 3, 64 // 2**k, 48 // 2**k, generator=generator) for k in range(3)]
    rois = _regions(generator, 200, 2, (192.0, 256.0))
    levels = torch.randint(0, 3, (200,), generator=generator)
    levels[:50] = 1  # Not every level need be used by a call; here all are.
    got = roi_align_levels(features, rois, levels, (7, 7), scales, 0, True)
    for level, scale in enumerate(scales):
        rows = levels == level
        expected = roi_align(features[level], rois[rows], (7, 7), scale, 0, True)
        torch.testing.assert_close(got[rows], expected, rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError, match="rois must be"):
        roi_align_levels(features, rois[:, :4], levels, 7, scales)
    with pytest.raises(ValueError, match="feature maps for"):
        roi_align_levels(features, rois, levels, 7, scales[:2])


def test_separable_poolers_equal_detectron2_poolers_and_are_restored() -> None:
    from detectron2.modeling.poolers import ROIPooler
    from detectron2.structures import Boxes

    generator = torch.Generator().manual_seed(3)
    features = [torch.randn(2, 8, 128 // 2**k, 96 // 2**k, generator=generator) for k in range(4)]
    box_lists = []
    for _ in range(2):
        rois = _regions(generator, 500, 1, (384.0, 512.0))
        box_lists.append(
            Boxes(torch.cat([rois[:, 1:3], rois[:, 1:3] + (rois[:, 3:] - rois[:, 1:3]).abs()], 1))
        )
    model = torch.nn.ModuleDict(
        {
            "box": ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2"),
            "mask": ROIPooler(14, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIAlignV2"),
            "legacy": ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 2, "ROIAlign"),
            "pool": ROIPooler(7, (1 / 4, 1 / 8, 1 / 16, 1 / 32), 0, "ROIPool"),  # Left alone.
        }
    )
    expected = {name: pooler(features, box_lists) for name, pooler in model.items()}
    with separable_poolers(model) as changed:
        assert changed == 3 and "forward" in vars(model["box"]) and "forward" not in vars(model["pool"])
        for name, pooler in model.items():
            torch.testing.assert_close(pooler(features, box_lists), expected[name], rtol=1e-5, atol=2e-6)
        with pytest.raises(ValueError, match="feature maps"):
            model["box"](features[:3], box_lists)
    assert not any("forward" in vars(pooler) for pooler in model.values())
    # A forward set on the pooler itself before the block (a profiler's label) comes back after it.
    labelled = model["mask"].forward
    model["mask"].forward = labelled
    with separable_poolers(model):
        assert model["mask"].forward is not labelled
    assert vars(model["mask"])["forward"] is labelled


def test_tiled_inference_pools_separably_on_cpu_to_the_same_detections() -> None:
    """A compact R-CNN's tiled inference with and without the separable poolers: the same detections."""
    from test_inference import XY0, _random_compact_model

    from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig, run_tiled_inference

    model = _random_compact_model(proposals=200, detections=60).eval()
    calls: list[str] = []
    for name in ("box_pooler", "mask_pooler"):
        getattr(model.roi_heads, name).register_forward_hook(
            lambda module, inputs, output, name=name: calls.append(name)
        )
    image = np.random.default_rng(4).normal(size=(3, 150, 140)).astype(np.float32)
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2, device="cpu")
    fast = run_tiled_inference(model, image, xy0=XY0, config=config)
    assert fast.stats["separable_roi_align"] and {"box_pooler", "mask_pooler"} <= set(calls)
    assert not any("forward" in vars(module) for module in model.modules())
    plain = run_tiled_inference(
        model, image, xy0=XY0, config=dataclasses.replace(config, separable_roi_align=False)
    )
    assert not plain.stats["separable_roi_align"]
    assert len(fast) == len(plain) > 10
    np.testing.assert_allclose(fast.boxes, plain.boxes, atol=1e-3)
    np.testing.assert_allclose(fast.scores, plain.scores, atol=1e-5)
    np.testing.assert_array_equal(fast.class_ids, plain.class_ids)
    agree = [np.array_equal(a, b) for a, b in zip(fast.footprints, plain.footprints)]
    assert np.mean(agree) > 0.95  # A mask pixel at the threshold may flip.
