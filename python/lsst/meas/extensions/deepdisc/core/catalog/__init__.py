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
* **Families.**  Detections whose footprints share at least one pixel are linked, and so are the children
  of a footprint split at its peaks (``Detections.split_from``, `..peak_split`: they touch without sharing
  a pixel); the connected components of that graph are *families*.  No synthetic parent rows are added:
  the family member with the highest score (ties: the earlier row) is the family *head* and plays the DRP
  parent's role.  The head has
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
    "footprint_detection_snr",
    "is_artifact_class",
    "select_catalog_rows",
    "set_primary_flags",
]

from ._artifact_mask import artifact_mask_columns, artifact_mask_image, build_artifact_mask
from ._build import (
    build_catalog,
    detection_snr,
    footprint_detection_snr,
    select_catalog_rows,
    set_primary_flags,
)
from ._columns import APPORTION_RULE, catalog_columns, is_artifact_class
