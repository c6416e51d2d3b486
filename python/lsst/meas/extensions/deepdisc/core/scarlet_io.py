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

"""Scarlet deblender model archives in Rubin's on-disk format, without scarlet_lite or afw.

The files written by ``meas_extensions_scarlet`` (dataset ``object_scarlet_models``, extension
``.scarlet``) are zip archives of JSON members:

``metadata``
    The model-level metadata, encoded like every metadata dict of the format: arrays become a flat list
    under their key plus ``<key>_shape`` and ``<key>_dtype`` entries, and an ``array_keys`` list names them.
    Holds ``model_psf`` (2-d), ``psf`` (``[C, h, w]``, the observed PSF per band) and ``bands``.
``version``
    The schema version of ``LsstScarletModelData`` (model type ``"lsst"``), ``"1.0.1"``.
``<parent id>``
    One member per parent blend: a ``HierarchicalBlendData`` dict (``blend_type`` ``"hierarchical"``)
    whose ``children`` map (deconvolved) blend ids to ``ScarletBlendData`` dicts (``blend_type``
    ``"blend"``, ``origin`` ``(y0, x0)``, ``shape``, ``sources``), and whose metadata holds the parent
    footprint as a boolean array ``spans`` over its bounding box and that box's ``origin`` ``(y0, x0)``.
    Sources hold components; a factorized component has ``origin``, ``shape``, ``peak`` ``(y, x)``,
    ``spectrum`` and a flattened ``morph``.
``<source id>``
    One member per isolated source (``source_type`` ``"isolated"``): a footprint mask ``span_array``
    (written as floats), its ``origin`` and the ``peak`` ``(y, x)``.

The classes below mirror upstream's data classes (same names, keys, key order, dtype strings, nesting
and versions) so that archives written here are readable by ``meas_extensions_scarlet`` and vice versa.
By default the writer differs from upstream's bytes in two lossless ways that make archives ~4x smaller:
floats are written with the nine significant digits that identify a float32 (upstream writes the 17-digit
repr of the double), and members are deflated (upstream stores them); ``compact=False, compress=False``
reproduces upstream's bytes exactly.
The pre-2025 layout, one JSON document holding ``blends`` (and, older still, a top-level ``psf`` and
``psfShape``), is read too.

Models live in the narrow *model* PSF space: a factorized component is ``spectrum[:, None, None] * morph``.
To compare with observed pixels each band must be convolved with the *difference kernel* that takes the
model PSF to that band's observed PSF, as scarlet does; `difference_kernel` computes it by regularised
Fourier division and `ModelRenderer` / `render_source_model` render sources in either space.
"""

from __future__ import annotations

__all__ = [
    "LSST_MODEL_TYPE",
    "LSST_SCHEMA_VERSION",
    "SCARLET_LITE_SCHEMA_VERSION",
    "CubeComponentData",
    "FactorizedComponentData",
    "HierarchicalBlendData",
    "IsolatedSourceData",
    "ModelRenderer",
    "ScarletBlendData",
    "ScarletFormatError",
    "ScarletModelData",
    "ScarletSourceData",
    "decode_metadata",
    "difference_kernel",
    "encode_metadata",
    "read_scarlet_models",
    "render_source_model",
    "scarlet_models_to_bytes",
    "write_scarlet_models",
]

import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import numpy as np
from scipy import signal

from ._zipfiles import member_problem, read_member, write_zip

if TYPE_CHECKING:
    from .multiband import MultibandImage

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


def _require(data: Mapping[str, Any], key: str, what: str) -> Any:
    """Fetch ``data[key]`` or raise a `ScarletFormatError` naming what is malformed."""
    try:
        return data[key]
    except (KeyError, TypeError):
        raise ScarletFormatError(f"{what} has no {key!r} entry") from None


def _int_pair(value: Any, what: str) -> tuple[int, int]:
    values = tuple(int(round(float(v))) for v in value)
    if len(values) != 2:
        raise ScarletFormatError(f"{what} must have two entries, got {value!r}")
    return values  # type: ignore[return-value]


def _float_array(data: Mapping[str, Any], key: str, shape: Sequence[int] | None, what: str) -> np.ndarray:
    values = np.asarray(_require(data, key, what), dtype=np.float32)
    if shape is not None:
        try:
            values = values.reshape(tuple(int(s) for s in shape))
        except ValueError:
            raise ScarletFormatError(
                f"{what}: {key!r} has {values.size} values, inconsistent with shape {list(shape)}"
            ) from None
    return values


