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
"""The detection catalog: one astropy table row per detected source, with footprints and fluxes.

`build_catalog` turns stitched `~.inference.Detections` and the `~.multiband.MultibandImage` they were found
on into an `astropy.table.Table` ready for the ``ArrowAstropy`` storage class (through
``butler.tables.to_arrow``, which turns the ``footprint`` object column into ``list<int32>``).  Every column
has a description, and a unit where one applies.

Conventions (decided here and recorded in the table metadata):

* **Ids.**  ``id`` packs ``(tract, patch, counter)`` with an `~.ids.IdPacker`; counters run 1..N in row
  order, so no source has id 0, which means "no parent".
* **Families.**  Detections whose footprints share at least one pixel are linked; the connected
  components of that graph are *families*.  No synthetic parent rows are added: the family member with the
  highest score (ties: the earlier row) is the family *head* and plays the DRP parent's role.  The head has
  ``parent = 0`` and ``nChild = family_size - 1``; the other members have ``parent = <head id>`` and
  ``nChild = 0``; an isolated source has ``parent = 0``, ``nChild = 0`` and ``family_size = 1``.
  ``family_id`` is the head's id for every member (the source's own id when isolated).
* **Detection image** is the sum of the bands; invalid pixels (non-finite, or in a ``invalid_planes`` plane
  of that band) count as zero flux everywhere.
* **Centroid** (``centroid_x/y``): mean pixel position weighted by the positive part of the detection
  image inside the footprint; the unweighted footprint centroid when the footprint has no positive flux.
  ``coord_ra/dec`` are the image WCS at that centroid (NaN without a WCS).
* **Footprint fluxes**: ``<band>_footprintFlux`` sums the band over the footprint (valid pixels);
  ``<band>_footprintFluxErr`` is the square root of the summed variance over the same pixels, leaving out
  pixels whose variance is zero, negative or non-finite.  ``flag_bad_variance`` marks a footprint with such
  pixels (in any band), or without a variance plane; an error with no usable pixel is NaN, never 0.
  ``detection_snr`` combines the bands: the inverse-variance weighted mean footprint flux over its error.
* **Apportioned fluxes**: each footprint pixel's flux is split among the sources whose footprints cover it
  in proportion to their *weights*, a source's weight being the positive part of its footprint flux in the
  detection image (equal shares when all covering weights are zero).  Pixels covered by one source go
  wholly to it, so over a family the apportioned fluxes add up to the flux in the union of the footprints.
* **Flags**: ``flag_patch_edge`` when the footprint comes within ``edge_margin`` pixels of the image border
  (0: it touches the outermost row or column); ``nodata_fraction`` is the fraction of footprint pixels
  invalid in any band, ``flag_nodata`` when it is positive; ``flag_saturated`` when any footprint pixel has
  a ``saturated_planes`` bit in any band; ``flag_merged_duplicate`` when a duplicate from another tile was
  merged into the detection.
* **Primary flags**: ``detect_isPatchInner``, ``detect_isTractInner`` and ``detect_isPrimary`` (both), with
  the Rubin object tables' meanings, are set by `set_primary_flags` from the patch's and tract's inner
  regions (the detection task does it from the data ID's records); `build_catalog` alone sets them true
  and records in ``meta["primary_flags"]`` that no region was applied.
* **Artifacts.**  A model may have artifact classes (ghosts, diffraction rays...): class names starting with
  `ARTIFACT_CLASS_PREFIX` (``artifact_ghost_bright``, ``artifact_ghost_faint``, ``artifact_rays``).  Their
  detections are rows of their own with ``is_artifact`` true and their footprint, but they are not sources:
  ``detect_isPrimary`` is false for them (select ``is_artifact & detect_isPatchInner &
  detect_isTractInner`` for the unique artifacts of a tract), they never join a family (their pixels do
  not link sources) and take no part in apportioning (their apportioned flux is their footprint flux).
  ``artifact_overlap_fraction`` is the fraction of a source's footprint covered by the union of the
  artifact footprints, and ``flag_in_artifact`` is set when it exceeds ``artifact_overlap_threshold``
  (0 and false for artifact rows, and for every row of a model without artifact classes).
  `build_artifact_mask` turns the artifact rows into the per-patch artifact mask table (one row per class:
  the union of its footprints as spans) and `artifact_mask_image` rasterises it.

Image values are taken to be in nJy per pixel (Rubin coadds).  Everything is vectorised over a flat list of
footprint pixels, so thousands of sources cost a few array passes.
"""

