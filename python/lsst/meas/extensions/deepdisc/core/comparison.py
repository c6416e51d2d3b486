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

"""Compare several detection/deblending catalogs of one patch with a reference catalog.

This module is glue: it turns the package's catalogs (``object_deepdisc``, the DRP's ``object_deblend`` and
``object_patch``, the sep baseline, ``deepdisc_labels``, a simulation's ``truth_patch``) into
`~.matching.SourceArrays` and feeds them to `~.matching`, `~.metrics`, `~.blend_outcomes` and `~.coco`.
Nothing is measured here that those modules already define.

Evaluated set
-------------
Catalogs are matched over the whole patch, then metrics are computed on the *evaluated set*: the reference
objects flagged ``in_region`` (normally the patch's inner region, so that summing patches counts every object
once), the detections matched to them (wherever their centres are), and the unmatched detections flagged
``in_region``.  Detections matched to reference objects outside the region belong to the neighbouring patch.
The DeepDISC matched-set metrics use the evaluated reference objects and detections; COCO AP marks reference
objects outside the region as *ignored* (COCO's flag).

Match table
-----------
`compare_to_reference` returns one row per evaluated reference object (``row_type = "reference"``) with, for
every method ``m``: ``m_matched``, ``m_id`` (0 when unmatched), ``m_match_type`` (``iou``/``distance``/empty),
``m_iou`` (the IoU used for matching), ``m_bbox_iou``, ``m_mask_iou``, ``m_distance`` (pixels), ``m_class_id``
(predicted class of the match, -1 unknown), ``m_mag`` (measured magnitude of the match), ``m_score`` (its
score; NaN for methods without scores) and ``m_outcome``
(blend outcome of the reference object's friends-of-friends group against method ``m``); then one row per
unmatched evaluated detection (``row_type = "detection"``) with ``det_method``, ``det_id``, ``det_x``,
``det_y``, ``det_mag``, ``det_class_id``, ``det_score`` and ``det_outcome``.  `summarize_matches` turns a
stack of such tables (several patches) into per-method, per-magnitude-bin metrics.
"""

from __future__ import annotations

__all__ = [
    "UNKNOWN_CLASS",
    "ArtifactScores",
    "ComparisonCatalog",
    "ComparisonResult",
    "add_artifact_metrics",
    "artifact_cover_flags",
    "artifact_row_mask",
    "artifact_scores",
    "compare_to_reference",
    "deepdisc_artifact_sources",
    "deepdisc_catalog",
    "fill_masked_columns",
    "has_artifact_classes",
    "labels_catalog",
    "match_table_methods",
    "precision_recall_from_matches",
    "match_table_reference",
    "restrict_match",
    "scarlet_catalog",
    "sep_catalog",
    "summarize_artifact_metrics",
    "summarize_matches",
    "truth_artifact_sources",
    "truth_catalog",
]

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from .artifacts import ARTIFACT_CLASS_PREFIX, ARTIFACT_CLASSES
from .blend_outcomes import OUTCOMES, TRUTH_OUTCOMES, BlendOutcomes, classify_blends
from .catalog import is_artifact_class
from .coco import CocoImage, coco_average_precision
from .footprints import spans_area, spans_covered_area, spans_union
from .matching import BBOX_COLUMNS, MatchResult, SourceArrays, match_catalogs, match_deepdisc
from .metrics import (
    classification_scores,
    classification_scores_vs_mag,
    deepdisc_scores,
    detection_scores,
    detection_scores_vs_mag,
    iou_summary,
    magnitude_bin_index,
    presence_scores,
)
from .photometry import njy_to_mag

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


@dataclass
class ComparisonResult:
    """Output of `compare_to_reference`.

    Attributes
    ----------
    matches : `astropy.table.Table`
        The match table (see the module documentation).
    metrics : `astropy.table.Table`
        One row per method: the scalar metrics of the evaluated set.
    details : `dict` [`str`, `dict`]
        Per method: ``match`` (`~.matching.MatchResult`, whole patch), ``evaluated`` (restricted match),
        ``outcomes`` (`~.blend_outcomes.BlendOutcomes`), ``classification`` (table or `None`).
    """

    matches: Table
    metrics: Table
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def _nan_dict(keys: Sequence[str]) -> dict[str, float]:
    return {key: float("nan") for key in keys}


def _class_metric_keys(class_names: Sequence[str], prefix: str = "") -> list[str]:
    return [f"{prefix}{name}_{metric}" for name in class_names for metric in ("precision", "recall", "f1")]


def _known_classes(class_id: np.ndarray | None, n_classes: int) -> bool:
    return (
        class_id is not None and class_id.size > 0 and bool(np.all((class_id >= 0) & (class_id < n_classes)))
    )


def _coco_metrics(
    reference: ComparisonCatalog,
    detections: SourceArrays,
    image: CocoImage | None,
    truth_ignore: np.ndarray,
    class_names: Sequence[str],
    max_detections: int | None,
) -> dict[str, float]:
    """COCO bbox and segm AP; class-aware when every class is known on both sides, else class-agnostic."""
    keys = [f"coco_{kind}_{name}" for kind in ("bbox", "segm") for name in ("ap", "ap50", "ap75", "ar")]
    out: dict[str, float] = {**_nan_dict(keys), "coco_class_agnostic": float("nan")}
    truth = reference.sources
    if image is None or detections.score is None or truth.bbox is None or not len(truth):
        return out
    if len(detections) and detections.bbox is None:
        return out
    iou_types = ["bbox"]
    if truth.spans is not None and detections.spans is not None:
        iou_types.append("segm")
    n_classes = len(class_names)
    agnostic = not (
        _known_classes(truth.class_id, n_classes) and _known_classes(detections.class_id, n_classes)
    )
    if not len(detections):
        # No detection: AP is 0 wherever there is something to find.
        n_evaluated = int(np.sum(~truth_ignore))
        for kind in iou_types:
            for name in ("ap", "ap50", "ap75", "ar"):
                out[f"coco_{kind}_{name}"] = 0.0 if n_evaluated else float("nan")
        out["coco_class_agnostic"] = float(agnostic)
        return out
    detections = SourceArrays(
        x=detections.x,
        y=detections.y,
        bbox=detections.bbox,
        spans=detections.spans,
        class_id=detections.class_id,
        score=np.nan_to_num(detections.score, nan=0.0),
    )
    scores = coco_average_precision(
        truth,
        detections,
        image,
        iou_types=iou_types,
        class_names=dict(enumerate(class_names)),
        class_agnostic=agnostic,
        truth_ignore=truth_ignore,
        max_detections=max_detections,
    )
    for kind, result in scores.items():
        for name in ("ap", "ap50", "ap75", "ar"):
            out[f"coco_{kind}_{name}"] = float(getattr(result, name))
    out["coco_class_agnostic"] = float(agnostic)
    return out


