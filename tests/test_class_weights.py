"""Class-weighted classification loss of the box predictors (`core.models.class_weights`)."""

from __future__ import annotations

import pytest
import torch
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.nn import functional

from lsst.meas.extensions.deepdisc.core.models import ModelSpec, build_model_from_spec
from lsst.meas.extensions.deepdisc.core.models.class_weights import (
    ClassWeightedFastRCNNOutputLayers,
    set_class_loss_weights,
)
from lsst.meas.extensions.deepdisc.core.training import TrainingConfig

FAST = {"MODEL.RPN.POST_NMS_TOPK_TEST": 12, "TEST.DETECTIONS_PER_IMAGE": 4}


def _model(architecture: str = "compact-R18-FPN") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model_from_spec(ModelSpec(architecture, ("g", "r", "i"), overrides=FAST))


def _predictors(model: torch.nn.Module) -> list[FastRCNNOutputLayers]:
    return [m for m in model.modules() if isinstance(m, FastRCNNOutputLayers)]


def _proposals(gt_classes: list[int]) -> list[Instances]:
    n = len(gt_classes)
    boxes = torch.tensor([[10.0 * i, 5.0, 10.0 * i + 8.0, 13.0] for i in range(n)])
    proposals = Instances((64, 64))
    proposals.proposal_boxes = Boxes(boxes)
    proposals.gt_boxes = Boxes(boxes + 0.5)
    proposals.gt_classes = torch.tensor(gt_classes)
    return [proposals]


def test_weighted_loss_is_the_weighted_cross_entropy_and_the_rest_is_unchanged() -> None:
    with EventStorage(0):  # detectron2's losses log accuracy to the event storage.
        _check_weighted_loss()


def _check_weighted_loss() -> None:
    model = _model()
    (predictor,) = _predictors(model)
    keys = set(model.state_dict())
    gt = [0, 1, 1, 1, 2, 2]  # star, galaxies, background (class K = 2)
    torch.manual_seed(1)
    scores = torch.randn(len(gt), 3)
    deltas = torch.randn(len(gt), 8)
    plain = predictor.losses((scores, deltas), _proposals(gt))

    assert set_class_loss_weights(model, [5.0, 1.0]) == 1
    assert isinstance(predictor, ClassWeightedFastRCNNOutputLayers)
    assert set(model.state_dict()) == keys  # The weights are not a buffer: packages load as before.
    weighted = predictor.losses((scores, deltas), _proposals(gt))
    expected = functional.cross_entropy(scores, torch.tensor(gt), weight=torch.tensor([5.0, 1.0, 1.0]))
    torch.testing.assert_close(weighted["loss_cls"], expected)
    assert not torch.isclose(weighted["loss_cls"], plain["loss_cls"])
    torch.testing.assert_close(weighted["loss_box_reg"], plain["loss_box_reg"])

    # Unit weights give detectron2's loss; None restores it.
    set_class_loss_weights(model, [1.0, 1.0])
    torch.testing.assert_close(
        predictor.losses((scores, deltas), _proposals(gt))["loss_cls"], plain["loss_cls"]
    )
    set_class_loss_weights(model, None)
    assert predictor.class_loss_weights is None


def test_every_cascade_stage_is_weighted_and_bad_weights_are_refused() -> None:
    model = _model("Cascade-R50-FPN")
    assert set_class_loss_weights(model, [3.0, 1.0]) == 3
    assert all(p.class_loss_weights.tolist() == [3.0, 1.0, 1.0] for p in _predictors(model))
    with pytest.raises(ValueError, match="3 class loss weights for a predictor of 2 classes"):
        set_class_loss_weights(model, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive and finite"):
        set_class_loss_weights(model, [0.0, 1.0])
    with pytest.raises(ValueError, match="positive and finite"):
        TrainingConfig(heads_iterations=0, full_iterations=1, class_loss_weights=(1.0, -2.0))
