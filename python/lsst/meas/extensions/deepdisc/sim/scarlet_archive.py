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
"""The simulated deblender's output as a scarlet-format archive, and back.

`model_data_from_deblended` writes the simulation's ``DeblendedBlend`` list in the upstream archive layout
(`~lsst.meas.extensions.deepdisc.core.scarlet_io.ScarletModelData`), exactly as a Rubin DRP stores its
scarlet models, so that label building reads simulated and real repositories alike;
`deblended_from_model_data` converts such an archive back.  This lives in the simulation layer: the core
reads and writes archives but knows nothing of the simulation's types.
"""

from __future__ import annotations

__all__ = ["deblended_from_model_data", "model_data_from_deblended"]

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..core.footprints import mask_to_spans, spans_to_mask
from ..core.scarlet_io import (
    FactorizedComponentData,
    HierarchicalBlendData,
    IsolatedSourceData,
    ScarletBlendData,
    ScarletModelData,
    ScarletSourceData,
)
from ..core.scarlet_io._data import _int_pair  # The archive reader's coordinate-pair check, shared.
from .types import DeblendedBlend, DeblendedSource


def _peak_yx(peak_xy: Sequence[float]) -> tuple[int, int]:
    return int(round(float(peak_xy[1]))), int(round(float(peak_xy[0])))


def model_data_from_deblended(
    blends: Sequence[DeblendedBlend],
    bands: Sequence[str],
    psf: np.ndarray | Mapping[str, np.ndarray],
    model_psf: np.ndarray,
    keep_isolated_models: bool = True,
    **extra_metadata: Any,
) -> ScarletModelData:
    """Build the upstream archive layout from the simulation's deblender output.

    Blends become ``HierarchicalBlendData`` (key: parent id) with one child ``ScarletBlendData`` (key:
    parent id) on the parent box, one single-component source per child (key: source id; metadata
    ``id`` and ``peak_id``, the child's position in the parent) and the parent footprint in the
    metadata.  Single-child blends flagged ``is_isolated`` become isolated sources (key: source id).

    Parameters
    ----------
    blends : sequence of ``DeblendedBlend``
        Deblender output, parent coordinates.
    bands : sequence of `str`
        Band order of the spectra.
    psf : `numpy.ndarray` or mapping
        Observed PSF per band.
    model_psf : `numpy.ndarray`
        Model PSF.
    keep_isolated_models : `bool`
        Keep the simulated spectrum and morphology of isolated sources in their metadata (``spectrum``,
        ``morph``, ``morph_origin``, ``parent_id``), which upstream readers ignore.
    **extra_metadata
        Added to the archive metadata.

    Raises
    ------
    ValueError
        If spans fall outside their blend box, ids collide or spectra do not match the bands.
    """
    bands = tuple(bands)
    out = ScarletModelData.make(bands, psf, model_psf, **extra_metadata)
    for blend in blends:
        height, width = (int(s) for s in blend.shape)
        y0, x0 = (int(o) for o in blend.origin)
        try:
            footprint = spans_to_mask(blend.spans, (height, width), xy0=(x0, y0))
        except ValueError as err:
            raise ValueError(f"blend {blend.parent_id}: footprint does not fit its box: {err}") from None
        for child in blend.children:
            if np.asarray(child.spectrum).size != len(bands):
                raise ValueError(
                    f"source {child.source_id} has {np.asarray(child.spectrum).size} spectrum values "
                    f"for {len(bands)} bands {list(bands)}"
                )
        if len(blend.children) == 1 and blend.children[0].is_isolated:
            child = blend.children[0]
            metadata = None
            if keep_isolated_models:
                metadata = {
                    "spectrum": np.asarray(child.spectrum, dtype=np.float32),
                    "morph": np.asarray(child.morph, dtype=np.float32),
                    "morph_origin": [int(o) for o in child.origin],
                    "parent_id": int(blend.parent_id),
                }
            if child.source_id in out.isolated or child.source_id in out.blends:
                raise ValueError(f"duplicate id {child.source_id} in the deblender output")
            out.isolated[int(child.source_id)] = IsolatedSourceData(
                span_array=footprint, origin=(y0, x0), peak=_peak_yx(child.peak), metadata=metadata
            )
            continue
        sources = {}
        for peak_index, child in enumerate(blend.children):
            component = FactorizedComponentData(
                origin=_int_pair(child.origin, f"source {child.source_id} origin"),
                peak=_peak_yx(child.peak),
                spectrum=np.asarray(child.spectrum, dtype=np.float32).reshape(-1),
                morph=np.asarray(child.morph, dtype=np.float32),
            )
            sources[int(child.source_id)] = ScarletSourceData(
                components=[component], metadata={"peak_id": peak_index, "id": int(child.source_id)}
            )
        if blend.parent_id in out.blends or blend.parent_id in out.isolated:
            raise ValueError(f"duplicate parent id {blend.parent_id} in the deblender output")
        out.blends[int(blend.parent_id)] = HierarchicalBlendData(
            children={
                int(blend.parent_id): ScarletBlendData(
                    origin=(y0, x0), shape=(height, width), sources=sources
                )
            },
            metadata={"spans": footprint, "origin": (y0, x0)},
        )
    return out


