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

Modules
-------
``_catalogs``
    The catalog adapters (`truth_catalog`, `deepdisc_catalog`, `scarlet_catalog`, `sep_catalog`,
    `labels_catalog`).
``_patch``
    The per-patch comparison (`compare_to_reference`).
``_summary``
    The tract summary (`summarize_matches`, `precision_recall_from_matches`).
``_artifacts``
    Artifact metrics (`artifact_scores`, `add_artifact_metrics`, `summarize_artifact_metrics`).
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

from ._artifacts import (
    ArtifactScores,
    add_artifact_metrics,
    artifact_cover_flags,
    artifact_scores,
    deepdisc_artifact_sources,
    summarize_artifact_metrics,
    truth_artifact_sources,
)
from ._catalogs import (
    UNKNOWN_CLASS,
    ComparisonCatalog,
    artifact_row_mask,
    deepdisc_catalog,
    has_artifact_classes,
    labels_catalog,
    restrict_match,
    scarlet_catalog,
    sep_catalog,
    truth_catalog,
)
from ._patch import ComparisonResult, compare_to_reference, fill_masked_columns
from ._summary import (
    match_table_methods,
    match_table_reference,
    precision_recall_from_matches,
    summarize_matches,
)
