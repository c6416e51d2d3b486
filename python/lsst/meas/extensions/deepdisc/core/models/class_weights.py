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

"""Per-class weights of the box classifier's training loss: rare classes (stars) against common ones.

The training labels of a survey field are about 1 % stars and 99 % galaxies.  A classifier trained with
detectron2's unweighted cross-entropy learns that prior: it calls a faint point source a galaxy unless the
evidence is overwhelming, and the star F1 of the catalog suffers.  `set_class_loss_weights` gives the box
predictors of a model (every cascade stage's) a weight per class in the classification loss, as in
``torch.nn.functional.cross_entropy(weight=...)``: the loss of a proposal of class ``k`` counts ``w_k`` times,
and the mean is taken over the weights.  Background proposals keep weight 1.  Only the training loss
changes: the predictors' parameters and state dict stay as they are, and inference is untouched.
"""

from __future__ import annotations

__all__ = ["ClassWeightedFastRCNNOutputLayers", "set_class_loss_weights"]

import math
from collections.abc import Sequence
from typing import Any, override

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch.nn import functional


class ClassWeightedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """`FastRCNNOutputLayers` whose softmax classification loss weighs each class by ``class_loss_weights``.

    ``class_loss_weights`` is a ``[K + 1]`` tensor (background last) or `None` (detectron2's loss).  It is a
    plain attribute, not a buffer: the state dict is that of `FastRCNNOutputLayers`.
    """

    class_loss_weights: torch.Tensor | None = None

    @override
    def losses(self, predictions: Any, proposals: Any) -> dict[str, torch.Tensor]:
        losses = super().losses(predictions, proposals)
        weights = self.class_loss_weights
        if weights is None or self.use_sigmoid_ce or not proposals:
            return losses
        scores, _ = predictions
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        if gt_classes.numel() == 0:
            return losses
        weighted = functional.cross_entropy(
            scores.float(), gt_classes, weight=weights.to(scores.device, torch.float32), reduction="mean"
        )
        losses["loss_cls"] = weighted * self.loss_weight.get("loss_cls", 1.0)
        return losses


def set_class_loss_weights(model: torch.nn.Module, weights: Sequence[float] | None) -> int:
    """Weigh the classification loss of every box predictor of ``model`` by class.

    Parameters
    ----------
    model : `torch.nn.Module`
        A detectron2 R-CNN; its `FastRCNNOutputLayers` (one, or one per cascade stage) become
        `ClassWeightedFastRCNNOutputLayers` in place (same parameters).
    weights : sequence of `float` or `None`
        One positive weight per foreground class (background gets 1), or `None` to restore detectron2's
        unweighted loss.

    Returns
    -------
    count : `int`
        Box predictors changed.

    Raises
    ------
    ValueError
        If ``weights`` does not have one positive, finite value per class of a predictor.
    """
    values = None if weights is None else [float(w) for w in weights]
    if values is not None and not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"class loss weights must be positive and finite, got {values}")
    count = 0
    for module in model.modules():
        if not isinstance(module, FastRCNNOutputLayers):
            continue
        if values is None:
            if isinstance(module, ClassWeightedFastRCNNOutputLayers):
                module.class_loss_weights = None
            continue
        if len(values) != module.num_classes:
            raise ValueError(
                f"{len(values)} class loss weights for a predictor of {module.num_classes} classes"
            )
        if not isinstance(module, ClassWeightedFastRCNNOutputLayers):
            # Same attributes and parameters: only the loss method differs.
            module.__class__ = ClassWeightedFastRCNNOutputLayers
        module.class_loss_weights = torch.tensor([*values, 1.0], dtype=torch.float32)
        count += 1
    return count
