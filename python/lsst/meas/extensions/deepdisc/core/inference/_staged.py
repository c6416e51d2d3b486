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

"""Boxes first, then masks for the detections a tile reports only.

A tile reports a detection only when its box centre lies in the tile's interior (and passes the score cut
and the validity mask), which the boxes alone decide.  detectron2's ``GeneralizedRCNN.inference`` runs the
mask head on every box the box head keeps, about three in four of which the stitching then throws away on
a 512 px tile with a 96 px overlap (more at a low score threshold).  `detect_then_segment` runs the same
steps - backbone, proposals, box head - then asks which rows to keep and runs the mask head on those
only.  Each box's mask depends on its own box and the features alone, so the kept detections are those of
the one-step inference.
"""

from __future__ import annotations

__all__ = ["detect_then_segment", "segments_selected"]

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.roi_heads import StandardROIHeads
from detectron2.structures import Instances


def segments_selected(model: Any) -> bool:
    """Whether `detect_then_segment` can run ``model``: a detectron2 R-CNN with proposals and a mask head.

    detectron2's ``StandardROIHeads`` (and its subclasses: cascade, DeepDISC's class-probability heads)
    without keypoints; other models run in one step.
    """
    heads = getattr(model, "roi_heads", None)
    return (
        isinstance(model, GeneralizedRCNN)
        and model.proposal_generator is not None
        and isinstance(heads, StandardROIHeads)
        and bool(heads.mask_on)
        and not bool(heads.keypoint_on)
    )


def detect_then_segment(
    model: GeneralizedRCNN,
    inputs: list[dict[str, Any]],
    select: Callable[[int, Instances], np.ndarray],
    contiguous_features: bool = True,
) -> list[Instances]:
    """``model.inference(inputs, do_postprocess=False)`` with masks only for the rows ``select`` picks.

    Parameters
    ----------
    model : `detectron2.modeling.GeneralizedRCNN`
        In eval mode, `segments_selected`.
    inputs : `list` [`dict`]
        detectron2's batched inputs.
    select : callable
        ``select(index, instances)``: the integer rows of image ``index``'s box predictions (``pred_boxes``,
        ``scores``, ``pred_classes``, no masks yet) to segment, in the order wanted.
    contiguous_features : `bool`
        Give the ROI heads the feature maps in the contiguous layout (torchvision's CPU ROIAlign copies a
        channels-last map on every call); `False` when the poolers read channels-last maps as they are
        (`~lsst.meas.extensions.deepdisc.core.models.roi_align.separable_poolers`).

    Returns
    -------
    results : `list` [`detectron2.structures.Instances`]
        Per image, the selected rows in ``select``'s order, with box-relative ``pred_masks``.
    """
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    # The ROI heads only pool the features, and torchvision's CPU ROIAlign copies a channels-last map to
    # the contiguous layout on every call (a tile's proposals are pooled in chunks, then the masks'):
    # one copy per level instead.
    if contiguous_features:
        features = {name: level.contiguous() for name, level in features.items()}
    heads = model.roi_heads
    detected = heads._forward_box(features, proposals)  # What the heads' own inference runs first.
    chosen = []
    for index, instances in enumerate(detected):
        rows = torch.as_tensor(np.asarray(select(index, instances), dtype=np.int64), device=model.device)
        chosen.append(instances[rows])
    return heads.forward_with_given_boxes(features, chosen)
