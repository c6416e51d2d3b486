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
"""BuildDeepDiscLabelsTask: DeepDISC training labels from the scarlet deblender's outputs of a patch.

Inputs (dimensions tract, patch, skymap): the per-band coadds, the scarlet models (``object_scarlet_models``)
and the object table (``object_patch``); optionally a reference catalog per patch for classes.  Output:
``deepdisc_labels`` (``ArrowAstropy``), one row per source with its footprint as flattened spans (see
`~lsst.meas.extensions.deepdisc.core.labels`), and optionally ``deepdisc_labels_coco``
(``StructuredDataDict``), the same labels as COCO ground truth with RLE masks.  A patch with too much
NO_DATA still gets an (empty) label table, whose metadata says why.  daf_butler strips astropy table
metadata on read unless asked not to: ``butler.get("deepdisc_labels", data_id,
parameters={"strip_astropy_meta_yaml": False})`` returns the counts, the skip reason and the label
settings in ``table.meta`` (the counts are also in the task metadata, ``labels_metadata``).

Scarlet models: in simulated repositories (and wherever the archives are registered with this package's
``ScarletModelArchive`` storage class) they are read without any stack package.  In the Rubin pipelines
the dataset has the storage class ``LsstScarletModelData``: set ``scarletModelStorageClass`` to it (see
``config/tasks/labels_stack.py``); the Butler then needs ``meas_extensions_scarlet`` to read it, and
`~lsst.meas.extensions.deepdisc.butler.labels_io.scarlet_models_from_butler` converts the result.

To export COCO JSON files from existing label tables instead, use
`~lsst.meas.extensions.deepdisc.core.labels.labels_to_coco` and
`~lsst.meas.extensions.deepdisc.core.coco.write_coco_json`.
"""

from __future__ import annotations

__all__ = ["BuildDeepDiscLabelsConfig", "BuildDeepDiscLabelsConnections", "BuildDeepDiscLabelsTask"]

import dataclasses
import time
from typing import override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.labels_io import scarlet_models_from_butler
from ..butler.tables import to_arrow
from ..core.labels import CLASS_SOURCES, DETECTION_WEIGHTINGS, LabelConfig, build_labels, labels_to_coco
from ..core.multiband import MultibandImage
from ..core.scarlet_io import ScarletModelData
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)

_PATCH_DIMENSIONS = ("tract", "patch", "skymap")


class BuildDeepDiscLabelsConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=_PATCH_DIMENSIONS,
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `BuildDeepDiscLabelsTask`: coadds and the deblender's outputs in, labels out."""

    coadds = coadd_input_connection("Per-band coadds the scarlet models were fitted to.")
    scarletModels = cT.Input(
        doc="Scarlet deblender models of the patch (storage class set by scarletModelStorageClass).",
        name="object_scarlet_models",
        storageClass="ScarletModelArchive",
        dimensions=_PATCH_DIMENSIONS,
    )
    objects = cT.Input(
        doc="Object table of the patch: ids, extendedness, fluxes.",
        name="object_patch",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    reference = cT.Input(
        doc="Reference catalog of the patch (e.g. HST classes, or a simulation's truth) for "
        "classSource='reference'.",
        name="truth_patch",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    labels = cT.Output(
        doc="Training labels: one row per source with footprint spans, class, magnitude, blendedness.",
        name="deepdisc_labels",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    labelsCoco = cT.Output(
        doc="The labels as a COCO ground-truth dataset with RLE masks (one image: the patch).",
        name="deepdisc_labels_coco",
        storageClass="StructuredDataDict",
        dimensions=_PATCH_DIMENSIONS,
    )

    def __init__(self, *, config: BuildDeepDiscLabelsConfig) -> None:
        super().__init__(config=config)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)
        if config.scarletModelStorageClass != self.scarletModels.storageClass:
            self.scarletModels = dataclasses.replace(
                self.scarletModels, storageClass=config.scarletModelStorageClass
            )
        if config.classSource != "reference":
            del self.reference
        if not config.doWriteCoco:
            del self.labelsCoco


class BuildDeepDiscLabelsConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=BuildDeepDiscLabelsConnections
):
    """Configuration of `BuildDeepDiscLabelsTask`."""

    coaddStorageClass = coadd_storage_class_field()
    scarletModelStorageClass = pexConfig.ChoiceField[str](
        doc="Storage class of the scarlet models.",
        default="ScarletModelArchive",
        allowed={
            "ScarletModelArchive": "this package's .scarlet reader (simulated repositories; no stack needed)",
            "LsstScarletModelData": "the Rubin pipelines' storage class (needs meas_extensions_scarlet)",
        },
    )
    thresholdMode = pexConfig.ChoiceField[str](
        doc="How a rendered model becomes a footprint.  The default, 1 sigma of the inverse-variance "
        "weighted detection image, keeps every deblended source and matches how survey footprints (and the "
        "simulation's truth) are defined; see bench/results/*-label-audit-*.md.",
        default="background_sigma",
        allowed={
            "model": "observed-PSF model above modelThreshold in some band (the stack's 'model > 0' rule)",
            "background_sigma": "detection image of the model >= sigmaThreshold background sigma (DeepDISC)",
        },
    )
    modelThreshold = pexConfig.Field[float](
        doc="Threshold on the rendered observed-PSF model (image units) for thresholdMode='model'.",
        default=0.0,
    )
    sigmaThreshold = pexConfig.Field[float](
        doc="Threshold in background sigma of the detection image for thresholdMode='background_sigma' "
        "(DeepDISC's paper: 5 with the plain band sum, config/tasks/labels_deepdisc.py).",
        default=1.0,
    )
    detectionWeighting = pexConfig.ChoiceField[str](
        doc="Band weights of the detection image (thresholds, blendedness, centroids).",
        default="inverse_variance",
        allowed={name: name.replace("_", " ") + " of the bands" for name in DETECTION_WEIGHTINGS},
    )
    clipToBlendBox = pexConfig.Field[bool](
        doc="Clip footprints to the box of their scarlet blend, as the stack does.", default=True
    )
    classSource = pexConfig.ChoiceField[str](
        doc="Where classes come from.",
        default="extendedness",
        allowed={name: name for name in CLASS_SOURCES},
    )
    extendednessColumn = pexConfig.Field[str](
        doc="Object-table extendedness column.", default="refExtendedness"
    )
    extendednessThreshold = pexConfig.Field[float](
        doc="Extendedness at or above which a source is a galaxy.", default=0.5
    )
    classNames = pexConfig.ListField[str](
        doc="Class names by class id; must include 'star' and 'galaxy'.", default=["star", "galaxy"]
    )
    referenceMatchRadius = pexConfig.Field[float](
        doc="Reference catalog matching radius (arcsec).", default=1.0
    )
    referenceMaxDeltaMag = pexConfig.Field[float](
        doc="Largest magnitude difference of a reference match (inf: no check).", default=1.0
    )
    referenceRaColumn = pexConfig.Field[str](doc="Reference right ascension column (deg).", default="ra")
    referenceDecColumn = pexConfig.Field[str](doc="Reference declination column (deg).", default="dec")
    referenceStarColumn = pexConfig.Field[str](
        doc="Reference column that is true for stars.", default="is_star"
    )
    referenceMagColumn = pexConfig.Field[str](
        doc="Reference magnitude column ('{band}' replaced by the label's band); empty: no magnitude check.",
        default="",
    )
    referenceUnmatched = pexConfig.ChoiceField[str](
        doc="Sources without a reference match (classSource='reference').",
        default="drop",
        allowed={
            "drop": "no label (the model learns them as background)",
            "extendedness": "keep them, classed by the object table's extendedness",
        },
    )
    minArea = pexConfig.Field[int](doc="Smallest footprint kept (pixels).", default=1)
    maxNoDataFraction = pexConfig.Field[float](
        doc="Write no labels for a patch with more than this fraction of pixels without data.", default=0.3
    )
    invalidMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes of pixels without data.", default=["NO_DATA"]
    )
    saturatedPlanes = pexConfig.ListField[str](doc="Mask planes setting flag_saturated.", default=["SAT"])
    edgeMargin = pexConfig.Field[int](
        doc="flag_patch_edge when a footprint comes within this many pixels of the border.", default=0
    )
    idColumn = pexConfig.Field[str](doc="Object-table id joined to scarlet source ids.", default="objectId")
    refBand = pexConfig.Field[str](doc="Band of the magnitudes; empty: each object's refBand.", default="")
    refBandColumn = pexConfig.Field[str](doc="Object-table reference band column.", default="refBand")
    fluxColumn = pexConfig.Field[str](
        doc="Object-table flux column (nJy), '{band}' replaced by the band.", default="{band}_cModelFlux"
    )
    primaryColumn = pexConfig.Field[str](
        doc="Object-table column copied to is_primary.", default="detect_isPrimary"
    )
    doWriteCoco = pexConfig.Field[bool](
        doc="Also write the labels as a COCO ground-truth dict (deepdisc_labels_coco).", default=False
    )

    def label_config(self) -> LabelConfig:
        """The core `~lsst.meas.extensions.deepdisc.core.labels.LabelConfig` of these settings."""
        return LabelConfig(
            threshold_mode=self.thresholdMode,
            model_threshold=self.modelThreshold,
            sigma_threshold=self.sigmaThreshold,
            detection_weighting=self.detectionWeighting,
            clip_to_blend_box=self.clipToBlendBox,
            class_source=self.classSource,
            extendedness_column=self.extendednessColumn,
            extendedness_threshold=self.extendednessThreshold,
            class_names=tuple(self.classNames),
            reference_match_radius_arcsec=self.referenceMatchRadius,
            reference_max_delta_mag=self.referenceMaxDeltaMag,
            reference_ra_column=self.referenceRaColumn,
            reference_dec_column=self.referenceDecColumn,
            reference_star_column=self.referenceStarColumn,
            reference_mag_column=self.referenceMagColumn,
            reference_unmatched=self.referenceUnmatched,
            min_area=self.minArea,
            max_no_data_fraction=self.maxNoDataFraction,
            invalid_planes=tuple(self.invalidMaskPlanes),
            saturated_planes=tuple(self.saturatedPlanes),
            edge_margin=self.edgeMargin,
            id_column=self.idColumn,
            ref_band=self.refBand,
            ref_band_column=self.refBandColumn,
            flux_column=self.fluxColumn,
            primary_column=self.primaryColumn,
        )

    @override
    def validate(self) -> None:
        super().validate()
        try:
            self.label_config()
        except ValueError as err:
            raise pexConfig.FieldValidationError(
                BuildDeepDiscLabelsConfig.thresholdMode, self, f"inconsistent label settings: {err}"
            ) from err


