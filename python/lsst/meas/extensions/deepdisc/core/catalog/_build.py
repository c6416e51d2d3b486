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

"""`build_catalog`: detections and the coadd into the catalog (photometry, flags, primary)."""

from __future__ import annotations

__all__ = [
    "build_catalog",
    "detection_snr",
    "footprint_detection_snr",
    "select_catalog_rows",
    "set_primary_flags",
]

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from astropy.table import Column, Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..footprints import flatten_spans, footprint_pixels, pixels_at
from ..ids import IdPacker
from ..multiband import MultibandImage
from ..star_galaxy import psf_photometry
from ..threads import map_in_threads
from ._artifact_mask import _plain
from ._columns import APPORTION_RULE, catalog_columns, is_artifact_class

if TYPE_CHECKING:  # torch-free import: the comparison uses the artifact helpers of this package.
    from ..inference import Detections


def _validate(detections: Detections, image: MultibandImage, class_names: Sequence[str]) -> None:
    if len(class_names) != detections.num_classes:
        raise ValueError(
            f"{len(class_names)} class names {list(class_names)} for {detections.num_classes} model classes"
        )
    if len(set(class_names)) != len(class_names) or not all(isinstance(c, str) and c for c in class_names):
        raise ValueError(f"class names must be unique non-empty strings, got {list(class_names)}")
    if len(detections) and (detections.class_ids.min() < 0 or detections.class_ids.max() >= len(class_names)):
        raise ValueError(f"class ids outside [0, {len(class_names)}) in the detections")
    empty = [i for i, f in enumerate(detections.footprints) if f.shape[0] == 0]
    if empty:
        raise ValueError(f"detections {empty[:10]} have empty footprints; a catalog row needs pixels")