from __future__ import annotations

__all__ = [
    "APPORTION_RULE",
    "artifact_mask_columns",
    "artifact_mask_image",
    "build_artifact_mask",
    "build_catalog",
    "catalog_columns",
    "detection_snr",
    "is_artifact_class",
    "set_primary_flags",
]

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import astropy.units as u
import numpy as np
from astropy.table import Column, Table
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .artifacts import ARTIFACT_CLASS_PREFIX
from .footprints import flatten_spans, spans_area, spans_to_mask, spans_union, unflatten_spans
from .ids import IdPacker
from .multiband import MultibandImage

if TYPE_CHECKING:  # torch-free import: the comparison uses the artifact helpers of this module.
    from .inference import Detections

APPORTION_RULE = (
    "pixel flux split among the covering footprints in proportion to each source's positive footprint flux "
    "in the detection image (sum of bands); equal shares if all such weights are zero"
)

FLUX_UNIT = u.nJy

"""Class names starting with this prefix are image artifacts, not sources (the model-package contract)."""


def is_artifact_class(class_names: Sequence[str] | str) -> np.ndarray | bool:
    """Whether class names are artifact classes (they start with `ARTIFACT_CLASS_PREFIX`).

    Returns a `bool` for one name, else a boolean array with one value per name.
    """
    if isinstance(class_names, str):
        return class_names.startswith(ARTIFACT_CLASS_PREFIX)
    return np.array([str(name).startswith(ARTIFACT_CLASS_PREFIX) for name in class_names], dtype=bool)


