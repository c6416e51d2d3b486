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
"""BuildMorphologyLabelsTask: a labelled catalog (positions plus a class) matched to our detections.

Each labelled object is paired with the nearest ``object_deepdisc`` detection of a classified class within
``matchRadius`` (one to one, `..core.morphology.match_labels`); the output ``deepdisc_morphology_labels``
keeps, per pair, the detection's id, footprint and centroid (the classifier's object mask comes from our own
footprints, in training as at inference), the label and any extra reference columns (``ref_<name>``, e.g. a
magnitude or a size for the per-bin accuracy).

The reference is any ``ArrowAstropy`` table with sky positions and a class column.  In the simulated
repositories it is ``truth_patch`` (class column ``morph_type``, presets with morphology); a real labelled
catalog (Galaxy Zoo, a visual classification) is put into the Butler as a dataset of its own, per tract or
with no dimensions (``referenceDimensions``), see the morphology documentation.
"""

from __future__ import annotations

__all__ = [
    "BuildMorphologyLabelsConfig",
    "BuildMorphologyLabelsConnections",
    "BuildMorphologyLabelsTask",
]

from typing import override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.tables import to_arrow
from ..core.morphology import match_labels, select_galaxies
from .reference_inputs import reference_dimensions_field, use_reference_dimensions


class BuildMorphologyLabelsConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates={"referenceName": "truth_patch"},
):
    """Connections of `BuildMorphologyLabelsTask`."""

    catalog = cT.Input(
        doc="DeepDISC detections with footprints (object_deepdisc).",
        name="object_deepdisc",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    reference = cT.Input(
        doc="Labelled catalog: sky positions and a class column (truth_patch in simulated repositories).",
        name="{referenceName}",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    labels = cT.Output(
        doc="One row per labelled detection: id, footprint, centroid, label, extra reference columns.",
        name="deepdisc_morphology_labels",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config: BuildMorphologyLabelsConfig) -> None:
        super().__init__(config=config)
        self.reference = use_reference_dimensions(self.reference, config.referenceDimensions)


class BuildMorphologyLabelsConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=BuildMorphologyLabelsConnections
):
    """Configuration of `BuildMorphologyLabelsTask`."""

    referenceDimensions = reference_dimensions_field()
    raColumn = pexConfig.Field[str](doc="Reference right ascension column (degrees).", default="ra")
    decColumn = pexConfig.Field[str](doc="Reference declination column (degrees).", default="dec")
    classColumn = pexConfig.Field[str](doc="Reference class column.", default="morph_type")
    ignoreLabels = pexConfig.ListField[str](
        doc="Labels that are no class (stars have morph_type '' in truth_patch).", default=[""]
    )
    extraColumns = pexConfig.ListField[str](
        doc="Reference columns copied as ref_<name> (for accuracy against size and magnitude); missing "
        "ones are an error.",
        default=["mag_i", "size"],
    )
    matchRadius = pexConfig.Field[float](doc="Largest label-detection separation (arcsec).", default=0.6)
    classes = pexConfig.ListField[str](doc="Detection classes that may carry a label.", default=["galaxy"])

    @override
    def validate(self) -> None:
        super().validate()
        if not self.matchRadius > 0:
            raise pexConfig.FieldValidationError(
                BuildMorphologyLabelsConfig.matchRadius, self, "matchRadius must be positive"
            )


class BuildMorphologyLabelsTask(pipeBase.PipelineTask):
    """Match a labelled catalog to a patch's detections."""

    ConfigClass = BuildMorphologyLabelsConfig
    _DefaultName = "buildMorphologyLabels"
    config: BuildMorphologyLabelsConfig

    def run(self, catalog: Table, reference: Table) -> pipeBase.Struct:
        """Match the labelled objects to the detections.

        Parameters
        ----------
        catalog : `astropy.table.Table`
            ``object_deepdisc`` of the patch.
        reference : `astropy.table.Table`
            The labelled catalog (objects outside the patch simply find no detection).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``labels`` (`astropy.table.Table`).

        Raises
        ------
        KeyError
            If the reference lacks a configured column (the message lists its columns).
        """
        config = self.config
        needed = [config.raColumn, config.decColumn, config.classColumn, *config.extraColumns]
        missing = [name for name in needed if name not in reference.colnames]
        if missing:
            raise KeyError(
                f"the reference catalog lacks column(s) {missing}; it has {reference.colnames} "
                "(set raColumn, decColumn, classColumn, extraColumns)"
            )
        label = np.asarray(reference[config.classColumn]).astype(str)
        reference = reference[~np.isin(label, list(config.ignoreLabels))]
        candidates = catalog[select_galaxies(catalog, list(config.classes), "i", None)]
        match = match_labels(
            np.asarray(candidates["coord_ra"], dtype=float),
            np.asarray(candidates["coord_dec"], dtype=float),
            np.asarray(reference[config.raColumn], dtype=float),
            np.asarray(reference[config.decColumn], dtype=float),
            config.matchRadius,
        )
        rows = candidates[match.detection]
        labels = Table()
        for name in ("id", "coord_ra", "coord_dec", "centroid_x", "centroid_y", "footprint", "class_name"):
            labels[name] = rows[name]
        labels["label"] = np.asarray(reference[config.classColumn][match.label]).astype(str)
        labels["match_distance"] = match.distance
        labels["match_distance"].unit = "arcsec"
        for name in config.extraColumns:
            labels[f"ref_{name}"] = reference[name][match.label]
        self.log.info(
            "%d of %d labelled objects matched a detection within %.2f arcsec (%d candidate detections).",
            len(labels),
            len(reference),
            config.matchRadius,
            len(candidates),
        )
        return pipeBase.Struct(labels=labels)

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        inputs = butlerQC.get(inputRefs)
        result = self.run(inputs["catalog"], inputs["reference"])
        butlerQC.put(to_arrow(result.labels), outputRefs.labels)
