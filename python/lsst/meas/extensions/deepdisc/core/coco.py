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

"""COCO average precision (bbox and segm) with pycocotools, and COCO-format export of truth labels.

Masks are converted from spans straight to COCO run-length encoding in image coordinates: the column-major
index of every footprint pixel is computed (for all objects at once, in batches) and runs of consecutive
indices become COCO runs, which pycocotools compresses; nothing image-sized is ever allocated.

COCO's matcher (``COCOeval.evaluateImg``) costs ``O(D x G)`` Python operations per image, hopeless for a
patch with tens of thousands of sources.  Evaluation therefore splits the patch into *pseudo-images*: the
connected components of the graph linking truth objects and detections of the same category whose bounding
boxes share a pixel (plus, per category, one image of all isolated truth objects and one of all isolated
detections), and runs pycocotools once per category on that category's pseudo-images.  Objects without a
common pixel have IoU 0 and can never match, and COCO's greedy matching inside an image only involves
overlapping objects, so the matches are exactly those of evaluating the patch as a single image; the
precision/recall curves are then accumulated over all pseudo-images by score, as COCO does for one image.
Two consequences: COCO's per-image ``maxDets`` cap becomes meaningless, so it is set to the number of
detections and the optional ``max_detections`` keeps the highest-scoring detections of the whole patch
instead; and among detections with exactly equal scores the order may differ from a single-image run.

Definitions (COCO's): AP is the precision averaged over 101 recall points and the IoU thresholds
0.50:0.05:0.95, then over classes that have truth objects; AP50 and AP75 use a single IoU threshold; AR is the
maximum recall averaged the same way.  Matching is per class (a detection of the wrong class never matches)
unless ``class_agnostic=True``.  The COCO area ranges are not used (one range, all areas).

Truth objects flagged in ``truth_ignore`` are *ignored* (COCO's ``ignore`` flag): detections matched to
them count neither as true nor as false positives, exactly as COCO treats crowd regions and out-of-range
areas.

The COCO ``category_id`` of class ``c`` is ``c + 1`` (`CATEGORY_ID_OFFSET`): COCO ids start at 1 and
detectron2 maps them back to contiguous ids ``0..K-1`` when it loads the JSON.
"""

from __future__ import annotations

__all__ = [
    "CATEGORY_ID_OFFSET",
    "CocoImage",
    "CocoScores",
    "coco_annotations",
    "coco_average_precision",
    "coco_ground_truth",
    "spans_to_coco_rle",
    "spans_to_coco_rles",
    "write_coco_json",
]

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .matching import SourceArrays, bbox_overlap_pairs
from .metrics import DEFAULT_CLASS_NAMES

CATEGORY_ID_OFFSET = 1
"""COCO ``category_id = class_id + CATEGORY_ID_OFFSET``."""

IoUKind = Literal["bbox", "segm"]


@dataclass(frozen=True)
class CocoImage:
    """The image a catalog lives on, for COCO's image records.

    Parameters
    ----------
    width, height : `int`
        Image size in pixels.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates ``(x0, y0)`` of the image's pixel ``[0, 0]``; COCO coordinates are relative to it.
    image_id : `int`
        COCO image id.
    file_name : `str`
        Free-form file name recorded in the JSON (COCO requires the key).
    """

    width: int
    height: int
    xy0: tuple[int, int] = (0, 0)
    image_id: int = 1
    file_name: str = ""

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    def record(self) -> dict[str, Any]:
        """COCO ``images`` entry."""
        return {
            "id": int(self.image_id),
            "width": int(self.width),
            "height": int(self.height),
            "file_name": self.file_name,
            "xy0": [int(self.xy0[0]), int(self.xy0[1])],
        }


def spans_to_coco_rle(
    spans: np.ndarray, height: int, width: int, xy0: tuple[int, int] = (0, 0)
) -> dict[str, Any]:
    """Compressed COCO RLE of a footprint on an image, without rasterising the image.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(N, 3)`` spans in parent coordinates; pixels outside the image are dropped.
    height, width : `int`
        Image size.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of the image's pixel ``[0, 0]``.

    Returns
    -------
    rle : `dict`
        ``{"size": [height, width], "counts": bytes}`` as produced by ``pycocotools.mask.encode``.
    """
    return spans_to_coco_rles([spans], height, width, xy0)[0]