def _default_image(catalogs: Sequence[ComparisonCatalog]) -> CocoImage | None:
    boxes = [c.sources.bbox for c in catalogs if c.sources.bbox is not None and len(c.sources)]
    boxes = [b[b[:, 2] >= b[:, 0]] for b in boxes]
    boxes = [b for b in boxes if len(b)]
    if not boxes:
        return None
    allbox = np.concatenate(boxes)
    x0, y0 = int(np.floor(allbox[:, 0].min())), int(np.floor(allbox[:, 1].min()))
    x1, y1 = int(np.ceil(allbox[:, 2].max())), int(np.ceil(allbox[:, 3].max()))
    return CocoImage(width=x1 - x0 + 1, height=y1 - y0 + 1, xy0=(x0, y0))


def compare_to_reference(
    reference: ComparisonCatalog,
    methods: Mapping[str, ComparisonCatalog],
    *,
    class_names: Sequence[str] = ("star", "galaxy"),
    min_iou: float = 0.5,
    max_distance: float = 5.0,
    linking_length: float = 5.0,
    image_bbox: tuple[int, int, int, int] | None = None,
    do_coco: bool = True,
    coco_max_detections: int | None = None,
    tract: int = 0,
    patch: int = 0,
    reference_name: str | None = None,
) -> ComparisonResult:
    """Match every method's catalog to the reference and compute the per-patch metrics.

    Parameters
    ----------
    reference : `ComparisonCatalog`
        Truth (or the catalog playing its role).
    methods : `~collections.abc.Mapping` [`str`, `ComparisonCatalog`]
        Catalogs to evaluate, by method name (names must be valid column-name prefixes).
    class_names : `~collections.abc.Sequence` [`str`]
        Class names by class id.
    min_iou, max_distance : `float`
        One-to-one matching (`~.matching.match_catalogs`): IoU threshold and distance-stage radius (pixels).
    linking_length : `float`
        Friends-of-friends linking length of the blend outcomes (pixels).
    image_bbox : `tuple` [`int`, `int`, `int`, `int`], optional
        ``(x0, y0, width, height)`` of the patch, for COCO masks; default: the union of all boxes.
    do_coco : `bool`
        Compute COCO AP (the slowest metric).
    coco_max_detections : `int`, optional
        Keep only this many highest-scoring detections for COCO AP.
    tract, patch : `int`
        Recorded in the tables.
    reference_name : `str`, optional
        Recorded in the tables (default ``reference.name``).

    Returns
    -------
    result : `ComparisonResult`
        Match table, per-method metrics and the intermediate objects.
    """
    class_names = list(class_names)
    _class_index(class_names)
    reference_name = reference_name or reference.name
    for name in methods:
        if not name.isidentifier() or name in ("ref", "det", "row"):
            raise ValueError(f"method name {name!r} cannot prefix column names")
    ref = reference.sources
    keep_ref = np.asarray(reference.in_region, dtype=bool)
    ref_rows = np.flatnonzero(keep_ref)
    n_ref_rows = ref_rows.size
    coco_image = None
    if do_coco:
        if image_bbox is not None:
            x0, y0, width, height = (int(v) for v in image_bbox)
            coco_image = CocoImage(width=width, height=height, xy0=(x0, y0))
        else:
            coco_image = _default_image([reference, *methods.values()])

    ref_columns: dict[str, Any] = {
        "row_type": np.full(n_ref_rows, "reference", dtype="U9"),
        "reference": np.full(n_ref_rows, reference_name, dtype="U16"),
        "tract": np.full(n_ref_rows, tract, dtype=np.int64),
        "patch": np.full(n_ref_rows, patch, dtype=np.int64),
        "ref_id": reference.ids[ref_rows],
        "ref_x": ref.x[ref_rows],
        "ref_y": ref.y[ref_rows],
        "ref_ra": reference.ra[ref_rows],
        "ref_dec": reference.dec[ref_rows],
        "ref_mag": ref.mag[ref_rows],
        "ref_class_id": ref.class_id[ref_rows],
        "ref_class_name": np.array(
            [class_names[c] if 0 <= c < len(class_names) else "" for c in ref.class_id[ref_rows]], dtype="U32"
        ),
        "ref_blendedness": reference.blendedness[ref_rows],
    }
    detection_tables = []
    metric_rows = []
    details: dict[str, dict[str, Any]] = {}
    class_keys = _class_metric_keys(class_names)
    for name, catalog in methods.items():
        det = catalog.sources
        match = match_catalogs(ref, det, min_iou=min_iou, max_distance=max_distance)
        outcomes = classify_blends(ref, det, linking_length=linking_length)
        det_to_ref = match.det_to_truth()
        matched_det = det_to_ref >= 0
        # A matched detection is evaluated with its reference object, an unmatched one by its own position.
        keep_det = np.asarray(catalog.in_region, dtype=bool).copy()
        keep_det[matched_det] = keep_ref[det_to_ref[matched_det]]
        evaluated = restrict_match(match, keep_ref, keep_det)

        # Per reference object: its match in this method (pair = row of the pair in ``match``, or -1).
        pair_of_ref = np.full(match.n_truth, -1, dtype=np.int64)
        pair_of_ref[match.truth_index] = np.arange(match.n_matched)
        pair = pair_of_ref[ref_rows]
        has = pair >= 0
        det_index = np.where(has, match.det_index[np.maximum(pair, 0)] if match.n_matched else 0, 0)
        ref_columns[f"{name}_matched"] = has
        ref_columns[f"{name}_id"] = np.where(has, catalog.ids[det_index] if len(det) else 0, 0).astype(
            np.int64
        )
        match_type = np.full(n_ref_rows, "", dtype="U8")
        match_type[has] = match.method[pair[has]]
        ref_columns[f"{name}_match_type"] = match_type
        for column, values in (
            ("iou", match.iou),
            ("bbox_iou", match.bbox_iou),
            ("mask_iou", match.mask_iou),
            ("distance", match.distance),
        ):
            per_ref = np.full(n_ref_rows, np.nan)
            per_ref[has] = values[pair[has]]
            ref_columns[f"{name}_{column}"] = per_ref
        class_of_match = np.full(n_ref_rows, UNKNOWN_CLASS, dtype=np.int64)
        class_of_match[has] = det.class_id[det_index[has]]
        ref_columns[f"{name}_class_id"] = class_of_match
        mag_of_match = np.full(n_ref_rows, np.nan)
        mag_of_match[has] = det.mag[det_index[has]]
        ref_columns[f"{name}_mag"] = mag_of_match
        score_of_match = np.full(n_ref_rows, np.nan)
        if det.score is not None:
            score_of_match[has] = det.score[det_index[has]]
        ref_columns[f"{name}_score"] = score_of_match
        ref_columns[f"{name}_outcome"] = np.asarray(outcomes.truth["outcome"], dtype="U18")[ref_rows]

        # Unmatched evaluated detections.
        lonely = np.flatnonzero(~matched_det & keep_det)
        detection_tables.append(
            Table(
                {
                    "row_type": np.full(lonely.size, "detection", dtype="U9"),
                    "reference": np.full(lonely.size, reference_name, dtype="U16"),
                    "tract": np.full(lonely.size, tract, dtype=np.int64),
                    "patch": np.full(lonely.size, patch, dtype=np.int64),
                    "det_method": np.full(lonely.size, name, dtype="U16"),
                    "det_id": catalog.ids[lonely],
                    "det_x": det.x[lonely],
                    "det_y": det.y[lonely],
                    "det_mag": det.mag[lonely],
                    "det_class_id": det.class_id[lonely],
                    "det_score": det.score[lonely] if det.score is not None else np.full(lonely.size, np.nan),
                    "det_outcome": np.asarray(outcomes.detections["outcome"], dtype="U18")[lonely],
                }
            )
        )

        # Scalar metrics of the evaluated set.
        row: dict[str, Any] = {"tract": tract, "patch": patch, "method": name, "reference": reference_name}
        scores = detection_scores(evaluated)
        row.update(
            {
                "n_ref": scores.n_truth,
                "n_det": scores.n_det,
                "n_matched": scores.n_matched,
                "completeness": scores.completeness,
                "purity": scores.purity,
                "f1": scores.f1,
            }
        )
        row.update(
            {key: value for key, value in iou_summary(evaluated).as_dict().items() if key != "n_pairs"}
        )
        classification = None
        row.update(_nan_dict(class_keys))
        row["classification_accuracy"] = float("nan")
        det_eval = catalog.subset(keep_det)
        pred_class = det_eval.class_id[evaluated.det_index] if evaluated.n_matched else np.zeros(0, np.int64)
        if np.any(ref.class_id >= 0) and np.any(det.class_id >= 0):
            classification = classification_scores(
                ref.class_id[ref_rows][evaluated.truth_index], pred_class, dict(enumerate(class_names))
            )
            for class_row in classification:
                for metric in ("precision", "recall", "f1"):
                    row[f"{class_row['class_name']}_{metric}"] = float(class_row[metric])
            row["classification_accuracy"] = float(classification.meta["accuracy"])

        ref_eval = reference.subset(keep_ref)
        deepdisc_keys = ["detection_precision", "detection_recall", "detection_f1", "median_bbox_iou"]
        row.update(_nan_dict([f"deepdisc_{key}" for key in deepdisc_keys]))
        row.update(_nan_dict(_class_metric_keys(class_names, "deepdisc_")))
        if ref_eval.bbox is not None and det_eval.bbox is not None:
            known = np.any(ref_eval.class_id >= 0) and np.any(det_eval.class_id >= 0)
            matched_set = deepdisc_scores(
                match_deepdisc(ref_eval, det_eval, min_iou=min_iou),
                ref_eval.class_id if known else None,
                det_eval.class_id if known else None,
                dict(enumerate(class_names)),
            )
            for key, value in matched_set.as_dict().items():
                if key in deepdisc_keys or key in _class_metric_keys(class_names):
                    row[f"deepdisc_{key}"] = float(value)
        if do_coco:
            row.update(
                _coco_metrics(reference, det_eval, coco_image, ~keep_ref, class_names, coco_max_detections)
            )
        truth_outcome = np.asarray(outcomes.truth["outcome"])[keep_ref]
        for outcome in TRUTH_OUTCOMES:
            row[f"n_{outcome}"] = int(np.sum(truth_outcome == outcome))
        row["n_spurious"] = int(np.sum(np.asarray(outcomes.detections["outcome"])[keep_det] == "spurious"))
        metric_rows.append(row)
        details[name] = {
            "match": match,
            "evaluated": evaluated,
            "outcomes": outcomes,
            "classification": classification,
            "keep_det": keep_det,
        }

    matches = Table(ref_columns)
    if detection_tables:
        matches = vstack([matches, *detection_tables], join_type="outer", metadata_conflicts="silent")
        matches = fill_masked_columns(matches)
    matches.meta.update(
        {
            "methods": list(methods),
            "reference": reference_name,
            "class_names": class_names,
            "min_iou": float(min_iou),
            "max_distance": float(max_distance),
            "linking_length": float(linking_length),
            "tract": int(tract),
            "patch": int(patch),
        }
    )
    metrics = _metrics_table(metric_rows)
    metrics.meta.update({"reference": reference_name, "class_names": class_names})
    return ComparisonResult(matches=matches, metrics=metrics, details=details)