def _factorize(source: ScarletSourceData) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(spectrum, morph, origin)`` of a source; multi-component or cube sources are approximated."""
    if len(source.components) == 1 and isinstance(source.components[0], FactorizedComponentData):
        component = source.components[0]
        return np.asarray(component.spectrum), np.asarray(component.morph), tuple(component.origin)  # type: ignore[return-value]
    model, origin = source.model()
    # One spectrum times one morphology cannot hold a colour gradient: keep band totals and the
    # band-summed shape, normalised to a peak of 1 (scarlet's convention).
    morph = model.sum(axis=0)
    peak = float(morph.max()) if morph.size else 0.0
    if peak <= 0:
        return model.sum(axis=(1, 2)), morph, origin
    morph = morph / peak
    spectrum = model.sum(axis=(1, 2)) / morph.sum()
    return spectrum.astype(np.float32), morph.astype(np.float32), origin


def deblended_from_model_data(data: ScarletModelData) -> list[DeblendedBlend]:
    """Convert an archive back to the simulation's ``DeblendedBlend`` list.

    Notes
    -----
    Peaks come back as the integer pixels the format stores.  Sources with several components (or cube
    components) are collapsed to one spectrum x morphology with the same band totals.  Isolated sources
    without a stored model get ``spectrum`` NaN and their footprint as ``morph``.
    """
    n_bands = len(data.bands) if data.metadata and "bands" in data.metadata else None
    blends: list[DeblendedBlend] = []
    for parent_id, blend in data.blends.items():
        leaves = list(blend.iter_blends()) if isinstance(blend, HierarchicalBlendData) else [blend]
        footprint = blend.footprint() if isinstance(blend, HierarchicalBlendData) else None
        if footprint is None:
            # No stored parent footprint: the union of the child blend boxes.
            y0 = min(leaf.origin[0] for leaf in leaves)
            x0 = min(leaf.origin[1] for leaf in leaves)
            y1 = max(leaf.origin[0] + leaf.shape[0] for leaf in leaves)
            x1 = max(leaf.origin[1] + leaf.shape[1] for leaf in leaves)
            mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            for leaf in leaves:
                mask[
                    leaf.origin[0] - y0 : leaf.origin[0] - y0 + leaf.shape[0],
                    leaf.origin[1] - x0 : leaf.origin[1] - x0 + leaf.shape[1],
                ] = True
            footprint = (mask, (y0, x0))
        mask, (y0, x0) = footprint
        children = []
        for leaf in leaves:
            for source_id, source in leaf.sources.items():
                spectrum, morph, origin = _factorize(source)
                peak_y, peak_x = source.components[0].peak
                children.append(
                    DeblendedSource(
                        source_id=int(source_id),
                        parent_id=int(parent_id),
                        peak=(float(peak_x), float(peak_y)),
                        origin=(int(origin[0]), int(origin[1])),
                        spectrum=np.asarray(spectrum, dtype=np.float32),
                        morph=np.asarray(morph, dtype=np.float32),
                    )
                )
        blends.append(
            DeblendedBlend(
                parent_id=int(parent_id),
                origin=(int(y0), int(x0)),
                shape=(int(mask.shape[0]), int(mask.shape[1])),
                spans=mask_to_spans(mask, xy0=(x0, y0)),
                children=children,
            )
        )
    for source_id, isolated in data.isolated.items():
        metadata = isolated.metadata or {}
        mask = np.asarray(isolated.span_array) != 0
        y0, x0 = isolated.origin
        if "spectrum" in metadata and "morph" in metadata:
            spectrum = np.asarray(metadata["spectrum"], dtype=np.float32)
            morph = np.asarray(metadata["morph"], dtype=np.float32)
            origin = _int_pair(metadata.get("morph_origin", isolated.origin), "morph_origin")
        else:
            spectrum = np.full(n_bands or 0, np.nan, dtype=np.float32)
            morph = mask.astype(np.float32)
            origin = (int(y0), int(x0))
        parent_id = int(metadata.get("parent_id", source_id))
        child = DeblendedSource(
            source_id=int(source_id),
            parent_id=parent_id,
            peak=(float(isolated.peak[1]), float(isolated.peak[0])),
            origin=origin,
            spectrum=spectrum,
            morph=morph,
            is_isolated=True,
        )
        blends.append(
            DeblendedBlend(
                parent_id=parent_id,
                origin=(int(y0), int(x0)),
                shape=(int(mask.shape[0]), int(mask.shape[1])),
                spans=mask_to_spans(mask, xy0=(x0, y0)),
                children=[child],
            )
        )
    return blends
