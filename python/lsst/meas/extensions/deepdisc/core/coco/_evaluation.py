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

"""COCO AP of a catalog against truth on one patch, split into pseudo-images (`coco_average_precision`)."""

from __future__ import annotations

__all__ = ["CocoScores", "coco_average_precision"]

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..matching import SourceArrays, bbox_overlap_pairs
from ._export import CATEGORY_ID_OFFSET, CocoImage, IoUKind, _categories, coco_annotations


@dataclass(frozen=True)
class CocoScores:
    """COCO AP numbers for one IoU type (NaN where undefined, e.g. no truth objects).

    Attributes
    ----------
    iou_type : `str`
        ``"bbox"`` or ``"segm"``.
    ap, ap50, ap75 : `float`
        AP over IoU 0.50:0.95, at 0.50 and at 0.75, averaged over classes with truth objects.
    ar : `float`
        Maximum recall averaged over IoU thresholds and classes.
    per_class_ap, per_class_ap50 : `dict` [`str`, `float`]
        Per class name (empty with ``class_agnostic``).
    n_truth : `int`
        Truth objects evaluated (not ignored).
    n_det : `int`
        Detections evaluated.
    """

    iou_type: str
    ap: float
    ap50: float
    ap75: float
    ar: float
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    n_truth: int
    n_det: int

    def as_dict(self) -> dict[str, float]:
        """Flat dictionary: the scalars plus ``ap_<class>`` and ``ap50_<class>``."""
        out = {key: value for key, value in asdict(self).items() if not key.startswith("per_class")}
        out.update({f"ap_{name}": value for name, value in self.per_class_ap.items()})
        out.update({f"ap50_{name}": value for name, value in self.per_class_ap50.items()})
        return out


class _FlaggedCOCOeval(COCOeval):
    """COCOeval honouring our own ignore flags.

    pycocotools overwrites every truth ``ignore`` flag with ``iscrowd``, so the flag is re-applied after its
    preparation step; and unmatched detections carrying ``ignore_if_unmatched`` are ignored after matching.
    """

    def _prepare(self) -> None:
        super()._prepare()
        for truths in self._gts.values():
            for truth in truths:
                truth["ignore"] = bool(truth["ignore"]) or bool(truth.get("out_of_bin", False))

    def evaluateImg(self, imgId: int, catId: int, aRng: list[float], maxDet: int) -> dict[str, Any] | None:
        result = super().evaluateImg(imgId, catId, aRng, maxDet)
        if result is None or not result["dtIds"]:
            return result
        flagged = np.array([bool(self.cocoDt.anns[i].get("out_of_bin", False)) for i in result["dtIds"]])
        result["dtIgnore"] = np.logical_or(result["dtIgnore"], (result["dtMatches"] == 0) & flagged[None, :])
        return result


