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

"""One-to-one matching of a detection catalog to truth, and DeepDISC's many-to-one convention.

Two conventions are implemented.

**One-to-one matching** (`match_catalogs`), in two stages:

1. *IoU stage.*  Candidate pairs are the truth/detection pairs whose bounding boxes overlap, found with a
   spatial grid (never a dense ``N x M`` matrix).  Their IoU is computed on footprints (``mask`` IoU, on
   spans, without rasterising anything) when both sides have footprints, else on inclusive bounding boxes
   (``bbox`` IoU).  Pairs with ``IoU >= min_iou`` are edges of a bipartite graph; each connected component
   is solved with the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`).  Inside a component the
   assignment has the largest possible number of pairs and, among those, the largest total IoU.
2. *Distance stage.*  Among the truth objects and detections left unmatched by stage 1, pairs whose centres
   are within ``max_distance`` pixels (default 5 px = 1 arcsec at 0.2 arcsec/pixel) are found with a KD-tree
   and assigned the same way: most pairs first, then the smallest total centre distance.  This catches
   detections whose footprints disagree with the truth (e.g. a faint source with a tiny truth mask) while
   remaining one-to-one.  Set ``max_distance=0`` to disable it.

**DeepDISC's convention** (`match_deepdisc`, Merz et al. 2023): every detection is paired with the truth
object of highest *bounding-box* IoU, and the pair counts as a match if that IoU is ``>= 0.5``.  This is not
one-to-one: two detections may share a truth object.  Ties go to the lowest truth index, like
``numpy.argmax`` in DeepDISC's ``get_matched_object_inds``.

Bounding boxes are inclusive pixel ranges ``(x_min, y_min, x_max, y_max)``: a box covers
``x_max - x_min + 1`` columns, so a one-pixel source has area 1.  Positions are parent (patch/tract) pixel
coordinates; catalogs known only on the sky can be projected with `sky_to_tangent_plane`.
"""

from __future__ import annotations

__all__ = [
    "BBOX_COLUMNS",
    "DeepDiscMatch",
    "MatchResult",
    "SourceArrays",
    "bbox_iou_pairs",
    "bbox_overlap_pairs",
    "match_catalogs",
    "match_deepdisc",
    "optimal_assignment",
    "pair_intersection_areas",
    "cos_separation",
    "sky_to_tangent_plane",
]

from ._match import DeepDiscMatch, MatchResult, match_catalogs, match_deepdisc
from ._overlaps import bbox_iou_pairs, bbox_overlap_pairs, optimal_assignment, pair_intersection_areas
from ._sources import BBOX_COLUMNS, SourceArrays, cos_separation, sky_to_tangent_plane
