"""The sparse greedy NMS (`core.models.nms`) against torchvision's NMS and detectron2's RPN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms, nms

from lsst.meas.extensions.deepdisc.core.models import nms as sparse
from lsst.meas.extensions.deepdisc.core.models.nms import sparse_batched_nms, sparse_nms


def _boxes(generator: torch.Generator, count: int, span: float, size: float) -> torch.Tensor:
    centre = torch.rand(count, 2, generator=generator) * span
    extent = torch.rand(count, 2, generator=generator) ** 2 * size * 3 + 0.5
    return torch.cat([centre - extent / 2, centre + extent / 2], dim=1)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    count=st.integers(1, 1500),
    span=st.floats(10.0, 600.0),
    threshold=st.sampled_from([0.05, 0.3, 0.5, 0.7, 0.95]),
    ties=st.booleans(),
    degenerate=st.booleans(),
)
def test_sparse_nms_equals_torchvision(
    seed: int, count: int, span: float, threshold: float, ties: bool, degenerate: bool
) -> None:
    """The same kept boxes in the same order: crowded and sparse scenes, tied scores, empty boxes."""
    generator = torch.Generator().manual_seed(seed)
    boxes = _boxes(generator, count, span, 12.0)
    scores = torch.rand(count, generator=generator)
    if ties:
        scores = torch.round(scores * 4) / 4
    if degenerate:
        boxes[: count // 5, 2:] = boxes[: count // 5, :2]  # Zero-size boxes.
        boxes[count // 5 : count // 4, 2:] = boxes[count // 5 : count // 4, :2] - 1.0  # Reversed.
    assert torch.equal(sparse_nms(boxes, scores, threshold), nms(boxes, scores, threshold))


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    count=st.integers(2, 300),
    span=st.floats(5.0, 300.0),
    threshold=st.sampled_from([0.05, 0.3, 0.5, 0.7, 0.95]),
    grid=st.booleans(),
)
def test_suppressing_pairs_are_every_pair_above_the_threshold(
    seed: int, count: int, span: float, threshold: float, grid: bool
) -> None:
    """The row-binned sweep finds exactly the pairs a comparison of all pairs finds, each once."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.rand(count, 2, generator=generator) * span
    extent = torch.rand(count, 2, generator=generator) ** 3 * 60 + 0.01  # Tiny to tall and wide boxes.
    if grid:  # Shared edges and duplicates.
        centre, extent = torch.round(centre), torch.round(extent * 2) / 2
    boxes = torch.cat([centre - extent / 2, centre + extent / 2], dim=1)
    boxes[: count // 6, 2:] = boxes[: count // 6, :2]  # Empty boxes overlap nothing.
    a, b = sparse._suppressing_pairs(boxes, threshold)
    first, second = torch.triu_indices(count, count, 1)
    columns = boxes.t().contiguous()
    areas = (columns[2] - columns[0]) * (columns[3] - columns[1])
    above = sparse._overlap_ratio(columns, areas, first, second).double() > threshold
    expected = set(zip(first[above].tolist(), second[above].tolist()))
    got = [(min(i, j), max(i, j)) for i, j in zip(a.tolist(), b.tolist())]
    assert len(got) == len(set(got)) and set(got) == expected


def test_sparse_nms_edge_cases_and_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    boxes = _boxes(generator, 400, 100.0, 10.0)
    scores = torch.rand(400, generator=generator)
    # Thresholds outside (0, 1) and non-finite input: torchvision's own NMS, so its result.
    for threshold in (0.0, 1.0, -0.5):
        assert torch.equal(sparse_nms(boxes, scores, threshold), nms(boxes, scores, threshold))
    nan_scores = scores.clone()
    nan_scores[3] = float("nan")
    assert torch.equal(sparse_nms(boxes, nan_scores, 0.5), nms(boxes, nan_scores, 0.5))
    assert sparse_nms(boxes[:0], scores[:0], 0.5).shape == (0,)
    # A chain: each box suppresses the next; more links than passes allowed falls back, same result.
    chain = torch.tensor([[float(i), 0.0, i + 10.0, 10.0] for i in range(12)])
    chain_scores = torch.linspace(1.0, 0.5, 12)
    expected = nms(chain, chain_scores, 0.8)
    assert expected.tolist() == list(range(0, 12, 2))
    assert torch.equal(sparse_nms(chain, chain_scores, 0.8), expected)
    monkeypatch.setattr(sparse, "_MAX_PASSES", 2)
    assert torch.equal(sparse_nms(chain, chain_scores, 0.8), expected)


def _counting_sparse_nms(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count (in boxes per call) the calls `sparse_batched_nms` makes to `sparse_nms`."""
    calls: list[int] = []
    original = sparse.sparse_nms

    def counted(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        calls.append(len(boxes))
        return original(boxes, scores, iou_threshold)

    monkeypatch.setattr(sparse, "sparse_nms", counted)
    return calls


def test_sparse_batched_nms_gives_torchvision_batched_nms_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.ops import boxes as box_ops

    calls = _counting_sparse_nms(monkeypatch)
    generator = torch.Generator().manual_seed(6)
    boxes = _boxes(generator, 5000, 300.0, 8.0)
    scores = torch.rand(5000, generator=generator)
    levels = torch.randint(0, 5, (5000,), generator=generator)
    torchvision_nms = box_ops.nms
    # torchvision's per-category path (about 1000 boxes per category) and its coordinate-offset path (one
    # set of 900 boxes: the sparse NMS above its minimum, torchvision's kernel below).
    for count, minimum in ((5000, 512), (900, 512), (900, 1000)):
        monkeypatch.setitem(sparse._SPARSE_MIN_BOXES, "cpu", minimum)
        expected = batched_nms(boxes[:count], scores[:count], levels[:count], 0.7)
        calls.clear()
        with sparse_batched_nms():
            got = batched_nms(boxes[:count], scores[:count], levels[:count], 0.7)
        assert box_ops.nms is torchvision_nms
        assert torch.equal(got, expected)
        if count == 5000:
            assert len(calls) == 5 and sum(calls) == 5000
        else:
            assert calls == ([900] if minimum == 512 else [])
    # Small sets keep torchvision's kernel.
    monkeypatch.setitem(sparse._SPARSE_MIN_BOXES, "cpu", 512)
    calls.clear()
    with sparse_batched_nms():
        assert torch.equal(box_ops.nms(boxes[:511], scores[:511], 0.5), nms(boxes[:511], scores[:511], 0.5))
    assert calls == []


def test_sparse_batched_nms_gives_the_rpn_the_same_proposals(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_inference import _random_compact_model

    calls = _counting_sparse_nms(monkeypatch)
    model = _random_compact_model(proposals=1500, detections=100).eval()
    image = torch.from_numpy(np.random.default_rng(7).normal(size=(3, 256, 256)).astype(np.float32))
    inputs = [{"image": image * 100.0, "height": 256, "width": 256}]
    with torch.inference_mode():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        expected, _ = model.proposal_generator(images, features, None)
        with sparse_batched_nms():
            got, _ = model.proposal_generator(images, features, None)
    assert calls and max(calls) >= sparse._SPARSE_MIN_BOXES["cpu"]
    assert torch.equal(got[0].proposal_boxes.tensor, expected[0].proposal_boxes.tensor)
    assert torch.equal(got[0].objectness_logits, expected[0].objectness_logits)
    assert len(got[0]) == 1500


def test_tiled_inference_with_sparse_nms_gives_identical_detections(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_inference import XY0, _random_compact_model

    from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig, run_tiled_inference

    # Every set through the sparse NMS: the RPN's levels and the box head's classes of these small tiles.
    monkeypatch.setitem(sparse._SPARSE_MIN_BOXES, "cpu", 2)
    calls = _counting_sparse_nms(monkeypatch)
    model = _random_compact_model(proposals=300, detections=60).eval()
    image = np.random.default_rng(8).normal(size=(3, 150, 140)).astype(np.float32)
    config = InferenceConfig(tile_size=96, overlap=32, batch_size=2, device="cpu")
    fast = run_tiled_inference(model, image, xy0=XY0, config=config)
    assert len(calls) > 4
    calls.clear()
    plain = run_tiled_inference(model, image, xy0=XY0, config=dataclasses.replace(config, sparse_nms=False))
    assert not calls
    assert fast.stats["sparse_nms"] and not plain.stats["sparse_nms"]
    assert len(fast) == len(plain) > 10
    np.testing.assert_array_equal(fast.boxes, plain.boxes)
    np.testing.assert_array_equal(fast.scores, plain.scores)
    assert all(np.array_equal(a, b) for a, b in zip(fast.footprints, plain.footprints))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_sparse_nms_on_cuda_equals_torchvision(threshold: float) -> None:
    """On CUDA: crowded sets, fp16-tied scores (autocast's RPN logits), thresholds compared in float32."""
    generator = torch.Generator().manual_seed(9)
    for count in (50, 1000, 6000):
        boxes = _boxes(generator, count, 400.0, 10.0)
        scores = torch.rand(count, generator=generator)
        for score_dtype in (torch.float32, torch.float16):
            cuda_boxes, cuda_scores = boxes.cuda(), scores.to(score_dtype).cuda()
            expected = nms(cuda_boxes, cuda_scores.float(), threshold)
            got = sparse_nms(cuda_boxes, cuda_scores, threshold)
            assert got.device.type == "cuda"
            assert torch.equal(got.cpu(), expected.cpu())