class _CocoSetup:
    """Truth and detection COCO objects on pseudo-images (see the module documentation)."""

    def __init__(
        self,
        truth: SourceArrays,
        detections: SourceArrays,
        image: CocoImage,
        class_names: Mapping[int, str] | None,
        class_agnostic: bool,
        with_segmentation: bool,
        max_detections: int | None,
    ) -> None:
        if truth.bbox is None or detections.bbox is None:
            raise ValueError("COCO AP needs bounding boxes (or footprints) for truth and detections")
        if detections.score is None:
            raise ValueError("COCO AP ranks detections by score, but the detections have no score")
        self.categories = _categories(class_names)
        if not class_agnostic:
            known = {category["id"] - CATEGORY_ID_OFFSET for category in self.categories}
            for label, sources in (("truth", truth), ("detection", detections)):
                if sources.class_id is None:
                    raise ValueError(f"the {label} catalog has no class_id; use class_agnostic=True")
                unknown = sorted(set(np.unique(sources.class_id).tolist()) - known)
                if unknown:
                    raise ValueError(
                        f"{label} class ids {unknown} are not among the evaluated classes {sorted(known)}; "
                        "map them or use class_agnostic=True"
                    )
        self.class_agnostic = class_agnostic
        kept = np.arange(len(detections))
        if max_detections is not None and max_detections < len(detections):
            kept = np.sort(np.argsort(-detections.score, kind="stable")[:max_detections])
        self.kept_detections = kept
        det_boxes = detections.bbox[kept]
        n_truth, n_det = len(truth), kept.size

        # Pseudo-images: components of the graph of overlapping truth/detection boxes of the same category
        # (only those can match), so that every pseudo-image holds a single category.
        truth_category = np.zeros(n_truth, dtype=np.int64) if class_agnostic else truth.class_id
        det_category = np.zeros(n_det, dtype=np.int64) if class_agnostic else detections.class_id[kept]
        ti, di = bbox_overlap_pairs(truth.bbox, det_boxes)
        same = truth_category[ti] == det_category[di]
        ti, di = ti[same], di[same]
        graph = coo_matrix((np.ones(ti.size), (ti, n_truth + di)), shape=(n_truth + n_det,) * 2)
        _, labels = connected_components(graph, directed=False)
        linked = np.zeros(n_truth + n_det, dtype=bool)
        linked[ti] = True
        linked[n_truth + di] = True
        category = np.concatenate([truth_category, det_category])
        # Objects overlapping nothing share one image per category and side: ids 1, 2, ... by category.
        category_rank = np.searchsorted(np.unique(category), category) if category.size else category
        lonely_image = 1 + 2 * category_rank + (np.arange(n_truth + n_det) >= n_truth)
        image_of = np.where(linked, labels + 2 * (int(category_rank.max(initial=0)) + 1) + 1, lonely_image)
        self.image_of_truth, self.image_of_det = image_of[:n_truth], image_of[n_truth:]
        self.images_of_category = {
            int(c): sorted(set(image_of[category == c].tolist())) for c in np.unique(category)
        }
        images = [
            {"id": i, "width": image.width, "height": image.height} for i in sorted(set(image_of.tolist()))
        ]

        self.truth_annotations = coco_annotations(
            truth, image, with_segmentation=with_segmentation, class_agnostic=class_agnostic
        )
        for record, image_id in zip(self.truth_annotations, self.image_of_truth):
            record["image_id"] = int(image_id)
        subset = SourceArrays(
            x=detections.x[kept],
            y=detections.y[kept],
            bbox=det_boxes,
            spans=None if detections.spans is None else [detections.spans[i] for i in kept],
            class_id=None if detections.class_id is None else detections.class_id[kept],
            score=detections.score[kept],
        )
        self.det_annotations = coco_annotations(
            subset, image, with_segmentation=with_segmentation, class_agnostic=class_agnostic
        )
        for record, image_id in zip(self.det_annotations, self.image_of_det):
            record["image_id"] = int(image_id)
        self.truth_coco = self._make_coco(images, self.truth_annotations)
        self.det_coco = self._make_coco(images, self.det_annotations)
        self.flag(None, None)

    def _make_coco(self, images: list[dict[str, Any]], annotations: list[dict[str, Any]]) -> COCO:
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations, "categories": self.categories}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def flag(self, truth_out_of_bin: np.ndarray | None, det_out_of_bin: np.ndarray | None) -> None:
        """Set the per-object ``out_of_bin`` flags (``None`` clears them)."""
        det_flags = None if det_out_of_bin is None else np.asarray(det_out_of_bin)[self.kept_detections]
        for records, flags in ((self.truth_annotations, truth_out_of_bin), (self.det_annotations, det_flags)):
            for k, record in enumerate(records):
                record["out_of_bin"] = False if flags is None else bool(flags[k])

    def _relevant_images(self) -> set[int]:
        """Pseudo-images holding a truth object or detection that is not ignored.

        Elsewhere every truth object is ignored and every detection either matches an ignored truth object
        or is ignored when unmatched: such images add nothing to COCO's counts.
        """
        relevant = {
            int(i) for i, r in zip(self.image_of_truth, self.truth_annotations) if not r["out_of_bin"]
        }
        relevant |= {int(i) for i, r in zip(self.image_of_det, self.det_annotations) if not r["out_of_bin"]}
        return relevant

    def _run(
        self, iou_type: IoUKind, category_ids: list[int], image_ids: list[int]
    ) -> tuple[np.ndarray, ...]:
        """Run pycocotools; return precision ``[T, R, K]``, recall ``[T, K]`` and the IoU thresholds."""
        evaluator = _FlaggedCOCOeval(self.truth_coco, self.det_coco, iouType=iou_type)
        params = evaluator.params
        params.imgIds = image_ids
        params.catIds = category_ids
        params.useCats = 0 if self.class_agnostic else 1
        params.maxDets = [max(1, len(self.det_annotations))]
        params.areaRng = [[0.0, 1e12]]
        params.areaRngLbl = ["all"]
        thresholds = np.asarray(params.iouThrs)
        n_categories = 1 if self.class_agnostic else len(category_ids)
        if not image_ids:
            return (
                -np.ones((thresholds.size, params.recThrs.size, n_categories)),
                -np.ones((thresholds.size, n_categories)),
                thresholds,
            )
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        return evaluator.eval["precision"][:, :, :, 0, 0], evaluator.eval["recall"][:, :, 0, 0], thresholds

    def evaluate(self, iou_type: IoUKind) -> CocoScores:
        """COCO AP with the current flags."""
        relevant = self._relevant_images()
        if self.class_agnostic:
            all_images = sorted(set(self.image_of_truth.tolist()) | set(self.image_of_det.tolist()))
            precision, recall, thresholds = self._run(
                iou_type, [c["id"] for c in self.categories], [i for i in all_images if i in relevant]
            )
        else:
            # One pycocotools run per category over that category's pseudo-images only: the same numbers
            # as one run over all categories, without evaluating every image for every category.
            precisions, recalls = [], []
            for category in self.categories:
                class_id = category["id"] - CATEGORY_ID_OFFSET
                images = [i for i in self.images_of_category.get(class_id, []) if i in relevant]
                precision, recall, thresholds = self._run(iou_type, [category["id"]], images)
                precisions.append(precision)
                recalls.append(recall)
            precision, recall = np.concatenate(precisions, axis=2), np.concatenate(recalls, axis=1)
        at50 = int(np.argmin(np.abs(thresholds - 0.5)))
        at75 = int(np.argmin(np.abs(thresholds - 0.75)))

        def mean_valid(values: np.ndarray) -> float:
            valid = values[values > -1]
            return float(valid.mean()) if valid.size else float("nan")

        per_class_ap: dict[str, float] = {}
        per_class_ap50: dict[str, float] = {}
        if not self.class_agnostic:
            for k, category in enumerate(self.categories):
                per_class_ap[category["name"]] = mean_valid(precision[:, :, k])
                per_class_ap50[category["name"]] = mean_valid(precision[at50, :, k])
        return CocoScores(
            iou_type=iou_type,
            ap=mean_valid(precision),
            ap50=mean_valid(precision[at50]),
            ap75=mean_valid(precision[at75]),
            ar=mean_valid(recall),
            per_class_ap=per_class_ap,
            per_class_ap50=per_class_ap50,
            n_truth=sum(1 for record in self.truth_annotations if not record["out_of_bin"]),
            n_det=len(self.det_annotations),
        )