# ---------------------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True, eq=False)
class FactorizedComponentData:
    """A factorized component: ``spectrum[:, None, None] * morph`` in model space.

    Parameters
    ----------
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` of the morphology box in parent (patch) pixel coordinates.
    peak : `tuple` [`int`, `int`]
        ``(y, x)`` of the peak, parent coordinates (upstream stores integers).
    spectrum : `numpy.ndarray`
        ``[C]`` amplitude per band.
    morph : `numpy.ndarray`
        ``[h, w]`` morphology.
    """

    component_type: ClassVar[str] = "factorized"
    origin: tuple[int, int]
    peak: tuple[int, int]
    spectrum: np.ndarray
    morph: np.ndarray
    version: str = SCARLET_LITE_SCHEMA_VERSION

    @property
    def shape(self) -> tuple[int, int]:
        """Shape ``(h, w)`` of the morphology."""
        return tuple(self.morph.shape)  # type: ignore[return-value]

    def model(self) -> np.ndarray:
        """The ``[C, h, w]`` model-space image."""
        return np.asarray(self.spectrum)[:, None, None] * np.asarray(self.morph)[None, :, :]

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict, keys in upstream order."""
        return {
            "origin": [int(o) for o in self.origin],
            "shape": [int(s) for s in self.morph.shape],
            "peak": [int(p) for p in self.peak],
            "spectrum": encode(_float32(self.spectrum)),
            "morph": encode(_float32(self.morph)),
            "component_type": self.component_type,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FactorizedComponentData:
        """Decode the dict written by `as_dict` (or by scarlet_lite)."""
        what = "factorized component"
        shape = _require(data, "shape", what)
        return cls(
            origin=_int_pair(_require(data, "origin", what), f"{what} origin"),
            peak=_int_pair(_require(data, "peak", what), f"{what} peak"),
            spectrum=_float_array(data, "spectrum", None, what),
            morph=_float_array(data, "morph", shape, what),
        )


@dataclass(kw_only=True, eq=False)
class CubeComponentData:
    """A non-factorized component stored as a full ``[C, h, w]`` cube (upstream ``"component"``)."""

    component_type: ClassVar[str] = "cube"
    origin: tuple[int, int]
    peak: tuple[float, float]
    model_cube: np.ndarray
    version: str = SCARLET_LITE_SCHEMA_VERSION

    @property
    def shape(self) -> tuple[int, int]:
        """Spatial shape ``(h, w)``."""
        return tuple(self.model_cube.shape[-2:])  # type: ignore[return-value]

    def model(self) -> np.ndarray:
        """The ``[C, h, w]`` model-space image."""
        return np.asarray(self.model_cube)

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict; upstream writes the type name ``"component"`` for cubes."""
        return {
            "origin": [int(o) for o in self.origin],
            "shape": [int(s) for s in self.model_cube.shape],
            "peak": [float(p) for p in self.peak],
            "model": encode(_float32(self.model_cube)),
            "component_type": "component",
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CubeComponentData:
        """Decode a cube component dict."""
        what = "cube component"
        shape = _require(data, "shape", what)
        peak = tuple(float(p) for p in _require(data, "peak", what))
        return cls(
            origin=_int_pair(_require(data, "origin", what), f"{what} origin"),
            peak=peak,  # type: ignore[arg-type]
            model_cube=_float_array(data, "model", shape, what),
        )


def _component_from_dict(data: Mapping[str, Any]) -> FactorizedComponentData | CubeComponentData:
    component_type = data.get("component_type", "factorized")
    if component_type == "factorized":
        return FactorizedComponentData.from_dict(data)
    if component_type in ("component", "cube"):
        return CubeComponentData.from_dict(data)
    raise ScarletFormatError(f"unknown scarlet component type {component_type!r}")


@dataclass(kw_only=True, eq=False)
class ScarletSourceData:
    """A deblended source: one or more components (upstream ``source_type`` ``"source"``).

    ``metadata`` holds ``id`` (the catalog id) and ``peak_id`` as upstream writes them.
    """

    source_type: ClassVar[str] = "source"
    components: list[FactorizedComponentData | CubeComponentData]
    metadata: dict[str, Any] | None = None
    version: str = SCARLET_LITE_SCHEMA_VERSION

    def bbox(self) -> tuple[int, int, int, int]:
        """Union of the component boxes as ``(y0, x0, y1, x1)`` (end exclusive)."""
        if not self.components:
            raise ValueError("a source without components has no bounding box")
        y0 = min(c.origin[0] for c in self.components)
        x0 = min(c.origin[1] for c in self.components)
        y1 = max(c.origin[0] + c.shape[0] for c in self.components)
        x1 = max(c.origin[1] + c.shape[1] for c in self.components)
        return y0, x0, y1, x1

    def model(self) -> tuple[np.ndarray, tuple[int, int]]:
        """Sum of the component models on the union box: ``([C, h, w] array, (y0, x0))``."""
        y0, x0, y1, x1 = self.bbox()
        n_bands = self.components[0].model().shape[0]
        out = np.zeros((n_bands, y1 - y0, x1 - x0), dtype=np.float32)
        for component in self.components:
            cube = component.model()
            if cube.shape[0] != n_bands:
                raise ScarletFormatError("components of one source have different numbers of bands")
            oy, ox = component.origin[0] - y0, component.origin[1] - x0
            out[:, oy : oy + cube.shape[1], ox : ox + cube.shape[2]] += cube
        return out, (y0, x0)

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict, keys in upstream order."""
        result: dict[str, Any] = {
            "source_type": self.source_type,
            "components": [component.as_dict(encode) for component in self.components],
            "version": self.version,
        }
        if self.metadata is not None:
            result["metadata"] = encode_metadata(self.metadata, encode)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScarletSourceData:
        """Decode a source dict (also the legacy layout with a ``factorized`` list)."""
        source_type = data.get("source_type", "source")
        if source_type != "source":
            raise ScarletFormatError(f"a blend holds a source of unexpected type {source_type!r}")
        components = data.get("components", data.get("factorized"))
        if components is None:
            raise ScarletFormatError("scarlet source has no 'components' entry")
        return cls(
            components=[_component_from_dict(c) for c in components],
            metadata=decode_metadata(data.get("metadata")),
        )


@dataclass(kw_only=True, eq=False)
class ScarletBlendData:
    """A blend that scarlet fitted (upstream ``blend_type`` ``"blend"``).

    Parameters
    ----------
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` of the blend box.
    shape : `tuple` [`int`, `int`]
        ``(h, w)`` of the blend box.
    sources : `dict` [`int`, `ScarletSourceData`]
        Sources by catalog id.
    metadata : `dict` or `None`
        Optional blend metadata (legacy files keep ``psf`` and ``bands`` here).
    """

    blend_type: ClassVar[str] = "blend"
    origin: tuple[int, int]
    shape: tuple[int, int]
    sources: dict[int, ScarletSourceData] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    version: str = SCARLET_LITE_SCHEMA_VERSION

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict, keys in upstream order."""
        result: dict[str, Any] = {
            "blend_type": self.blend_type,
            "origin": [int(o) for o in self.origin],
            "shape": [int(s) for s in self.shape],
            "sources": {str(sid): source.as_dict(encode) for sid, source in self.sources.items()},
            "version": self.version,
        }
        if self.metadata is not None:
            result["metadata"] = encode_metadata(self.metadata, encode)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScarletBlendData:
        """Decode a blend dict (also legacy blends with top-level ``psf`` and ``bands``)."""
        what = "scarlet blend"
        metadata = data.get("metadata")
        if metadata is None and "psf" in data:
            metadata = {
                "psf": data["psf"],
                "psf_shape": data.get("psf_shape", data.get("psfShape")),
                "bands": list(data.get("bands", [])),
                "array_keys": ["psf"],
            }
        sources = {}
        for sid, source in _require(data, "sources", what).items():
            sources[_source_key(sid)] = ScarletSourceData.from_dict(source)
        return cls(
            origin=_int_pair(_require(data, "origin", what), f"{what} origin"),
            shape=_int_pair(_require(data, "shape", what), f"{what} shape"),
            sources=sources,
            metadata=decode_metadata(metadata),
        )


def _source_key(key: Any) -> Any:
    """Source ids are catalog ids (integers); upstream falls back to list positions, also integers."""
    try:
        return int(key)
    except (TypeError, ValueError):
        return key


@dataclass(kw_only=True, eq=False)
class HierarchicalBlendData:
    """A parent footprint split into (deconvolved) child blends (upstream ``"hierarchical"``).

    ``metadata`` holds ``spans``, the boolean parent-footprint mask over its bounding box, and ``origin``,
    that box's ``(y0, x0)``, as ``meas_extensions_scarlet`` writes them.
    """

    blend_type: ClassVar[str] = "hierarchical"
    children: dict[int, ScarletBlendData | HierarchicalBlendData] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    version: str = SCARLET_LITE_SCHEMA_VERSION

    def iter_blends(self) -> Iterator[ScarletBlendData]:
        """All leaf `ScarletBlendData` below this node, depth first."""
        for child in self.children.values():
            if isinstance(child, HierarchicalBlendData):
                yield from child.iter_blends()
            else:
                yield child

    def footprint(self) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The parent footprint ``(bool mask, (y0, x0))`` from the metadata, or `None` if absent."""
        if not self.metadata or "spans" not in self.metadata:
            return None
        mask = np.asarray(self.metadata["spans"]).astype(bool)
        origin = _int_pair(self.metadata.get("origin", (0, 0)), "hierarchical blend origin")
        return mask, origin

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict, keys in upstream order."""
        result: dict[str, Any] = {
            "blend_type": self.blend_type,
            "children": {str(bid): child.as_dict(encode) for bid, child in self.children.items()},
            "version": self.version,
        }
        if self.metadata is not None:
            result["metadata"] = encode_metadata(self.metadata, encode)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HierarchicalBlendData:
        """Decode a hierarchical blend dict."""
        children = {
            int(bid): _blend_from_dict(child)
            for bid, child in _require(data, "children", "hierarchical blend").items()
        }
        return cls(children=children, metadata=decode_metadata(data.get("metadata")))


def _blend_from_dict(data: Mapping[str, Any]) -> ScarletBlendData | HierarchicalBlendData:
    if not isinstance(data, Mapping):
        raise ScarletFormatError(f"a blend must be a JSON object, got {type(data).__name__}")
    blend_type = data.get("blend_type", "blend")
    if blend_type == "blend":
        return ScarletBlendData.from_dict(data)
    if blend_type == "hierarchical":
        return HierarchicalBlendData.from_dict(data)
    raise ScarletFormatError(f"unknown scarlet blend type {blend_type!r}")


@dataclass(kw_only=True, eq=False)
class IsolatedSourceData:
    """An isolated source: not deblended, only its footprint is stored (upstream ``"isolated"``).

    Parameters
    ----------
    span_array : `numpy.ndarray`
        ``[h, w]`` footprint mask (non-zero inside); upstream writes it as floats.
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` of the mask.
    peak : `tuple` [`int`, `int`]
        ``(y, x)`` peak pixel.
    metadata : `dict` or `None`
        Free-form; the archives of the simulated repositories (``sim.scarlet_archive``) keep the simulated
        model here (``spectrum``, ``morph``, ``morph_origin``) so that it is not lost.

    Notes
    -----
    Upstream's model of an isolated source is the observed image times ``span_array``
    (see `ModelRenderer.render_isolated`).
    """

    source_type: ClassVar[str] = "isolated"
    span_array: np.ndarray
    origin: tuple[int, int]
    peak: tuple[int, int]
    metadata: dict[str, Any] | None = None
    version: str = SCARLET_LITE_SCHEMA_VERSION

    def as_dict(self, encode: FloatEncoder = _upstream_floats) -> dict[str, Any]:
        """JSON-compatible dict, keys in upstream order."""
        result: dict[str, Any] = {
            "origin": [int(o) for o in self.origin],
            "shape": [int(s) for s in self.span_array.shape],
            "peak": [float(p) for p in self.peak],
            "span_array": encode(_float32(self.span_array)),
            "source_type": self.source_type,
            "version": self.version,
        }
        if self.metadata is not None:
            result["metadata"] = encode_metadata(self.metadata, encode)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IsolatedSourceData:
        """Decode an isolated-source dict."""
        what = "isolated source"
        shape = _require(data, "shape", what)
        return cls(
            span_array=_float_array(data, "span_array", shape, what),
            origin=_int_pair(_require(data, "origin", what), f"{what} origin"),
            peak=tuple(int(p) for p in _require(data, "peak", what)),  # type: ignore[arg-type]
            metadata=decode_metadata(data.get("metadata")),
        )


class ScarletModelData:
    """All scarlet models of one patch: the in-memory form of an ``object_scarlet_models`` archive.

    This is the Python type of the ``ScarletModelArchive`` storage class and corresponds to upstream's
    ``LsstScarletModelData`` (model type ``"lsst"``, schema 1.0.1).

    Parameters
    ----------
    blends : `dict` [`int`, `HierarchicalBlendData` or `ScarletBlendData`], optional
        Parent blends by parent id.
    isolated : `dict` [`int`, `IsolatedSourceData`], optional
        Isolated sources by source id.
    metadata : `dict`, optional
        Model-level metadata: ``bands`` (sequence of str), ``psf`` (``[C, h, w]`` observed PSF per band),
        ``model_psf`` (2-d) and anything else JSON-compatible.
    version : `str`
        Schema version (what was read, or `LSST_SCHEMA_VERSION`).
    """

    model_type: ClassVar[str] = LSST_MODEL_TYPE

    def __init__(
        self,
        blends: Mapping[int, HierarchicalBlendData | ScarletBlendData] | None = None,
        isolated: Mapping[int, IsolatedSourceData] | None = None,
        metadata: Mapping[str, Any] | None = None,
        version: str = LSST_SCHEMA_VERSION,
    ) -> None:
        self.blends: dict[int, HierarchicalBlendData | ScarletBlendData] = dict(blends or {})
        self.isolated: dict[int, IsolatedSourceData] = dict(isolated or {})
        self.metadata: dict[str, Any] | None = None if metadata is None else dict(metadata)
        self.version = version

    @classmethod
    def make(
        cls,
        bands: Sequence[str],
        psf: np.ndarray | Mapping[str, np.ndarray],
        model_psf: np.ndarray,
        blends: Mapping[int, HierarchicalBlendData | ScarletBlendData] | None = None,
        isolated: Mapping[int, IsolatedSourceData] | None = None,
        **extra_metadata: Any,
    ) -> ScarletModelData:
        """Build from bands and PSFs; ``psf`` may be a ``[C, h, w]`` array or a per-band mapping."""
        bands = tuple(bands)
        metadata = {
            "model_psf": np.asarray(model_psf, dtype=np.float32),
            "psf": _stack_psfs(psf, bands),
            "bands": list(bands),
            **extra_metadata,
        }
        return cls(blends=blends, isolated=isolated, metadata=metadata)

    # -- Convenience accessors ------------------------------------------------------------------------

    def _metadata_item(self, key: str) -> Any:
        if not self.metadata or key not in self.metadata:
            raise ScarletFormatError(f"scarlet model data has no {key!r} in its metadata")
        return self.metadata[key]

    @property
    def bands(self) -> tuple[str, ...]:
        """Band order of spectra and PSF planes."""
        return tuple(self._metadata_item("bands"))

    @property
    def psf(self) -> np.ndarray:
        """Observed PSF per band, ``[C, h, w]``."""
        return np.asarray(self._metadata_item("psf"))

    @property
    def model_psf(self) -> np.ndarray:
        """The 2-d model-space PSF."""
        model_psf = np.asarray(self._metadata_item("model_psf"))
        # Some writers keep a leading band axis of length 1.
        return model_psf[0] if model_psf.ndim == 3 else model_psf

    def iter_sources(self) -> Iterator[tuple[int, int, ScarletSourceData]]:
        """Every deblended source as ``(parent_id, source_id, source)``; isolated sources excluded."""
        for parent_id, blend in self.blends.items():
            leaves = blend.iter_blends() if isinstance(blend, HierarchicalBlendData) else [blend]
            for leaf in leaves:
                for source_id, source in leaf.sources.items():
                    yield parent_id, source_id, source

    def renderer(self, **kwargs: Any) -> ModelRenderer:
        """A `ModelRenderer` for this archive's bands and PSFs (keywords go to its constructor)."""
        return ModelRenderer(self.bands, self.psf, self.model_psf, **kwargs)

    # -- Serialisation -------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """The single-document JSON form (upstream ``as_dict``; also the pre-2025 file layout)."""
        return {
            "model_type": self.model_type,
            "blends": {str(bid): blend.as_dict() for bid, blend in self.blends.items()},
            "metadata": encode_metadata(self.metadata),
            "version": self.version,
            "isolated": {str(sid): source.as_dict() for sid, source in self.isolated.items()},
        }

    def zip_members(self, compact: bool = True) -> dict[str, str]:
        """Member name to JSON text, as ``meas_extensions_scarlet`` writes its zip archives.

        Parameters
        ----------
        compact : `bool`
            Write floats in their shortest exact form (see `_CompactJson`; same values, half the size).
            If `False`, the text is byte for byte what upstream writes.
        """

        def dumps(build: Callable[[FloatEncoder], Any]) -> str:
            if not compact:
                return json.dumps(build(_upstream_floats))
            writer = _CompactJson()
            return writer.dumps(build(writer.floats))

        members = {str(bid): dumps(blend.as_dict) for bid, blend in self.blends.items()}
        for sid, source in self.isolated.items():
            name = str(sid)
            if name in members:
                raise ScarletFormatError(f"id {sid} is used by both a blend and an isolated source")
            members[name] = dumps(source.as_dict)
        members["metadata"] = dumps(lambda encode: encode_metadata(self.metadata, encode))
        members["version"] = json.dumps(self.version)
        return members

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScarletModelData:
        """Decode the single-document form (any schema version, including pre-schema files)."""
        if not isinstance(data, Mapping):
            raise ScarletFormatError(f"a scarlet model document must be a JSON object, not {type(data)}")
        model_type = data.get("model_type", LSST_MODEL_TYPE)
        if model_type not in (LSST_MODEL_TYPE, "scarlet_model"):
            raise ScarletFormatError(f"unknown scarlet model type {model_type!r}")
        metadata = data.get("metadata")
        if metadata is None and "psf" in data:
            # Pre-schema files kept the model PSF at the top level.
            metadata = {
                "model_psf": data["psf"],
                "model_psf_shape": data.get("psfShape", data.get("psf_shape")),
                "array_keys": ["model_psf"],
            }
        blends = {int(bid): _blend_from_dict(blend) for bid, blend in data.get("blends", {}).items()}
        isolated = {
            int(sid): IsolatedSourceData.from_dict(source) for sid, source in data.get("isolated", {}).items()
        }
        return cls(
            blends=blends,
            isolated=isolated,
            metadata=decode_metadata(metadata),
            version=str(data.get("version", _PRE_SCHEMA)),
        )

    def __eq__(self, other: object) -> bool:
        # Exact comparison through the canonical JSON form (arrays compared value by value).
        if not isinstance(other, ScarletModelData):
            return NotImplemented
        return self.zip_members() == other.zip_members()

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.blends) + len(self.isolated)

    def __repr__(self) -> str:
        bands = self.metadata.get("bands") if self.metadata else None
        return (
            f"ScarletModelData(blends={len(self.blends)}, isolated={len(self.isolated)}, "
            f"bands={bands}, version={self.version!r})"
        )


