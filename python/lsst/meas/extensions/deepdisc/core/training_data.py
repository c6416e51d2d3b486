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
"""The training-example format shared by label building, augmentation and training.

A `TrainingExample` is one labelled cutout: a scaled ``[C, H, W]`` float32 image (the numbers the network
sees, after a `~lsst.meas.extensions.deepdisc.core.scaling.ScalingSpec`), and one `InstanceLabel` per
source, whose footprint is stored as spans (see `~lsst.meas.extensions.deepdisc.core.footprints`) in the
example's *local* pixel coordinates (pixel ``[0, 0]`` of the image is ``x = 0, y = 0``).  Spans keep masks
exact and small; `to_detectron2_dict` rasterises them only when a batch is built.

Training and validation sets are split by patch, never by example (`choose_split`: examples of one patch
overlap and share sources); `pixel_statistics` and `training_key` summarise a training set.
"""

from __future__ import annotations

__all__ = [
    "InstanceLabel",
    "PatchKey",
    "TrainingExample",
    "choose_split",
    "parse_patch_spec",
    "pixel_statistics",
    "to_detectron2_dict",
    "training_key",
]

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .footprints import SPAN_DTYPE, spans_area, spans_bbox, spans_to_mask


@dataclass
class InstanceLabel:
    """The label of one source in a training example.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(N, 3)`` ``int32`` spans ``(y, x_begin, x_end)`` (inclusive) in the example's local pixel
        coordinates; must not be empty.
    class_id : `int`
        Contiguous class index (``0 .. n_classes - 1``) as the model's class names define it.
    source_id : `int`
        Identifier of the source in its catalogue (0 when unknown), for tracing labels back.
    magnitude : `float`
        Magnitude of the source (NaN when unknown), for magnitude-binned metrics.
    blendedness : `float`
        Blendedness ``1 - S_k.S_k / S_all.S_k`` (NaN when unknown).
    """

    spans: np.ndarray
    class_id: int
    source_id: int = 0
    magnitude: float = math.nan
    blendedness: float = math.nan

    def __post_init__(self) -> None:
        spans = np.asarray(self.spans)
        if spans.size % 3 or (spans.ndim != 2 and spans.size != 0):
            raise ValueError(f"instance spans must have shape (N, 3), got {spans.shape}")
        spans = spans.reshape(-1, 3)
        if spans.shape[0] == 0:
            raise ValueError(f"instance of source {self.source_id} has an empty footprint")
        if not np.issubdtype(spans.dtype, np.integer):
            raise TypeError(f"instance spans must be integers, got dtype {spans.dtype}")
        if np.any(spans[:, 2] < spans[:, 1]):
            raise ValueError(f"instance of source {self.source_id} has a span with x_end < x_begin")
        self.spans = np.ascontiguousarray(spans, dtype=SPAN_DTYPE)
        if int(self.class_id) != self.class_id or self.class_id < 0:
            raise ValueError(f"class_id must be a non-negative integer, got {self.class_id!r}")
        self.class_id = int(self.class_id)
        self.source_id = int(self.source_id)
        self.magnitude = float(self.magnitude)
        self.blendedness = float(self.blendedness)

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Inclusive pixel bounding box ``(x0, y0, x1, y1)`` of the footprint."""
        return spans_bbox(self.spans)

    @property
    def area(self) -> int:
        """Number of pixels in the footprint."""
        return spans_area(self.spans)


@dataclass
class TrainingExample:
    """One labelled, already scaled image cutout.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``[C, H, W]`` float32 cube, already scaled; every value must be finite.
    instances : `list` [`InstanceLabel`]
        Labelled sources; their spans must lie inside the image.
    example_id : `str`
        Unique identifier (e.g. ``"tract9813_patch40_cut3"``).
    bands : `tuple` [`str`, ...]
        Band of each image plane, in order.
    valid : `numpy.ndarray` or `None`
        Optional ``[H, W]`` boolean map of pixels with data (False for NO_DATA), carried through
        augmentation for callers that weight or filter by coverage.
    """

    image: np.ndarray
    instances: list[InstanceLabel]
    example_id: str
    bands: tuple[str, ...]
    valid: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        image = np.asarray(self.image)
        if image.ndim != 3:
            raise ValueError(f"example {self.example_id!r}: image must be [C, H, W], got shape {image.shape}")
        if not np.issubdtype(image.dtype, np.floating):
            raise TypeError(f"example {self.example_id!r}: image must be floating point, got {image.dtype}")
        image = np.ascontiguousarray(image, dtype=np.float32)
        if not np.all(np.isfinite(image)):
            raise ValueError(
                f"example {self.example_id!r}: image has {int((~np.isfinite(image)).sum())} non-finite "
                "values; scale it with a ScalingSpec first"
            )
        self.image = image
        self.bands = tuple(str(band) for band in self.bands)
        if len(self.bands) != image.shape[0]:
            raise ValueError(
                f"example {self.example_id!r}: {len(self.bands)} band names for {image.shape[0]} image planes"
            )
        self.instances = list(self.instances)
        height, width = self.height, self.width
        for label in self.instances:
            if not isinstance(label, InstanceLabel):
                raise TypeError(f"example {self.example_id!r}: instances must be InstanceLabel objects")
            x0, y0, x1, y1 = label.bbox
            if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
                raise ValueError(
                    f"example {self.example_id!r}: source {label.source_id} bbox {label.bbox} is outside "
                    f"the {height}x{width} image (spans must be in local pixel coordinates)"
                )
        if self.valid is not None:
            valid = np.asarray(self.valid, dtype=bool)
            if valid.shape != (height, width):
                raise ValueError(
                    f"example {self.example_id!r}: valid map shape {valid.shape} != image {(height, width)}"
                )
            self.valid = valid

    @property
    def height(self) -> int:
        """Image height in pixels."""
        return int(self.image.shape[1])

    @property
    def width(self) -> int:
        """Image width in pixels."""
        return int(self.image.shape[2])

    @property
    def class_ids(self) -> np.ndarray:
        """``int64`` class index of every instance."""
        return np.array([label.class_id for label in self.instances], dtype=np.int64)

    def masks(self) -> np.ndarray:
        """Boolean ``[N, H, W]`` masks of the instances."""
        shape = (self.height, self.width)
        out = np.zeros((len(self.instances), *shape), dtype=bool)
        for index, label in enumerate(self.instances):
            out[index] = spans_to_mask(label.spans, shape)
        return out

    def boxes_xyxy(self) -> np.ndarray:
        """``float32`` ``[N, 4]`` boxes in detectron2's continuous ``XYXY_ABS`` convention.

        A pixel ``i`` covers ``[i, i + 1)``, so the inclusive bbox ``(x0, y0, x1, y1)`` becomes
        ``(x0, y0, x1 + 1, y1 + 1)`` - the box detectron2's ``BitMasks.get_bounding_boxes`` gives.
        """
        boxes = np.zeros((len(self.instances), 4), dtype=np.float32)
        for index, label in enumerate(self.instances):
            x0, y0, x1, y1 = label.bbox
            boxes[index] = (x0, y0, x1 + 1, y1 + 1)
        return boxes


def to_detectron2_dict(example: TrainingExample) -> dict[str, Any]:
    """Convert an example into the input dict of a detectron2 ``GeneralizedRCNN`` in training mode.

    The masks are full-image `~detectron2.structures.BitMasks`, one byte per pixel and instance: a
    1024 x 1024 example with 1000 labelled sources needs 1 GB, so dense fields should be trained on
    crops (``TrainingConfig.crop_size``) or smaller cutouts.

    Parameters
    ----------
    example : `TrainingExample`
        The (possibly augmented) example.

    Returns
    -------
    record : `dict`
        ``{"image": float32 tensor [C, H, W], "height": H, "width": W, "image_id": example_id,
        "instances": Instances(gt_boxes=Boxes, gt_classes=int64 tensor, gt_masks=BitMasks)}``.
    """
    from detectron2.structures import BitMasks, Boxes, Instances

    shape = (example.height, example.width)
    instances = Instances(shape)
    instances.gt_boxes = Boxes(torch.from_numpy(example.boxes_xyxy()))
    instances.gt_classes = torch.from_numpy(example.class_ids)
    instances.gt_masks = BitMasks(torch.from_numpy(example.masks()))
    return {
        # A copy: the model must never write into the example's buffer (augmentation may share it).
        "image": torch.from_numpy(example.image.copy()),
        "height": example.height,
        "width": example.width,
        "image_id": example.example_id,
        "instances": instances,
    }


def pixel_statistics(examples: Sequence[TrainingExample]) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation of the valid pixels of scaled examples.

    Parameters
    ----------
    examples : `~collections.abc.Sequence` [`TrainingExample`]
        The training examples (all with the same bands).

    Returns
    -------
    mean, std : `list` [`float`]
        One number per band; a band with no spread gets a standard deviation of 1 (never a division by 0).

    Raises
    ------
    ValueError
        If the examples have no valid pixel.
    """
    n_bands = examples[0].image.shape[0]
    sums = np.zeros(n_bands)
    squares = np.zeros(n_bands)
    count = 0
    for example in examples:
        valid = example.valid if example.valid is not None else np.ones(example.image.shape[1:], bool)
        pixels = example.image[:, valid].astype(np.float64)
        sums += pixels.sum(axis=1)
        squares += np.square(pixels).sum(axis=1)
        count += pixels.shape[1]
    if count == 0:
        raise ValueError("the training examples have no valid pixel to compute the pixel statistics from")
    mean = sums / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    # A constant band (e.g. fully saturated scaling) must not divide by zero.
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return [float(v) for v in mean], [float(v) for v in std]