def catalog_columns(bands: Sequence[str], class_names: Sequence[str]) -> list[tuple[str, Any, Any, str]]:
    """The schema of a detection catalog: ``(name, dtype, unit, description)`` per column, in order.

    Quantities carry units (ratios are dimensionless); identifiers, counts, flags and labels have none.
    """
    columns: list[tuple[str, Any, Any, str]] = [
        ("id", np.int64, None, "Unique source id packed from (tract, patch, counter)"),
        (
            "parent",
            np.int64,
            None,
            "Id of the family head for other members of a family; else 0",
        ),
        ("nChild", np.int32, None, "Number of other members in the family of a family head; 0 otherwise"),
        ("family_id", np.int64, None, "Id of the family head (the source's own id when isolated)"),
        ("family_size", np.int32, None, "Number of detections in the family (footprint-overlap component)"),
        ("coord_ra", np.float64, u.deg, "Right ascension of the centroid (image WCS)"),
        ("coord_dec", np.float64, u.deg, "Declination of the centroid (image WCS)"),
        (
            "centroid_x",
            np.float64,
            u.pix,
            "Detection-image flux-weighted centroid x, parent coordinates",
        ),
        (
            "centroid_y",
            np.float64,
            u.pix,
            "Detection-image flux-weighted centroid y, parent coordinates",
        ),
        ("bbox_x0", np.int32, u.pix, "Footprint bounding box minimum x (inclusive), parent coordinates"),
        ("bbox_y0", np.int32, u.pix, "Footprint bounding box minimum y (inclusive), parent coordinates"),
        ("bbox_x1", np.int32, u.pix, "Footprint bounding box maximum x (inclusive), parent coordinates"),
        ("bbox_y1", np.int32, u.pix, "Footprint bounding box maximum y (inclusive), parent coordinates"),
        (
            "box_x0",
            np.float64,
            u.pix,
            "Model box left edge (XYXY: pixel i spans [i, i+1)), parent coords",
        ),
        ("box_y0", np.float64, u.pix, "Model box bottom edge (XYXY), parent coordinates"),
        ("box_x1", np.float64, u.pix, "Model box right edge (XYXY, exclusive), parent coordinates"),
        ("box_y1", np.float64, u.pix, "Model box top edge (XYXY, exclusive), parent coordinates"),
        ("footprint", object, None, "Footprint spans flattened as [y, x_begin, x_end(inclusive), ...]"),
        ("footprint_area", np.int32, u.pix, "Number of pixels in the footprint"),
        ("score", np.float32, u.dimensionless_unscaled, "Model detection score"),
        ("class_id", np.int32, None, "Predicted class index"),
        ("class_name", str, None, "Predicted class name"),
        (
            "is_artifact",
            bool,
            None,
            f"The detection is an image artifact (class name starting with {ARTIFACT_CLASS_PREFIX!r}), not a "
            "source: never primary, in no family",
        ),
    ]
    for name in class_names:
        columns.append(
            (f"prob_{name}", np.float32, u.dimensionless_unscaled, f"Model probability of class {name!r}")
        )
    for band in bands:
        columns += [
            (f"{band}_footprintFlux", np.float64, FLUX_UNIT, f"Sum of the {band} image over the footprint"),
            (
                f"{band}_footprintFluxErr",
                np.float64,
                FLUX_UNIT,
                f"Uncertainty of {band}_footprintFlux from the {band} variance plane",
            ),
            (
                f"{band}_apportionedFlux",
                np.float64,
                FLUX_UNIT,
                f"{band} footprint flux with pixels shared with overlapping sources apportioned by weight",
            ),
        ]
    columns += [
        (
            "detection_snr",
            np.float32,
            u.dimensionless_unscaled,
            "Signal-to-noise ratio of the footprint: inverse-variance weighted mean of the band footprint "
            "fluxes over its error (a flat-spectrum detection S/N); NaN without usable variance",
        ),
        (
            "nodata_fraction",
            np.float32,
            u.dimensionless_unscaled,
            "Fraction of footprint pixels without data in any band",
        ),
        ("flag_nodata", bool, None, "Footprint has pixels without data (non-finite or NO_DATA) in some band"),
        ("flag_saturated", bool, None, "Footprint has a saturated pixel in some band"),
        (
            "flag_bad_variance",
            bool,
            None,
            "Footprint has valid pixels with zero, negative or non-finite variance in some band (left out "
            "of the flux errors; an error with no usable pixel is NaN)",
        ),
        ("flag_patch_edge", bool, None, "Footprint reaches within edge_margin pixels of the image border"),
        ("flag_merged_duplicate", bool, None, "A duplicate detection from an overlapping tile was merged in"),
        (
            "artifact_overlap_fraction",
            np.float32,
            u.dimensionless_unscaled,
            "Fraction of the footprint covered by artifact footprints (0 for artifact rows)",
        ),
        (
            "flag_in_artifact",
            bool,
            None,
            "Source whose artifact_overlap_fraction exceeds the artifact overlap threshold (never set on "
            "artifact rows)",
        ),
        (
            "detect_isPatchInner",
            bool,
            None,
            "Centroid lies in the patch's inner region (true for every row when the region is unknown)",
        ),
        (
            "detect_isTractInner",
            bool,
            None,
            "Centroid lies in the tract's inner region (true for every row when the region is unknown)",
        ),
        (
            "detect_isPrimary",
            bool,
            None,
            "detect_isPatchInner and detect_isTractInner and not is_artifact: the primary rows of all "
            "patches hold each source once",
        ),
        ("tile_index", np.int32, None, "Inference tile the detection was kept from"),
        ("tract", np.int64, None, "Tract id"),
        ("patch", np.int64, None, "Patch index within the tract"),
        ("model_name", str, None, "Name of the model that made the detection"),
        ("model_version", str, None, "Version of the model that made the detection"),
    ]
    return columns


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expand spans into one entry per footprint pixel.

    Returns ``owner`` (row index), local ``y`` and ``x`` indices into the image arrays, and the start of
    each footprint's spans in the concatenated span array.
    """
    lengths = np.array([f.shape[0] for f in footprints], dtype=np.int64)
    spans = np.concatenate(footprints).astype(np.int64) if footprints else np.zeros((0, 3), dtype=np.int64)
    span_owner = np.repeat(np.arange(len(footprints)), lengths)
    x0, y0 = image.xy0
    local_y = spans[:, 0] - y0
    local_x0 = spans[:, 1] - x0
    local_x1 = spans[:, 2] - x0
    outside = (local_y < 0) | (local_y >= image.height) | (local_x0 < 0) | (local_x1 >= image.width)
    if np.any(outside):
        rows = np.unique(span_owner[outside])
        raise ValueError(
            f"footprints of detections {rows[:10].tolist()} fall outside the image "
            f"(xy0={image.xy0}, shape={image.shape})"
        )
    run = local_x1 - local_x0 + 1
    owner = np.repeat(span_owner, run).astype(np.int32)
    pixel_y = np.repeat(local_y, run)
    # Column of every pixel: the span's start plus the pixel's offset within its span.
    first_pixel = np.repeat(np.cumsum(run) - run, run)
    pixel_x = np.repeat(local_x0, run) + (np.arange(first_pixel.size) - first_pixel)
    span_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return owner, pixel_y.astype(np.int64), pixel_x.astype(np.int64), span_starts


def _families(owner: np.ndarray, linear: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of the footprint-overlap graph.

    Returns ``labels`` per source, and per pixel the sort ``order`` by position and the ``group`` (index of
    the distinct pixel) in that order, reused for apportioning.
    """
    order = np.argsort(linear, kind="stable")
    sorted_linear = linear[order]
    same = sorted_linear[1:] == sorted_linear[:-1]
    group = np.concatenate([[0], np.cumsum(~same)]) if linear.size else np.zeros(0, dtype=np.int64)
    sorted_owner = owner[order]
    a, b = sorted_owner[:-1][same], sorted_owner[1:][same]
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels, order, group


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
    n_bands = len(image.bands)
    ids = id_packer.pack(tract, patch, np.arange(1, n + 1, dtype=np.int64))

    owner, pixel_y, pixel_x, span_starts = _pixel_list(detections.footprints, image)
    area = np.bincount(owner, minlength=n)
    # Flat pixel indices: gathers through np.take on them are much faster than 2-d fancy indexing.
    linear = pixel_y * image.width + pixel_x

    # Per-pixel validity and flags, over all bands.
    nodata_bits = image.plane_bits(invalid_planes)
    saturated_bits = image.plane_bits(saturated_planes)
    invalid_any = np.zeros(owner.size, dtype=bool)
    saturated_any = np.zeros(owner.size, dtype=bool)
    bad_variance_any = np.zeros(owner.size, dtype=bool)
    no_error = np.zeros(n, dtype=bool)
    clean = np.empty((n_bands, owner.size), dtype=np.float64)
    footprint_flux = np.zeros((n_bands, n))
    footprint_var = np.full((n_bands, n), np.nan)
    for b in range(n_bands):
        values = _gather(image.image[b], linear).astype(np.float64)
        invalid = ~np.isfinite(values)
        if image.mask is not None:
            bits = _gather(image.mask[b], linear)
            invalid |= (bits & nodata_bits) != 0
            saturated_any |= (bits & saturated_bits) != 0
        invalid_any |= invalid
        clean[b] = np.where(invalid, 0.0, values)
        footprint_flux[b] = np.bincount(owner, weights=clean[b], minlength=n)
        if image.variance is not None:
            variance = _gather(image.variance[b], linear).astype(np.float64)
            # Zero, negative or non-finite variance: the pixel counts for the flux but not for its error.
            bad = ~invalid & ~(np.isfinite(variance) & (variance > 0))
            bad_variance_any |= bad
            good = ~invalid & ~bad
            footprint_var[b] = np.bincount(owner, weights=np.where(good, variance, 0.0), minlength=n)
            has_good = np.bincount(owner, weights=good, minlength=n) > 0
            footprint_var[b][~has_good] = np.nan
            no_error |= ~has_good
        else:
            no_error[:] = True
    detection = clean.sum(axis=0)

    # Centroids weighted by the positive detection flux; unweighted where there is none.
    weight = np.clip(detection, 0.0, None)
    weight_sum = np.bincount(owner, weights=weight, minlength=n)
    parent_x = pixel_x + image.xy0[0]
    parent_y = pixel_y + image.xy0[1]
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

    # Artifact cover of the sources: footprint pixels that are also pixels of an artifact footprint.
    artifact_fraction = np.zeros(n)
    if np.any(is_artifact):
        artifact_pixels = np.unique(linear[is_artifact[owner]])
        in_artifact = np.isin(linear, artifact_pixels, assume_unique=False) & ~is_artifact[owner]
        artifact_fraction = np.bincount(owner, weights=in_artifact, minlength=n) / np.maximum(area, 1)
    flag_in_artifact = ~is_artifact & (artifact_fraction > artifact_overlap_threshold)

    # Families, heads and apportioning involve the sources' pixels only: artifacts link and share nothing.
    source_pixel = ~is_artifact[owner]
    if not np.all(source_pixel):
        owner_all, linear_all, clean_all, detection_all = owner, linear, clean, detection
        owner, linear = owner[source_pixel], linear[source_pixel]
        clean, detection = clean[:, source_pixel], detection[source_pixel]

    # Families and heads.
    if n:
        labels, order, group = _families(owner, linear, n)
    else:
        labels, order, group = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, np.int64)
    family_size = np.bincount(labels, minlength=labels.max() + 1 if n else 0)[labels]
    by_family_then_score = np.lexsort((np.arange(n), -detections.scores.astype(np.float64), labels))
    first_of_family = np.ones(n, dtype=bool)
    first_of_family[1:] = labels[by_family_then_score][1:] != labels[by_family_then_score][:-1]
    head_of_label = np.zeros(labels.max() + 1 if n else 0, dtype=np.int64)
    head_of_label[labels[by_family_then_score[first_of_family]]] = by_family_then_score[first_of_family]
    head = head_of_label[labels]
    is_head = head == np.arange(n)
    family_id = ids[head] if n else np.zeros(0, dtype=np.int64)
    parent = np.where(is_head, 0, family_id)
    n_child = np.where(is_head, family_size - 1, 0)

    # Apportioning: per pixel, each covering source's share of the pixel's flux.
    source_weight = np.clip(np.bincount(owner, weights=detection, minlength=n), 0.0, None)
    pixel_weight = np.empty(owner.size)
    pixel_weight[order] = source_weight[owner[order]]
    inverse = np.empty(owner.size, dtype=np.int64)
    inverse[order] = group
    covering_weight = np.bincount(inverse, weights=pixel_weight)[inverse] if owner.size else pixel_weight
    covering_count = np.bincount(inverse)[inverse] if owner.size else pixel_weight
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(covering_weight > 0, pixel_weight / covering_weight, 1.0 / covering_count)
    apportioned = np.stack(
        [np.bincount(owner, weights=clean[b] * share, minlength=n) for b in range(n_bands)]
    )
    if not np.all(source_pixel):
        apportioned[:, is_artifact] = footprint_flux[:, is_artifact]
        owner, linear, clean, detection = owner_all, linear_all, clean_all, detection_all

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
        "parent": parent,
        "nChild": n_child,
        "family_id": family_id,
        "family_size": family_size,
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
        "artifact_overlap_fraction": artifact_fraction,
        "flag_in_artifact": flag_in_artifact,
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
    with np.errstate(invalid="ignore"):
        for b, band in enumerate(image.bands):
            values[f"{band}_footprintFlux"] = footprint_flux[b]
            values[f"{band}_footprintFluxErr"] = np.sqrt(footprint_var[b])
            values[f"{band}_apportionedFlux"] = apportioned[b]

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
            "counts": {
                "sources": n,
                "families": int(np.sum(is_head & (family_size > 1))),
                "isolated": int(np.sum(family_size == 1)),
                "merged_duplicates": int(np.sum(detections.merged_duplicate)),
                "flag_nodata": int(np.sum(nodata_count > 0)),
                "flag_saturated": int(np.sum(saturated)),
                "flag_bad_variance": int(np.sum(bad_variance)),
                "flag_patch_edge": int(np.sum(patch_edge)),
                "artifacts": int(np.sum(is_artifact)),
                "flag_in_artifact": int(np.sum(flag_in_artifact)),
            },
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


