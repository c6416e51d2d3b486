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

"""COCO average precision (bbox and segm) with pycocotools, and COCO-format export of truth labels.

Masks are converted from spans straight to COCO run-length encoding in image coordinates: the column-major
index of every footprint pixel is computed (for all objects at once, in batches) and runs of consecutive
indices become COCO runs, which pycocotools compresses; nothing image-sized is ever allocated.

COCO's matcher (``COCOeval.evaluateImg``) costs ``O(D x G)`` Python operations per image, hopeless for a
patch with tens of thousands of sources.  Evaluation therefore splits the patch into *pseudo-images*: the
connected components of the graph linking truth objects and detections of the same category whose bounding
boxes share a pixel (plus, per category, one image of all isolated truth objects and one of all isolated
detections), and runs pycocotools once per category on that category's pseudo-images.  Objects without a
common pixel have IoU 0 and can never match, and COCO's greedy matching inside an image only involves
overlapping objects, so the matches are exactly those of evaluating the patch as a single image; the
precision/recall curves are then accumulated over all pseudo-images by score, as COCO does for one image.
Two consequences: COCO's per-image ``maxDets`` cap becomes meaningless, so it is set to the number of
detections and the optional ``max_detections`` keeps the highest-scoring detections of the whole patch
instead; and among detections with exactly equal scores the order may differ from a single-image run.

Definitions (COCO's): AP is the precision averaged over 101 recall points and the IoU thresholds
0.50:0.05:0.95, then over classes that have truth objects; AP50 and AP75 use a single IoU threshold; AR is the
maximum recall averaged the same way.  Matching is per class (a detection of the wrong class never matches)
unless ``class_agnostic=True``.  The COCO area ranges are not used (one range, all areas).

Truth objects flagged in ``truth_ignore`` are *ignored* (COCO's ``ignore`` flag): detections matched to
them count neither as true nor as false positives, exactly as COCO treats crowd regions and out-of-range
areas.

The COCO ``category_id`` of class ``c`` is ``c + 1`` (`CATEGORY_ID_OFFSET`): COCO ids start at 1 and
detectron2 maps them back to contiguous ids ``0..K-1`` when it loads the JSON.
"""

from __future__ import annotations

__all__ = [
    "CATEGORY_ID_OFFSET",
    "CocoImage",
    "CocoScores",
    "coco_annotations",
    "coco_average_precision",
    "coco_ground_truth",
    "spans_to_coco_rle",
    "spans_to_coco_rles",
    "write_coco_json",
]

from ._evaluation import CocoScores, coco_average_precision
from ._export import (
    CATEGORY_ID_OFFSET,
    CocoImage,
    coco_annotations,
    coco_ground_truth,
    spans_to_coco_rle,
    spans_to_coco_rles,
    write_coco_json,
)