def spans_to_coco_rles(
    footprints: Sequence[np.ndarray],
    height: int,
    width: int,
    xy0: tuple[int, int] = (0, 0),
    max_pixels_per_batch: int = 4_000_000,
) -> list[dict[str, Any]]:
    """Compressed COCO RLEs of many footprints, vectorised over objects (see `spans_to_coco_rle`).

    Every footprint pixel gets its column-major index ``x * height + y``; runs of consecutive indices are
    COCO's runs.  Objects are processed in batches of at most ``max_pixels_per_batch`` pixels (but at least
    one object) to bound memory.
    """
    height, width = int(height), int(width)
    n_objects = len(footprints)
    if n_objects == 0:
        return []
    arrays = [np.asarray(f, dtype=np.int64).reshape(-1, 3) for f in footprints]
    owner = np.repeat(np.arange(n_objects), [a.shape[0] for a in arrays])
    spans = np.concatenate(arrays) - np.array([xy0[1], xy0[0], xy0[0]], dtype=np.int64)
    inside = (spans[:, 0] >= 0) & (spans[:, 0] < height) & (spans[:, 2] >= 0) & (spans[:, 1] < width)
    spans, owner = spans[inside], owner[inside]
    spans[:, 1:] = np.clip(spans[:, 1:], 0, width - 1)
    areas = np.bincount(owner, weights=spans[:, 2] - spans[:, 1] + 1, minlength=n_objects)
    counts: list[list[int]] = []
    first = 0
    while first < n_objects:
        batch_end = np.searchsorted(np.cumsum(areas[first:]), max_pixels_per_batch, side="right")
        last = first + max(1, int(batch_end))
        selected = (owner >= first) & (owner < last)
        counts.extend(
            _column_major_counts(spans[selected], owner[selected] - first, last - first, height, width)
        )
        first = last
    size = [height, width]
    return mask_utils.frPyObjects([{"size": size, "counts": c} for c in counts], height, width)


def _column_major_counts(
    spans: np.ndarray, owner: np.ndarray, n_objects: int, height: int, width: int
) -> list[list[int]]:
    """COCO uncompressed counts of footprints given in image coordinates (already clipped)."""
    lengths = spans[:, 2] - spans[:, 1] + 1
    pixel_span = np.repeat(np.arange(spans.shape[0]), lengths)
    first_pixel = np.cumsum(lengths) - lengths
    x = spans[pixel_span, 1] + np.arange(pixel_span.size) - first_pixel[pixel_span]
    linear = x * height + spans[pixel_span, 0]
    pixel_owner = owner[pixel_span]
    order = np.lexsort((linear, pixel_owner))
    linear, pixel_owner = linear[order], pixel_owner[order]
    # A run starts where the object changes or the column-major index jumps.
    starts = np.ones(linear.size, dtype=bool)
    starts[1:] = (pixel_owner[1:] != pixel_owner[:-1]) | (linear[1:] != linear[:-1] + 1)
    run_begin, run_owner = linear[starts], pixel_owner[starts]
    run_last = np.flatnonzero(np.append(starts[1:], True)) if linear.size else np.zeros(0, dtype=np.int64)
    run_end = linear[run_last] + 1
    # Gap before each run: from the end of the object's previous run, or from 0 for its first run.
    first_run = np.ones(run_begin.size, dtype=bool)
    first_run[1:] = run_owner[1:] != run_owner[:-1]
    previous_end = np.concatenate([[0], run_end[:-1]])
    previous_end[first_run] = 0
    interleaved = np.column_stack([run_begin - previous_end, run_end - run_begin]).ravel()
    runs_per_object = np.bincount(run_owner, minlength=n_objects)
    run_offsets = np.concatenate([[0], np.cumsum(runs_per_object)])
    total = height * width
    counts = []
    for k in range(n_objects):
        lo, hi = run_offsets[k], run_offsets[k + 1]
        if lo == hi:
            counts.append([total])
        else:
            counts.append(interleaved[2 * lo : 2 * hi].tolist() + [int(total - run_end[hi - 1])])
    return counts


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def coco_annotations(
    sources: SourceArrays,
    image: CocoImage,
    *,
    first_id: int = 1,
    with_segmentation: bool = True,
    class_agnostic: bool = False,
    image_id: int | None = None,
) -> list[dict[str, Any]]:
    """COCO annotation records of a catalog on an image.

    Parameters
    ----------
    sources : `~.matching.SourceArrays`
        Catalog with bounding boxes or footprints; ``class_id`` is required unless ``class_agnostic``.
    image : `CocoImage`
        The image (origin and size).
    first_id : `int`
        Id of the first annotation (COCO ids must be positive).
    with_segmentation : `bool`
        Add the RLE ``segmentation`` (needs footprints).
    class_agnostic : `bool`
        Put every source in category ``CATEGORY_ID_OFFSET`` (class 0) regardless of ``class_id``.
    image_id : `int`, optional
        Image id to record (default ``image.image_id``).

    Returns
    -------
    annotations : `list` [`dict`]
        One record per source: ``id, image_id, category_id, bbox`` (``[x, y, w, h]`` relative to the image),
        ``area`` (footprint area, else box area), ``iscrowd`` (0), ``source_index`` (row in the catalog),
        ``segmentation`` (compressed RLE), ``score`` and ``mag`` when available.
    """
    if first_id < 1:
        raise ValueError(f"COCO annotation ids must be positive, got first_id={first_id}")
    if sources.bbox is None:
        raise ValueError("COCO annotations need bounding boxes or footprints")
    if with_segmentation and sources.spans is None:
        raise ValueError("segmentation requested but the catalog has no footprints")
    if not class_agnostic and sources.class_id is None:
        raise ValueError("the catalog has no class_id; pass class_agnostic=True to ignore classes")
    areas = sources.areas()
    x0, y0 = image.xy0
    rles = (
        spans_to_coco_rles(sources.spans, image.height, image.width, image.xy0) if with_segmentation else []
    )
    annotations = []
    for i in range(len(sources)):
        x_min, y_min, x_max, y_max = sources.bbox[i]
        class_id = 0 if class_agnostic else int(sources.class_id[i])
        record: dict[str, Any] = {
            "id": first_id + i,
            "image_id": int(image.image_id if image_id is None else image_id),
            "category_id": class_id + CATEGORY_ID_OFFSET,
            "bbox": [
                float(x_min - x0),
                float(y_min - y0),
                float(x_max - x_min + 1),
                float(y_max - y_min + 1),
            ],
            "area": float(areas[i]),
            "iscrowd": 0,
            "source_index": i,
        }
        if with_segmentation:
            record["segmentation"] = rles[i]
        if sources.score is not None:
            record["score"] = float(sources.score[i])
        if sources.mag is not None:
            record["mag"] = _json_float(float(sources.mag[i]))
        annotations.append(record)
    return annotations


