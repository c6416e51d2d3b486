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

"""`Detections`, the stitched result, and merging in those of a coarser (binned) pass."""

from __future__ import annotations

__all__ = ["Detections", "add_coarse_detections", "only_classes"]

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..binning import unbin_boxes, unbin_spans
from ..footprints import SPAN_DTYPE, Footprint


@dataclass
class Detections:
    """Detections of a whole patch, in patch (parent) pixel coordinates.

    Parameters
    ----------
    boxes : `numpy.ndarray`
        ``float64 [N, 4]`` model boxes ``x0, y0, x1, y1`` (detectron2 XYXY: pixel ``i`` spans
        ``[i, i + 1)``), parent coordinates.
    scores : `numpy.ndarray`
        ``float32 [N]`` detection scores.
    class_ids : `numpy.ndarray`
        ``int32 [N]`` predicted classes.
    class_probs : `numpy.ndarray`
        ``float32 [N, K]`` class probabilities (one-hot of ``class_ids`` when the model gives none).
    footprints : `list` [`numpy.ndarray`]
        ``int32 (n, 3)`` spans per detection (see `..footprints`), parent coordinates, never empty.
    tile_index : `numpy.ndarray`
        ``int32 [N]`` index (in `plan_tiles` order) of the tile the detection comes from.
    merged_duplicate : `numpy.ndarray`
        ``bool [N]``: a duplicate of this source from another tile was merged into it.
    stats : `dict`
        Run statistics (tiles, seconds, throughput, device, counts); plain Python values.
    split_from : `numpy.ndarray`, optional
        ``int32 [N]``: for the children of a footprint split at its peaks (`..peak_split`), one number per
        split footprint, the same for all of its children; -1 (the default) for every other detection.
        The catalog puts a split footprint's children in one family.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_probs: np.ndarray
    footprints: list[np.ndarray]
    tile_index: np.ndarray
    merged_duplicate: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)
    split_from: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = self.boxes.shape[0]
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.class_ids = np.asarray(self.class_ids, dtype=np.int32).reshape(-1)
        self.class_probs = np.asarray(self.class_probs, dtype=np.float32)
        if self.class_probs.ndim != 2 or self.class_probs.shape[0] != n:
            raise ValueError(f"class_probs must be [N={n}, K], got shape {self.class_probs.shape}")
        self.footprints = [np.asarray(f, dtype=SPAN_DTYPE).reshape(-1, 3) for f in self.footprints]
        self.tile_index = np.asarray(self.tile_index, dtype=np.int32).reshape(-1)
        self.merged_duplicate = np.asarray(self.merged_duplicate, dtype=bool).reshape(-1)
        if self.split_from is None:
            self.split_from = np.full(n, -1, dtype=np.int32)
        self.split_from = np.asarray(self.split_from, dtype=np.int32).reshape(-1)
        lengths = {
            "scores": self.scores.size,
            "class_ids": self.class_ids.size,
            "footprints": len(self.footprints),
            "tile_index": self.tile_index.size,
            "merged_duplicate": self.merged_duplicate.size,
            "split_from": self.split_from.size,
        }
        wrong = {name: size for name, size in lengths.items() if size != n}
        if wrong:
            raise ValueError(f"{n} boxes but mismatched lengths: {wrong}")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes ``K`` (columns of ``class_probs``)."""
        return int(self.class_probs.shape[1])

    @property
    def centers(self) -> np.ndarray:
        """``[N, 2]`` box centres ``(x, y)``, parent coordinates (pixel ``i`` is centred at ``i + 0.5``)."""
        return np.stack([self.boxes[:, [0, 2]].mean(axis=1), self.boxes[:, [1, 3]].mean(axis=1)], axis=1)

    def select(self, index: Any) -> Detections:
        """Subset by boolean mask, integer indices or slice (``stats`` are carried over)."""
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows)
        return Detections(
            boxes=self.boxes[rows],
            scores=self.scores[rows],
            class_ids=self.class_ids[rows],
            class_probs=self.class_probs[rows],
            footprints=[self.footprints[i] for i in rows],
            tile_index=self.tile_index[rows],
            merged_duplicate=self.merged_duplicate[rows],
            stats=dict(self.stats),
            split_from=self.split_from[rows],
        )

    def unbinned(self, factor: int, xy0: tuple[int, int], shape: tuple[int, int]) -> Detections:
        """Detections made on an image binned by ``factor``, in the unbinned image's coordinates.

        The binned image is `.binning.bin_image`'s; the unbinned one has origin ``xy0`` and
        ``shape = (height, width)``.  Each binned pixel of a footprint becomes its whole block.
        """
        return Detections(
            boxes=unbin_boxes(self.boxes, factor, xy0),
            scores=self.scores,
            class_ids=self.class_ids,
            class_probs=self.class_probs,
            footprints=[unbin_spans(f, factor, xy0, shape) for f in self.footprints],
            tile_index=self.tile_index,
            merged_duplicate=self.merged_duplicate,
            stats=dict(self.stats),
            split_from=self.split_from,
        )

    @staticmethod
    def concatenate(parts: Sequence[Detections]) -> Detections:
        """One `Detections` with the rows of ``parts`` in order (``stats`` of the first)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        return Detections(
            boxes=np.concatenate([p.boxes for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            class_ids=np.concatenate([p.class_ids for p in parts]),
            class_probs=np.concatenate([p.class_probs for p in parts]),
            footprints=[f for p in parts for f in p.footprints],
            tile_index=np.concatenate([p.tile_index for p in parts]),
            merged_duplicate=np.concatenate([p.merged_duplicate for p in parts]),
            stats=dict(parts[0].stats),
            split_from=_concatenated_split_groups(parts),
        )

    @staticmethod
    def empty(num_classes: int) -> Detections:
        """No detections, with ``num_classes`` probability columns."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        return Detections(
            boxes=np.zeros((0, 4)),
            scores=np.zeros(0),
            class_ids=np.zeros(0),
            class_probs=np.zeros((0, num_classes)),
            footprints=[],
            tile_index=np.zeros(0),
            merged_duplicate=np.zeros(0, dtype=bool),
        )


