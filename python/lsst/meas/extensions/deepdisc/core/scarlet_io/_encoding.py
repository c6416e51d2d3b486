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

"""The format's encoding: schema versions, float and array encoding, metadata dicts."""

from __future__ import annotations

__all__ = [
    "LSST_MODEL_TYPE",
    "LSST_SCHEMA_VERSION",
    "SCARLET_LITE_SCHEMA_VERSION",
    "ScarletFormatError",
    "decode_metadata",
    "encode_metadata",
]

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

LSST_MODEL_TYPE = "lsst"
LSST_SCHEMA_VERSION = "1.0.1"
# Version of every scarlet_lite data class (blends, sources, components) and of IsolatedSourceData.
SCARLET_LITE_SCHEMA_VERSION = "1.0.0"
_PRE_SCHEMA = "0.0.0"
_ZIP_MAGIC = b"PK\x03\x04"
# Largest uncompressed member read (one blend's JSON); checked before decompressing (zip-bomb guard).
_MAX_MEMBER_BYTES = 2**30


class ScarletFormatError(ValueError):
    """A scarlet model archive (or a dict of one) does not follow the expected layout."""


# ---------------------------------------------------------------------------------------------------------
# Metadata encoding (scarlet_lite io/utils.py conventions)
# ---------------------------------------------------------------------------------------------------------


FloatEncoder = Callable[[np.ndarray], Any]
"""Turns a float array into its JSON value (a flat list, or a placeholder of `_CompactJson`)."""


def _upstream_floats(array: np.ndarray) -> list[float]:
    """Flat list of Python floats, the numbers upstream's ``float(x)`` loops write."""
    return np.asarray(array, dtype=np.float64).reshape(-1).tolist()


class _CompactJson:
    """JSON text with float arrays written in their shortest exact form.

    Upstream writes every float32 value as the 17-digit repr of its double (``0.10000000149011612``); nine
    significant digits identify a float32 exactly, so ``%.9g`` text reads back to the same array with half
    the bytes and parse time.  Arrays are swapped for placeholders while `json.dumps` runs, then spliced in.
    """

    _TOKEN = re.compile(r'"\\u0000(\d+)\\u0000"')

    def __init__(self) -> None:
        self._texts: list[str] = []

    def floats(self, array: np.ndarray) -> Any:
        values = np.asarray(array).reshape(-1)
        if not np.all(np.isfinite(values)):
            return _upstream_floats(values)  # json.dumps spells NaN/Infinity as Python reads them.
        fmt = "%.9g" if values.dtype == np.float32 else "%.17g"
        self._texts.append("[" + ",".join([fmt % v for v in values.tolist()]) + "]")
        return f"\x00{len(self._texts) - 1}\x00"

    def dumps(self, obj: Any) -> str:
        text = json.dumps(obj)
        return self._TOKEN.sub(lambda match: self._texts[int(match.group(1))], text)


def _array_to_json(array: np.ndarray, encode: FloatEncoder) -> Any:
    """Flatten an array to JSON scalars, as scarlet_lite's ``numpy_to_json`` does."""
    if np.issubdtype(array.dtype, np.bool_) or np.issubdtype(array.dtype, np.integer):
        return array.reshape(-1).tolist()
    if np.issubdtype(array.dtype, np.floating):
        return encode(array)
    raise ScarletFormatError(f"cannot store an array of dtype {array.dtype} in a scarlet archive")


def _float32(array: np.ndarray) -> np.ndarray:
    """Model arrays are float32 on disk (upstream reads them as float32 whatever was written)."""
    return np.asarray(array, dtype=np.float32)


def encode_metadata(
    metadata: Mapping[str, Any] | None, encode: FloatEncoder = _upstream_floats
) -> dict[str, Any] | None:
    """Encode a metadata dict for JSON: arrays become ``key``, ``key_shape``, ``key_dtype`` + ``array_keys``.

    Parameters
    ----------
    metadata : `dict` or `None`
        Metadata whose values are JSON types or `numpy.ndarray`.
    encode : callable
        How float arrays become JSON (upstream's list of floats by default).

    Returns
    -------
    encoded : `dict` or `None`
        JSON-compatible dict in scarlet_lite's layout (`None` stays `None`).
    """
    if metadata is None:
        return None
    encoded: dict[str, Any] = {}
    array_keys = []
    for key, value in metadata.items():
        if isinstance(value, np.ndarray):
            encoded[key] = _array_to_json(value, encode)
            encoded[f"{key}_shape"] = list(value.shape)
            encoded[f"{key}_dtype"] = str(value.dtype)
            array_keys.append(key)
        elif isinstance(value, tuple):
            encoded[key] = list(value)
        elif isinstance(value, np.generic):
            encoded[key] = value.item()
        else:
            encoded[key] = value
    if array_keys:
        encoded["array_keys"] = array_keys
    return encoded


def decode_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Inverse of `encode_metadata` (also accepts the legacy ``<key>Shape`` spelling).

    Raises
    ------
    ScarletFormatError
        If an array key lacks its data or its shape.
    """
    if metadata is None:
        return None
    decoded = dict(metadata)
    for key in decoded.pop("array_keys", []):
        # Upstream defaults to float32 for legacy models that did not record the dtype.
        dtype = decoded.pop(f"{key}_dtype", "float32")
        shape = decoded.pop(f"{key}_shape", None)
        if shape is None:
            shape = decoded.pop(f"{key}Shape", None)
        if key not in decoded or shape is None:
            raise ScarletFormatError(f"metadata array {key!r} lacks its data or its shape")
        try:
            decoded[key] = np.array(decoded[key], dtype=dtype).reshape(shape)
        except (TypeError, ValueError) as err:
            raise ScarletFormatError(f"metadata array {key!r} cannot be decoded: {err}") from None
    return decoded
