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

"""The format's data classes, mirroring upstream's (components, sources, blends, `ScarletModelData`)."""

from __future__ import annotations

__all__ = [
    "CubeComponentData",
    "FactorizedComponentData",
    "HierarchicalBlendData",
    "IsolatedSourceData",
    "ScarletBlendData",
    "ScarletModelData",
    "ScarletSourceData",
]

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ._encoding import (
    _PRE_SCHEMA,
    LSST_MODEL_TYPE,
    LSST_SCHEMA_VERSION,
    SCARLET_LITE_SCHEMA_VERSION,
    FloatEncoder,
    ScarletFormatError,
    _CompactJson,
    _float32,
    _upstream_floats,
    decode_metadata,
    encode_metadata,
)
from ._psf import _stack_psfs

if TYPE_CHECKING:
    from ._render import ModelRenderer


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
        from ._render import ModelRenderer

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