def fill_masked_columns(table: Table) -> Table:
    """Replace the masks of an outer ``vstack`` by explicit fill values (Arrow keeps no astropy masks).

    Fill values: NaN for floats, `False` for booleans, ``""`` for strings, ``UNKNOWN_CLASS`` for
    ``*class_id`` columns and 0 for other integers.
    """
    out = Table(meta=dict(table.meta))
    for name in table.colnames:
        column = table[name]
        if hasattr(column, "mask") and np.any(column.mask):
            kind = column.dtype.kind
            fill: Any = np.nan if kind == "f" else False if kind == "b" else "" if kind in "US" else 0
            if name.endswith("class_id"):
                fill = UNKNOWN_CLASS
            out[name] = column.filled(fill)
        else:
            out[name] = np.asarray(column)
    return out


def _metrics_table(rows: list[dict[str, Any]]) -> Table:
    if rows:
        names = list(rows[0])
        return Table(rows=[[row[key] for key in names] for row in rows], names=names)
    return Table(
        {"tract": np.zeros(0, np.int64), "patch": np.zeros(0, np.int64), "method": np.zeros(0, "U16")}
    )


def precision_recall_from_matches(matches: Table, method: str, thresholds: Sequence[float]) -> Table:
    """Precision (purity) and recall (completeness) of a method's detections above each score threshold.

    The one-to-one matching of the match table (made on the whole catalog) is kept: at threshold ``t``, a
    reference object counts as found when its match scores at least ``t``, and the detections are the
    matched and unmatched ones scoring at least ``t``.  This is exact for thresholds where no match would
    change hands, and a close approximation otherwise.

    Parameters
    ----------
    matches : `astropy.table.Table`
        A (stacked) match table of `compare_to_reference` with ``<method>_score`` and ``det_score``.
    method : `str`
        The method (its detections must carry scores).
    thresholds : sequence of `float`
        Score thresholds.

    Returns
    -------
    curve : `astropy.table.Table`
        ``threshold``, ``n_ref``, ``n_det``, ``n_matched``, ``precision``, ``recall``, ``f1``.

    Raises
    ------
    ValueError
        If the method has no scores in the table.
    """
    row_type = np.asarray(matches["row_type"], dtype=str)
    ref = matches[row_type == "reference"]
    column = f"{method}_score"
    if column not in matches.colnames:
        raise ValueError(f"the match table has no {column!r} column: method {method!r} has no scores")
    matched_scores = np.asarray(ref[column], dtype=np.float64)[np.asarray(ref[f"{method}_matched"], bool)]
    dets = matches[(row_type == "detection") & (np.asarray(matches["det_method"], dtype=str) == method)]
    lonely_scores = np.asarray(dets["det_score"], dtype=np.float64) if len(dets) else np.zeros(0)
    if (
        np.isnan(matched_scores).all()
        and np.isnan(lonely_scores).all()
        and (matched_scores.size or lonely_scores.size)
    ):
        raise ValueError(f"method {method!r} has no detection scores")
    grid = np.asarray(sorted({float(t) for t in thresholds}), dtype=np.float64)
    n_matched = np.array([np.sum(matched_scores >= t) for t in grid], dtype=np.int64)
    n_det = n_matched + np.array([np.sum(lonely_scores >= t) for t in grid], dtype=np.int64)
    n_ref = len(ref)
    precision = np.divide(n_matched, n_det, out=np.full(grid.size, np.nan), where=n_det > 0)
    recall = n_matched / n_ref if n_ref else np.full(grid.size, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    curve = Table()
    curve["threshold"] = grid
    curve["n_ref"] = np.full(grid.size, n_ref, dtype=np.int64)
    curve["n_det"] = n_det
    curve["n_matched"] = n_matched
    curve["precision"] = precision
    curve["recall"] = recall
    curve["f1"] = np.nan_to_num(f1, nan=0.0)
    curve.meta["method"] = method
    return curve


def match_table_methods(matches: Table) -> list[str]:
    """Method names of a match table, from its ``<method>_matched`` columns (in column order)."""
    return [name[: -len("_matched")] for name in matches.colnames if name.endswith("_matched")]


def match_table_reference(matches: Table) -> str:
    """Name of the reference catalog of a match table (its ``reference`` column, else its metadata)."""
    if "reference" in matches.colnames and len(matches):
        names = sorted(set(np.asarray(matches["reference"]).astype(str).tolist()))
        if len(names) > 1:
            raise ValueError(f"the match tables mix references {names}; summarise them separately")
        return names[0]
    return str(matches.meta.get("reference", ""))


def _strings(table: Table, name: str) -> np.ndarray:
    """A string column as a numpy ``str`` array (empty strings when the column is absent)."""
    if name not in table.colnames:
        return np.full(len(table), "", dtype="U1")
    return np.asarray(table[name]).astype(str)


@dataclass(frozen=True)
class _MethodRows:
    """One method's part of a match table, rebuilt as a `~.matching.MatchResult` and aligned arrays.

    Detections are the matched ones first (in reference-row order), then the unmatched detection rows.
    """

    match: MatchResult
    ref_mag: np.ndarray
    ref_class: np.ndarray
    ref_outcome: np.ndarray
    ref_matched: np.ndarray
    det_mag: np.ndarray
    det_class: np.ndarray
    det_outcome: np.ndarray


def _method_rows(matches: Table, method: str) -> _MethodRows:
    row_type = _strings(matches, "row_type")
    ref = matches[row_type == "reference"]
    dets = matches[(row_type == "detection") & (_strings(matches, "det_method") == method)]
    if f"{method}_matched" not in ref.colnames:
        raise KeyError(f"the match table has no columns of method {method!r}")
    matched = np.asarray(ref[f"{method}_matched"], dtype=bool)
    truth_index = np.flatnonzero(matched)
    n_matched = truth_index.size
    n_det = n_matched + len(dets)

    def floats(table: Table, name: str) -> np.ndarray:
        return (
            np.asarray(table[name], dtype=np.float64)
            if name in table.colnames
            else np.full(len(table), np.nan)
        )

    match = MatchResult(
        truth_index=truth_index,
        det_index=np.arange(n_matched),
        iou=floats(ref, f"{method}_iou")[matched],
        bbox_iou=floats(ref, f"{method}_bbox_iou")[matched],
        mask_iou=floats(ref, f"{method}_mask_iou")[matched],
        distance=floats(ref, f"{method}_distance")[matched],
        method=_strings(ref, f"{method}_match_type")[matched],
        unmatched_truth=np.flatnonzero(~matched),
        unmatched_det=np.arange(n_matched, n_det),
        n_truth=len(ref),
        n_det=n_det,
        iou_type="table",
        min_iou=float(matches.meta.get("min_iou", 0.5)),
        max_distance=float(matches.meta.get("max_distance", 0.0)),
    )
    det_class_unmatched = (
        np.asarray(dets["det_class_id"], dtype=np.int64)
        if "det_class_id" in dets.colnames
        else np.full(len(dets), UNKNOWN_CLASS, dtype=np.int64)
    )
    return _MethodRows(
        match=match,
        ref_mag=floats(ref, "ref_mag"),
        ref_class=np.asarray(ref["ref_class_id"], dtype=np.int64),
        ref_outcome=_strings(ref, f"{method}_outcome"),
        ref_matched=matched,
        det_mag=np.concatenate([floats(ref, f"{method}_mag")[matched], floats(dets, "det_mag")]),
        det_class=np.concatenate(
            [np.asarray(ref[f"{method}_class_id"], dtype=np.int64)[matched], det_class_unmatched]
        ),
        det_outcome=np.concatenate([np.full(n_matched, "", dtype="U1"), _strings(dets, "det_outcome")]),
    )


def summarize_matches(
    matches: Table,
    mag_bins: Sequence[float],
    *,
    class_names: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> Table:
    """Per-method, per-magnitude-bin metrics of a match table (one patch or many stacked).

    Parameters
    ----------
    matches : `astropy.table.Table`
        Match table(s) from `compare_to_reference`, e.g. ``vstack`` of all patches of a tract.
    mag_bins : `~collections.abc.Sequence` [`float`]
        Reference-magnitude bin edges (half-open bins).
    class_names : `~collections.abc.Sequence` [`str`], optional
        Class names by id (default ``star, galaxy``).
    methods : `~collections.abc.Sequence` [`str`], optional
        Methods to summarise (default: `match_table_methods`).

    Returns
    -------
    summary : `astropy.table.Table`
        One row per (method, bin) plus one ``is_total`` row per method (``mag_min=-inf, mag_max=inf``):
        ``n_ref, n_ref_matched, completeness, n_det, n_det_matched, purity, f1`` (`~.metrics` definitions,
        purity binned by the matched reference magnitude, unmatched detections by their measured one),
        ``<class>_{n_true,precision,recall,f1}``, ``median_bbox_iou, median_mask_iou`` (matched pairs of the
        bin), ``n_<outcome>`` and ``frac_<outcome>`` for every reference outcome, and ``n_spurious``.
    """
    class_names = list(class_names or ("star", "galaxy"))
    reference = match_table_reference(matches)
    names = dict(enumerate(class_names))
    methods = list(methods or match_table_methods(matches))
    edges = np.asarray(mag_bins, dtype=np.float64)
    magnitude_bin_index(np.zeros(0), edges)  # Validates the edges.
    n_bins = edges.size - 1
    blocks = []
    for method in methods:
        rows = _method_rows(matches, method)
        match, ref_mag, ref_class, det_class = rows.match, rows.ref_mag, rows.ref_class, rows.det_class
        binned = detection_scores_vs_mag(match, ref_mag, edges, rows.det_mag)
        total = detection_scores(match)
        block = Table()
        block["method"] = np.full(n_bins + 1, method, dtype="U16")
        block["reference"] = np.full(n_bins + 1, reference, dtype="U16")
        block["is_total"] = np.arange(n_bins + 1) == n_bins
        block["mag_min"] = np.append(edges[:-1], -np.inf)
        block["mag_max"] = np.append(edges[1:], np.inf)
        block["n_ref"] = np.append(binned["n_truth"], total.n_truth).astype(np.int64)
        block["n_ref_matched"] = np.append(binned["n_truth_matched"], total.n_matched).astype(np.int64)
        block["completeness"] = np.append(binned["completeness"], total.completeness)
        block["n_det"] = np.append(binned["n_det"], total.n_det).astype(np.int64)
        block["n_det_matched"] = np.append(binned["n_det_matched"], total.n_matched).astype(np.int64)
        block["purity"] = np.append(binned["purity"], total.purity)
        block["f1"] = np.append(binned["f1"], total.f1)

        # Star/galaxy classification of the matched pairs, per bin and overall.
        usable = bool(np.any(ref_class >= 0) and np.any(det_class >= 0))
        per_bin = classification_scores_vs_mag(match, ref_class, det_class, ref_mag, edges, names)
        overall = classification_scores(ref_class[match.truth_index], det_class[match.det_index], names)
        for class_id, class_name in names.items():
            in_class = per_bin[per_bin["class_id"] == class_id]
            last = overall[overall["class_id"] == class_id]
            block[f"{class_name}_n_true"] = np.append(in_class["n_true"], last["n_true"]).astype(np.int64)
            for metric in ("precision", "recall", "f1"):
                values = np.append(in_class[metric], last[metric]).astype(np.float64)
                block[f"{class_name}_{metric}"] = values if usable else np.full(n_bins + 1, np.nan)

        # IoU of the matched pairs whose reference object is in the bin.
        pair_bin = magnitude_bin_index(ref_mag[match.truth_index], edges)
        for kind, values in (("bbox", match.bbox_iou), ("mask", match.mask_iou)):
            medians = []
            for i in range(n_bins + 1):
                chosen = values if i == n_bins else values[pair_bin == i]
                chosen = chosen[np.isfinite(chosen)]
                medians.append(float(np.median(chosen)) if chosen.size else np.nan)
            block[f"median_{kind}_iou"] = np.array(medians)

        # Blend outcomes of the reference objects (BlendOutcomes only needs its truth table to bin them).
        outcome_table = Table({"outcome": rows.ref_outcome, "matched": rows.ref_matched, "mag": ref_mag})
        fractions = BlendOutcomes(
            groups=Table(), truth=outcome_table, detections=Table(), linking_length=0.0, match_radius=0.0
        ).fractions_vs_mag(edges)
        n_all = len(outcome_table)
        for name in TRUTH_OUTCOMES:
            count = int(np.sum(rows.ref_outcome == name))
            block[f"n_{name}"] = np.append(fractions[f"n_{name}"], count).astype(np.int64)
            block[f"frac_{name}"] = np.append(fractions[f"frac_{name}"], count / n_all if n_all else np.nan)
        spurious = rows.det_outcome == "spurious"
        spurious_bin = magnitude_bin_index(rows.det_mag[spurious], edges)
        block["n_spurious"] = np.append(
            np.bincount(spurious_bin[spurious_bin >= 0], minlength=n_bins), int(spurious.sum())
        ).astype(np.int64)
        blocks.append(block)
    if not blocks:
        raise ValueError("the match table names no method to summarise")
    summary = vstack(blocks, metadata_conflicts="silent")
    summary.meta.update(
        {
            "mag_bins": [float(v) for v in edges],
            "methods": methods,
            "class_names": class_names,
            "reference": reference,
            "outcomes": list(OUTCOMES),
        }
    )
    return summary


# ---------------------------------------------------------------------------------------------------------
# Artifacts (ghosts, rays): truth artifacts, DeepDISC's artifact detections and flags.
# ---------------------------------------------------------------------------------------------------------


def _strip_artifact_prefix(name: str) -> str:
    return name[len(ARTIFACT_CLASS_PREFIX) :] if name.startswith(ARTIFACT_CLASS_PREFIX) else name


def _artifact_class_ids(names: Any, artifact_classes: Sequence[str]) -> np.ndarray:
    """Indices into ``artifact_classes`` of artifact class names, with or without the ``artifact_`` prefix."""
    index = {name: k for k, name in enumerate(artifact_classes)}
    return np.array(
        [index.get(_strip_artifact_prefix(str(name).strip()), UNKNOWN_CLASS) for name in names],
        dtype=np.int64,
    ).reshape(-1)


def _spans_sources(spans: list[np.ndarray], class_id: np.ndarray, score: np.ndarray) -> SourceArrays:
    """Sources from footprints alone: centres are the footprint centroids."""
    arrays = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in spans]
    centres = np.array(
        [
            (
                np.sum((a[:, 2] - a[:, 1] + 1) * (a[:, 1] + a[:, 2]) / 2.0) / max(spans_area(a), 1),
                np.sum((a[:, 2] - a[:, 1] + 1) * a[:, 0]) / max(spans_area(a), 1),
            )
            for a in arrays
        ],
        dtype=np.float64,
    ).reshape(-1, 2)
    return SourceArrays(
        x=centres[:, 0], y=centres[:, 1], spans=arrays, class_id=class_id, score=np.asarray(score, np.float64)
    )


def truth_artifact_sources(
    table: Table,
    artifact_classes: Sequence[str] = ARTIFACT_CLASSES,
    *,
    class_column: str = "artifact_class",
) -> SourceArrays:
    """A simulation's truth artifacts (``truth_artifacts``) as sources, classes indexing ``artifact_classes``.

    Artifacts with an empty footprint are left out; classes not in ``artifact_classes`` get
    ``UNKNOWN_CLASS`` (they count for the pixel masks and presence, not for AP).
    """
    spans = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in _column(table, "spans", "truth_artifacts")]
    keep = np.array([s.shape[0] > 0 for s in spans], dtype=bool)
    names = _column(table, class_column, "truth_artifacts") if len(table) else np.zeros(0, dtype=str)
    return _spans_sources(
        [s for s, k in zip(spans, keep) if k],
        _artifact_class_ids(np.asarray(names)[keep], artifact_classes),
        np.ones(int(keep.sum())),
    )


