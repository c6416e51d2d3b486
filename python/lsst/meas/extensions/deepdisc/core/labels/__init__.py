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

"""Training labels from scarlet deblender models: one footprint, class and magnitude per source.

`build_labels` turns the scarlet models of a patch (`~.scarlet_io.ScarletModelData`), the coadd they were
fitted to (`~.multiband.MultibandImage`) and the object table into a label table, one row per source;
`labels_to_examples` cuts the patch into scaled, labelled training images (`~.training_data.TrainingExample`)
and `labels_to_coco` / `examples_to_coco` export COCO ground truth with RLE masks.

Footprints
----------
Every source model is rendered convolved to each band's observed PSF (`~.scarlet_io.ModelRenderer`) and
clipped to the patch; footprints are, by default, also clipped to the box of the scarlet blend the source
was fitted in (as ``meas_extensions_scarlet`` does).  Two rules turn the rendered model ``M_b`` into a mask;
the default is ``"background_sigma"`` at 1 sigma with inverse-variance weights, which keeps every deblended
source down to the detection limit and reproduces the simulation's truth footprints from exact models (the
label audit, ``bench/label_audit.py``, measures each rule):

``threshold_mode="model"``
    Pixels where ``max_b M_b > model_threshold``.  With the default threshold 0 this is the stack's rule
    (``footprint.scarletModelToHeavy``: every pixel where the convolved model is non-zero).
``threshold_mode="background_sigma"``
    DeepDISC's rule (Merz et al. 2023): pixels where the model's *detection image*
    ``D = sum_b w_b M_b`` reaches ``sigma_threshold`` times the background noise of ``D``,
    ``sigma_D = sqrt(sum_b w_b^2 sigma_b^2)``, where ``sigma_b^2`` is the median of band ``b``'s variance
    plane over pixels with data.  ``detection_weighting="sum"`` (``w_b = 1``) is DeepDISC's sum of bands;
    ``"inverse_variance"`` (``w_b = 1 / sigma_b^2``) is the optimal combination for a flat spectrum and is
    how the simulation (``sim.scene``) defines its truth footprints, so ``sigma_threshold`` equal to the
    simulation's ``truth_threshold_sigma`` reproduces them from exact models.

Pixels without data (``invalid_planes`` set in any band, or non-finite) are removed from every footprint;
sources left with fewer than ``min_area`` pixels are dropped.  Isolated sources whose archive stores no model
(upstream's ``IsolatedSourceData``) use the image inside their stored footprint instead: in ``"model"`` mode
the footprint is the stored one, in ``"background_sigma"`` mode the stored footprint pixels whose image value
passes the threshold (``flag_model_from_image`` marks them).

Object table join and classes
-----------------------------
A source joins the object table by ``id_column`` (``objectId``): in the Rubin pipelines the catalog id of a
deblended child *is* its scarlet source id and an isolated source is stored under its object's id; the
simulated repositories (``sim.repo``) follow the same rule, with and without exact ("truth") models.
Sources missing from the table are dropped and counted.  ``class_source="extendedness"`` classifies by
``refExtendedness``: galaxy when ``>= extendedness_threshold``, star below, no label when NaN.
``class_source="reference"`` implements DeepDISC's HSC->HST idea: each label takes the class of the nearest
object of an external reference catalog (e.g. HST/COSMOS, or a simulation's truth table) within
``reference_match_radius_arcsec``, optionally only when their magnitudes agree within
``reference_max_delta_mag``; unmatched sources get no label.  Sources without a valid class are dropped
and counted.  The magnitude is the AB magnitude of ``flux_column`` (nJy) in the reference band (the object
table's ``refBand`` per row, or ``ref_band``).

Blendedness is BTK's ``1 - (S_k . S_k) / (S_all . S_k)`` on the detection image of the rendered models
(``S_all`` is the sum of all sources' models), over the patch pixels of the source's rendered box.

Quality cut: a patch (or a training tile) in which more than ``max_no_data_fraction`` of the pixels have
no data (DeepDISC drops images with more than 30%) gives no labels; `build_labels` then returns an empty
table whose metadata says why (``skipped_reason``).

Label table columns
-------------------
``source_id``, ``parent_id`` (the top-level blend id; an isolated source's own id), ``centroid_x/y``
(detection-image flux-weighted, parent pixel coordinates), ``coord_ra/dec``, ``bbox_x0/y0/x1/y1``
(inclusive, parent coordinates), ``footprint`` (flattened ``int32`` spans, parent coordinates),
``footprint_area``, ``class_id``, ``class_name``, ``extendedness``, ``ref_separation_arcsec``, ``mag``,
``mag_band``, ``blendedness``, ``nodata_fraction``, ``is_primary`` and the flags ``flag_patch_edge``,
``flag_nodata``, ``flag_saturated``, ``flag_isolated``, ``flag_model_from_image``.  ``table.meta`` records
the configuration, the counts of dropped sources by reason, the patch's NO_DATA fraction and box, the bands
and the class names.

Modules: ``_config`` (`LabelConfig`, columns), ``_build`` (`build_labels`), ``_examples`` (tiles, COCO).
"""

from __future__ import annotations

__all__ = [
    "CLASS_SOURCES",
    "DETECTION_WEIGHTINGS",
    "REFERENCE_UNMATCHED",
    "THRESHOLD_MODES",
    "LabelConfig",
    "background_sigmas",
    "build_labels",
    "detection_weights",
    "empty_labels",
    "examples_to_coco",
    "label_columns",
    "labels_to_coco",
    "labels_to_examples",
    "tile_origins",
]

from ._build import build_labels
from ._config import (
    CLASS_SOURCES,
    DETECTION_WEIGHTINGS,
    REFERENCE_UNMATCHED,
    THRESHOLD_MODES,
    LabelConfig,
    background_sigmas,
    detection_weights,
    empty_labels,
    label_columns,
)
from ._examples import examples_to_coco, labels_to_coco, labels_to_examples, tile_origins