def artifact_mask_columns() -> list[tuple[str, Any, Any, str]]:
    """The schema of the artifact mask table (`build_artifact_mask`): ``(name, dtype, unit, description)``."""
    return [
        ("class_name", str, None, "Artifact class name (with its artifact_ prefix)"),
        ("n_instances", np.int32, None, "Number of detected artifacts of the class in the patch"),
        ("area", np.int64, u.pix, "Number of pixels in the union of their footprints"),
        ("bbox_x0", np.int32, u.pix, "Bounding box minimum x (inclusive) of the union, parent coordinates"),
        ("bbox_y0", np.int32, u.pix, "Bounding box minimum y (inclusive) of the union, parent coordinates"),
        ("bbox_x1", np.int32, u.pix, "Bounding box maximum x (inclusive) of the union, parent coordinates"),
        ("bbox_y1", np.int32, u.pix, "Bounding box maximum y (inclusive) of the union, parent coordinates"),
        ("max_score", np.float32, u.dimensionless_unscaled, "Highest model score among the instances"),
        ("ids", object, None, "Catalog ids (object_deepdisc id) of the instances"),
        (
            "spans",
            object,
            None,
            "Union of the instances' footprints as canonical spans flattened as [y, x_begin, x_end, ...]",
        ),
    ]


