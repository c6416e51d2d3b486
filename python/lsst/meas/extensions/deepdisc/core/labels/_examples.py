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

"""Labels cut into training examples (tiles) and exported as COCO."""

from __future__ import annotations

__all__ = ["examples_to_coco", "labels_to_coco", "labels_to_examples", "tile_origins"]

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from ..augment import crop_spans
from ..coco import CocoImage, coco_ground_truth
from ..footprints import spans_area
from ..matching import SourceArrays
from ..multiband import MultibandImage
from ..scaling import ScalingSpec
from ..training_data import InstanceLabel, TrainingExample
from ._build import _as_spans
from ._config import LabelConfig


def tile_origins(length: int, tile_size: int, overlap: int = 0) -> list[int]:
    """Start offsets of tiles covering ``[0, length)``: stride ``tile_size - overlap``, last tile flush.

    A length no larger than ``tile_size`` gives one tile at 0 (of the full length).
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile_size {tile_size}")
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size + 1, tile_size - overlap))
    if starts[-1] + tile_size < length:
        starts.append(length - tile_size)
    return starts


def labels_to_examples(
    image: MultibandImage,
    labels: Table,
    scaling: ScalingSpec,
    *,
    tile_size: int = 512,
    overlap: int = 0,
    min_fraction_inside: float = 0.5,
    max_no_data_fraction: float = 0.3,
    invalid_planes: Sequence[str] | None = None,
    skip_empty: bool = True,
    example_prefix: str = "",
) -> list[TrainingExample]:
    """Cut a labelled patch into scaled training images.

    The whole patch is scaled once (as inference does), then cut into square tiles of ``tile_size`` pixels
    (smaller when the patch is) laid out by `tile_origins`.  A label goes into a tile when at least
    ``min_fraction_inside`` of its footprint lies inside; its mask is clipped to the tile and shifted to
    the tile's local coordinates.  Labels mostly outside a tile are left out of it (the pixels they cover
    there are unlabelled).

    Parameters
    ----------
    image : `MultibandImage`
        The patch, with the bands (and their order) the model is trained on.
    labels : `astropy.table.Table`
        Output of `build_labels` (or the same table read back from the Butler).
    scaling : `~.scaling.ScalingSpec`
        Contrast scaling of the model.
    tile_size : `int`
        Side of the tiles (pixels).
    overlap : `int`
        Overlap of neighbouring tiles (0: non-overlapping, the last one flush with the border).
    min_fraction_inside : `float`
        Fraction of a footprint that must be inside a tile for the label to be kept there, in ``(0, 1]``.
    max_no_data_fraction : `float`
        Tiles with more pixels without data than this are skipped.
    invalid_planes : sequence of `str`, optional
        Planes of pixels without data (default: the scaling's ``invalid_planes``).
    skip_empty : `bool`
        Skip tiles without any label.
    example_prefix : `str`
        Prefix of the example ids (``<prefix>x<x0>_y<y0>``, parent coordinates of the tile corner).

    Returns
    -------
    examples : `list` [`TrainingExample`]
        Examples with ``valid`` maps and metadata ``xy0`` (parent coordinates of the tile) and ``tile``.
    """
    if not 0.0 < min_fraction_inside <= 1.0:
        raise ValueError(f"min_fraction_inside must be in (0, 1], got {min_fraction_inside}")
    if not 0.0 <= max_no_data_fraction <= 1.0:
        raise ValueError(f"max_no_data_fraction must be in [0, 1], got {max_no_data_fraction}")
    for name in ("footprint", "class_id", "source_id"):
        if name not in labels.colnames:
            raise KeyError(f"label table has no {name!r} column; it has {labels.colnames}")
    planes = tuple(scaling.invalid_planes if invalid_planes is None else invalid_planes)
    scaled, _ = scaling.apply(image)
    no_data = image.invalid_pixels(planes).any(axis=0)
    spans_list = [_as_spans(value) for value in labels["footprint"]]
    areas = np.array([spans_area(spans) for spans in spans_list], dtype=np.int64)
    boxes = np.array(
        [
            (s[:, 1].min(), s[:, 0].min(), s[:, 2].max(), s[:, 0].max()) if s.shape[0] else (0, 0, -1, -1)
            for s in spans_list
        ],
        dtype=np.int64,
    ).reshape(-1, 4)
    class_ids = np.asarray(labels["class_id"], dtype=np.int64)
    source_ids = np.asarray(labels["source_id"], dtype=np.int64)
    unknown = np.full(len(labels), np.nan)
    mags = np.asarray(labels["mag"], dtype=float) if "mag" in labels.colnames else unknown
    blend = np.asarray(labels["blendedness"], dtype=float) if "blendedness" in labels.colnames else unknown
    x_begin, y_begin = image.xy0
    examples = []
    tile_height = min(tile_size, image.height)
    tile_width = min(tile_size, image.width)
    for ty in tile_origins(image.height, tile_size, overlap):
        for tx in tile_origins(image.width, tile_size, overlap):
            tile_no_data = no_data[ty : ty + tile_height, tx : tx + tile_width]
            if tile_no_data.mean() > max_no_data_fraction:
                continue
            px0, py0 = x_begin + tx, y_begin + ty
            overlapping = np.flatnonzero(
                (boxes[:, 2] >= px0)
                & (boxes[:, 0] < px0 + tile_width)
                & (boxes[:, 3] >= py0)
                & (boxes[:, 1] < py0 + tile_height)
            )
            instances = []
            for index in overlapping:
                local = crop_spans(spans_list[index], px0, py0, tile_width, tile_height)
                inside = spans_area(local)
                if inside == 0 or inside < min_fraction_inside * areas[index]:
                    continue
                instances.append(
                    InstanceLabel(
                        spans=local,
                        class_id=int(class_ids[index]),
                        source_id=int(source_ids[index]),
                        magnitude=float(mags[index]),
                        blendedness=float(blend[index]),
                    )
                )
            if skip_empty and not instances:
                continue
            examples.append(
                TrainingExample(
                    image=scaled[:, ty : ty + tile_height, tx : tx + tile_width],
                    instances=instances,
                    example_id=f"{example_prefix}x{px0}_y{py0}",
                    bands=image.bands,
                    valid=~tile_no_data,
                    metadata={"xy0": (px0, py0), "tile": (tx, ty, tile_width, tile_height)},
                )
            )
    return examples


def _class_mapping(labels: Table, class_names: Sequence[str] | Mapping[int, str] | None) -> dict[int, str]:
    if class_names is None:
        class_names = labels.meta.get("class_names", LabelConfig().class_names)
    if isinstance(class_names, Mapping):
        return {int(k): str(v) for k, v in class_names.items()}
    return dict(enumerate(str(name) for name in class_names))


def labels_to_coco(
    labels: Table,
    image: MultibandImage | CocoImage,
    *,
    image_id: int = 1,
    file_name: str = "",
    class_names: Sequence[str] | Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """COCO ground truth (JSON-ready dict, RLE masks) of one labelled patch.

    Parameters
    ----------
    labels : `astropy.table.Table`
        Output of `build_labels`.
    image : `MultibandImage` or `~.coco.CocoImage`
        The patch (its size and ``xy0``; COCO coordinates are relative to its corner).
    image_id : `int`
        COCO image id (ignored when ``image`` is a `~.coco.CocoImage`).
    file_name : `str`
        File name recorded for the image (ignored when ``image`` is a `~.coco.CocoImage`).
    class_names : sequence or mapping, optional
        Class names by id (default: the table's ``class_names`` metadata, else star/galaxy).

    Returns
    -------
    dataset : `dict`
        ``info, images, annotations, categories`` (``category_id = class_id + 1``); write it with
        `~.coco.write_coco_json`.  Annotations carry ``source_index`` (row) and ``mag``.
    """
    if isinstance(image, MultibandImage):
        image = CocoImage(
            width=image.width, height=image.height, xy0=image.xy0, image_id=image_id, file_name=file_name
        )
    sources = SourceArrays(
        x=np.asarray(labels["centroid_x"], dtype=float),
        y=np.asarray(labels["centroid_y"], dtype=float),
        spans=[_as_spans(value) for value in labels["footprint"]],
        class_id=np.asarray(labels["class_id"], dtype=np.int64),
        mag=np.asarray(labels["mag"], dtype=float) if "mag" in labels.colnames else None,
    )
    return coco_ground_truth([(image, sources)], class_names=_class_mapping(labels, class_names))


def examples_to_coco(
    examples: Sequence[TrainingExample], class_names: Sequence[str] | Mapping[int, str] | None = None
) -> dict[str, Any]:
    """COCO ground truth of training examples: one COCO image per example (``file_name`` = example id).

    Parameters
    ----------
    examples : sequence of `TrainingExample`
        Examples from `labels_to_examples` (instance spans in local coordinates).
    class_names : sequence or mapping, optional
        Class names by id (default star/galaxy).
    """
    entries = []
    for image_id, example in enumerate(examples, start=1):
        instances = example.instances
        spans = [label.spans for label in instances]
        centres = [((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0) for b in (label.bbox for label in instances)]
        sources = SourceArrays(
            x=np.array([c[0] for c in centres], dtype=float),
            y=np.array([c[1] for c in centres], dtype=float),
            bbox=np.array([label.bbox for label in instances], dtype=float).reshape(-1, 4),
            spans=spans,
            class_id=np.array([label.class_id for label in instances], dtype=np.int64),
            mag=np.array([label.magnitude for label in instances], dtype=float),
        )
        entries.append(
            (CocoImage(example.width, example.height, (0, 0), image_id, example.example_id), sources)
        )
    if class_names is None:
        class_names = LabelConfig().class_names
    mapping = (
        {int(k): str(v) for k, v in class_names.items()}
        if isinstance(class_names, Mapping)
        else dict(enumerate(str(name) for name in class_names))
    )
    return coco_ground_truth(entries, class_names=mapping)
