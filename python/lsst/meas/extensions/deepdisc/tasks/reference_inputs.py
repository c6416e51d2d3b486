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
"""What the tasks that read a labelled catalog share: where it lives and how it is read.

A labelled catalog (positions plus a class or star flag) is ``truth_patch`` in simulated repositories, one
table per patch; a real one (Galaxy Zoo, a spectroscopic star catalog) is put into the Butler per tract or as
one table with no dimensions.  ``referenceDimensions`` says which, and `use_reference_dimensions` adapts the
connection.  The second-stage training tasks read their inputs with `read_catalogs_and_references` and
assemble the labelled rows of every patch, with band-subset copies, with `labelled_patches`; their connections
and configs derive from `SecondStageTrainingConnections` and `SecondStageTrainingConfig`, the tasks from
`SecondStageTrainingTask`.
"""

from __future__ import annotations

__all__ = [
    "REFERENCE_DIMENSIONS",
    "SecondStageTrainingConfig",
    "SecondStageTrainingConnections",
    "SecondStageTrainingTask",
    "labelled_patches",
    "read_catalogs_and_references",
    "reference_dimensions_field",
    "use_reference_dimensions",
]

import dataclasses
from collections.abc import Callable
from typing import Any, override

import numpy as np
from astropy.table import Table, vstack

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..core.star_galaxy import measured_bands
from ..core.threads import quantum_threads, torch_cpu_settings

REFERENCE_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "patch": ("tract", "patch", "skymap"),
    "tract": ("tract", "skymap"),
    "none": (),
}
"""``referenceDimensions`` value -> the labelled catalog's dataset dimensions."""


def reference_dimensions_field() -> pexConfig.ChoiceField:
    """The ``referenceDimensions`` config field (one per task config class)."""
    return pexConfig.ChoiceField[str](
        doc="Dimensions of the labelled catalog dataset.",
        default="patch",
        allowed={
            "patch": "one table per (tract, patch), as truth_patch",
            "tract": "one table per tract",
            "none": "one table for the whole repository (a survey-wide labelled catalog)",
        },
    )


def use_reference_dimensions(connection: cT.Input, choice: str) -> cT.Input:
    """The labelled-catalog connection with the dimensions of ``referenceDimensions`` (if they differ)."""
    dimensions = REFERENCE_DIMENSIONS[choice]
    if set(connection.dimensions) == set(dimensions):
        return connection
    return dataclasses.replace(connection, dimensions=dimensions)


def read_catalogs_and_references(
    butlerQC: pipeBase.QuantumContext, inputRefs: pipeBase.InputQuantizedConnection
) -> tuple[list[tuple[int, Table]], Table]:
    """``(tract, object_deepdisc)`` of every patch in (tract, patch) order, and the labelled catalogs stacked.

    For the second-stage training tasks, whose ``catalogs`` and ``references`` connections these are.
    """
    catalogs: list[tuple[int, Table]] = []
    for ref in sorted(inputRefs.catalogs, key=lambda r: (r.dataId["tract"], r.dataId["patch"])):
        catalogs.append((int(ref.dataId["tract"]), butlerQC.get(ref)))
    reference = vstack([butlerQC.get(ref) for ref in inputRefs.references], metadata_conflicts="silent")
    return catalogs, reference


def labelled_patches(
    catalogs: list[tuple[int, Table]],
    rows_for: Callable[[Table, list[str] | None], Table],
    is_validation: Callable[[Table, int], np.ndarray],
    bands: list[str],
    min_bands: int,
    copies: int,
    seed: int,
) -> Table:
    """The labelled rows of every patch, with band-subset copies of the training rows.

    Parameters
    ----------
    catalogs : `list` [`tuple` [`int`, `astropy.table.Table`]]
        ``(tract, catalog)`` per patch.
    rows_for : callable
        ``rows_for(catalog, absent_bands)``: a patch's labelled rows with their features (``absent_bands``
        `None`: all measured).
    is_validation : callable
        ``is_validation(rows, tract)``: which rows validate.
    bands, min_bands, copies, seed
        With ``min_bands`` below ``len(bands)``, each patch's training rows are added ``copies`` times more,
        measured without a random subset of the bands (keeping ``min_bands`` or more), as a user with
        fewer coadds has them.

    Returns
    -------
    rows : `astropy.table.Table`
        All rows, with ``validation``, ``augmented`` (a band-subset copy) and ``patch_index``.
    """
    parts = []
    for index, (tract, catalog) in enumerate(catalogs):
        part = rows_for(catalog, None)
        validation = is_validation(part, tract)
        part["validation"] = validation
        part["augmented"] = np.zeros(len(part), dtype=bool)
        part["patch_index"] = np.full(len(part), index)
        parts.append(part)
        if min_bands >= len(bands) or validation.all():
            continue
        rng = np.random.default_rng([seed, index])
        for _ in range(copies):
            kept = rng.choice(bands, size=int(rng.integers(min_bands, len(bands))), replace=False)
            copy = rows_for(catalog, [b for b in bands if b not in kept])
            copy = copy[~is_validation(copy, tract)]
            copy["validation"] = np.zeros(len(copy), dtype=bool)
            copy["augmented"] = np.ones(len(copy), dtype=bool)
            copy["patch_index"] = np.full(len(copy), index)
            parts.append(copy)
    return vstack(parts)