class BuildDeepDiscLabelsTask(pipeBase.PipelineTask):
    """Build DeepDISC training labels of a patch from its scarlet models, coadds and object table.

    Each scarlet source becomes one label: its rendered observed-PSF model thresholded into a footprint,
    a star/galaxy class from the object table's extendedness (or a reference catalog), the reference-band
    magnitude and the blendedness of the models.  See `~lsst.meas.extensions.deepdisc.core.labels`.
    """

    ConfigClass = BuildDeepDiscLabelsConfig
    _DefaultName = "buildDeepDiscLabels"
    config: BuildDeepDiscLabelsConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        # Models first: their bands decide which coadds are read.
        models = scarlet_models_from_butler(butlerQC.get(inputRefs.scarletModels))
        image = read_coadds(
            butlerQC,
            inputRefs.coadds,
            list(models.bands),
            self.config.coaddStorageClass,
            "the scarlet models (fitted in bands " + "".join(models.bands) + ")",
        )
        objects = butlerQC.get(inputRefs.objects)
        reference = butlerQC.get(inputRefs.reference) if self.config.classSource == "reference" else None
        data_id = butlerQC.quantum.dataId
        tract, patch = int(data_id["tract"]), int(data_id["patch"])
        result = self.run(image, models, objects, reference=reference, tract=tract, patch=patch)
        butlerQC.put(to_arrow(result.labels), outputRefs.labels)
        if self.config.doWriteCoco:
            butlerQC.put(result.coco, outputRefs.labelsCoco)

    def run(
        self,
        image: MultibandImage,
        models: ScarletModelData,
        objects: Table,
        reference: Table | None = None,
        tract: int = 0,
        patch: int = 0,
    ) -> pipeBase.Struct:
        """Build the labels of one patch.

        Parameters
        ----------
        image : `MultibandImage`
            The coadd patch (every model band present).
        models : `~lsst.meas.extensions.deepdisc.core.scarlet_io.ScarletModelData`
            Its scarlet models.
        objects : `astropy.table.Table`
            Its object table.
        reference : `astropy.table.Table`, optional
            Reference catalog, for ``classSource='reference'``.
        tract, patch : `int`
            Recorded in the table metadata and the COCO image name.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``labels`` (`astropy.table.Table`) and ``coco`` (`dict`, or `None` unless ``doWriteCoco``).
        """
        start = time.perf_counter()
        labels = build_labels(image, models, objects, config=self.config.label_config(), reference=reference)
        labels.meta["tract"] = tract
        labels.meta["patch"] = patch
        coco = None
        if self.config.doWriteCoco:
            coco = labels_to_coco(labels, image, file_name=f"tract{tract}_patch{patch}")
        self._record(labels, time.perf_counter() - start, tract, patch)
        return pipeBase.Struct(labels=labels, coco=coco)

    def _record(self, labels: Table, seconds: float, tract: int, patch: int) -> None:
        """Counts in the task metadata, and one log line."""
        reason = labels.meta.get("skipped_reason", "")
        if reason:
            self.log.warning("No labels for tract=%d patch=%d: %s.", tract, patch, reason)
        counts: dict[str, int] = {}
        if len(labels):
            names, numbers = np.unique(np.asarray(labels["class_name"], dtype=str), return_counts=True)
            counts = {str(name): int(number) for name, number in zip(names, numbers)}
        dropped = {key: int(value) for key, value in labels.meta.get("n_dropped", {}).items()}
        self.metadata["n_labels"] = len(labels)
        self.metadata["skipped"] = bool(reason)
        self.metadata["no_data_fraction"] = float(labels.meta.get("no_data_fraction", float("nan")))
        for name, value in counts.items():
            self.metadata[f"n_{name}"] = value
        for name, value in dropped.items():
            self.metadata[f"n_dropped_{name}"] = value
        self.metadata["total_seconds"] = seconds
        self.log.info(
            "Built %d labels %s for tract=%d patch=%d in %.1f s (dropped: %s).",
            len(labels),
            counts,
            tract,
            patch,
            seconds,
            {key: value for key, value in dropped.items() if value},
        )
