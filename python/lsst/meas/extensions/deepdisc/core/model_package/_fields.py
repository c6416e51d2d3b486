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

"""Checks that turn a package's fields into plain, validated data (strings, numbers, YAML-safe trees)."""

from __future__ import annotations

__all__: list[str] = []

import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..star_galaxy import EnsembleClassifier, StarGalaxyError
from ._archive import ModelPackageError


def _to_plain(value: Any, where: str) -> Any:
    """Copy ``value`` as YAML-safe plain data (dict/list/str/int/float/bool/None), or raise."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.generic) and isinstance(value.item(), bool | int | float | str):
        return value.item()
    if isinstance(value, np.ndarray):
        return _to_plain(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ModelPackageError(f"{where} has a non-string key {key!r}; only plain data is allowed")
            out[key] = _to_plain(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_to_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ModelPackageError(
        f"{where} holds a {type(value).__name__} ({value!r:.80}); a model package stores plain data only "
        "(mappings, lists, strings, numbers, booleans, null)"
    )


def _string_tuple(value: Any, what: str, *, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ModelPackageError(f"{what} must be a list of strings, got {value!r}")
    items = tuple(value)
    if not items and not allow_empty:
        raise ModelPackageError(f"{what} must not be empty")
    for item in items:
        if not isinstance(item, str) or not item:
            raise ModelPackageError(f"{what} must hold non-empty strings, got {item!r}")
    duplicates = sorted({item for item in items if items.count(item) > 1})
    if duplicates:
        raise ModelPackageError(f"{what} {list(items)} has duplicates {duplicates}")
    return items


def _float_tuple(value: Any, what: str, length: int, *, positive: bool) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().reshape(-1).tolist()
    elif isinstance(value, np.ndarray):
        value = value.reshape(-1).tolist()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ModelPackageError(f"{what} must be a list of numbers, got {value!r}")
    try:
        numbers = tuple(float(v) for v in value if not isinstance(v, bool))
    except (TypeError, ValueError):
        raise ModelPackageError(f"{what} must be a list of numbers, got {value!r}") from None
    if len(numbers) != len(value) or len(numbers) != length:
        raise ModelPackageError(f"{what} needs one number per band ({length}), got {list(value)}")
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        requirement = "finite and positive" if positive else "finite"
        raise ModelPackageError(f"{what} must be {requirement}: {list(numbers)}")
    return numbers


def _tensor_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor as a flat uint8 tensor (bit-exact comparison, NaN included)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _tensors_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_tensor_bytes(a), _tensor_bytes(b))


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def _checked_min_bands(min_bands: Any, band_availability: bool, n_bands: int) -> int | None:
    """``min_bands`` of a package with ``n_bands`` bands: 1 by default for a band-availability model."""
    if not band_availability:
        if min_bands is not None:
            raise ModelPackageError(
                f"min_bands {min_bands!r} is set but the model config has no band_availability: "
                "such a model needs all of its bands"
            )
        return None
    if min_bands is None:
        return 1
    if isinstance(min_bands, bool) or not isinstance(min_bands, int):
        raise ModelPackageError(f"min_bands must be an integer, got {min_bands!r}")
    if not 1 <= min_bands <= n_bands:
        raise ModelPackageError(f"min_bands must be in [1, {n_bands}], got {min_bands}")
    return min_bands


def _checked_band_count_thresholds(
    thresholds: Any, min_bands: int | None, n_bands: int
) -> dict[int, float] | None:
    """Operating points by band count, keyed by integers in ``[min_bands, n_bands - 1]``, in ``[0, 1]``."""
    if thresholds is None:
        return None
    if min_bands is None:
        raise ModelPackageError("band_count_thresholds need a model with min_bands")
    if not isinstance(thresholds, Mapping):
        raise ModelPackageError(f"band_count_thresholds must be a mapping, got {thresholds!r}")
    checked = {}
    for count, threshold in thresholds.items():
        # Metadata keys are strings (plain data); in memory they are band counts.
        count = int(count) if isinstance(count, str) and count.isdigit() else count
        if isinstance(count, bool) or not isinstance(count, int) or not min_bands <= count < n_bands:
            raise ModelPackageError(
                f"band_count_thresholds key {count!r} must be a band count in [{min_bands}, {n_bands - 1}]"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
            raise ModelPackageError(f"band_count_thresholds[{count}] must be in [0, 1], got {threshold!r}")
        checked[count] = float(threshold)
    return checked


def _checked_classifiers(
    classifiers: Any,
    kind: type[EnsembleClassifier],
    key: str,
    bands: tuple[str, ...],
    class_names: tuple[str, ...],
) -> tuple[Any, ...] | None:
    """A package's second-stage classifiers of one ``kind`` (read from plain data), checked against the model.

    ``key`` is the package field (``star_galaxy``, ``reliability``).  A single classifier is accepted for
    one; the order is kept (the detection task uses the first whose bands it has).
    """
    if classifiers is None:
        return None
    if isinstance(classifiers, kind | Mapping):
        classifiers = [classifiers]
    if not isinstance(classifiers, Sequence) or isinstance(classifiers, str) or not classifiers:
        raise ModelPackageError(f"{key} must be a non-empty list of {kind.WHAT}s")
    checked = []
    for index, classifier in enumerate(classifiers):
        try:
            if isinstance(classifier, Mapping):
                classifier = kind.from_dict(classifier)
        except StarGalaxyError as exc:
            raise ModelPackageError(f"{key}[{index}]: {exc}") from None
        if type(classifier) is not kind:
            raise ModelPackageError(
                f"{key}[{index}] must be a {kind.__name__}, got {type(classifier).__name__}"
            )
        extra = [band for band in classifier.bands if band not in bands]
        if extra:
            raise ModelPackageError(
                f"{key}[{index}] reads bands {extra} that the model does not have ({bands})"
            )
        checked.append(classifier)
    if "star" not in class_names or "galaxy" not in class_names:
        raise ModelPackageError(f"{key} needs a model with classes 'star' and 'galaxy', not {class_names}")
    return tuple(checked)
