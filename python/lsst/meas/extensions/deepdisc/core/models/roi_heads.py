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

"""ROI heads that report per-class probabilities for every detection.

detectron2's `~detectron2.modeling.roi_heads.FastRCNNOutputLayers` keeps only the winning class and its
score for each detection.  Star/galaxy classification needs the full distribution, so these heads (the
standard and the cascade Mask R-CNN heads, registered in ``ROI_HEADS_REGISTRY`` as
``DeepDISCStandardROIHeads`` and ``DeepDISCCascadeROIHeads``) attach to every output `Instances`

``class_probs``
    float tensor ``[N, num_classes]``: the classifier's probabilities of the foreground classes for the
    proposal each detection came from, renormalised to sum to 1 (for a softmax classifier this is exactly
    the softmax over the foreground logits; for the cascade it is the stage-averaged probability, as
    detectron2 uses for scoring, conditioned on "not background").

The rows are found through the kept-proposal indices that ``fast_rcnn_inference`` returns.  A proposal may
yield one detection per class above threshold; all of them share that proposal's row, so
``argmax(class_probs)`` need not equal ``pred_classes``.  Training is unchanged.

Setting ``inference_class_ids`` on a head (a tuple of class indices; `None` by default) makes its inference
report only those classes: the other classes' scores are zeroed before the score threshold, NMS and top-k
(so that they neither crowd the wanted ones out of ``DETECTIONS_PER_IMAGE`` nor appear), while
``class_probs`` stay the classifier's.  The detection task uses it for its binned artifact pass.

At inference the box branch pools, classifies and regresses the proposals ``inference_box_chunk`` at a
time (1000 by default; 0 for all at once).  Every proposal is processed on its own, so the chunks change
the peak memory, which the pooled features of thousands of proposals per tile (``256 x 7 x 7`` floats
each, 0.2 GB for 4000) would otherwise set, and at most the last bit of a value (a matrix product of fewer
rows may be blocked differently): the catalog of the 2048 px benchmark patch is bit-identical.

Likewise, on a CPU, the mask head is called on a batch's detections in near-equal runs of at most
``inference_mask_chunk`` (128 by default; 0 for all at once): a tile's few hundred detections at once make
its upsampled 28 x 28 maps outgrow the cores' caches (one thread, 472 detections: 232 us a detection at
once, 184 in chunks of 128), and each detection's mask is computed on its own, so the masks are the same.
"""

from __future__ import annotations

__all__ = [
    "DeepDISCCascadeROIHeads",
    "DeepDISCStandardROIHeads",
    "fast_rcnn_inference_with_class_probs",
    "is_class_probs_head",
]

from collections.abc import Sequence

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.cascade_rcnn import CascadeROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances

# Probabilities of all foreground classes may underflow to 0 for a proposal the classifier is sure is
# background; such rows fall back to the uniform distribution rather than dividing by zero.
_MIN_FOREGROUND_MASS = 1e-12

# Proposals pooled and classified at once at inference (bounds the pooled features' memory).
DEFAULT_INFERENCE_BOX_CHUNK = 1000

# Detections whose masks the mask head's convolutions compute at once at inference (keeps the upsampled
# maps in the caches; 32 to 256 measured alike).
DEFAULT_INFERENCE_MASK_CHUNK = 128