def build_artifact_mask(catalog: Table) -> Table:
    """The per-patch artifact mask: one row per artifact class, the union of its footprints as spans.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        A `build_catalog` table (``is_artifact``, ``class_name``, ``footprint``, ``score``, ``id``).

    Returns
    -------
    mask : `astropy.table.Table`
        Columns of `artifact_mask_columns`, classes in the order of ``catalog.meta["artifact_classes"]``
        (classes without detections have no row); no rows when the patch has no artifact (always, for a
        model without artifact classes).  ``meta`` carries ``image_bbox``, ``tract``, ``patch``, the model
        and ``artifact_classes``; `artifact_mask_image` rasterises it.
    """
    is_artifact = (
        np.asarray(catalog["is_artifact"], dtype=bool)
        if "is_artifact" in catalog.colnames
        else np.zeros(len(catalog), dtype=bool)
    )
    names = np.asarray(catalog["class_name"]).astype(str) if len(catalog) else np.zeros(0, dtype=str)
    classes = list(catalog.meta.get("artifact_classes", []))
    classes += sorted(set(names[is_artifact].tolist()) - set(classes))
    rows: dict[str, list[Any]] = {name: [] for name, *_ in artifact_mask_columns()}
    for class_name in classes:
        rows_of_class = np.flatnonzero(is_artifact & (names == class_name))
        if not rows_of_class.size:
            continue
        union = spans_union([unflatten_spans(catalog["footprint"][i]) for i in rows_of_class])
        rows["class_name"].append(class_name)
        rows["n_instances"].append(rows_of_class.size)
        rows["area"].append(spans_area(union))
        rows["bbox_x0"].append(int(union[:, 1].min()))
        rows["bbox_y0"].append(int(union[:, 0].min()))
        rows["bbox_x1"].append(int(union[:, 2].max()))
        rows["bbox_y1"].append(int(union[:, 0].max()))
        rows["max_score"].append(float(np.max(np.asarray(catalog["score"])[rows_of_class])))
        rows["ids"].append(np.asarray(catalog["id"])[rows_of_class].astype(np.int64))
        rows["spans"].append(flatten_spans(union))
    table = Table()
    for name, dtype, unit, description in artifact_mask_columns():
        values = rows[name]
        if dtype is object:
            data = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                data[i] = value
        else:
            data = np.asarray(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)
        table[name] = Column(data=data, name=name, unit=unit, description=description)
    for key in ("image_bbox", "tract", "patch", "model", "artifact_classes", "artifact_overlap_threshold"):
        if key in catalog.meta:
            table.meta[key] = catalog.meta[key]
    return table