def deepdisc_artifact_sources(
    table: Table, artifact_classes: Sequence[str] = ARTIFACT_CLASSES
) -> SourceArrays:
    """The artifact rows of an ``object_deepdisc`` table as sources (classes index ``artifact_classes``)."""
    rows = table[artifact_row_mask(table)]
    spans = [np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in rows["footprint"]] if len(rows) else []
    names = np.asarray(rows["class_name"]).astype(str) if len(rows) else np.zeros(0, dtype=str)
    score = np.asarray(rows["score"], dtype=np.float64) if "score" in rows.colnames else np.ones(len(rows))
    return _spans_sources(spans, _artifact_class_ids(names, artifact_classes), score)


def artifact_cover_flags(sources: SourceArrays, cover: np.ndarray, threshold: float) -> np.ndarray:
    """Whether each source lies in an artifact mask: the detection task's ``flag_in_artifact`` rule.

    Parameters
    ----------
    sources : `~.matching.SourceArrays`
        Detections; with footprints, the covered fraction of each footprint is used, else whether the
        centre pixel is covered.
    cover : `numpy.ndarray`
        The artifact mask as spans (e.g. `~.footprints.spans_union` of the artifact footprints).
    threshold : `float`
        A source is flagged when more than this fraction of its footprint is covered.

    Returns
    -------
    flagged : `numpy.ndarray`
        One boolean per source.
    """
    n = len(sources)
    cover = np.asarray(cover, dtype=np.int64).reshape(-1, 3)
    if n == 0 or cover.shape[0] == 0:
        return np.zeros(n, dtype=bool)
    if sources.spans is not None:
        area = sources.areas()
        covered = spans_covered_area(sources.spans, cover)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (area > 0) & (covered / np.maximum(area, 1) > threshold)
    x, y = np.rint(sources.x).astype(np.int64), np.rint(sources.y).astype(np.int64)
    return spans_covered_area([np.array([[yy, xx, xx]]) for xx, yy in zip(x, y)], cover) > 0