_PATCH_DIMENSIONS = ("tract", "patch", "skymap")


class SecondStageTrainingConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=(),
    defaultTemplates={"referenceName": "truth_patch"},
):
    """The inputs of a second-stage training task: the model's detection catalogs and a labelled catalog."""

    catalogs = cT.Input(
        doc="Detections of the model the classifier is trained for (object_deepdisc, with PSF photometry).",
        name="object_deepdisc",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
        multiple=True,
    )
    references = cT.Input(
        doc="Labelled catalog(s): sky positions, a magnitude and the task's label columns (truth_patch in "
        "simulated repositories).",
        name="{referenceName}",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
        multiple=True,
    )

    def __init__(self, *, config: pipeBase.PipelineTaskConfig) -> None:
        super().__init__(config=config)
        self.references = use_reference_dimensions(self.references, config.referenceDimensions)


class SecondStageTrainingConfig(pexConfig.Config):
    """The configuration a second-stage training task shares: labelled catalog, splits, band subsets, fit."""

    referenceDimensions = reference_dimensions_field()
    raColumn = pexConfig.Field[str](doc="Reference right ascension column (degrees).", default="ra")
    decColumn = pexConfig.Field[str](doc="Reference declination column (degrees).", default="dec")
    magColumn = pexConfig.Field[str](doc="Reference magnitude column (the bins).", default="mag_i")
    matchRadius = pexConfig.Field[float](doc="Largest label-detection separation (arcsec).", default=0.6)
    bands = pexConfig.ListField[str](
        doc="Bands whose PSF photometry the classifier reads; empty: every band the catalogs measured.",
        default=[],
    )
    validationTracts = pexConfig.ListField[int](
        doc="Tracts held out to report (and, where the task says so, to choose the threshold); empty: every "
        "5th row by id.",
        default=[],
    )
    minBands = pexConfig.Field[int](
        doc="The fewest of its bands the classifier may run on: each training patch is also used with "
        "bandSubsetCopies random subsets of minBands or more of its bands; 0: all bands, no subsets.",
        default=3,
    )
    bandSubsetCopies = pexConfig.Field[int](
        doc="Band-subset copies of each training patch (with minBands).", default=2
    )
    hiddenLayers = pexConfig.ListField[int](doc="Widths of the hidden layers.", default=[32, 32])
    ensembleSize = pexConfig.Field[int](
        doc="Networks averaged (each from its own initial weights).", default=3
    )
    thresholdFolds = pexConfig.Field[int](
        doc="Folds of training patches whose out-of-fold predictions choose the threshold.", default=4
    )
    epochs = pexConfig.Field[int](doc="Full-batch Adam epochs.", default=600)
    learningRate = pexConfig.Field[float](doc="Adam learning rate.", default=0.01)
    weightDecay = pexConfig.Field[float](doc="Adam weight decay.", default=1e-3)
    seed = pexConfig.Field[int](doc="Seed of the initial weights.", default=0)
    numThreads = pexConfig.Field[int](
        doc="Torch CPU threads; 0: the quantum's cores (pipetask --cores-per-quantum).", default=0
    )

    def validate(self) -> None:
        """Check the shared fields (a subclass adds its own checks)."""
        super().validate()
        checks = (
            ("matchRadius", self.matchRadius > 0, "matchRadius must be positive"),
            (
                "minBands",
                self.minBands >= 0 and self.bandSubsetCopies >= 0,
                "minBands and bandSubsetCopies must be >= 0",
            ),
            (
                "hiddenLayers",
                bool(self.hiddenLayers) and min(self.hiddenLayers) >= 1 and self.epochs >= 1,
                "hiddenLayers, epochs and ensembleSize must be positive",
            ),
            (
                "ensembleSize",
                self.ensembleSize >= 1,
                "hiddenLayers, epochs and ensembleSize must be positive",
            ),
        )
        for name, ok, message in checks:
            if not ok:
                raise pexConfig.FieldValidationError(getattr(type(self), name), self, message)