def _box_predictions_in_chunks(
    pooler: torch.nn.Module,
    head: torch.nn.Module,
    predictor: torch.nn.Module,
    level_features: list[torch.Tensor],
    proposals: list[Instances],
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``predictor(head(pooler(level_features, boxes)))`` over all images' proposals, ``chunk`` at a time.

    The rows come out in the order of the unchunked call (image by image, proposals in order).
    """
    boxes = [x.proposal_boxes for x in proposals]
    if chunk <= 0 or sum(len(b) for b in boxes) <= chunk:
        return predictor(head(pooler(level_features, boxes)))
    empty = Boxes(torch.zeros((0, 4), dtype=level_features[0].dtype, device=level_features[0].device))
    outputs = []
    for index, per_image in enumerate(boxes):
        for start in range(0, len(per_image), chunk):
            box_lists = [empty] * len(boxes)
            box_lists[index] = per_image[start : start + chunk]
            outputs.append(predictor(head(pooler(level_features, box_lists))))
    scores, deltas = zip(*outputs)
    return torch.cat(scores), torch.cat(deltas)


def _masks_in_chunks(
    heads: StandardROIHeads, features: dict[str, torch.Tensor], instances: list[Instances], chunk: int
) -> list[Instances]:
    """detectron2's inference ``_forward_mask``, its mask head called on about ``chunk`` detections at a time.

    The detections' boxes are pooled at once; the mask head (as a module: its hooks and any ``forward`` of
    its own run) is then called on consecutive runs of the detections of all images, in near-equal parts of
    at most ``chunk`` (no small remainder), each with its detections as a list of the images' pieces, and
    each image's pieces are concatenated back in order.  All at once (detectron2's one call) when ``chunk
    <= 0``, on a GPU (whose throughput wants large batches), or with no more detections than ``chunk``.
    """
    pooled = heads.mask_pooler(
        [features[name] for name in heads.mask_in_features], [x.pred_boxes for x in instances]
    )
    total = len(pooled)
    if chunk <= 0 or total <= chunk or pooled.device.type != "cpu":
        return heads.mask_head(pooled, instances)
    parts = -(-total // chunk)
    bounds = [total * k // parts for k in range(parts + 1)]
    image_starts = [0]
    for per_image in instances:
        image_starts.append(image_starts[-1] + len(per_image))
    pieces: list[list[Instances]] = [[] for _ in instances]
    for first, last in zip(bounds[:-1], bounds[1:]):
        # The images whose rows meet [first, last), each as its slice of rows.
        owners = [
            (index, max(first, begin) - begin, min(last, end) - begin)
            for index, (begin, end) in enumerate(zip(image_starts[:-1], image_starts[1:]))
            if begin < last and end > first and end > begin
        ]
        done = heads.mask_head(pooled[first:last], [instances[i][a:b] for i, a, b in owners])
        for (index, _, _), result in zip(owners, done):
            pieces[index].append(result)
    for index, per_image in enumerate(instances):
        if not pieces[index]:  # No detections: detectron2's empty masks, from a call on no rows.
            pieces[index] = heads.mask_head(pooled[:0], [per_image])
    return [parts_of[0] if len(parts_of) == 1 else Instances.cat(parts_of) for parts_of in pieces]


def fast_rcnn_inference_with_class_probs(
    boxes: list[torch.Tensor],
    scores: list[torch.Tensor],
    image_shapes: list[tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    class_ids: Sequence[int] | None = None,
) -> list[Instances]:
    """`detectron2.modeling.roi_heads.fast_rcnn_inference` plus a ``class_probs`` field.

    Parameters are those of ``fast_rcnn_inference``: per-image predicted boxes ``[R, K*4]`` or ``[R, 4]``
    and probabilities ``[R, K+1]`` (last column background); ``class_ids``, when given, are the only
    classes reported (the others' scores are zeroed before thresholding).
    """
    thresholded = scores
    if class_ids is not None:
        thresholded = []
        for per_image in scores:
            keep = torch.zeros(per_image.shape[1], dtype=torch.bool, device=per_image.device)
            keep[list(class_ids)] = True
            keep[-1] = True  # background
            thresholded.append(torch.where(keep, per_image, torch.zeros_like(per_image)))
    instances, kept = fast_rcnn_inference(
        boxes, thresholded, image_shapes, score_thresh, nms_thresh, topk_per_image
    )
    for result, kept_index, boxes_per_image, scores_per_image, seen in zip(
        instances, kept, boxes, scores, thresholded
    ):
        # fast_rcnn_inference drops proposals with non-finite boxes or scores *before* indexing, so its
        # indices count only the finite rows; map them back to the rows of `scores_per_image`.
        finite = torch.isfinite(boxes_per_image).all(dim=1) & torch.isfinite(seen).all(dim=1)
        rows = kept_index if bool(finite.all()) else finite.nonzero()[:, 0][kept_index]
        foreground = scores_per_image[rows, :-1]
        mass = foreground.sum(dim=1, keepdim=True)
        uniform = torch.full_like(foreground, 1.0 / max(foreground.shape[1], 1))
        result.class_probs = torch.where(
            mass > _MIN_FOREGROUND_MASS, foreground / mass.clamp_min(_MIN_FOREGROUND_MASS), uniform
        )
    return instances


class _MaskInferenceInChunks:
    """Inference ``_forward_mask`` by `_masks_in_chunks` (``inference_mask_chunk`` detections at a time)."""

    inference_mask_chunk: int = DEFAULT_INFERENCE_MASK_CHUNK

    def _forward_mask(self, features, instances):  # type: ignore[no-untyped-def]
        if self.training or not self.mask_on or self.mask_pooler is None:  # type: ignore[attr-defined]
            return super()._forward_mask(features, instances)  # type: ignore[misc]
        return _masks_in_chunks(self, features, instances, self.inference_mask_chunk)  # type: ignore[arg-type]


@ROI_HEADS_REGISTRY.register()
class DeepDISCStandardROIHeads(_MaskInferenceInChunks, StandardROIHeads):
    """Mask R-CNN `StandardROIHeads` whose inference adds ``class_probs`` to each output `Instances`."""

    inference_class_ids: tuple[int, ...] | None = None
    inference_box_chunk: int = DEFAULT_INFERENCE_BOX_CHUNK

    def _forward_box(self, features: dict[str, torch.Tensor], proposals: list[Instances]):  # type: ignore[override]
        if self.training:
            return super()._forward_box(features, proposals)
        predictions = _box_predictions_in_chunks(
            self.box_pooler,
            self.box_head,
            self.box_predictor,
            [features[name] for name in self.box_in_features],
            proposals,
            self.inference_box_chunk,
        )
        predictor = self.box_predictor
        return fast_rcnn_inference_with_class_probs(
            predictor.predict_boxes(predictions, proposals),
            predictor.predict_probs(predictions, proposals),
            [x.image_size for x in proposals],
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
            self.inference_class_ids,
        )


@ROI_HEADS_REGISTRY.register()
class DeepDISCCascadeROIHeads(_MaskInferenceInChunks, CascadeROIHeads):
    """Cascade Mask R-CNN `CascadeROIHeads` whose inference adds ``class_probs`` to each `Instances`."""

    inference_class_ids: tuple[int, ...] | None = None
    inference_box_chunk: int = DEFAULT_INFERENCE_BOX_CHUNK

    def _run_stage(self, features, proposals, stage):  # type: ignore[override]
        if self.training:
            return super()._run_stage(features, proposals, stage)
        return _box_predictions_in_chunks(
            self.box_pooler,
            self.box_head[stage],
            self.box_predictor[stage],
            features,
            proposals,
            self.inference_box_chunk,
        )

    def _forward_box(self, features, proposals, targets=None):  # type: ignore[override]
        if self.training:
            return super()._forward_box(features, proposals, targets)
        # Inference as in CascadeROIHeads: each stage refines the previous stage's boxes; the class
        # probabilities are averaged over stages and the last stage's boxes are kept.
        level_features = [features[name] for name in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stage_outputs = []
        previous_boxes = None
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                proposals = self._create_proposals_from_boxes(previous_boxes, image_sizes)
            predictions = self._run_stage(level_features, proposals, stage)
            previous_boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            stage_outputs.append((self.box_predictor[stage], predictions, proposals))
        stage_probs = [predictor.predict_probs(pred, props) for predictor, pred, props in stage_outputs]
        mean_probs = [sum(per_image) / self.num_cascade_stages for per_image in zip(*stage_probs)]
        last_predictor, last_predictions, last_proposals = stage_outputs[-1]
        return fast_rcnn_inference_with_class_probs(
            last_predictor.predict_boxes(last_predictions, last_proposals),
            mean_probs,
            image_sizes,
            last_predictor.test_score_thresh,
            last_predictor.test_nms_thresh,
            last_predictor.test_topk_per_image,
            self.inference_class_ids,
        )


def is_class_probs_head(obj: object) -> bool:
    """Whether ``obj`` is one of the ROI head classes above (or a subclass): they add ``class_probs``."""
    return isinstance(obj, type) and issubclass(obj, DeepDISCStandardROIHeads | DeepDISCCascadeROIHeads)
