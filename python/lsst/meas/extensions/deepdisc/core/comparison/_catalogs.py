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

"""The comparison's catalogs (`ComparisonCatalog`).

The package's tables as `~..matching.SourceArrays` with classes, magnitudes and scores.
"""

from __future__ import annotations

__all__ = [
    "UNKNOWN_CLASS",
    "ComparisonCatalog",
    "artifact_row_mask",
    "deepdisc_catalog",
    "has_artifact_classes",
    "labels_catalog",
    "restrict_match",
    "scarlet_catalog",
    "sep_catalog",
    "truth_catalog",
]

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table

from ..artifacts import ARTIFACT_CLASS_PREFIX
from ..catalog import is_artifact_class
from ..matching import BBOX_COLUMNS, MatchResult, SourceArrays
from ..photometry import njy_to_mag

UNKNOWN_CLASS = -1
"""Class id of sources whose class is not known."""

_DEEPDISC_BBOX = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


def _class_index(class_names: Sequence[str]) -> dict[str, int]:
    names = list(class_names)
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class names must be unique non-empty strings, got {names}")
    return {name: index for index, name in enumerate(names)}


def _classes_from_names(values: Any, class_names: Sequence[str]) -> np.ndarray:
    """Class ids of class-name strings (``UNKNOWN_CLASS`` for names not in ``class_names``)."""
    index = _class_index(class_names)
    return np.array([index.get(str(value).strip(), UNKNOWN_CLASS) for value in values], dtype=np.int64)


def _column(table: Table, name: str, what: str) -> np.ndarray:
    if name not in table.colnames:
        raise KeyError(f"{what}: column {name!r} is missing; the table has {table.colnames}")
    return np.asarray(table[name])


def _optional(table: Table, name: str | None) -> np.ndarray | None:
    return np.asarray(table[name]) if name and name in table.colnames else None


def _flux_column(band_template: str, band: str) -> str:
    return band_template.format(band=band)


@dataclass
class ComparisonCatalog:
    """One catalog prepared for comparison.

    Parameters
    ----------
    name : `str`
        Method name (``deepdisc``, ``scarlet``, ``sep``, ``labels``, ``truth``...).
    ids : `numpy.ndarray`
        ``int64`` source ids.
    sources : `~.matching.SourceArrays`
        Centres, boxes, footprints, classes, scores and measured magnitudes (parent pixel coordinates).
    ra, dec : `numpy.ndarray`, optional
        Sky positions in degrees (NaN where unknown).
    in_region : `numpy.ndarray`, optional
        Boolean per source: counted by the metrics (see the module documentation); default all.
    blendedness : `numpy.ndarray`, optional
        Per-source blendedness (reference catalogs that have it).
    artifact_flagged : `numpy.ndarray`, optional
        Boolean per source: flagged as lying in an artifact (DeepDISC's ``flag_in_artifact``, or
        `artifact_cover_flags` against DeepDISC's artifact mask for other methods).
    """

    name: str
    ids: np.ndarray
    sources: SourceArrays
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None
    in_region: np.ndarray | None = None
    blendedness: np.ndarray | None = None
    artifact_flagged: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.sources)
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        if self.ids.size != n:
            raise ValueError(f"catalog {self.name!r}: {self.ids.size} ids for {n} sources")
        for attribute in ("ra", "dec", "blendedness"):
            value = getattr(self, attribute)
            value = np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64).reshape(-1)
            if value.size != n:
                raise ValueError(
                    f"catalog {self.name!r}: {attribute} has {value.size} values for {n} sources"
                )
            setattr(self, attribute, value)
        region = np.ones(n, dtype=bool) if self.in_region is None else np.asarray(self.in_region, dtype=bool)
        if region.size != n:
            raise ValueError(f"catalog {self.name!r}: in_region has {region.size} values for {n} sources")
        self.in_region = region.reshape(-1)
        if self.artifact_flagged is not None:
            flagged = np.asarray(self.artifact_flagged, dtype=bool).reshape(-1)
            if flagged.size != n:
                raise ValueError(
                    f"catalog {self.name!r}: artifact_flagged has {flagged.size} values for {n} sources"
                )
            self.artifact_flagged = flagged
        if self.sources.class_id is None:
            self.sources.class_id = np.full(n, UNKNOWN_CLASS, dtype=np.int64)
        if self.sources.mag is None:
            self.sources.mag = np.full(n, np.nan)

    def __len__(self) -> int:
        return len(self.sources)

    def subset(self, keep: np.ndarray) -> SourceArrays:
        """The sources selected by a boolean mask, as new `~.matching.SourceArrays`."""
        return self.sources.select(np.asarray(keep, dtype=bool))


