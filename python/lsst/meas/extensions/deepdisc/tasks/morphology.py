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
"""DeepDiscMorphologyTask: Hubble-type classification of the galaxies of ``object_deepdisc``.

For every galaxy of the patch's detection catalog brighter than ``maxMagnitude`` the task cuts a multi-band
HDR cutout from the coadds, adds the NO_DATA plane and the galaxy's own footprint (dilated) as input planes
(`..core.morphology.make_cutouts`), runs the classifier of a ``deepdisc_morphology_model`` package and
writes ``object_deepdisc_morphology``: one row per classified galaxy, joined to ``object_deepdisc`` by
``id`` (`..core.morphology.morphology_table`).  Unclassified rows (stars, artifacts, faint galaxies) have no
row, so a left join gives them masked morphology columns.
"""

from __future__ import annotations

__all__ = ["DeepDiscMorphologyConfig", "DeepDiscMorphologyConnections", "DeepDiscMorphologyTask"]

import time
from typing import override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import MORPHOLOGY_DATASET_TYPE, MORPHOLOGY_STORAGE_CLASS
from ..butler.tables import to_arrow
from ..core.inference import select_device
from ..core.morphology import (
    MorphologyPackage,
    catalog_cutouts,
    classify,
    morphology_table,
    select_galaxies,
)
from ..core.multiband import MissingBandError, MultibandImage
from ..core.threads import quantum_threads, torch_cpu_settings
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)
from .device import check_device, device_field


class DeepDiscMorphologyConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `DeepDiscMorphologyTask`: detections, coadds and a classifier in, a table out."""

    catalog = cT.Input(
        doc="DeepDISC detections with footprints (object_deepdisc; only the columns used are read).",
        name="object_deepdisc",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
        deferLoad=True,
    )
    coadds = coadd_input_connection("Per-band coadds the cutouts are cut from.")
    model = cT.PrerequisiteInput(
        doc="Morphology classifier package, found in an input collection such as pretrained_models/<name>.",
        name=MORPHOLOGY_DATASET_TYPE,
        storageClass=MORPHOLOGY_STORAGE_CLASS,
        dimensions=(),
    )
    morphology = cT.Output(
        doc="One row per classified galaxy: id (object_deepdisc), top class, runner-up, probabilities.",
        name="object_deepdisc_morphology",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config: DeepDiscMorphologyConfig) -> None:
        super().__init__(config=config)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)


class DeepDiscMorphologyConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=DeepDiscMorphologyConnections
):
    """Configuration of `DeepDiscMorphologyTask`."""

    coaddStorageClass = coadd_storage_class_field()
    bands = pexConfig.ListField[str](
        doc="Bands to give the classifier, a subset of its bands.  Empty: all of its bands the data have (a "
        "classifier trained with band dropout, min_bands in its package, runs on fewer; absent bands are "
        "zero planes).",
        default=[],
    )
    classes = pexConfig.ListField[str](
        doc="Detection classes (object_deepdisc class_name) to classify.", default=["galaxy"]
    )
    selectionBand = pexConfig.Field[str](doc="Band of the magnitude cut.", default="i")
    maxMagnitude = pexConfig.Field[float](
        doc="Classify galaxies with a footprint magnitude in selectionBand up to this (None: all).  "
        "Hubble types need resolved, bright galaxies: classifiers are trained and validated at i < 22-23.",
        default=23.0,
        optional=True,
    )
    minFootprintArea = pexConfig.Field[int](doc="Smallest footprint classified (pixels).", default=20)
    batchSize = pexConfig.Field[int](doc="Cutouts per forward pass.", default=256)
    device = device_field()
    numThreads = pexConfig.Field[int](
        doc="Torch CPU threads; 0: pipetask's --cores-per-quantum, else $OMP_NUM_THREADS or the free cores.",
        default=0,
    )
    invalidMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes whose pixels carry no data (the cutouts' no_data plane).", default=["NO_DATA"]
    )

    @override
    def validate(self) -> None:
        super().validate()
        check_device(self)
        if self.batchSize < 1:
            raise pexConfig.FieldValidationError(
                DeepDiscMorphologyConfig.batchSize, self, "batchSize must be positive"
            )


class DeepDiscMorphologyTask(pipeBase.PipelineTask):
    """Classify the galaxies of a patch's detection catalog into Hubble types."""

    ConfigClass = DeepDiscMorphologyConfig
    _DefaultName = "deepDiscMorphology"
    config: DeepDiscMorphologyConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        package: MorphologyPackage = butlerQC.get(inputRefs.model)
        catalog = butlerQC.get(inputRefs.catalog).get(parameters={"columns": self.catalog_columns()})
        selected = self.select(catalog)
        if not selected.any():
            # Nothing to classify: no coadd is read, the table is empty (with the full schema).
            result = self.run(catalog[selected], None, package)
        else:
            available = [str(ref.dataId["band"]) for ref in inputRefs.coadds]
            image = read_coadds(
                butlerQC,
                inputRefs.coadds,
                self.select_bands(package, available),
                self.config.coaddStorageClass,
                f"morphology model {package.name!r}",
            )
            result = self.run(
                catalog[selected],
                image,
                package,
                num_threads=quantum_threads(self.config.numThreads, butlerQC.resources.num_cores),
            )
        butlerQC.put(to_arrow(result.morphology), outputRefs.morphology)

    def select_bands(self, package: MorphologyPackage, available: list[str]) -> list[str]:
        """Bands to read, in the classifier's order (``config.bands`` restricts them).

        Raises
        ------
        MissingBandError
            If the data (or ``config.bands``) cannot serve the classifier.
        """
        if self.config.bands:
            unknown = [band for band in self.config.bands if band not in package.bands]
            if unknown:
                raise MissingBandError(
                    f"config.bands {unknown} are not bands of the morphology model {package.name!r} "
                    f"({package.bands})"
                )
            available = [band for band in available if band in self.config.bands]
        return package.usable_bands(available)

    def catalog_columns(self) -> list[str]:
        """The ``object_deepdisc`` columns the selection and the cutouts read."""
        columns = [
            "id",
            "class_name",
            "is_artifact",
            "footprint_area",
            "footprint",
            "centroid_x",
            "centroid_y",
        ]
        if self.config.maxMagnitude is not None:
            columns.append(f"{self.config.selectionBand}_footprintFlux")
        return columns

    def select(self, catalog: Table) -> np.ndarray:
        """Rows of ``catalog`` to classify (`~..core.morphology.select_galaxies` with this config)."""
        return select_galaxies(
            catalog,
            classes=list(self.config.classes),
            band=self.config.selectionBand,
            max_magnitude=self.config.maxMagnitude,
            min_area=self.config.minFootprintArea,
        )

    def run(
        self,
        galaxies: Table,
        image: MultibandImage | None,
        package: MorphologyPackage,
        num_threads: int | None = None,
    ) -> pipeBase.Struct:
        """Classify the selected galaxies.

        Parameters
        ----------
        galaxies : `astropy.table.Table`
            The rows of ``object_deepdisc`` to classify (`select`).
        image : `MultibandImage` or `None`
            The patch in the package's bands (`None` only if there is no galaxy).
        package : `MorphologyPackage`
            The classifier.
        num_threads : `int`, optional
            Torch CPU threads (default ``config.numThreads``).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``morphology`` (`astropy.table.Table`, `~..core.morphology.morphology_table`).

        Raises
        ------
        MissingBandError
            If the image lacks a band of the classifier.
        """
        start = time.perf_counter()
        if len(galaxies) == 0:
            self.log.info(
                "No galaxy passes the selection (classes %s, %s <= %s); writing an empty table.",
                list(self.config.classes),
                self.config.selectionBand,
                self.config.maxMagnitude,
            )
            empty = morphology_table(
                np.zeros(0, np.int64),
                np.zeros((0, len(package.class_names))),
                package.class_names,
                np.zeros(0, np.int16),
            )
            return pipeBase.Struct(morphology=empty)
        if image is None:
            raise ValueError("galaxies to classify but no image")
        used = self.select_bands(package, list(image.bands))
        if used != package.bands:
            self.log.info(
                "Classifying on bands %s of the model's %s (absent: zero planes).", used, package.bands
            )
        image = image.select_bands(used)
        invalid = image.invalid_pixels(list(self.config.invalidMaskPlanes)).any(axis=0)
        cutouts, binning = catalog_cutouts(
            image, galaxies, package.cutout, invalid=invalid, bands=package.bands
        )
        cut_seconds = time.perf_counter() - start
        device = select_device(self.config.device)
        threads = self.config.numThreads if num_threads is None else num_threads
        with torch_cpu_settings(threads, log=self.log):
            model = package.build_model(device)
            probabilities = classify(model, cutouts, batch_size=self.config.batchSize, device=device)
        table = morphology_table(np.asarray(galaxies["id"]), probabilities, package.class_names, binning)
        seconds = time.perf_counter() - start
        self.metadata["n_classified"] = len(table)
        self.metadata["seconds"] = seconds
        counts = {name: int(np.sum(table["morph_class"] == name)) for name in package.class_names}
        self.log.info(
            "Classified %d galaxies in %.1f s (cutouts %.1f s, %.0f galaxies/s on %s): %s",
            len(table),
            seconds,
            cut_seconds,
            len(table) / max(seconds, 1e-9),
            device,
            ", ".join(f"{name} {count}" for name, count in counts.items()),
        )
        return pipeBase.Struct(morphology=table)