def training_key(
    settings: Mapping[str, Any], train: Sequence[TrainingExample], validation: Sequence[TrainingExample]
) -> str:
    """16 hex digits of a hash of the training settings and the training data (labels and geometry).

    Parameters
    ----------
    settings : `~collections.abc.Mapping`
        Everything besides the data that determines the training (JSON-serialisable, ``str`` otherwise).
    train, validation : `~collections.abc.Sequence` [`TrainingExample`]
        The two example sets (their order does not matter).

    Returns
    -------
    key : `str`
        Equal for equal settings and data; differs when either changes.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for role, examples in (("train", train), ("validation", validation)):
        for example in sorted(examples, key=lambda item: item.example_id):
            header = [role, example.example_id, list(example.bands), example.height, example.width]
            digest.update(json.dumps(header).encode())
            for label in example.instances:
                digest.update(np.int64([label.class_id, label.source_id]).tobytes())
                digest.update(label.spans.tobytes())
    return digest.hexdigest()[:16]


# -------------------------------------------------------------------------------------- split by patch

PatchKey = tuple[int, int]
"""A patch as ``(tract, patch)``."""


def parse_patch_spec(spec: str) -> tuple[int | None, int]:
    """Parse ``"TRACT:PATCH"`` (or ``"PATCH"``, any tract) into ``(tract or None, patch)``."""
    text = str(spec).strip()
    tract_text, separator, patch_text = text.rpartition(":")
    try:
        patch = int(patch_text)
        tract = int(tract_text) if separator else None
    except ValueError:
        raise ValueError(f"patch {spec!r} must be 'TRACT:PATCH' or 'PATCH' (integers)") from None
    if patch < 0 or (tract is not None and tract < 0):
        raise ValueError(f"patch {spec!r} has a negative tract or patch number")
    return tract, patch


def _select_patches(keys: Iterable[PatchKey], specs: Sequence[str], what: str) -> list[PatchKey]:
    """The keys named by ``specs``; a spec naming none of them is an error (a typo, or a too-narrow query)."""
    keys = sorted(keys)
    selected: set[PatchKey] = set()
    for spec in specs:
        tract, patch = parse_patch_spec(spec)
        matching = [key for key in keys if key[1] == patch and (tract is None or key[0] == tract)]
        if not matching:
            raise ValueError(
                f"{what} names patch {spec!r}, but the inputs have no labels for it; patches with labels: "
                f"{[f'{t}:{p}' for t, p in keys]}"
            )
        selected.update(matching)
    return sorted(selected)


def choose_split(
    keys: Iterable[PatchKey],
    train_patches: Sequence[str] = (),
    validation_patches: Sequence[str] = (),
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[PatchKey], list[PatchKey]]:
    """Split patches into training and validation sets.

    Parameters
    ----------
    keys : iterable of `PatchKey`
        Every patch with labels.
    train_patches : sequence of `str`
        Patches to train on (``"TRACT:PATCH"`` or ``"PATCH"``); empty: every patch not used for validation.
    validation_patches : sequence of `str`
        Validation patches; empty: ``round(validation_fraction * len(keys))`` of the patches not in
        ``train_patches`` (at least one when the fraction is positive and one patch is left to train on),
        drawn with ``seed`` from the sorted list, so the result depends only on the set of patches.
    validation_fraction : `float`
        In ``[0, 1)``.
    seed : `int`
        Seed of the draw.

    Returns
    -------
    train, validation : `list` [`PatchKey`]
        Sorted, disjoint.

    Raises
    ------
    ValueError
        For unknown or overlapping patches, or no training patch.
    """
    keys = sorted(set(keys))
    if not keys:
        raise ValueError("no patch has training labels; check the input collections and the data query")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    explicit_train = _select_patches(keys, train_patches, "trainPatches") if train_patches else None
    if validation_patches:
        validation = _select_patches(keys, validation_patches, "validationPatches")
    else:
        candidates = [key for key in keys if explicit_train is None or key not in explicit_train]
        n_val = round(validation_fraction * len(keys))
        if validation_fraction > 0 and len(keys) >= 2:
            n_val = max(n_val, 1)
        if explicit_train is None:
            n_val = min(n_val, len(keys) - 1)
        n_val = min(n_val, len(candidates))
        order = np.random.default_rng(seed).permutation(len(candidates))
        validation = sorted(candidates[index] for index in order[:n_val])
    train = explicit_train if explicit_train is not None else [key for key in keys if key not in validation]
    overlap = sorted(set(train) & set(validation))
    if overlap:
        raise ValueError(
            f"patches {[f'{t}:{p}' for t, p in overlap]} are in both the training and validation sets"
        )
    if not train:
        raise ValueError(
            "no patch is left for training; shorten validationPatches or lower validationFraction"
        )
    return train, validation
