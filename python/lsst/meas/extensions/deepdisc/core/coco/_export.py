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

"""Truth labels as COCO: run-length encoded masks from spans, annotations, ground-truth JSON."""

from __future__ import annotations

__all__ = [
    "CATEGORY_ID_OFFSET",
    "CocoImage",
    "coco_annotations",
    "coco_ground_truth",
    "spans_to_coco_rle",
    "spans_to_coco_rles",
    "write_coco_json",
]

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pycocotools import mask as mask_utils

from ..matching import SourceArrays
from ..metrics import DEFAULT_CLASS_NAMES

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