def _pixel_list(
    footprints: list[np.ndarray], image: MultibandImage
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flat pixel list of the footprints on ``image`` and where each footprint's spans start.

    ``owner`` and ``linear`` are `..footprints.footprint_pixels`'s; the starts index the concatenated spans.
    """
    owner, linear = footprint_pixels(footprints, image.xy0, image.shape)
    lengths = np.array([f.shape[0] for f in footprints], dtype=np.int64)
    span_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return owner, linear, span_starts


def _families(
    owner: np.ndarray, linear: np.ndarray, n: int, split_from: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the footprint-overlap graph, plus the links among a split footprint's children.

    Returns ``labels`` per source and, per pixel of the list, the index of its distinct pixel (``inverse``,
    numbered in position order), reused for apportioning.  Temporaries are freed as soon as they are spent:
    an LSST patch has millions of footprint pixels.
    """
    order = np.argsort(linear, kind="stable")
    sorted_linear = linear[order]
    same = sorted_linear[1:] == sorted_linear[:-1]
    del sorted_linear
    sorted_owner = owner[order]
    a, b = sorted_owner[:-1][same], sorted_owner[1:][same]
    del sorted_owner
    inverse = np.zeros(linear.size, dtype=np.int64)
    if linear.size:
        inverse[order[1:]] = np.cumsum(~same)
    del order, same
    # Children of one split footprint touch without sharing a pixel: each is linked to the next.
    split = np.flatnonzero(split_from >= 0)
    split = split[np.argsort(split_from[split], kind="stable")]
    siblings = split_from[split[1:]] == split_from[split[:-1]]
    a = np.concatenate([a, split[:-1][siblings]])
    b = np.concatenate([b, split[1:][siblings]])
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels, inverse


@dataclass
class _FootprintSums:
    """Per-band sums over the footprint pixels (`_footprint_sums`)."""

    flux: np.ndarray
    """``[n_bands, n]`` footprint fluxes (valid pixels)."""
    variance: np.ndarray
    """``[n_bands, n]`` summed variances (NaN where a footprint has no usable pixel in the band)."""
    no_error: np.ndarray
    """``[n]`` footprints without a usable variance in some band (or without a variance plane)."""
    invalid_any: np.ndarray
    """Per footprint pixel: invalid in any band."""
    saturated_any: np.ndarray
    """Per footprint pixel: saturated in any band."""
    bad_variance_any: np.ndarray
    """Per footprint pixel: a valid pixel with an unusable variance in some band."""
    clean: np.ndarray | None
    """``[n_bands, n_pixels]`` pixel values with invalid pixels zeroed, in the image's dtype (if kept)."""


def _footprint_sums(
    image: MultibandImage,
    owner: np.ndarray,
    linear: np.ndarray,
    n: int,
    invalid_planes: Sequence[str],
    saturated_planes: Sequence[str],
    keep_clean: bool,
    threads: int = 1,
) -> _FootprintSums:
    """Footprint fluxes, variances and pixel flags band by band, over the flat pixel list of `_pixel_list`.

    ``clean`` keeps the image's own dtype (the values are exact; sums are taken in float64), and only one
    band's temporaries exist at a time per thread.  With ``threads`` > 1 the bands are measured in that
    many threads (`map_in_threads`): each writes its own rows, and the pixel flags are or-ed under a lock,
    so the result does not depend on the order the bands finish in.
    """
    nodata_bits = image.plane_bits(invalid_planes)
    saturated_bits = image.plane_bits(saturated_planes)
    invalid_any = np.zeros(owner.size, dtype=bool)
    saturated_any = np.zeros(owner.size, dtype=bool)
    bad_variance_any = np.zeros(owner.size, dtype=bool)
    no_error = np.zeros(n, dtype=bool)
    n_bands = len(image.bands)
    clean = np.empty((n_bands, owner.size), dtype=image.image.dtype) if keep_clean else None
    footprint_flux = np.zeros((n_bands, n))
    footprint_var = np.full((n_bands, n), np.nan)
    flags_lock = threading.Lock()

    def measure_band(b: int) -> None:
        values = pixels_at(image.image[b], linear)
        invalid = ~np.isfinite(values)
        saturated = None
        if image.mask is not None:
            bits = pixels_at(image.mask[b], linear)
            invalid |= (bits & nodata_bits) != 0
            saturated = (bits & saturated_bits) != 0
            del bits
        values[invalid] = 0
        footprint_flux[b] = np.bincount(owner, weights=values, minlength=n)
        if clean is not None:
            clean[b] = values
        del values
        bad_variance = has_good = None
        if image.variance is not None:
            variance = pixels_at(image.variance[b], linear)
            # Zero, negative or non-finite variance: the pixel counts for the flux but not for its error.
            good = ~invalid & np.isfinite(variance) & (variance > 0)
            bad_variance = ~invalid & ~good
            variance[~good] = 0
            footprint_var[b] = np.bincount(owner, weights=variance, minlength=n)
            has_good = np.bincount(owner, weights=good, minlength=n) > 0
            footprint_var[b][~has_good] = np.nan
        with flags_lock:
            invalid_any[...] |= invalid
            if saturated is not None:
                saturated_any[...] |= saturated
            if bad_variance is not None:
                bad_variance_any[...] |= bad_variance
            no_error[...] |= True if has_good is None else ~has_good

    map_in_threads(measure_band, range(n_bands), threads)
    return _FootprintSums(
        flux=footprint_flux,
        variance=footprint_var,
        no_error=no_error,
        invalid_any=invalid_any,
        saturated_any=saturated_any,
        bad_variance_any=bad_variance_any,
        clean=clean,
    )


def footprint_detection_snr(
    detections: Detections,
    image: MultibandImage,
    invalid_planes: Sequence[str] = ("NO_DATA",),
    *,
    threads: int = 1,
) -> np.ndarray:
    """The ``detection_snr`` column `build_catalog` would give each detection, without building a catalog.

    A source's S/N depends on its own footprint only, so detections can be cut on it before the catalog
    is built once from those kept.

    Parameters
    ----------
    detections : `~.inference.Detections`
        Stitched detections in the parent coordinates of ``image``.
    image : `~.multiband.MultibandImage`
        The unscaled coadd.
    invalid_planes : sequence of `str`
        Mask planes meaning no data (as given to `build_catalog`).
    threads : `int`
        Bands measured at once (`build_catalog`'s ``threads``).

    Returns
    -------
    snr : `numpy.ndarray`
        One value per detection (`detection_snr`; NaN without a usable variance).
    """
    n = len(detections)
    owner, linear, _ = _pixel_list(detections.footprints, image)
    sums = _footprint_sums(image, owner, linear, n, invalid_planes, (), keep_clean=False, threads=threads)
    return detection_snr(sums.flux, sums.variance)


def detection_snr(flux: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Flat-spectrum detection S/N of footprints from their per-band fluxes and variances.

    Parameters
    ----------
    flux, variance : `numpy.ndarray`
        ``[n_bands, n]`` footprint fluxes and their variances; bands whose variance is not finite and
        positive are left out of a source's sum.

    Returns
    -------
    snr : `numpy.ndarray`
        ``sum_b F_b / V_b / sqrt(sum_b 1 / V_b)`` per source (the inverse-variance weighted mean flux over
        its error); NaN where no band has a usable variance.
    """
    flux = np.asarray(flux, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    usable = np.isfinite(variance) & (variance > 0) & np.isfinite(flux)
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(usable, 1.0 / np.where(usable, variance, 1.0), 0.0)
        total = weight.sum(axis=0)
        return np.where(
            total > 0, (weight * np.where(usable, flux, 0.0)).sum(axis=0) / np.sqrt(total), np.nan
        )


@dataclass
class _Relations:
    """The columns of a source that depend on the other sources of the catalog (`_relations`)."""

    parent: np.ndarray
    n_child: np.ndarray
    family_id: np.ndarray
    family_size: np.ndarray
    apportioned: np.ndarray
    """``[n_bands, n]`` apportioned fluxes."""
    artifact_fraction: np.ndarray
    flag_in_artifact: np.ndarray


def _relations(
    scores: np.ndarray,
    split_from: np.ndarray,
    is_artifact: np.ndarray,
    owner: np.ndarray,
    linear: np.ndarray,
    clean: np.ndarray,
    detection: np.ndarray,
    footprint_flux: np.ndarray,
    ids: np.ndarray,
    artifact_overlap_threshold: float,
) -> _Relations:
    """Families, heads, apportioned fluxes and artifact cover of ``n = len(scores)`` detections.

    ``owner``, ``linear`` are `_pixel_list`'s; ``clean`` the ``[n_bands, n_pixels]`` footprint pixel values
    with invalid pixels zeroed and ``detection`` their band sum; ``footprint_flux`` ``[n_bands, n]``.
    """
    n = len(scores)
    # Artifact cover of the sources: footprint pixels that are also pixels of an artifact footprint.
    artifact_fraction = np.zeros(n)
    if np.any(is_artifact):
        area = np.bincount(owner, minlength=n)
        artifact_pixels = np.unique(linear[is_artifact[owner]])
        # A lookup table over the artifacts' pixel range (at most the image): no sort of the whole list.
        in_artifact = np.isin(linear, artifact_pixels, kind="table") & ~is_artifact[owner]
        artifact_fraction = np.bincount(owner, weights=in_artifact, minlength=n) / np.maximum(area, 1)
    flag_in_artifact = ~is_artifact & (artifact_fraction > artifact_overlap_threshold)

    # Families, heads and apportioning involve the sources' pixels only: artifacts link and share nothing.
    # A source's pixels are all source pixels, so its sums over the whole list add the same values in the
    # same order as over the source pixels alone; only the families need the source pixels apart.
    source_pixel = ~is_artifact[owner]
    all_sources = bool(np.all(source_pixel))
    source_weight = np.clip(np.bincount(owner, weights=detection, minlength=n), 0.0, None)
    if not all_sources:
        owner, linear = owner[source_pixel], linear[source_pixel]

    # Families and heads.
    if n:
        labels, inverse = _families(owner, linear, n, split_from)
    else:
        labels, inverse = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    del linear
    family_size = np.bincount(labels, minlength=labels.max() + 1 if n else 0)[labels]
    by_family_then_score = np.lexsort((np.arange(n), -np.asarray(scores, dtype=np.float64), labels))
    first_of_family = np.ones(n, dtype=bool)
    first_of_family[1:] = labels[by_family_then_score][1:] != labels[by_family_then_score][:-1]
    head_of_label = np.zeros(labels.max() + 1 if n else 0, dtype=np.int64)
    head_of_label[labels[by_family_then_score[first_of_family]]] = by_family_then_score[first_of_family]
    head = head_of_label[labels]
    is_head = head == np.arange(n)
    family_id = ids[head] if n else np.zeros(0, dtype=np.int64)

    # Apportioning: per pixel, each covering source's share of the pixel's flux (its weight over the
    # covering sources' weights; equal shares where they all weigh nothing), computed in place.
    pixel_weight = source_weight[owner]
    share = np.bincount(inverse, weights=pixel_weight)[inverse] if owner.size else pixel_weight.copy()
    weighed = share > 0
    np.divide(pixel_weight, share, out=share, where=weighed)
    del pixel_weight
    if not np.all(weighed):
        unweighed = ~weighed
        share[unweighed] = 1.0 / np.bincount(inverse)[inverse[unweighed]]
    del inverse, weighed
    apportioned = np.stack(
        [
            np.bincount(
                owner, weights=(clean[b] if all_sources else clean[b][source_pixel]) * share, minlength=n
            )
            for b in range(clean.shape[0])
        ]
    )
    apportioned[:, is_artifact] = footprint_flux[:, is_artifact]
    return _Relations(
        parent=np.where(is_head, 0, family_id),
        n_child=np.where(is_head, family_size - 1, 0),
        family_id=family_id,
        family_size=family_size,
        apportioned=apportioned,
        artifact_fraction=artifact_fraction,
        flag_in_artifact=flag_in_artifact,
    )


def _counts(table: Table) -> dict[str, int]:
    """``meta["counts"]`` of a catalog, from its columns (``primary`` only once the flags were set)."""
    counts = {
        "sources": len(table),
        "families": int(np.sum(table["nChild"] > 0)),
        "isolated": int(np.sum(table["family_size"] == 1)),
        "merged_duplicates": int(np.sum(table["flag_merged_duplicate"])),
        "flag_nodata": int(np.sum(table["flag_nodata"])),
        "flag_saturated": int(np.sum(table["flag_saturated"])),
        "flag_bad_variance": int(np.sum(table["flag_bad_variance"])),
        "flag_patch_edge": int(np.sum(table["flag_patch_edge"])),
        "artifacts": int(np.sum(table["is_artifact"])),
        "flag_in_artifact": int(np.sum(table["flag_in_artifact"])),
    }
    if "primary" in table.meta.get("counts", {}):
        counts["primary"] = int(np.sum(table["detect_isPrimary"]))
    return counts


def set_primary_flags(catalog: Table, patch_inner: np.ndarray, tract_inner: np.ndarray, source: str) -> None:
    """Set ``detect_isPatchInner``, ``detect_isTractInner`` and ``detect_isPrimary`` of a catalog in place.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        A `build_catalog` table.
    patch_inner, tract_inner : `numpy.ndarray`
        Per row, whether the centroid lies in the patch's and the tract's inner region.  Artifact rows
        (``is_artifact``) are never primary.
    source : `str`
        Where the regions came from, recorded as ``meta["primary_flags"]``.
    """
    patch_inner = np.asarray(patch_inner, dtype=bool).reshape(-1)
    tract_inner = np.asarray(tract_inner, dtype=bool).reshape(-1)
    if patch_inner.size != len(catalog) or tract_inner.size != len(catalog):
        raise ValueError(
            f"{patch_inner.size} patch and {tract_inner.size} tract flags for a catalog of "
            f"{len(catalog)} rows"
        )
    primary = patch_inner & tract_inner
    if "is_artifact" in catalog.colnames:
        primary &= ~np.asarray(catalog["is_artifact"], dtype=bool)
    catalog["detect_isPatchInner"] = patch_inner
    catalog["detect_isTractInner"] = tract_inner
    catalog["detect_isPrimary"] = primary
    catalog.meta["primary_flags"] = source
    catalog.meta.setdefault("counts", {})["primary"] = int(np.sum(primary))


def build_catalog(
    detections: Detections,
    image: MultibandImage,
    *,
    class_names: Sequence[str],
    tract: int,
    patch: int,
    model_name: str,
    model_version: str,
    id_packer: IdPacker,
    edge_margin: int = 0,
    saturated_planes: Sequence[str] = ("SAT",),
    invalid_planes: Sequence[str] = ("NO_DATA",),
    artifact_overlap_threshold: float = 0.5,
    threads: int = 1,
) -> Table:
    """Build the detection catalog of one patch.

    Parameters
    ----------
    detections : `~.inference.Detections`
        Stitched detections in the parent coordinates of ``image``.
    image : `~.multiband.MultibandImage`
        The (unscaled, nJy) coadd the detections were made on; its WCS gives ``coord_ra/dec``.
    class_names : sequence of `str`
        One name per model class, in class-id order.
    tract, patch : `int`
        Data ID of the catalog (packed into the ids).
    model_name, model_version : `str`
        Provenance, stored in columns and in the table metadata.
    id_packer : `~.ids.IdPacker`
        Id layout.
    edge_margin : `int`
        Distance in pixels from the image border within which ``flag_patch_edge`` is set.
    saturated_planes, invalid_planes : sequence of `str`
        Mask planes meaning saturated and no data.
    artifact_overlap_threshold : `float`
        A source gets ``flag_in_artifact`` when more than this fraction of its footprint is covered by
        artifact footprints (see the module documentation).
    threads : `int`
        Bands measured at once (footprint sums, PSF photometry: `~..threads.map_in_threads`); the
        catalog is the same for any count.

    Returns
    -------
    catalog : `astropy.table.Table`
        One row per detection with the columns of `catalog_columns`; an empty table with the full schema
        when there are no detections.

    Raises
    ------
    ValueError
        If class names do not match the detections, a footprint is empty or outside the image.
    IdOverflowError
        If the tract, patch or number of detections does not fit the id layout.
    """
    class_names = list(class_names)
    _validate(detections, image, class_names)
    if edge_margin < 0:
        raise ValueError(f"edge_margin must be >= 0, got {edge_margin}")
    if not 0.0 <= artifact_overlap_threshold < 1.0:
        raise ValueError(f"artifact_overlap_threshold must be in [0, 1), got {artifact_overlap_threshold}")
    n = len(detections)
    artifact_class = np.asarray(is_artifact_class(class_names), dtype=bool)
    is_artifact = artifact_class[detections.class_ids] if n else np.zeros(0, dtype=bool)
    ids = id_packer.pack(tract, patch, np.arange(1, n + 1, dtype=np.int64))

    owner, linear, span_starts = _pixel_list(detections.footprints, image)
    area = np.bincount(owner, minlength=n)

    sums = _footprint_sums(
        image, owner, linear, n, invalid_planes, saturated_planes, keep_clean=True, threads=threads
    )
    clean, footprint_flux, footprint_var = sums.clean, sums.flux, sums.variance
    invalid_any, saturated_any = sums.invalid_any, sums.saturated_any
    bad_variance_any, no_error = sums.bad_variance_any, sums.no_error
    # Image values are stored as they come (float32): the sum is float64, as every later use of them.
    detection = clean.sum(axis=0, dtype=np.float64)

    # Centroids weighted by the positive detection flux; unweighted where there is none.
    weight = np.clip(detection, 0.0, None)
    weight_sum = np.bincount(owner, weights=weight, minlength=n)
    parent_y, parent_x = np.divmod(linear, image.width)
    parent_x += image.xy0[0]
    parent_y += image.xy0[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        centroid_x = np.where(
            weight_sum > 0,
            np.bincount(owner, weights=weight * parent_x, minlength=n) / weight_sum,
            np.bincount(owner, weights=parent_x, minlength=n) / area,
        )
        centroid_y = np.where(
            weight_sum > 0,
            np.bincount(owner, weights=weight * parent_y, minlength=n) / weight_sum,
            np.bincount(owner, weights=parent_y, minlength=n) / area,
        )
    if image.wcs is not None and n:
        coord_ra, coord_dec = image.pixel_to_sky(centroid_x, centroid_y)
    else:
        coord_ra = np.full(n, np.nan)
        coord_dec = np.full(n, np.nan)

    related = _relations(
        detections.scores,
        detections.split_from,
        is_artifact,
        owner,
        linear,
        clean,
        detection,
        footprint_flux,
        ids,
        artifact_overlap_threshold,
    )

    # Footprint bounding boxes (inclusive) from the spans.
    if n:
        spans = np.concatenate(detections.footprints).astype(np.int64)
        bbox_x0 = np.minimum.reduceat(spans[:, 1], span_starts)
        bbox_y0 = np.minimum.reduceat(spans[:, 0], span_starts)
        bbox_x1 = np.maximum.reduceat(spans[:, 2], span_starts)
        bbox_y1 = np.maximum.reduceat(spans[:, 0], span_starts)
    else:
        bbox_x0 = bbox_y0 = bbox_x1 = bbox_y1 = np.zeros(0, dtype=np.int64)
    x_first, y_first = image.xy0
    x_last, y_last = x_first + image.width - 1, y_first + image.height - 1
    patch_edge = (
        (bbox_x0 - x_first <= edge_margin)
        | (bbox_y0 - y_first <= edge_margin)
        | (x_last - bbox_x1 <= edge_margin)
        | (y_last - bbox_y1 <= edge_margin)
    )
    nodata_count = np.bincount(owner, weights=invalid_any, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        nodata_fraction = np.where(area > 0, nodata_count / np.maximum(area, 1), 0.0)
    saturated = np.bincount(owner, weights=saturated_any, minlength=n) > 0
    bad_variance = (np.bincount(owner, weights=bad_variance_any, minlength=n) > 0) | no_error

    footprint_column = np.empty(n, dtype=object)
    for i, spans_i in enumerate(detections.footprints):
        footprint_column[i] = flatten_spans(spans_i)
    names = np.array(class_names)
    values: dict[str, Any] = {
        "id": ids,
        "parent": related.parent,
        "nChild": related.n_child,
        "family_id": related.family_id,
        "family_size": related.family_size,
        "coord_ra": coord_ra,
        "coord_dec": coord_dec,
        "centroid_x": centroid_x,
        "centroid_y": centroid_y,
        "bbox_x0": bbox_x0,
        "bbox_y0": bbox_y0,
        "bbox_x1": bbox_x1,
        "bbox_y1": bbox_y1,
        "box_x0": detections.boxes[:, 0],
        "box_y0": detections.boxes[:, 1],
        "box_x1": detections.boxes[:, 2],
        "box_y1": detections.boxes[:, 3],
        "footprint": footprint_column,
        "footprint_area": area,
        "score": detections.scores,
        "class_id": detections.class_ids,
        "class_name": names[detections.class_ids] if n else np.zeros(0, dtype=names.dtype),
        "nodata_fraction": nodata_fraction,
        "flag_nodata": nodata_count > 0,
        "flag_saturated": saturated,
        "flag_bad_variance": bad_variance,
        "flag_patch_edge": patch_edge,
        "flag_merged_duplicate": detections.merged_duplicate,
        "is_artifact": is_artifact,
        "artifact_overlap_fraction": related.artifact_fraction,
        "flag_in_artifact": related.flag_in_artifact,
        "detect_isPatchInner": np.ones(n, dtype=bool),
        "detect_isTractInner": np.ones(n, dtype=bool),
        "detect_isPrimary": ~is_artifact,
        "tile_index": detections.tile_index,
        "tract": np.full(n, tract),
        "patch": np.full(n, patch),
        "model_name": np.full(n, model_name, dtype=f"U{max(len(model_name), 1)}"),
        "model_version": np.full(n, model_version, dtype=f"U{max(len(model_version), 1)}"),
    }
    for k, name in enumerate(class_names):
        values[f"prob_{name}"] = detections.class_probs[:, k]
    values["detection_snr"] = detection_snr(footprint_flux, footprint_var)
    photometry = psf_photometry(image, centroid_x, centroid_y, invalid_planes=invalid_planes, threads=threads)
    values["star_galaxy_prob"] = np.full(n, np.nan)
    values["reliability"] = np.full(n, np.nan)
    with np.errstate(invalid="ignore"):
        for b, band in enumerate(image.bands):
            values[f"{band}_footprintFlux"] = footprint_flux[b]
            values[f"{band}_footprintFluxErr"] = np.sqrt(footprint_var[b])
            values[f"{band}_apportionedFlux"] = related.apportioned[b]
            values[f"{band}_psfFlux"] = photometry.flux[:, b]
            values[f"{band}_psfFluxErr"] = photometry.flux_err[:, b]
            values[f"{band}_psfExcess"] = photometry.excess[:, b]
            values[f"{band}_psfExcessErr"] = photometry.excess_err[:, b]

    table = Table()
    for name, dtype, unit, description in catalog_columns(image.bands, class_names):
        data = values[name]
        if dtype is not object and dtype is not str:
            data = np.asarray(data, dtype=dtype)
        table[name] = Column(data=data, name=name, unit=unit, description=description)
    table.meta.update(
        {
            "model": {"name": str(model_name), "version": str(model_version)},
            "bands": list(image.bands),
            "class_names": class_names,
            "tract": int(tract),
            "patch": int(patch),
            "image_bbox": {"x0": x_first, "y0": y_first, "width": image.width, "height": image.height},
            "counts": _counts(table),
            "artifact_classes": [name for name, a in zip(class_names, artifact_class) if a],
            "artifact_overlap_threshold": float(artifact_overlap_threshold),
            "id_layout": id_packer.to_dict(),
            "edge_margin": int(edge_margin),
            "apportion_rule": APPORTION_RULE,
            "primary_flags": "not set (no patch or tract region given)",
            "inference": _plain(detections.stats),
        }
    )
    return table


def select_catalog_rows(
    catalog: Table,
    keep: np.ndarray,
    detections: Detections,
    image: MultibandImage,
    *,
    invalid_planes: Sequence[str] = ("NO_DATA",),
    threads: int = 1,
) -> Table:
    """The `build_catalog` table of the detections ``keep`` selects, from the catalog of all of them.

    A row's own measurements (footprint, fluxes and flags, centroid, PSF photometry, ``detection_snr``,
    class columns and anything added since, such as ``reliability``) do not depend on the other detections
    and are kept as they are.  The columns that do - ``id`` (counters 1..N again), the family columns,
    the apportioned fluxes and the artifact cover - are worked out again for the kept rows, and
    ``meta["counts"]`` is recounted, so that the result equals `build_catalog` run on
    ``detections.select(keep)`` without measuring any source twice.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        `build_catalog`'s table of ``detections`` (its metadata gives the id layout, tract and patch).
    keep : `numpy.ndarray`
        Boolean, one per row.
    detections : `~.inference.Detections`
        The detections ``catalog`` was built from, in row order.
    image : `~.multiband.MultibandImage`
        The coadd ``catalog`` was built on.
    invalid_planes : sequence of `str`
        Mask planes meaning no data, as given to `build_catalog`.
    threads : `int`
        Bands measured at once, as `build_catalog`'s.

    Returns
    -------
    selected : `astropy.table.Table`
        A new table; ``catalog`` is not changed.

    Raises
    ------
    ValueError
        If ``keep`` is not one boolean per row, or the detections are not the catalog's.
    """
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.shape != (len(catalog),):
        raise ValueError(f"keep must be {len(catalog)} booleans (one per row), got {keep.dtype} {keep.shape}")
    if len(detections) != len(catalog) or not np.array_equal(detections.scores, catalog["score"]):
        raise ValueError(
            f"the {len(detections)} detections are not the ones the catalog of {len(catalog)} rows was "
            "built from"
        )
    selected = catalog[keep]
    selected.meta = copy.deepcopy(dict(catalog.meta))
    kept = detections.select(keep)
    n = len(kept)
    layout = {key: value for key, value in catalog.meta["id_layout"].items() if key != "counter_bits"}
    ids = IdPacker(**layout).pack(
        catalog.meta["tract"], catalog.meta["patch"], np.arange(1, n + 1, dtype=np.int64)
    )
    owner, linear, _ = _pixel_list(kept.footprints, image)
    sums = _footprint_sums(image, owner, linear, n, invalid_planes, (), keep_clean=True, threads=threads)
    related = _relations(
        kept.scores,
        kept.split_from,
        np.asarray(selected["is_artifact"], dtype=bool),
        owner,
        linear,
        sums.clean,
        sums.clean.sum(axis=0, dtype=np.float64),
        sums.flux,
        ids,
        float(catalog.meta["artifact_overlap_threshold"]),
    )
    columns = {
        "id": ids,
        "parent": related.parent,
        "nChild": related.n_child,
        "family_id": related.family_id,
        "family_size": related.family_size,
        "artifact_overlap_fraction": related.artifact_fraction,
        "flag_in_artifact": related.flag_in_artifact,
    }
    for b, band in enumerate(catalog.meta["bands"]):
        columns[f"{band}_apportionedFlux"] = related.apportioned[b]
    for name, values in columns.items():
        selected[name][:] = values  # In place: the column keeps its dtype, unit and description.
    selected.meta["counts"] = _counts(selected)
    return selected