class SecondStageTrainingTask(pipeBase.PipelineTask):
    """What the second-stage training tasks share: the labelled rows, their splits, out-of-fold predictions.

    A subclass defines ``labelled_rows(catalog, reference, bands, absent)``, ``fit(features, labels, bands)``
    and ``run(catalogs, reference)``.
    """

    config: SecondStageTrainingConfig

    def labelled_rows(
        self, catalog: Table, reference: Table, bands: list[str], absent: list[str] | None = None
    ) -> Table:
        """One catalog's labelled rows with their ``features`` (the subclass's)."""
        raise NotImplementedError

    def fit(self, features: np.ndarray, labels: np.ndarray, bands: list[str]) -> Any:
        """A classifier fitted on labelled feature rows (the subclass's)."""
        raise NotImplementedError

    def labelled_table(
        self, catalogs: list[tuple[int, Table]], reference: Table, label_fields: tuple[str, ...] = ()
    ) -> tuple[Table, list[str], int]:
        """The labelled rows of every patch (`labelled_patches`), the bands and the fewest bands to run on.

        Raises
        ------
        KeyError
            If the reference lacks the position, magnitude or ``label_fields`` columns the config names.
        RuntimeError
            If the catalogs have no PSF photometry.
        """
        config = self.config
        fields = ("raColumn", "decColumn", *label_fields, "magColumn")
        missing = [getattr(config, f) for f in fields if getattr(config, f) not in reference.colnames]
        if missing:
            raise KeyError(
                f"the reference catalog lacks column(s) {missing}; it has {reference.colnames} "
                f"(set {', '.join(fields)})"
            )
        bands = list(config.bands) or measured_bands(catalogs[0][1])
        if not bands:
            raise RuntimeError("the catalogs have no PSF photometry (no <band>_psfFlux with values)")
        min_bands = config.minBands or len(bands)
        table = labelled_patches(
            catalogs,
            lambda catalog, absent: self.labelled_rows(catalog, reference, bands, absent),
            self.is_validation,
            bands,
            min_bands,
            config.bandSubsetCopies,
            config.seed,
        )
        return table, bands, min_bands

    def is_validation(self, rows: Table, tract: int) -> np.ndarray:
        """Which labelled rows validate: all of a validation tract's, else every 5th by id without tracts."""
        if self.config.validationTracts:
            return np.full(len(rows), tract in set(self.config.validationTracts))
        return np.asarray(rows["id"]) % 5 == 0

    def out_of_fold(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        fit_rows: np.ndarray,
        predict_rows: np.ndarray,
        patch_index: np.ndarray,
        bands: list[str],
    ) -> np.ndarray:
        """Predictions of ``predict_rows`` by classifiers fitted on the ``fit_rows`` of the other folds.

        The patches of ``fit_rows`` are dealt into ``thresholdFolds`` folds; a fold whose fitting rows lack
        either label is skipped.  NaN where not predicted.
        """
        folds = self.config.thresholdFolds
        patch_index = np.asarray(patch_index)
        patches = np.unique(patch_index[fit_rows])
        fold_of_patch = {patch: i % folds for i, patch in enumerate(patches)}
        fold = np.array([fold_of_patch.get(p, -1) for p in patch_index])
        predicted = np.full(len(features), np.nan)
        for k in range(folds):
            fit, predict = fit_rows & (fold != k), predict_rows & (fold == k)
            if not predict.any() or not labels[fit].any() or labels[fit].all():
                continue
            predicted[predict] = self.fit(features[fit], labels[fit], bands).predict(features[predict])
        return predicted

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        catalogs, reference = read_catalogs_and_references(butlerQC, inputRefs)
        threads = quantum_threads(self.config.numThreads, butlerQC.resources.num_cores)
        with torch_cpu_settings(threads, log=self.log):
            outputs = self.run(catalogs, reference)
        butlerQC.put(outputs, outputRefs)