# ---------------------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------------------


def _parse_member(name: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScarletFormatError(f"member {name!r} of the scarlet archive is not valid JSON: {err}") from None


def _read_checked(archive: zipfile.ZipFile, name: str) -> bytes:
    """One member, refused before decompression if its entry is unsafe or too large."""
    info = archive.getinfo(name)
    # No ratio check: long runs of zeros in model arrays legitimately deflate by hundreds.
    problem = member_problem(info, max_bytes=_MAX_MEMBER_BYTES, max_compression_ratio=None)
    if problem:
        raise ScarletFormatError(f"scarlet archive {problem}")
    return read_member(archive, info)


def _model_from_zip(archive: zipfile.ZipFile, blend_ids: Iterable[int] | None) -> ScarletModelData:
    names = archive.namelist()
    if blend_ids is None:
        wanted = [n for n in names if n not in ("metadata", "version", "psf", "psf_shape")]
    else:
        wanted = [str(int(b)) for b in blend_ids]
        missing = [n for n in wanted if n not in names]
        if missing:
            raise KeyError(f"blend/source id(s) {missing} are not in this scarlet archive")
    if "metadata" in names:
        metadata = _parse_member("metadata", _read_checked(archive, "metadata"))
    elif "psf" in names:
        # Legacy zip archives stored the model PSF as two members.
        metadata = {
            "model_psf": _parse_member("psf", _read_checked(archive, "psf")),
            "model_psf_shape": _parse_member("psf_shape", _read_checked(archive, "psf_shape")),
            "array_keys": ["model_psf"],
        }
    else:
        metadata = None
    version = (
        _parse_member("version", _read_checked(archive, "version")) if "version" in names else _PRE_SCHEMA
    )
    blends: dict[int, HierarchicalBlendData | ScarletBlendData] = {}
    isolated: dict[int, IsolatedSourceData] = {}
    for name in wanted:
        try:
            key = int(name)
        except ValueError:
            raise ScarletFormatError(f"unexpected member {name!r} in scarlet archive") from None
        value = _parse_member(name, _read_checked(archive, name))
        if not isinstance(value, Mapping):
            raise ScarletFormatError(f"member {name!r} is not a JSON object")
        if "blend_type" in value:
            blends[key] = _blend_from_dict(value)
        elif value.get("source_type") == "isolated":
            isolated[key] = IsolatedSourceData.from_dict(value)
        else:
            raise ScarletFormatError(f"member {name!r} is neither a blend nor an isolated source")
    return ScarletModelData(
        blends=blends, isolated=isolated, metadata=decode_metadata(metadata), version=str(version)
    )


def read_scarlet_models(
    source: str | os.PathLike[str] | bytes | BinaryIO, blend_ids: Iterable[int] | None = None
) -> ScarletModelData:
    """Read a scarlet model archive (zip of JSON members) or a pre-2025 single JSON document.

    Parameters
    ----------
    source : `str`, `os.PathLike`, `bytes` or binary file object
        Path, raw bytes or an open binary stream.
    blend_ids : iterable of `int`, optional
        Only read these parent blend / isolated source ids (zip archives only).

    Returns
    -------
    data : `ScarletModelData`
        The models.

    Raises
    ------
    ScarletFormatError
        If the content is neither layout or is malformed.
    KeyError
        If a requested id is not in the archive.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as stream:
            payload = stream.read()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        payload = bytes(source)
    else:
        payload = source.read()
    if payload[:4] == _ZIP_MAGIC or payload[:4] == b"PK\x05\x06":
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                return _model_from_zip(archive, blend_ids)
        except zipfile.BadZipFile as err:
            raise ScarletFormatError(f"corrupt scarlet model archive: {err}") from None
    stripped = payload.lstrip()
    if not stripped.startswith(b"{"):
        raise ScarletFormatError("not a scarlet model archive: neither a zip file nor a JSON document")
    data = ScarletModelData.from_dict(_parse_member("<document>", payload))
    if blend_ids is not None:
        keep = {int(b) for b in blend_ids}
        missing = keep - set(data.blends) - set(data.isolated)
        if missing:
            raise KeyError(f"blend/source id(s) {sorted(missing)} are not in this scarlet model file")
        data.blends = {k: v for k, v in data.blends.items() if k in keep}
        data.isolated = {k: v for k, v in data.isolated.items() if k in keep}
    return data


def scarlet_models_to_bytes(data: ScarletModelData, compress: bool = True, compact: bool = True) -> bytes:
    """Serialise to the bytes of a ``.scarlet`` zip archive (upstream layout, reproducible bytes).

    Parameters
    ----------
    data : `ScarletModelData`
        The models.
    compress : `bool`
        Deflate the members (upstream stores them uncompressed; zip readers, upstream's included, read both).
    compact : `bool`
        Shortest exact float text (see `ScarletModelData.zip_members`); `False` writes upstream's text.
    """
    buffer = io.BytesIO()
    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    # Level 1 keeps ~90% of the size gain of the default level 6 for a fifth of the time.
    write_zip(buffer, data.zip_members(compact=compact), compression=compression, compresslevel=1)
    return buffer.getvalue()


def write_scarlet_models(
    data: ScarletModelData,
    path: str | os.PathLike[str] | BinaryIO,
    compress: bool = True,
    compact: bool = True,
) -> None:
    """Write a ``.scarlet`` zip archive to a path or a binary stream (see `scarlet_models_to_bytes`)."""
    payload = scarlet_models_to_bytes(data, compress=compress, compact=compact)
    if isinstance(path, (str, os.PathLike)):
        with open(path, "wb") as stream:
            stream.write(payload)
    else:
        path.write(payload)


# ---------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------


def _centered_pad(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad an odd-sized kernel symmetrically to a larger odd shape."""
    out = np.zeros(shape, dtype=np.float64)
    dy = (shape[0] - kernel.shape[0]) // 2
    dx = (shape[1] - kernel.shape[1]) // 2
    out[dy : dy + kernel.shape[0], dx : dx + kernel.shape[1]] = kernel
    return out


def _check_kernel(kernel: np.ndarray, what: str) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"{what} must be a 2-d image with odd sides, got shape {kernel.shape}")
    if not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
        raise ValueError(f"{what} must be finite with a positive sum")
    return kernel


def _stack_psfs(psf: np.ndarray | Mapping[str, np.ndarray], bands: Sequence[str]) -> np.ndarray:
    """``[C, h, w]`` float32 PSF cube in band order; per-band images of different sizes are zero-padded."""
    if isinstance(psf, Mapping):
        missing = [b for b in bands if b not in psf]
        if missing:
            raise ValueError(f"no PSF for band(s) {missing}; PSFs given for {sorted(psf)}")
        images = [_check_kernel(psf[b], f"PSF of band {b!r}") for b in bands]
    else:
        cube = np.asarray(psf)
        if cube.ndim == 2:
            cube = cube[None]
        if cube.ndim != 3 or cube.shape[0] != len(bands):
            raise ValueError(
                f"PSF cube of shape {cube.shape} does not match {len(bands)} bands {list(bands)}"
            )
        images = [_check_kernel(plane, f"PSF of band {b!r}") for plane, b in zip(cube, bands)]
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    return np.stack([_centered_pad(image, (height, width)) for image in images]).astype(np.float32)


def difference_kernel(model_psf: np.ndarray, psf: np.ndarray, regularization: float = 1e-10) -> np.ndarray:
    """The kernel that convolves the model PSF into the observed PSF.

    Computed by Fourier division, as scarlet does, with Tikhonov regularisation so that frequencies where
    the model PSF has (almost) no power are damped rather than amplified:
    ``K = P * conj(M) / (|M|^2 + regularization * max|M|^2)``, with ``P`` and ``M`` the Fourier transforms
    of the observed and model PSFs zero-padded to a common size twice the larger of the two.  The kernel
    is cropped to the observed PSF's size and rescaled so that its sum is ``sum(psf) / sum(model_psf)``
    (flux conservation).  PSFs equal to float32 precision give exactly a delta function.

    The regularisation only matters where the model PSF's transform has fallen below ~1e-5 of its peak,
    frequencies that a narrower model PSF keeps and a wider observed PSF has already removed; it bounds the
    gain of the division at ``1 / (2 sqrt(regularization))`` (5e4 by default), which keeps float32 rounding
    of the PSF images from being amplified into visible ringing.

    Parameters
    ----------
    model_psf : `numpy.ndarray`
        Model-space PSF, 2-d with odd sides.
    psf : `numpy.ndarray`
        Observed PSF of one band, 2-d with odd sides.
    regularization : `float`
        Relative Tikhonov weight.

    Returns
    -------
    kernel : `numpy.ndarray`
        ``float64`` kernel with the observed PSF's shape.
    """
    model_psf = _check_kernel(model_psf, "model PSF")
    psf = _check_kernel(psf, "observed PSF")
    height = max(model_psf.shape[0], psf.shape[0])
    width = max(model_psf.shape[1], psf.shape[1])
    padded_model = _centered_pad(model_psf, (height, width))
    padded_psf = _centered_pad(psf, (height, width))
    flux_ratio = psf.sum() / model_psf.sum()
    normalized_model = padded_model / model_psf.sum()
    normalized_psf = padded_psf / psf.sum()
    # Equal to float32 precision (the archive stores float32): the identity, exactly.
    if np.allclose(normalized_model, normalized_psf, rtol=0.0, atol=1e-6 * normalized_psf.max()):
        delta = np.zeros(psf.shape)
        delta[psf.shape[0] // 2, psf.shape[1] // 2] = flux_ratio
        return delta
    # Pad to twice the size so that the circular convolution implied by the FFT does not wrap.
    fft_shape = (2 * height + 1, 2 * width + 1)
    model_hat = np.fft.rfft2(np.fft.ifftshift(_centered_pad(padded_model, fft_shape)))
    psf_hat = np.fft.rfft2(np.fft.ifftshift(_centered_pad(padded_psf, fft_shape)))
    power = np.abs(model_hat) ** 2
    kernel_hat = psf_hat * np.conj(model_hat) / (power + regularization * power.max())
    kernel = np.fft.fftshift(np.fft.irfft2(kernel_hat, s=fft_shape))
    cy, cx = fft_shape[0] // 2, fft_shape[1] // 2
    hy, hx = psf.shape[0] // 2, psf.shape[1] // 2
    kernel = kernel[cy - hy : cy + hy + 1, cx - hx : cx + hx + 1]
    return kernel * (flux_ratio / kernel.sum())


class ModelRenderer:
    """Render scarlet source models, in model space or convolved to the observed PSF of each band.

    The difference kernels are computed once per band (see `difference_kernel`), so one renderer should
    be reused for all sources of an archive.

    Parameters
    ----------
    bands : sequence of `str`
        Band order of the spectra.
    psf : `numpy.ndarray` or mapping
        Observed PSFs, ``[C, h, w]`` in band order or a ``band -> 2-d image`` mapping.
    model_psf : `numpy.ndarray`
        The 2-d model PSF.
    regularization : `float`
        Passed to `difference_kernel`.
    """

    def __init__(
        self,
        bands: Sequence[str],
        psf: np.ndarray | Mapping[str, np.ndarray],
        model_psf: np.ndarray,
        regularization: float = 1e-10,
    ) -> None:
        self.bands = tuple(bands)
        if not self.bands:
            raise ValueError("at least one band is needed to render a model")
        self.psf = _stack_psfs(psf, self.bands)
        self.model_psf = _check_kernel(np.asarray(model_psf).squeeze(), "model PSF")
        self.kernels = [difference_kernel(self.model_psf, plane, regularization) for plane in self.psf]
        self._kernel_cube = np.stack(self.kernels)

    def render(
        self, source: ScarletSourceData | IsolatedSourceData | Any, observed: bool = True
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Render one source.

        Parameters
        ----------
        source : `ScarletSourceData`, `IsolatedSourceData` or any object with ``spectrum`` and ``morph``
            A scarlet source (sum of its components), a source given as ``spectrum`` x ``morph`` (e.g. the
            simulation's deblender output), or an isolated source whose metadata carries ``spectrum`` and
            ``morph`` (as the simulated repositories write them; upstream isolated sources have no model,
            use `render_isolated`).
        observed : `bool`
            Convolve each band with its difference kernel (the model as the telescope sees it); the box
            grows by half the kernel size on each side.  If `False`, return the model-space image.

        Returns
        -------
        model : `numpy.ndarray`
            ``float32`` ``[C, h, w]``.  The observed model is an FFT convolution: pixels outside the
            source's support hold round-off of ~1e-7 of the peak, so footprints must use a positive
            threshold (e.g. a fraction of the noise), not ``model != 0``.
        origin : `tuple` [`int`, `int`]
            ``(y0, x0)`` of ``model[:, 0, 0]`` in parent pixel coordinates.
        """
        model, origin = _model_space(source)
        if model.shape[0] != len(self.bands):
            raise ValueError(
                f"source model has {model.shape[0]} bands but the renderer has {len(self.bands)} {self.bands}"
            )
        if not observed:
            return model.astype(np.float32, copy=False), origin
        hy, hx = self.psf.shape[1] // 2, self.psf.shape[2] // 2
        # One FFT convolution for all bands (band i with kernel i); the kernels share the PSF cube's shape,
        # so every band lands on the same box, grown by the kernel half-size.
        out = signal.fftconvolve(model.astype(np.float64), self._kernel_cube, mode="full", axes=(1, 2))
        return out.astype(np.float32), (origin[0] - hy, origin[1] - hx)

    @staticmethod
    def render_isolated(
        source: IsolatedSourceData, image: MultibandImage
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Upstream's model of an isolated source: the observed image inside its footprint.

        Parameters
        ----------
        source : `IsolatedSourceData`
            The isolated source.
        image : `MultibandImage`
            The coadd it was detected on (``xy0`` honoured); the footprint is clipped to it.

        Returns
        -------
        model, origin
            ``[C, h, w]`` float32 cube and its ``(y0, x0)``.
        """
        y0, x0 = source.origin
        height, width = source.span_array.shape
        local_y, local_x = y0 - image.xy0[1], x0 - image.xy0[0]
        out = np.zeros((len(image.bands), height, width), dtype=np.float32)
        ys = slice(max(local_y, 0), min(local_y + height, image.height))
        xs = slice(max(local_x, 0), min(local_x + width, image.width))
        if ys.start < ys.stop and xs.start < xs.stop:
            out_ys = slice(ys.start - local_y, ys.stop - local_y)
            out_xs = slice(xs.start - local_x, xs.stop - local_x)
            out[:, out_ys, out_xs] = image.image[:, ys, xs]
        out *= np.asarray(source.span_array, dtype=bool)[None]
        return out, (y0, x0)


def _model_space(source: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """Model-space ``[C, h, w]`` image and ``(y0, x0)`` of any supported source representation."""
    if isinstance(source, ScarletSourceData):
        return source.model()
    if isinstance(source, (FactorizedComponentData, CubeComponentData)):
        return source.model().astype(np.float32, copy=False), tuple(source.origin)  # type: ignore[return-value]
    if isinstance(source, IsolatedSourceData):
        metadata = source.metadata or {}
        if "spectrum" not in metadata or "morph" not in metadata:
            raise ValueError(
                "this isolated source carries no model (upstream stores only its footprint); "
                "use ModelRenderer.render_isolated(source, image) to take it from the image"
            )
        origin = _int_pair(metadata.get("morph_origin", source.origin), "isolated source morph_origin")
        spectrum = np.asarray(metadata["spectrum"], dtype=np.float32)
        return spectrum[:, None, None] * np.asarray(metadata["morph"], dtype=np.float32)[None], origin
    if hasattr(source, "spectrum") and hasattr(source, "morph") and hasattr(source, "origin"):
        spectrum = np.asarray(source.spectrum, dtype=np.float32).reshape(-1)
        morph = np.asarray(source.morph, dtype=np.float32)
        if morph.ndim != 2:
            raise ValueError(f"morph must be 2-d, got shape {morph.shape}")
        return spectrum[:, None, None] * morph[None], _int_pair(source.origin, "source origin")
    raise TypeError(f"cannot render a {type(source).__name__}")


def render_source_model(
    source: ScarletSourceData | IsolatedSourceData | Any,
    bands: Sequence[str],
    psf: np.ndarray | Mapping[str, np.ndarray],
    model_psf: np.ndarray,
    observed: bool = True,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Render one source model; see `ModelRenderer.render` (build a renderer to render many sources).

    Returns
    -------
    model : `numpy.ndarray`
        ``float32`` ``[C, h, w]``; with ``observed`` every band is convolved with the difference kernel from
        the model PSF to that band's PSF and the box grows by half the PSF size on each side.
    origin : `tuple` [`int`, `int`]
        ``(y0, x0)`` of the returned box in parent pixel coordinates.
    """
    return ModelRenderer(bands, psf, model_psf).render(source, observed=observed)
