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

"""`build_labels`: the deblender's models of one patch rendered, thresholded and classified into labels."""

from __future__ import annotations

__all__ = ["build_labels"]

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table

from ..footprints import SPAN_DTYPE, flatten_spans, mask_to_spans, spans_area, unflatten_spans
from ..multiband import MultibandImage
from ..photometry import njy_to_mag
from ..scarlet_io import (
    HierarchicalBlendData,
    IsolatedSourceData,
    ModelRenderer,
    ScarletBlendData,
    ScarletModelData,
    ScarletSourceData,
)
from ._config import (
    _FOOTPRINT_DESCRIPTION,
    LabelConfig,
    _base_meta,
    background_sigmas,
    detection_weights,
    empty_labels,
    label_columns,
)


@dataclass
class _SourceEntry:
    """One scarlet source with where it came from."""

    source_id: int
    parent_id: int
    source: ScarletSourceData | IsolatedSourceData
    blend_box: tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive, parent coordinates
    isolated: bool


def _iter_sources(models: ScarletModelData) -> Iterator[_SourceEntry]:
    for parent_id, blend in models.blends.items():
        leaves = blend.iter_blends() if isinstance(blend, HierarchicalBlendData) else [blend]
        for leaf in leaves:
            if not isinstance(leaf, ScarletBlendData):
                raise TypeError(f"blend {parent_id} holds a {type(leaf).__name__}, not a scarlet blend")
            (y0, x0), (height, width) = leaf.origin, leaf.shape
            for source_id, source in leaf.sources.items():
                yield _SourceEntry(
                    int(source_id), int(parent_id), source, (y0, x0, y0 + height, x0 + width), False
                )
    for source_id, isolated in models.isolated.items():
        y0, x0 = isolated.origin
        height, width = np.shape(isolated.span_array)
        yield _SourceEntry(int(source_id), int(source_id), isolated, (y0, x0, y0 + height, x0 + width), True)


def _has_stored_model(source: ScarletSourceData | IsolatedSourceData) -> bool:
    if isinstance(source, IsolatedSourceData):
        metadata = source.metadata or {}
        return "spectrum" in metadata and "morph" in metadata
    return True


@dataclass
class _Rendered:
    """A source's clipped detection-image stamp and footprint, in parent coordinates."""

    entry: _SourceEntry
    origin: tuple[int, int]  # (y0, x0) of the stamp
    detection: np.ndarray  # [h, w] float32 detection image of the model
    footprint: np.ndarray  # [h, w] bool, NO_DATA removed
    removed_no_data: int
    from_image: bool


