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
"""Geometric augmentation of N-band training examples: flips, 90-degree rotations and random crops.

detectron2's transforms assume ``H x W x C`` images of at most a few channels and rasterised or polygon
masks; here the images are ``[C, H, W]`` cubes of any band count and the masks are spans, so the
transforms are small numpy functions that move image pixels and span pixels by the *same* integer map.
Masks therefore stay exact (no resampling) and boxes are always recomputed from the transformed spans.
Instances cropped away completely are dropped; partially cropped ones keep their clipped footprint.

All randomness comes from a `numpy.random.Generator` passed in by the caller, so a seed reproduces a
whole augmentation sequence.
"""

from __future__ import annotations

__all__ = [
    "AugmentConfig",
    "augment_example",
    "crop_example",
    "crop_spans",
    "flip_example",
    "flip_spans",
    "band_subset",
    "random_band_keep",
    "random_crop_box",
    "rot90_example",
    "rot90_spans",
]

import dataclasses
from dataclasses import dataclass

import numpy as np

from .footprints import SPAN_DTYPE, mask_to_spans, spans_bbox, spans_to_mask
from .training_data import TrainingExample


@dataclass(frozen=True)
class AugmentConfig:
    """Which random augmentations to apply.

    Parameters
    ----------
    flips : `bool`
        Random horizontal and vertical flips, each with probability 1/2.
    rot90 : `bool`
        Random rotation by ``k * 90`` degrees, ``k`` uniform in ``0..3``.
    crop_size : `int`, `float` or `None`
        Random crop: an `int` is a fixed side in pixels (clipped to the image), a `float` in ``(0, 1]`` a
        fraction of each side (``0.5`` is DeepDISC's "50% random crop"); `None` disables cropping.
    """

    flips: bool = True
    rot90: bool = True
    crop_size: int | float | None = None

    def __post_init__(self) -> None:
        size = self.crop_size
        if size is None:
            return
        if isinstance(size, bool) or not isinstance(size, int | float):
            raise TypeError(f"crop_size must be an int, a float or None, got {size!r}")
        if isinstance(size, int) and size < 1:
            raise ValueError(f"an integer crop_size is a side in pixels and must be >= 1, got {size}")
        if isinstance(size, float) and not 0.0 < size <= 1.0:
            raise ValueError(f"a float crop_size is a fraction of the image side in (0, 1], got {size}")


def _sorted_spans(spans: np.ndarray) -> np.ndarray:
    """Sort spans by ``(y, x_begin)``, the canonical order."""
    order = np.lexsort((spans[:, 1], spans[:, 0]))
    return np.ascontiguousarray(spans[order], dtype=SPAN_DTYPE)


def flip_spans(spans: np.ndarray, shape: tuple[int, int], axis: str) -> np.ndarray:
    """Mirror spans inside an image of ``shape = (height, width)``.

    Parameters
    ----------
    spans : `numpy.ndarray`
        ``(N, 3)`` spans in local coordinates.
    shape : `tuple` [`int`, `int`]
        Image ``(height, width)``.
    axis : `str`
        ``"x"`` mirrors columns (horizontal flip, ``x -> W - 1 - x``), ``"y"`` mirrors rows.

    Returns
    -------
    flipped : `numpy.ndarray`
        Canonically ordered spans of the mirrored footprint.
    """
    height, width = shape
    flipped = np.array(spans, dtype=SPAN_DTYPE).reshape(-1, 3)
    if axis == "x":
        flipped[:, 1], flipped[:, 2] = width - 1 - flipped[:, 2], width - 1 - flipped[:, 1]
    elif axis == "y":
        flipped[:, 0] = height - 1 - flipped[:, 0]
    else:
        raise ValueError(f"flip axis must be 'x' or 'y', got {axis!r}")
    return _sorted_spans(flipped)