def _concatenated_split_groups(parts: Sequence[Detections]) -> np.ndarray:
    """The parts' ``split_from``, renumbered so that groups of different parts stay apart."""
    groups, offset = [], 0
    for part in parts:
        groups.append(np.where(part.split_from >= 0, part.split_from + offset, -1))
        offset += int(part.split_from.max()) + 1 if len(part) else 0
    return np.concatenate(groups) if groups else np.zeros(0, dtype=np.int32)


def add_coarse_detections(detections: Detections, coarse: Detections, merge_iou: float) -> Detections:
    """Add detections from a coarser pass (for instance the binned artifact pass) to a patch's detections.

    A coarse detection whose footprint overlaps a detection of the same class with an IoU of at least
    ``merge_iou`` is one object found twice: the higher score stays (with ``merged_duplicate`` set).
    Coarse rows get ``tile_index = -1``.

    Parameters
    ----------
    detections : `Detections`
        The patch's detections.
    coarse : `Detections`
        The coarse pass's, already in the same parent coordinates (`Detections.unbinned`).
    merge_iou : `float`
        Footprint IoU above which two detections of one class are the same object.

    Returns
    -------
    detections : `Detections`
        ``detections`` (minus the duplicates that lost) followed by the kept coarse detections.
    """
    if len(coarse) == 0:
        return detections
    coarse = coarse.select(slice(None))
    coarse.tile_index = np.full(len(coarse), -1, dtype=np.int32)
    keep_fine = np.ones(len(detections), dtype=bool)
    keep_coarse = np.ones(len(coarse), dtype=bool)
    fine_merged = detections.merged_duplicate.copy()
    coarse.merged_duplicate = coarse.merged_duplicate.copy()
    same_class = np.flatnonzero(np.isin(detections.class_ids, np.unique(coarse.class_ids)))
    for j in range(len(coarse)):
        box = coarse.boxes[j]
        for i in same_class:
            if not keep_fine[i] or detections.class_ids[i] != coarse.class_ids[j]:
                continue
            other = detections.boxes[i]
            if other[0] >= box[2] or other[2] <= box[0] or other[1] >= box[3] or other[3] <= box[1]:
                continue
            iou = Footprint(detections.footprints[i]).iou(Footprint(coarse.footprints[j]))
            if iou <= 0.0 or iou < merge_iou:
                continue
            if coarse.scores[j] > detections.scores[i]:
                keep_fine[i] = False
                coarse.merged_duplicate[j] = True
            else:
                keep_coarse[j] = False
                fine_merged[i] = True
                break
    fine = detections.select(slice(None))
    fine.merged_duplicate = fine_merged
    return Detections.concatenate([fine.select(keep_fine), coarse.select(keep_coarse)])


@contextlib.contextmanager
def only_classes(
    model: Any, class_ids: Sequence[int] | None, score_threshold: float | None = None
) -> Iterator[None]:
    """Make ``model`` report only ``class_ids`` while in the block.

    `None` means all classes; ``score_threshold``, if given, replaces the model's while in the block
    (``inference_class_ids`` of `.models.roi_heads`).
    """
    heads = getattr(model, "roi_heads", None)
    if class_ids is not None and not hasattr(heads, "inference_class_ids"):
        raise ValueError(f"model heads {type(heads).__name__} cannot restrict the classes they report")
    predictor = getattr(heads, "box_predictor", None)
    predictors = list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]
    if score_threshold is not None and not all(hasattr(p, "test_score_thresh") for p in predictors):
        raise ValueError(f"model heads {type(heads).__name__} have no score threshold to set")
    previous_ids = getattr(heads, "inference_class_ids", None)
    previous_thresholds = [getattr(p, "test_score_thresh", None) for p in predictors]
    if class_ids is not None:
        heads.inference_class_ids = tuple(int(c) for c in class_ids)
    if score_threshold is not None:
        for p in predictors:
            p.test_score_thresh = float(score_threshold)
    try:
        yield
    finally:
        if class_ids is not None:
            heads.inference_class_ids = previous_ids
        if score_threshold is not None:
            for p, value in zip(predictors, previous_thresholds):
                p.test_score_thresh = value