def artifact_mask_image(
    mask_table: Table,
    shape: tuple[int, int] | None = None,
    xy0: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Rasterise an artifact mask table (`build_artifact_mask`) into a boolean image.

    Parameters
    ----------
    mask_table : `astropy.table.Table`
        The artifact mask of a patch (``object_deepdisc_artifact_mask``).
    shape, xy0 : `tuple` [`int`, `int`], optional
        ``(height, width)`` and parent ``(x0, y0)`` of the output; default: ``meta["image_bbox"]``.
    classes : sequence of `str`, optional
        Artifact classes to include (default all rows).

    Returns
    -------
    mask : `numpy.ndarray`
        True on pixels covered by an artifact; spans outside the image are clipped.
    """
    if shape is None or xy0 is None:
        bbox = mask_table.meta.get("image_bbox")
        if not bbox:
            raise ValueError("the mask table has no image_bbox: give shape and xy0")
        shape = (int(bbox["height"]), int(bbox["width"]))
        xy0 = (int(bbox["x0"]), int(bbox["y0"]))
    out = np.zeros(shape, dtype=bool)
    for row in mask_table:
        if classes is None or str(row["class_name"]) in classes:
            out |= spans_to_mask(unflatten_spans(row["spans"]), shape, xy0, clip=True)
    return out


def _gather(plane: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Values of a 2-d plane at flat pixel indices."""
    return np.take(np.ascontiguousarray(plane).reshape(-1), linear)


def _plain(value: Any) -> Any:
    """Numpy scalars and containers to plain Python values (table metadata must serialise as YAML)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