def truth_catalog(
    table: Table,
    *,
    class_names: Sequence[str],
    mag_column: str,
    type_column: str = "type",
    star_column: str = "is_star",
    min_footprint_area: int = 1,
) -> ComparisonCatalog:
    """A simulation's truth table (``truth_patch``) as the reference catalog.

    Objects whose footprint has fewer than ``min_footprint_area`` pixels (objects never above the truth
    threshold, i.e. undetectable even without noise) are left out.  Classes come from ``type_column`` (class
    names), else from ``star_column`` (``star`` / ``galaxy``).
    """
    keep = np.ones(len(table), dtype=bool)
    if min_footprint_area > 0 and "footprint_area" in table.colnames:
        keep = np.asarray(table["footprint_area"]) >= min_footprint_area
    table = table[keep]
    if type_column in table.colnames:
        class_id = _classes_from_names(table[type_column], class_names)
    elif star_column in table.colnames:
        names = np.where(np.asarray(table[star_column], dtype=bool), "star", "galaxy")
        class_id = _classes_from_names(names, class_names)
    else:
        class_id = np.full(len(table), UNKNOWN_CLASS, dtype=np.int64)
    spans = list(table["spans"]) if "spans" in table.colnames else None
    sources = SourceArrays(
        x=_column(table, "x", "truth"),
        y=_column(table, "y", "truth"),
        spans=spans,
        class_id=class_id,
        mag=_column(table, mag_column, "truth magnitude"),
    )
    return ComparisonCatalog(
        name="truth",
        ids=_column(table, "id", "truth"),
        sources=sources,
        ra=_optional(table, "ra"),
        dec=_optional(table, "dec"),
        blendedness=_optional(table, "blendedness"),
    )


def artifact_row_mask(table: Table) -> np.ndarray:
    """Boolean per row of an ``object_deepdisc`` table: an artifact detection (``is_artifact`` or prefix)."""
    if "is_artifact" in table.colnames:
        return np.asarray(table["is_artifact"], dtype=bool)
    if "class_name" in table.colnames and len(table):
        return np.asarray(is_artifact_class(np.asarray(table["class_name"]).astype(str)), dtype=bool)
    return np.zeros(len(table), dtype=bool)


def has_artifact_classes(table: Table) -> bool:
    """Whether an ``object_deepdisc`` table is from a model with artifact classes.

    Known from its ``prob_artifact_*`` columns (one per class; table metadata may not survive a Butler
    read), its ``meta["artifact_classes"]`` or its artifact rows.
    """
    if any(name.startswith(f"prob_{ARTIFACT_CLASS_PREFIX}") for name in table.colnames):
        return True
    return bool(table.meta.get("artifact_classes")) or bool(np.any(artifact_row_mask(table)))