@dataclass(frozen=True)
class ArtifactScores:
    """DeepGhostBusters-style artifact metrics of one patch (see ``metrics.rst``).

    Attributes
    ----------
    artifact_classes : `tuple` [`str`, ...]
        Evaluated classes (without the ``artifact_`` prefix).
    n_truth, n_det : `int`
        Truth artifacts and detected artifacts of the patch.
    pixel_intersection, pixel_union : `int`
        Pixels in both / either of the union of the truth artifacts and the union of the detected ones.
    pixel_iou : `float`
        ``pixel_intersection / pixel_union`` (NaN when both masks are empty).
    ap, ap50 : `float`
        COCO mask (segm) AP over IoU 0.50:0.95 and at 0.50, averaged over the classes with truth artifacts
        (NaN without truth artifacts; 0 when there are truth artifacts but no detections).
    per_class_ap, per_class_ap50 : `dict` [`str`, `float`]
        The same per class (NaN for classes without truth artifacts).
    """

    artifact_classes: tuple[str, ...]
    n_truth: int
    n_det: int
    pixel_intersection: int
    pixel_union: int
    pixel_iou: float
    ap: float
    ap50: float
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]

    @property
    def truth_present(self) -> bool:
        """The patch has at least one truth artifact."""
        return self.n_truth > 0

    @property
    def det_present(self) -> bool:
        """DeepDISC found at least one artifact in the patch."""
        return self.n_det > 0

    def as_dict(self) -> dict[str, float]:
        """Flat ``artifact_``-prefixed metrics (floats, so that other methods' rows can hold NaN)."""
        out = {
            "artifact_n_truth": float(self.n_truth),
            "artifact_n_det": float(self.n_det),
            "artifact_truth_present": float(self.truth_present),
            "artifact_det_present": float(self.det_present),
            "artifact_pixel_intersection": float(self.pixel_intersection),
            "artifact_pixel_union": float(self.pixel_union),
            "artifact_pixel_iou": self.pixel_iou,
            "artifact_ap": self.ap,
            "artifact_ap50": self.ap50,
        }
        for name in self.artifact_classes:
            out[f"artifact_ap_{name}"] = self.per_class_ap.get(name, float("nan"))
            out[f"artifact_ap50_{name}"] = self.per_class_ap50.get(name, float("nan"))
        return out