def _rot90_point(x: int, y: int, shape: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    """Where ``np.rot90(image, 1)`` moves pixel ``(x, y)`` of an image of ``shape``; also the new shape.

    ``rotated[i, j] = image[j, W - 1 - i]``, i.e. ``(x, y) -> (y, W - 1 - x)`` and ``(H, W) -> (W, H)``.
    """
    height, width = shape
    return y, width - 1 - x, (width, height)


def rot90_spans(spans: np.ndarray, shape: tuple[int, int], k: int) -> np.ndarray:
    """Rotate spans as ``np.rot90(image, k)`` rotates an image of ``shape = (height, width)``.

    The footprint is rasterised on its own bounding box only, rotated and re-encoded, so the cost scales
    with the footprint and not with the image.
    """
    k %= 4
    spans = np.asarray(spans, dtype=SPAN_DTYPE).reshape(-1, 3)
    if k == 0 or spans.shape[0] == 0:
        return spans.copy()
    x0, y0, x1, y1 = spans_bbox(spans)
    local = spans_to_mask(spans, (y1 - y0 + 1, x1 - x0 + 1), (x0, y0))
    corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
    for _ in range(k):
        moved = [_rot90_point(x, y, shape) for x, y in corners]
        corners = [(x, y) for x, y, _ in moved]
        shape = moved[0][2]
    origin = (min(x for x, _ in corners), min(y for _, y in corners))
    return mask_to_spans(np.rot90(local, k), origin)


def crop_spans(spans: np.ndarray, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Clip spans to the box ``[x0, x0 + width) x [y0, y0 + height)`` and shift them to its origin.

    Returns
    -------
    cropped : `numpy.ndarray`
        Spans in the crop's local coordinates; empty ``(0, 3)`` when nothing of the footprint is inside.
    """
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
    y = spans[:, 0] - y0
    begin = spans[:, 1] - x0
    end = spans[:, 2] - x0
    keep = (y >= 0) & (y < height) & (end >= 0) & (begin < width)
    begin = np.clip(begin[keep], 0, width - 1)
    end = np.clip(end[keep], 0, width - 1)
    cropped = np.stack([y[keep], begin, end], axis=1)
    return np.ascontiguousarray(cropped, dtype=SPAN_DTYPE)


def _with_spans(
    example: TrainingExample, image: np.ndarray, valid: np.ndarray | None, spans: list[np.ndarray]
) -> TrainingExample:
    """A copy of ``example`` with a new image and valid map; instances with empty spans are dropped."""
    instances = [
        dataclasses.replace(label, spans=new_spans)
        for label, new_spans in zip(example.instances, spans)
        if new_spans.shape[0] > 0
    ]
    return dataclasses.replace(example, image=image, valid=valid, instances=instances)


def flip_example(example: TrainingExample, axis: str) -> TrainingExample:
    """Mirror an example along ``axis`` (``"x"``: left-right, ``"y"``: top-bottom)."""
    if axis not in ("x", "y"):
        raise ValueError(f"flip axis must be 'x' or 'y', got {axis!r}")
    image_axis = 2 if axis == "x" else 1
    image = np.ascontiguousarray(np.flip(example.image, axis=image_axis))
    valid = example.valid
    if valid is not None:
        valid = np.ascontiguousarray(np.flip(valid, axis=image_axis - 1))
    shape = (example.height, example.width)
    spans = [flip_spans(label.spans, shape, axis) for label in example.instances]
    return _with_spans(example, image, valid, spans)


def rot90_example(example: TrainingExample, k: int) -> TrainingExample:
    """Rotate an example by ``k * 90`` degrees counter-clockwise (as displayed with origin top-left)."""
    k = int(k) % 4
    if k == 0:
        return example
    image = np.ascontiguousarray(np.rot90(example.image, k, axes=(1, 2)))
    valid = None if example.valid is None else np.ascontiguousarray(np.rot90(example.valid, k))
    shape = (example.height, example.width)
    spans = [rot90_spans(label.spans, shape, k) for label in example.instances]
    return _with_spans(example, image, valid, spans)


def crop_example(example: TrainingExample, x0: int, y0: int, width: int, height: int) -> TrainingExample:
    """Cut the box ``[x0, x0 + width) x [y0, y0 + height)`` out of an example.

    Instances entirely outside the box are dropped; the others keep the clipped part of their footprint.
    """
    if width < 1 or height < 1:
        raise ValueError(f"crop size must be positive, got {width}x{height}")
    if x0 < 0 or y0 < 0 or x0 + width > example.width or y0 + height > example.height:
        raise ValueError(
            f"crop box x0={x0}, y0={y0}, {width}x{height} exceeds the {example.height}x{example.width} image"
        )
    image = np.ascontiguousarray(example.image[:, y0 : y0 + height, x0 : x0 + width])
    valid = None if example.valid is None else example.valid[y0 : y0 + height, x0 : x0 + width].copy()
    spans = [crop_spans(label.spans, x0, y0, width, height) for label in example.instances]
    return _with_spans(example, image, valid, spans)


def random_crop_box(
    shape: tuple[int, int], crop_size: int | float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Draw a crop box ``(x0, y0, width, height)`` of the configured size inside an image of ``shape``.

    An `int` ``crop_size`` is a side in pixels (clipped to the image), a `float` a fraction of each side.
    """
    height, width = shape
    if isinstance(crop_size, float):
        crop_width = max(1, round(crop_size * width))
        crop_height = max(1, round(crop_size * height))
    else:
        crop_width, crop_height = min(int(crop_size), width), min(int(crop_size), height)
    x0 = int(rng.integers(0, width - crop_width + 1))
    y0 = int(rng.integers(0, height - crop_height + 1))
    return x0, y0, crop_width, crop_height


def augment_example(
    example: TrainingExample, config: AugmentConfig, rng: np.random.Generator
) -> TrainingExample:
    """Apply a random crop, random flips and a random 90-degree rotation, as configured.

    Parameters
    ----------
    example : `TrainingExample`
        Input example (not modified).
    config : `AugmentConfig`
        Which augmentations are enabled.
    rng : `numpy.random.Generator`
        Source of randomness; the same generator state gives the same result.

    Returns
    -------
    augmented : `TrainingExample`
        A new example; image, valid map and every instance footprint transformed by the same pixel map.
    """
    if config.crop_size is not None:
        box = random_crop_box((example.height, example.width), config.crop_size, rng)
        example = crop_example(example, *box)
    if config.flips:
        flip_x, flip_y = rng.integers(0, 2, size=2)
        if flip_x:
            example = flip_example(example, "x")
        if flip_y:
            example = flip_example(example, "y")
    if config.rot90:
        example = rot90_example(example, int(rng.integers(0, 4)))
    return example


def random_band_keep(n_bands: int, min_bands: int, rng: np.random.Generator) -> np.ndarray:
    """Which bands an example keeps under band dropout.

    The number kept is uniform in ``min_bands .. n_bands - 1`` and the bands kept are a uniform random
    subset of that size, so that single bands and the common three-band sets are all seen in training
    (independent per-band dropout would almost never leave a single band).

    Returns
    -------
    keep : `numpy.ndarray`
        Boolean ``[n_bands]``; all True when there are not more than ``min_bands`` bands.
    """
    if n_bands <= min_bands:
        return np.ones(n_bands, dtype=bool)
    return band_subset(n_bands, int(rng.integers(min_bands, n_bands)), rng)


def band_subset(n_bands: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random set of ``count`` of ``n_bands`` bands, as a boolean ``[n_bands]`` mask."""
    keep = np.zeros(n_bands, dtype=bool)
    keep[rng.choice(n_bands, size=count, replace=False)] = True
    return keep
