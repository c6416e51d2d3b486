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

"""Tiled instance-segmentation inference over a whole patch, stitched into one detection list.

A patch (thousands of pixels on a side) is cut into overlapping tiles that a detectron2-style model can
digest, the tiles run through the model in batches, and the per-tile detections are stitched back:

1. **Tiling** (`plan_tiles`).  Tiles are ``tile_size`` square with ``overlap`` pixels shared between
   neighbours; the last tile of a row or column is shifted inward, so every tile is full-size whenever the
   patch is at least one tile long in that direction.  A patch smaller than a tile is a single tile of the
   patch's size (the model pads to its size divisibility itself).  Each tile has an *interior*: the tile
   minus half of each overlap it shares with a neighbour (the boundary is the middle of the overlap); on
   the sides at the patch edge the interior extends to the edge.  Interiors partition the patch exactly.
2. **Forward** in batches of tiles under `torch.inference_mode`, on the chosen device, the model's weights
   channels-last.  On a GPU a batch is one call, sent from pinned host memory with one asynchronous copy,
   with optional fp16 autocast.  On the CPU the batch is shared among concurrent calls (``workers``), each
   on its share of torch's threads.
3. **Stitching.**  A detection is kept only from the tile whose interior holds the centre of its box, so a
   source is reported once, with the footprint that tile saw.  That footprint is complete when the source
   extends at most ``overlap // 2`` pixels from its centre pixel: the owning tile then contains all of it.
   Detections are converted to spans in patch (parent) coordinates immediately, tile by tile, so the
   memory peak is set by one batch of tiles, never by the patch size.
4. **Duplicate merging.**  A model does not place a box identically in two tiles; when the two copies of
   a source land in two interiors both are kept, and their masks overlap.  Kept detections of different
   tiles whose footprints have IoU >= ``merge_iou`` are merged greedily by score (non-maximum suppression
   across tiles): the higher score stays and gets ``merged_duplicate = True``.  ``stitch_margin`` widens
   every interior by a few pixels so that a source whose two copies jitter *away* from each other across
   the boundary is still caught by one tile and then de-duplicated, instead of being lost.

Models follow detectron2's ``GeneralizedRCNN`` contract: ``model(list_of_dicts)`` with dicts
``{"image": float32 [C, H, W] tensor, "height": H, "width": W}`` returns ``[{"instances": Instances}]``
with ``pred_boxes`` (XYXY, tile pixels), ``scores``, ``pred_classes``, ``pred_masks`` and optionally
``class_probs [N, K]``.  Full-size masks ``[N, H, W]`` (bool or soft) are accepted, and so are the
box-relative soft masks ``[N, 1, M, M]`` of ``model.inference(inputs, do_postprocess=False)``, which are
resampled into their boxes one at a time (bilinear, the same sampling as detectron2's
``paste_masks_in_image``) so that no full-tile mask is ever built per detection.

Step 2 runs the mask head of a detectron2 R-CNN only on the detections step 3 will keep from the tile
(`detect_then_segment`: which detections a tile keeps depends on their boxes and scores alone).

Modules: ``_tiles`` (1), ``_run`` and ``_staged`` (2), ``_stitching`` (3, 4), ``_detections`` (the result).
"""

from __future__ import annotations

__all__ = [
    "Detections",
    "InferenceConfig",
    "Tile",
    "add_coarse_detections",
    "detect_then_segment",
    "only_classes",
    "paste_box_mask",
    "plan_tiles",
    "run_tiled_inference",
    "select_device",
    "segments_selected",
]

from ._detections import Detections, add_coarse_detections, only_classes
from ._run import run_tiled_inference
from ._staged import detect_then_segment, segments_selected
from ._stitching import paste_box_mask
from ._tiles import InferenceConfig, Tile, plan_tiles, select_device