def artifact_scores(
    truth: SourceArrays,
    detected: SourceArrays,
    *,
    artifact_classes: Sequence[str] = ARTIFACT_CLASSES,
    image: CocoImage | None = None,
) -> ArtifactScores:
    """Artifact AP per class (mask IoU, COCO), pixel IoU of the artifact masks and counts of one patch.

    Parameters
    ----------
    truth, detected : `~.matching.SourceArrays`
        `truth_artifact_sources` and `deepdisc_artifact_sources` of the patch (whole patch: artifacts are
        not restricted to the inner region).
    artifact_classes : sequence of `str`
        Classes evaluated (the ``class_id`` of both catalogs index them; unknown classes are left out of AP).
    image : `~.coco.CocoImage`, optional
        The patch (COCO masks); default: the union of both catalogs' boxes.
    """
    classes = tuple(artifact_classes)
    truth_union = spans_union(truth.spans or [])
    det_union = spans_union(detected.spans or [])
    intersection = int(spans_covered_area([det_union], truth_union)[0])
    union = spans_area(truth_union) + spans_area(det_union) - intersection
    nan = float("nan")
    per_class_ap = dict.fromkeys(classes, nan)
    per_class_ap50 = dict.fromkeys(classes, nan)
    ap = ap50 = nan
    known_truth = truth.class_id >= 0 if truth.class_id is not None else np.zeros(len(truth), bool)
    known_det = detected.class_id >= 0 if detected.class_id is not None else np.zeros(len(detected), bool)
    if known_truth.any() and not known_det.any():
        ap = ap50 = 0.0
        for k in np.unique(truth.class_id[known_truth]):
            per_class_ap[classes[k]] = per_class_ap50[classes[k]] = 0.0
    elif known_truth.any():
        truth_known, det_known = truth.select(known_truth), detected.select(known_det)
        if image is None:
            boxes = np.concatenate([truth_known.bbox, det_known.bbox])
            x0, y0 = int(np.floor(boxes[:, 0].min())), int(np.floor(boxes[:, 1].min()))
            x1, y1 = int(np.ceil(boxes[:, 2].max())), int(np.ceil(boxes[:, 3].max()))
            image = CocoImage(width=x1 - x0 + 1, height=y1 - y0 + 1, xy0=(x0, y0))
        segm = coco_average_precision(
            truth_known, det_known, image, iou_types=("segm",), class_names=dict(enumerate(classes))
        )["segm"]
        ap, ap50 = segm.ap, segm.ap50
        per_class_ap.update(segm.per_class_ap)
        per_class_ap50.update(segm.per_class_ap50)
    return ArtifactScores(
        artifact_classes=classes,
        n_truth=len(truth),
        n_det=len(detected),
        pixel_intersection=intersection,
        pixel_union=int(union),
        pixel_iou=intersection / union if union > 0 else nan,
        ap=ap,
        ap50=ap50,
        per_class_ap=per_class_ap,
        per_class_ap50=per_class_ap50,
    )