def _categories(class_names: Mapping[int, str] | None) -> list[dict[str, Any]]:
    names = dict(DEFAULT_CLASS_NAMES if class_names is None else class_names)
    return [{"id": class_id + CATEGORY_ID_OFFSET, "name": name} for class_id, name in sorted(names.items())]


def coco_ground_truth(
    entries: Sequence[tuple[CocoImage, SourceArrays]],
    class_names: Mapping[int, str] | None = None,
    with_segmentation: bool = True,
) -> dict[str, Any]:
    """A COCO-format ground-truth dataset (JSON-ready) from truth catalogs on one or more images.

    Parameters
    ----------
    entries : `~collections.abc.Sequence` [`tuple` [`CocoImage`, `~.matching.SourceArrays`]]
        Each image with its truth catalog; image ids must be unique.
    class_names : `~collections.abc.Mapping` [`int`, `str`], optional
        Class id to name (default ``{0: "star", 1: "galaxy"}``).
    with_segmentation : `bool`
        Include RLE masks (needs footprints).

    Returns
    -------
    dataset : `dict`
        ``info, images, annotations, categories``; RLE counts are ASCII strings so the dict is JSON-ready.
    """
    image_ids = [image.image_id for image, _ in entries]
    if len(set(image_ids)) != len(image_ids):
        raise ValueError(f"image ids must be unique, got {image_ids}")
    categories = _categories(class_names)
    known = {category["id"] - CATEGORY_ID_OFFSET for category in categories}
    annotations: list[dict[str, Any]] = []
    for image, sources in entries:
        if sources.class_id is not None:
            unknown = sorted(set(np.unique(sources.class_id).tolist()) - known)
            if unknown:
                raise ValueError(f"class ids {unknown} have no name in class_names {sorted(known)}")
        records = coco_annotations(
            sources,
            image,
            first_id=len(annotations) + 1,
            with_segmentation=with_segmentation,
            class_agnostic=sources.class_id is None,
        )
        for record in records:
            if "segmentation" in record:
                rle = record["segmentation"]
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        annotations.extend(records)
    return {
        "info": {"description": "meas_extensions_deepdisc truth labels", "version": "1.0"},
        "images": [image.record() for image, _ in entries],
        "annotations": annotations,
        "categories": categories,
    }


def write_coco_json(dataset: Mapping[str, Any], path: str | Path) -> Path:
    """Write a COCO dataset (e.g. from `coco_ground_truth`) as JSON; returns the path."""
    path = Path(path)
    with path.open("w") as stream:
        json.dump(dataset, stream, allow_nan=False)
    return path


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