def _check_iou_types(iou_types: Sequence[str], truth: SourceArrays, detections: SourceArrays) -> bool:
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"unknown COCO iou type {iou_type!r}; use 'bbox' or 'segm'")
    needs_masks = "segm" in iou_types
    if needs_masks and (truth.spans is None or detections.spans is None):
        raise ValueError("segm AP needs footprints (spans) for truth and detections")
    return needs_masks


def coco_average_precision(
    truth: SourceArrays,
    detections: SourceArrays,
    image: CocoImage,
    *,
    iou_types: Sequence[IoUKind] = ("bbox", "segm"),
    class_names: Mapping[int, str] | None = None,
    class_agnostic: bool = False,
    truth_ignore: np.ndarray | None = None,
    max_detections: int | None = None,
) -> dict[str, CocoScores]:
    """COCO AP of a detection catalog against truth on one image.

    Parameters
    ----------
    truth, detections : `~.matching.SourceArrays`
        Catalogs in the image's parent frame; detections need ``score``; both need ``class_id`` unless
        ``class_agnostic``; ``segm`` needs footprints.
    image : `CocoImage`
        The image (size and ``xy0``).
    iou_types : `~collections.abc.Sequence` [`str`]
        Any of ``"bbox"`` and ``"segm"``.
    class_names : `~collections.abc.Mapping` [`int`, `str`], optional
        Classes to evaluate (default ``{0: "star", 1: "galaxy"}``).
    class_agnostic : `bool`
        Ignore classes: one category, detections match truth of any class.
    truth_ignore : `numpy.ndarray`, optional
        Boolean per truth object: ignored in COCO's sense (matches to it are neither TP nor FP).
    max_detections : `int`, optional
        Keep only this many highest-scoring detections of the image.

    Returns
    -------
    scores : `dict` [`str`, `CocoScores`]
        Keyed by IoU type.
    """
    with_segmentation = _check_iou_types(iou_types, truth, detections)
    setup = _CocoSetup(
        truth, detections, image, class_names, class_agnostic, with_segmentation, max_detections
    )
    if truth_ignore is not None:
        truth_ignore = np.asarray(truth_ignore, dtype=bool)
        if truth_ignore.size != len(truth):
            raise ValueError(f"truth_ignore has {truth_ignore.size} values for {len(truth)} truth objects")
    setup.flag(truth_ignore, None)
    return {iou_type: setup.evaluate(iou_type) for iou_type in iou_types}