def deepdisc_catalog(
    table: Table,
    *,
    class_names: Sequence[str],
    band: str,
    flux_column: str = "{band}_footprintFlux",
    exclude_artifacts: bool = True,
) -> ComparisonCatalog:
    """A DeepDISC detection catalog (``object_deepdisc``, see `~.catalog.catalog_columns`).

    Classes are mapped by ``class_name`` onto ``class_names`` (the model's own class order may differ).
    Artifact rows (``is_artifact``) are not source detections and are left out unless
    ``exclude_artifacts=False``; ``flag_in_artifact`` becomes the catalog's ``artifact_flagged``.
    """
    if exclude_artifacts:
        table = table[~artifact_row_mask(table)]
    if "class_name" in table.colnames:
        class_id = _classes_from_names(table["class_name"], class_names)
    else:
        class_id = np.asarray(table["class_id"], dtype=np.int64) if "class_id" in table.colnames else None
    flux = _optional(table, _flux_column(flux_column, band))
    bbox = None
    if all(name in table.colnames for name in _DEEPDISC_BBOX):
        bbox = np.stack([np.asarray(table[name], dtype=np.float64) for name in _DEEPDISC_BBOX], axis=1)
    sources = SourceArrays(
        x=_column(table, "centroid_x", "object_deepdisc"),
        y=_column(table, "centroid_y", "object_deepdisc"),
        bbox=bbox,
        spans=list(table["footprint"]) if "footprint" in table.colnames else None,
        class_id=class_id,
        score=_optional(table, "score"),
        mag=None if flux is None else njy_to_mag(flux),
    )
    flagged = _optional(table, "flag_in_artifact")
    return ComparisonCatalog(
        name="deepdisc",
        ids=_column(table, "id", "object_deepdisc"),
        sources=sources,
        ra=_optional(table, "coord_ra"),
        dec=_optional(table, "coord_dec"),
        artifact_flagged=None if flagged is None else flagged.astype(bool),
    )


def scarlet_catalog(
    deblend: Table,
    objects: Table | None = None,
    *,
    class_names: Sequence[str],
    band: str,
    flux_column: str = "{band}_cModelFlux",
    extendedness_column: str = "refExtendedness",
    extendedness_threshold: float = 0.5,
    object_id_column: str = "objectId",
) -> ComparisonCatalog:
    """The leaves of the DRP's deblended catalog: deblended children and isolated parents.

    Parameters
    ----------
    deblend : `astropy.table.Table`
        ``object_deblend`` as a table: ``id``, ``parent``, ``deblend_nChild`` (or ``nChild``), ``x``, ``y``,
        footprint spans (``spans`` or ``footprint``), optionally ``coord_ra/dec``.  Parents with children
        are dropped: the children are the deblender's answer.
    objects : `astropy.table.Table`, optional
        Object table (``object_patch``) joined on ``object_id_column``: gives classes (extendedness
        ``>= extendedness_threshold`` is a galaxy, below a star, NaN unknown), magnitudes (``flux_column``)
        and a ranking score for COCO AP (the flux S/N, with ``<flux_column>Err``).
    class_names : `~collections.abc.Sequence` [`str`]
        Must contain ``star`` and ``galaxy`` for extendedness classes.
    band : `str`
        Band of the magnitudes.
    """
    n_child_column = next((c for c in ("deblend_nChild", "nChild") if c in deblend.colnames), None)
    if n_child_column is None:
        raise KeyError(f"object_deblend needs deblend_nChild (or nChild); it has {deblend.colnames}")
    leaves = deblend[np.asarray(deblend[n_child_column]) == 0]
    n = len(leaves)
    ids = _column(leaves, "id", "object_deblend").astype(np.int64)
    spans_column = next((c for c in ("spans", "footprint") if c in leaves.colnames), None)
    class_id = np.full(n, UNKNOWN_CLASS, dtype=np.int64)
    mag = np.full(n, np.nan)
    score = np.ones(n)
    if objects is not None and n:
        object_ids = _column(objects, object_id_column, "object table").astype(np.int64)
        order = np.argsort(object_ids, kind="stable")
        position = np.clip(np.searchsorted(object_ids[order], ids), 0, max(len(object_ids) - 1, 0))
        found = (object_ids[order][position] == ids) if len(object_ids) else np.zeros(n, dtype=bool)
        rows = order[position]
        extendedness = _optional(objects, extendedness_column)
        if extendedness is not None:
            value = np.where(found, np.asarray(extendedness, dtype=np.float64)[rows], np.nan)
            index = _class_index(class_names)
            if "star" in index and "galaxy" in index:
                class_id = np.where(
                    np.isfinite(value),
                    np.where(value >= extendedness_threshold, index["galaxy"], index["star"]),
                    UNKNOWN_CLASS,
                ).astype(np.int64)
        flux = _optional(objects, _flux_column(flux_column, band))
        if flux is not None:
            flux = np.where(found, np.asarray(flux, dtype=np.float64)[rows], np.nan)
            mag = njy_to_mag(flux)
            error = _optional(objects, _flux_column(flux_column, band) + "Err")
            if error is not None:
                error = np.where(found, np.asarray(error, dtype=np.float64)[rows], np.nan)
                with np.errstate(divide="ignore", invalid="ignore"):
                    snr = flux / error
                score = np.where(np.isfinite(snr), snr, 0.0)
    sources = SourceArrays(
        x=_column(leaves, "x", "object_deblend"),
        y=_column(leaves, "y", "object_deblend"),
        spans=list(leaves[spans_column]) if spans_column else None,
        class_id=class_id,
        score=score,
        mag=mag,
    )
    return ComparisonCatalog(
        name="scarlet",
        ids=ids,
        sources=sources,
        ra=_optional(leaves, "coord_ra"),
        dec=_optional(leaves, "coord_dec"),
    )


