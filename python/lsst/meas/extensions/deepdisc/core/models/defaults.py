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

"""Astronomy defaults shared by every architecture of the model factory.

COCO detectors are tuned for tens of large objects per photograph; a coadd tile holds hundreds to thousands
of mostly small, often blended sources.  The values below replace the COCO ones for *every* architecture
(yacs and lazy alike, through the same yacs-style keys) before a `ModelSpec`'s own overrides are applied.
Imported user configs (`config_from_detectron2_yaml`) keep their own values: they belong to a trained model.
"""

from __future__ import annotations

__all__ = ["ASTRO_DEFAULTS", "DEFAULT_CLASS_NAMES", "INPUT_FORMAT", "PROTECTED_KEYS"]

from typing import Any

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("star", "galaxy")

# detectron2 reads INPUT.FORMAT only when it decodes image files or draws training visualisations (neither
# happens here); "BGR"/"RGB" would wrongly suggest a channel order.  Channels follow `ModelSpec.bands`.
INPUT_FORMAT = "bands"

ASTRO_DEFAULTS: dict[str, Any] = {
    # One anchor size per FPN level p2..p6 (strides 4..64): stars are a few pixels across (FWHM ~ 3-5 px
    # at LSST/HSC pixel scales) and most galaxies are < 64 px; COCO's 32..512 px would miss them.
    "MODEL.ANCHOR_GENERATOR.SIZES": [[4], [8], [16], [32], [64]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    # Thousands of sources per tile: keep enough proposals through the RPN (per FPN level before NMS,
    # per image after) and allow up to 2000 detections per image (COCO: 1000 / 1000 / 100).
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 6000,
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 3000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 3000,
    "TEST.DETECTIONS_PER_IMAGE": 2000,
}

# Keys a ModelSpec override may not set, with the reason shown to the user.
PROTECTED_KEYS: dict[str, str] = {
    "MODEL.ROI_HEADS.NUM_CLASSES": "set ModelSpec.class_names instead",
    "MODEL.PIXEL_MEAN": "set ModelSpec.pixel_mean instead",
    "MODEL.PIXEL_STD": "set ModelSpec.pixel_std instead",
    "MODEL.DEVICE": "pass device= to build_model instead",
    "MODEL.WEIGHTS": "weights are never loaded from a config; they travel in the model package",
    "MODEL.MASK_ON": "DeepDISC models always predict masks",
    "MODEL.META_ARCHITECTURE": "DeepDISC models are GeneralizedRCNN",
    "INPUT.MIN_SIZE_TEST": "the model never resizes its input (tiles are fed at native resolution)",
    "model.roi_heads.num_classes": "set ModelSpec.class_names instead",
    "model.pixel_mean": "set ModelSpec.pixel_mean instead",
    "model.pixel_std": "set ModelSpec.pixel_std instead",
}