def _intersect(*boxes: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    y0 = max(box[0] for box in boxes)
    x0 = max(box[1] for box in boxes)
    y1 = min(box[2] for box in boxes)
    x1 = min(box[3] for box in boxes)
    return y0, x0, max(y1, y0), max(x1, x0)


def _render(
    entry: _SourceEntry,
    renderer: ModelRenderer,
    image: MultibandImage,
    invalid: np.ndarray,
    weights: np.ndarray,
    threshold: float | None,
    config: LabelConfig,
) -> _Rendered | None:
    """Render one source, clip it and threshold it; `None` when nothing of it lies in the patch."""
    from_image = not _has_stored_model(entry.source)
    if from_image:
        cube, origin = ModelRenderer.render_isolated(entry.source, image)  # type: ignore[arg-type]
        cube = np.nan_to_num(cube, nan=0.0, posinf=0.0, neginf=0.0)
        stored = np.asarray(entry.source.span_array) != 0  # type: ignore[union-attr]
    else:
        cube, origin = renderer.render(entry.source, observed=True)
        stored = None
    height, width = cube.shape[1:]
    stamp_box = (origin[0], origin[1], origin[0] + height, origin[1] + width)
    patch_box = (image.xy0[1], image.xy0[0], image.xy0[1] + image.height, image.xy0[0] + image.width)
    y0, x0, y1, x1 = _intersect(stamp_box, patch_box)
    if y1 <= y0 or x1 <= x0:
        return None
    stamp_slice = (slice(y0 - origin[0], y1 - origin[0]), slice(x0 - origin[1], x1 - origin[1]))
    cube = cube[(slice(None), *stamp_slice)]
    # The whole model (in the patch) counts for blendedness and centroids; only footprints are clipped.
    detection = np.tensordot(weights, cube.astype(np.float64), axes=1)
    if from_image and config.threshold_mode == "model":
        footprint = stored[stamp_slice].copy()
    elif config.threshold_mode == "model":
        footprint = cube.max(axis=0) > config.model_threshold
    else:
        footprint = detection >= threshold
    if stored is not None:
        footprint &= stored[stamp_slice]
    if config.clip_to_blend_box:
        by0, bx0, by1, bx1 = entry.blend_box
        in_blend = np.zeros_like(footprint)
        in_blend[max(by0 - y0, 0) : max(by1 - y0, 0), max(bx0 - x0, 0) : max(bx1 - x0, 0)] = True
        footprint &= in_blend
    patch_slice = (slice(y0 - patch_box[0], y1 - patch_box[0]), slice(x0 - patch_box[1], x1 - patch_box[1]))
    no_data = footprint & invalid[patch_slice]
    removed = int(no_data.sum())
    footprint &= ~no_data
    return _Rendered(entry, (y0, x0), detection.astype(np.float32), footprint, removed, from_image)


def _mag(flux: float) -> float:
    return float(njy_to_mag(flux))


def _object_lookup(objects: Table | None, config: LabelConfig) -> dict[int, int]:
    if objects is None:
        return {}
    if config.id_column not in objects.colnames:
        raise KeyError(
            f"object table has no id column {config.id_column!r} to join on; it has {objects.colnames}"
        )
    ids = np.asarray(objects[config.id_column], dtype=np.int64)
    lookup = {int(value): index for index, value in enumerate(ids)}
    if len(lookup) != ids.size:
        raise ValueError(f"object table column {config.id_column!r} has duplicate ids")
    return lookup


def _reference_arrays(reference: Table, config: LabelConfig) -> tuple[SkyCoord, np.ndarray]:
    needed = [config.reference_ra_column, config.reference_dec_column, config.reference_star_column]
    missing = [name for name in needed if name not in reference.colnames]
    if missing:
        raise KeyError(f"reference catalog lacks column(s) {missing}; it has {reference.colnames}")
    coords = SkyCoord(
        np.asarray(reference[config.reference_ra_column], dtype=float) * u.deg,
        np.asarray(reference[config.reference_dec_column], dtype=float) * u.deg,
    )
    is_star = np.asarray(reference[config.reference_star_column])
    if is_star.dtype.kind in "US":
        raise TypeError(
            f"reference column {config.reference_star_column!r} must be boolean or numeric, not strings"
        )
    return coords, is_star.astype(bool)


def build_labels(
    image: MultibandImage,
    models: ScarletModelData,
    objects: Table | None,
    *,
    config: LabelConfig | None = None,
    reference: Table | None = None,
    **overrides: Any,
) -> Table:
    """Build training labels, one row per deblended source, from scarlet models.

    Parameters
    ----------
    image : `MultibandImage`
        The coadd patch the models were fitted to (every model band must be present; ``xy0`` honoured).
    models : `~.scarlet_io.ScarletModelData`
        The patch's scarlet models (bands and PSFs in their metadata).
    objects : `astropy.table.Table` or `None`
        Object table (``object_patch``) with ``id_column``, the extendedness and flux columns; `None` only
        with ``class_source="reference"`` (magnitudes are then unknown).
    config : `LabelConfig`, optional
        Parameters; keyword ``overrides`` replace individual fields (e.g. ``threshold_mode="model"``).
    reference : `astropy.table.Table`, optional
        Reference catalog for ``class_source="reference"``.

    Returns
    -------
    labels : `astropy.table.Table`
        One row per labelled source (columns in the module docstring), sorted by ``source_id``.  Metadata:
        ``label_config``, ``class_names``, ``bands``, ``image_bbox`` (x0, y0, width, height),
        ``no_data_fraction``, ``skipped_reason`` (empty unless the patch was skipped), ``n_sources`` and
        ``n_dropped`` (counts by reason: ``not_in_objects``, ``no_class``, ``too_small``,
        ``no_reference_match``, ``reference_mag_mismatch``).

    Raises
    ------
    MissingBandError
        If a model band is missing from the image.
    ValueError, KeyError
        For inconsistent inputs (no variance where it is needed, missing columns, duplicate ids).
    """
    config = LabelConfig(**{**asdict(config or LabelConfig()), **overrides})
    if objects is None and config.class_source == "extendedness":
        raise ValueError("class_source='extendedness' needs the object table")
    if config.class_source == "reference" and reference is None:
        raise ValueError("class_source='reference' needs a reference catalog")
    bands = models.bands
    image = image.select_bands(bands)
    invalid = image.invalid_pixels(config.invalid_planes).any(axis=0)
    no_data_fraction = float(invalid.mean()) if invalid.size else 1.0
    meta: dict[str, Any] = {
        "bands": list(bands),
        "image_bbox": [image.xy0[0], image.xy0[1], image.width, image.height],
        "no_data_fraction": no_data_fraction,
        "n_sources": sum(1 for _ in models.iter_sources()) + len(models.isolated),
        "n_dropped": {},
    }
    if no_data_fraction > config.max_no_data_fraction:
        reason = (
            f"{100 * no_data_fraction:.1f}% of the pixels have no data "
            f"(more than max_no_data_fraction={config.max_no_data_fraction:g})"
        )
        return empty_labels(config, **meta, skipped_reason=reason)

    needs_noise = config.threshold_mode == "background_sigma" or config.detection_weighting != "sum"
    sigmas = background_sigmas(image, invalid) if needs_noise else np.ones(len(bands))
    weights = detection_weights(config.detection_weighting, sigmas)
    threshold = None
    if config.threshold_mode == "background_sigma":
        threshold = config.sigma_threshold * math.sqrt(float(np.sum(weights**2 * sigmas**2)))
    meta["band_sigmas"] = [float(s) for s in sigmas] if needs_noise else None
    meta["detection_weights"] = [float(w) for w in weights]
    meta["detection_threshold"] = threshold

    renderer = models.renderer()
    rendered: list[_Rendered] = []
    x_begin, y_begin = image.xy0
    # The detection image of all models, for blendedness; float64 keeps the dot products exact enough.
    all_models = np.zeros(image.shape, dtype=np.float64)
    for entry in _iter_sources(models):
        result = _render(entry, renderer, image, invalid, weights, threshold, config)
        if result is None:
            continue
        (y0, x0), (height, width) = result.origin, result.detection.shape
        all_models[y0 - y_begin : y0 - y_begin + height, x0 - x_begin : x0 - x_begin + width] += (
            result.detection
        )
        rendered.append(result)

    lookup = _object_lookup(objects, config)
    reference_arrays = _reference_arrays(reference, config) if config.class_source == "reference" else None
    saturated_bits = image.plane_mask(config.saturated_planes)
    dropped = dict.fromkeys(
        ("not_in_objects", "no_class", "too_small", "no_reference_match", "reference_mag_mismatch"), 0
    )
    rows: list[dict[str, Any]] = []
    for result in sorted(rendered, key=lambda r: r.entry.source_id):
        entry = result.entry
        row_index = lookup.get(entry.source_id)
        if objects is not None and row_index is None:
            dropped["not_in_objects"] += 1
            continue
        area = int(result.footprint.sum())
        if area < config.min_area:
            dropped["too_small"] += 1
            continue
        row = _describe(result, image, all_models, saturated_bits, objects, row_index, config, bands)
        if config.class_source == "extendedness":
            value = row["extendedness"]
            if not math.isfinite(value):
                dropped["no_class"] += 1
                continue
            row["class_id"] = config.galaxy_id if value >= config.extendedness_threshold else config.star_id
        rows.append(row)

    if reference_arrays is not None and rows:
        fallback = {"n_class_from_extendedness": 0}
        rows = _classify_by_reference(rows, reference, reference_arrays, config, dropped, fallback)
        meta.update(fallback)
    meta["n_dropped"] = dropped
    if not rows:
        return empty_labels(config, **meta)
    return _rows_to_table(rows, config, meta)


def _describe(
    result: _Rendered,
    image: MultibandImage,
    all_models: np.ndarray,
    saturated: np.ndarray,
    objects: Table | None,
    row_index: int | None,
    config: LabelConfig,
    bands: Sequence[str],
) -> dict[str, Any]:
    """Every column of one label except the class."""
    entry = result.entry
    (y0, x0), (height, width) = result.origin, result.detection.shape
    ly0, lx0 = y0 - image.xy0[1], x0 - image.xy0[0]
    local = (slice(ly0, ly0 + height), slice(lx0, lx0 + width))
    spans = mask_to_spans(result.footprint, xy0=(x0, y0))
    rows_in, cols_in = np.nonzero(result.footprint)
    detection = result.detection.astype(np.float64)
    flux = np.clip(detection[rows_in, cols_in], 0.0, None)
    if flux.sum() > 0:
        centroid_x = float(np.sum(flux * cols_in) / flux.sum()) + x0
        centroid_y = float(np.sum(flux * rows_in) / flux.sum()) + y0
    else:
        centroid_x, centroid_y = float(cols_in.mean()) + x0, float(rows_in.mean()) + y0
    self_dot = float(np.sum(detection * detection))
    all_dot = float(np.sum(all_models[local] * detection))
    blendedness = 1.0 - self_dot / all_dot if all_dot > 0 else math.nan
    candidate = int(result.footprint.sum()) + result.removed_no_data
    margin = config.edge_margin
    touches_edge = (
        spans[:, 1].min() - image.xy0[0] <= margin
        or spans[:, 2].max() - image.xy0[0] >= image.width - 1 - margin
        or spans[:, 0].min() - image.xy0[1] <= margin
        or spans[:, 0].max() - image.xy0[1] >= image.height - 1 - margin
    )
    ra = dec = math.nan
    if image.wcs is not None:
        sky_ra, sky_dec = image.pixel_to_sky(np.array([centroid_x]), np.array([centroid_y]))
        ra, dec = float(sky_ra[0]), float(sky_dec[0])
    extendedness = math.nan
    mag_band = config.ref_band or bands[0]
    mag = math.nan
    is_primary = True
    if objects is not None and row_index is not None:
        obj = objects[row_index]
        if image.wcs is None and "coord_ra" in objects.colnames and "coord_dec" in objects.colnames:
            ra, dec = float(obj["coord_ra"]), float(obj["coord_dec"])
        if config.extendedness_column in objects.colnames:
            extendedness = float(obj[config.extendedness_column])
        elif config.class_source == "extendedness":
            raise KeyError(
                f"object table has no extendedness column {config.extendedness_column!r}; "
                f"it has {objects.colnames}"
            )
        if not config.ref_band and config.ref_band_column in objects.colnames:
            mag_band = str(obj[config.ref_band_column]).strip() or mag_band
        flux_name = config.flux_column.format(band=mag_band)
        if flux_name not in objects.colnames:
            raise KeyError(f"object table has no flux column {flux_name!r} for magnitudes")
        mag = _mag(float(obj[flux_name]))
        if config.primary_column in objects.colnames:
            is_primary = bool(obj[config.primary_column])
    x_min, y_min = int(spans[:, 1].min()), int(spans[:, 0].min())
    x_max, y_max = int(spans[:, 2].max()), int(spans[:, 0].max())
    return {
        "source_id": entry.source_id,
        "parent_id": entry.parent_id,
        "centroid_x": centroid_x,
        "centroid_y": centroid_y,
        "coord_ra": ra,
        "coord_dec": dec,
        "bbox_x0": x_min,
        "bbox_y0": y_min,
        "bbox_x1": x_max,
        "bbox_y1": y_max,
        "footprint_area": spans_area(spans),
        "class_id": -1,
        "extendedness": extendedness,
        "ref_separation_arcsec": math.nan,
        "mag": mag,
        "mag_band": mag_band,
        "blendedness": blendedness,
        "nodata_fraction": result.removed_no_data / candidate if candidate else 0.0,
        "is_primary": is_primary,
        "flag_patch_edge": bool(touches_edge),
        "flag_nodata": result.removed_no_data > 0,
        "flag_saturated": bool(np.any(saturated[local] & result.footprint)),
        "flag_isolated": entry.isolated,
        "flag_model_from_image": result.from_image,
        "footprint": flatten_spans(spans),
    }


def _classify_by_reference(
    rows: list[dict[str, Any]],
    reference: Table,
    reference_arrays: tuple[SkyCoord, np.ndarray],
    config: LabelConfig,
    dropped: dict[str, int],
    fallback: dict[str, int],
) -> list[dict[str, Any]]:
    """Class of the nearest reference object within the radius (and magnitude tolerance)."""
    coords, is_star = reference_arrays
    ra = np.array([row["coord_ra"] for row in rows])
    dec = np.array([row["coord_dec"] for row in rows])
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        raise ValueError("reference matching needs sky positions: give the image a WCS or coord_ra/dec")
    kept = []

    def unmatched(row: dict[str, Any], reason: str) -> None:
        value = row.get("extendedness", math.nan)
        if config.reference_unmatched == "extendedness" and math.isfinite(value):
            row["class_id"] = config.galaxy_id if value >= config.extendedness_threshold else config.star_id
            fallback["n_class_from_extendedness"] += 1
            kept.append(row)
        else:
            dropped[reason] += 1

    if len(coords) == 0:
        for row in rows:
            unmatched(row, "no_reference_match")
        return kept
    index, separation, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(coords)
    separation = separation.to_value(u.arcsec)
    for row, match, sep in zip(rows, np.atleast_1d(index), np.atleast_1d(separation)):
        if sep > config.reference_match_radius_arcsec:
            unmatched(row, "no_reference_match")
            continue
        if config.reference_mag_column and math.isfinite(config.reference_max_delta_mag):
            name = config.reference_mag_column.format(band=row["mag_band"])
            if name not in reference.colnames:
                raise KeyError(f"reference catalog has no magnitude column {name!r}")
            reference_mag = float(reference[name][match])
            if (
                math.isfinite(reference_mag)
                and math.isfinite(row["mag"])
                and abs(reference_mag - row["mag"]) > config.reference_max_delta_mag
            ):
                unmatched(row, "reference_mag_mismatch")
                continue
        row["class_id"] = config.star_id if is_star[match] else config.galaxy_id
        row["ref_separation_arcsec"] = float(sep)
        kept.append(row)
    return kept


def _rows_to_table(rows: list[dict[str, Any]], config: LabelConfig, meta: dict[str, Any]) -> Table:
    table = Table()
    for name, dtype, unit, description in label_columns(config.class_names):
        if name == "class_name":
            values = np.array([config.class_names[row["class_id"]] for row in rows], dtype=dtype)
        else:
            values = np.array([row[name] for row in rows], dtype=dtype)
        table[name] = values
        table[name].unit = unit
        table[name].description = description
    footprints = np.empty(len(rows), dtype=object)
    for index, row in enumerate(rows):
        footprints[index] = row["footprint"]
    table["footprint"] = footprints
    table["footprint"].description = _FOOTPRINT_DESCRIPTION
    table.meta.update(_base_meta(config))
    table.meta.update(meta)
    return table


# ---------------------------------------------------------------------------------------------------------
# Training examples and COCO export
# ---------------------------------------------------------------------------------------------------------


def _as_spans(value: Any) -> np.ndarray:
    """Spans from a label-table cell: flattened ``int32`` (as stored) or ``(N, 3)``."""
    array = np.asarray(value)
    if array.ndim == 2:
        return np.asarray(array, dtype=SPAN_DTYPE).reshape(-1, 3)
    return unflatten_spans(array)