def sep_catalog(table: Table, *, band: str, flux_column: str = "{band}_flux") -> ComparisonCatalog:
    """The sep baseline's catalog (`~.baseline.run_sep_baseline`)."""
    flux = _optional(table, _flux_column(flux_column, band))
    sources = SourceArrays.from_table(table, x="x", y="y", bbox=BBOX_COLUMNS, spans="footprint")
    sources.mag = None if flux is None else njy_to_mag(flux)
    return ComparisonCatalog(
        name="sep",
        ids=_column(table, "id", "sep catalog"),
        sources=sources,
        ra=_optional(table, "ra"),
        dec=_optional(table, "dec"),
    )


def labels_catalog(table: Table, *, class_names: Sequence[str]) -> ComparisonCatalog:
    """DeepDISC training labels (``deepdisc_labels``, see `~.labels`)."""
    if "class_name" in table.colnames:
        class_id = _classes_from_names(table["class_name"], class_names)
    else:
        class_id = _optional(table, "class_id")
    sources = SourceArrays(
        x=_column(table, "centroid_x", "deepdisc_labels"),
        y=_column(table, "centroid_y", "deepdisc_labels"),
        spans=list(table["footprint"]) if "footprint" in table.colnames else None,
        class_id=class_id,
        score=np.ones(len(table)),
        mag=_optional(table, "mag"),
    )
    return ComparisonCatalog(
        name="labels",
        ids=_column(table, "source_id", "deepdisc_labels"),
        sources=sources,
        ra=_optional(table, "coord_ra"),
        dec=_optional(table, "coord_dec"),
        blendedness=_optional(table, "blendedness"),
    )


def restrict_match(match: MatchResult, keep_truth: np.ndarray, keep_det: np.ndarray) -> MatchResult:
    """A one-to-one match reduced to a subset of truth objects and detections, indices renumbered.

    Pairs are kept when both members are kept; a kept object whose partner is dropped becomes unmatched.
    """
    keep_truth = np.asarray(keep_truth, dtype=bool)
    keep_det = np.asarray(keep_det, dtype=bool)
    if keep_truth.size != match.n_truth or keep_det.size != match.n_det:
        raise ValueError("keep masks must have one value per truth object and per detection")
    new_truth = np.cumsum(keep_truth) - 1
    new_det = np.cumsum(keep_det) - 1
    pair = keep_truth[match.truth_index] & keep_det[match.det_index]
    truth_index = new_truth[match.truth_index[pair]]
    det_index = new_det[match.det_index[pair]]
    n_truth, n_det = int(keep_truth.sum()), int(keep_det.sum())
    return MatchResult(
        truth_index=truth_index,
        det_index=det_index,
        iou=match.iou[pair],
        bbox_iou=match.bbox_iou[pair],
        mask_iou=match.mask_iou[pair],
        distance=match.distance[pair],
        method=match.method[pair],
        unmatched_truth=np.setdiff1d(np.arange(n_truth), truth_index),
        unmatched_det=np.setdiff1d(np.arange(n_det), det_index),
        n_truth=n_truth,
        n_det=n_det,
        iou_type=match.iou_type,
        min_iou=match.min_iou,
        max_distance=match.max_distance,
    )