def add_artifact_metrics(
    result: ComparisonResult,
    catalogs: Mapping[str, ComparisonCatalog],
    *,
    in_truth_artifact: Mapping[str, np.ndarray] | None = None,
    n_artifact_rows: Mapping[str, int] | None = None,
    scores: ArtifactScores | None = None,
    scores_method: str = "deepdisc",
) -> None:
    """Add the artifact columns to the per-patch metrics of `compare_to_reference`, in place.

    Parameters
    ----------
    result : `ComparisonResult`
        The comparison (its ``details`` give every method's evaluated match).
    catalogs : `~collections.abc.Mapping` [`str`, `ComparisonCatalog`]
        The compared catalogs, with ``artifact_flagged`` (missing flags count as unflagged).
    in_truth_artifact : `~collections.abc.Mapping` [`str`, `numpy.ndarray`], optional
        Per method, whether each detection lies in a truth artifact (`artifact_cover_flags` against the
        truth artifacts); adds the false-positive columns.
    n_artifact_rows : `~collections.abc.Mapping` [`str`, `int`], optional
        Per method, its evaluated artifact rows (DeepDISC's artifact detections in the region), counted as
        false detections by ``purity_all_rows``.
    scores : `ArtifactScores`, optional
        The patch's artifact scores, written in the row of ``scores_method`` (NaN in the others).

    Notes
    -----
    Columns (see ``metrics.rst``): ``n_artifact_rows``, ``n_det_artifact_flagged``,
    ``n_matched_artifact_flagged``, ``purity_artifact_flagged``, ``completeness_artifact_flagged``,
    ``purity_all_rows``; with ``in_truth_artifact``: ``n_fp``, ``n_fp_in_truth_artifact``,
    ``n_fp_in_truth_artifact_flagged``, ``frac_fp_in_truth_artifact``,
    ``frac_fp_in_truth_artifact_flagged``; with ``scores``: the keys of `ArtifactScores.as_dict`.
    A false positive is an evaluated detection without a match.
    """
    columns: dict[str, list[float]] = {}

    def put(key: str, value: float) -> None:
        columns.setdefault(key, []).append(value)

    nan = float("nan")
    for row in result.metrics:
        name = str(row["method"])
        detail = result.details[name]
        evaluated: MatchResult = detail["evaluated"]
        keep_det = np.asarray(detail["keep_det"], dtype=bool)
        catalog = catalogs[name]
        all_flags = catalog.artifact_flagged
        flagged = np.zeros(keep_det.sum(), bool) if all_flags is None else all_flags[keep_det]
        n_det, n_matched, n_ref = evaluated.n_det, evaluated.n_matched, evaluated.n_truth
        n_flagged = int(flagged.sum())
        matched_flagged = int(flagged[evaluated.det_index].sum()) if n_matched else 0
        extra = int((n_artifact_rows or {}).get(name, 0))
        put("n_artifact_rows", extra)
        put("n_det_artifact_flagged", n_flagged)
        put("n_matched_artifact_flagged", matched_flagged)
        put("purity_artifact_flagged", _safe_ratio(n_matched - matched_flagged, n_det - n_flagged))
        put("completeness_artifact_flagged", _safe_ratio(n_matched - matched_flagged, n_ref))
        put("purity_all_rows", _safe_ratio(n_matched, n_det + extra))
        if in_truth_artifact is not None:
            inside = np.asarray(in_truth_artifact.get(name, np.zeros(keep_det.size, bool)), dtype=bool)
            false_positive = evaluated.unmatched_det
            inside_fp = inside[keep_det][false_positive]
            caught = int(np.sum(inside_fp & flagged[false_positive]))
            put("n_fp", false_positive.size)
            put("n_fp_in_truth_artifact", int(inside_fp.sum()))
            put("n_fp_in_truth_artifact_flagged", caught)
            put("frac_fp_in_truth_artifact", _safe_ratio(int(inside_fp.sum()), false_positive.size))
            put("frac_fp_in_truth_artifact_flagged", _safe_ratio(caught, int(inside_fp.sum())))
        if scores is not None:
            for key, value in scores.as_dict().items():
                put(key, value if name == scores_method else nan)
    for key, values in columns.items():
        result.metrics[key] = np.asarray(values, dtype=np.int64 if key.startswith("n_") else np.float64)


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else float("nan")


def summarize_artifact_metrics(metrics: Table) -> Table | None:
    """Tract-level artifact metrics from stacked per-patch metrics tables (`add_artifact_metrics`).

    Counts are summed over patches, so ratios are exact tract values; presence scores use the patches that
    report ``artifact_truth_present``; AP is the mean over the patches with truth artifacts (COCO AP is not
    additive); the pixel IoU is the summed intersection over the summed union.

    Returns
    -------
    summary : `astropy.table.Table` or `None`
        One row per method (columns listed in ``metrics.rst``); `None` when the tables have no artifact
        columns.
    """
    if "n_det_artifact_flagged" not in metrics.colnames:
        return None
    methods = list(dict.fromkeys(np.asarray(metrics["method"]).astype(str)))

    def total(rows: Table, name: str) -> float:
        if name not in rows.colnames:
            return float("nan")
        values = np.asarray(rows[name], dtype=np.float64)
        return float(np.nansum(values)) if np.isfinite(values).any() else float("nan")

    out_rows = []
    for method in methods:
        rows = metrics[np.asarray(metrics["method"]).astype(str) == method]
        n_ref, n_det, n_matched = (total(rows, k) for k in ("n_ref", "n_det", "n_matched"))
        flagged, matched_flagged = (
            total(rows, "n_det_artifact_flagged"),
            total(rows, "n_matched_artifact_flagged"),
        )
        out: dict[str, Any] = {"method": method, "n_patches": len(rows)}
        out["purity"] = _safe_ratio(n_matched, n_det)
        out["purity_artifact_flagged"] = _safe_ratio(n_matched - matched_flagged, n_det - flagged)
        out["completeness"] = _safe_ratio(n_matched, n_ref)
        out["completeness_artifact_flagged"] = _safe_ratio(n_matched - matched_flagged, n_ref)
        out["purity_all_rows"] = _safe_ratio(n_matched, n_det + total(rows, "n_artifact_rows"))
        out["n_det_artifact_flagged"] = flagged
        n_fp, inside, caught = (
            total(rows, k) for k in ("n_fp", "n_fp_in_truth_artifact", "n_fp_in_truth_artifact_flagged")
        )
        out["n_fp"], out["n_fp_in_truth_artifact"], out["n_fp_in_truth_artifact_flagged"] = (
            n_fp,
            inside,
            caught,
        )
        out["frac_fp_in_truth_artifact"] = _safe_ratio(inside, n_fp)
        out["frac_fp_in_truth_artifact_flagged"] = _safe_ratio(caught, inside)
        present = (
            np.asarray(rows["artifact_truth_present"], dtype=np.float64)
            if "artifact_truth_present" in rows.colnames
            else np.full(len(rows), np.nan)
        )
        reported = np.isfinite(present)
        presence = (
            presence_scores(
                present[reported] > 0, np.asarray(rows["artifact_det_present"], np.float64)[reported] > 0
            )
            if reported.any()
            else None
        )
        out["artifact_n_patches"] = int(reported.sum())
        for key in ("tp", "fp", "fn", "precision", "recall", "f1"):
            out[f"artifact_presence_{key}"] = float(presence[key]) if presence else float("nan")
        intersection = (
            total(rows[reported], "artifact_pixel_intersection") if reported.any() else float("nan")
        )
        union = total(rows[reported], "artifact_pixel_union") if reported.any() else float("nan")
        out["artifact_pixel_iou"] = _safe_ratio(intersection, union) if np.isfinite(union) else float("nan")
        with_truth = reported & (present > 0)
        for name in [c for c in metrics.colnames if c.startswith(("artifact_ap", "artifact_n_"))]:
            counts = name.startswith("artifact_n_")
            values = np.asarray(rows[name], dtype=np.float64)[reported if counts else with_truth]
            values = values[np.isfinite(values)]
            if counts:
                out[name] = float(values.sum()) if values.size else float("nan")
            else:
                out[name] = float(values.mean()) if values.size else float("nan")
        out_rows.append(out)
    names = list(dict.fromkeys(key for row in out_rows for key in row))
    table = Table(rows=[[row.get(key, float("nan")) for key in names] for row in out_rows], names=names)
    table.meta["ap_aggregation"] = "mean over patches with truth artifacts"
    return table
