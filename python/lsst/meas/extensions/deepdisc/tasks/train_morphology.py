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
"""DeepDiscTrainMorphologyTask: train a morphology classifier on matched labels and the coadds.

One quantum over every patch the query selects (like `.train.DeepDiscTrainTask`).  For each patch the task
reads ``deepdisc_morphology_labels`` (`.morphology_labels`) and the coadds, cuts the labelled galaxies'
inputs (`..core.morphology.catalog_cutouts`, the same function inference uses) and drops the image; then it
trains the classifier (`..core.morphology.train_classifier`) with the patches of ``validationTracts`` held out
for model selection, and writes the package ``deepdisc_morphology_model``, the per-epoch history and the
validation confusion matrix.
"""

from __future__ import annotations

__all__ = [
    "DeepDiscTrainMorphologyConfig",
    "DeepDiscTrainMorphologyConnections",
    "DeepDiscTrainMorphologyTask",
]

import time
from collections import defaultdict
from typing import Any, override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import MORPHOLOGY_DATASET_TYPE, MORPHOLOGY_STORAGE_CLASS
from ..butler.tables import to_arrow
from ..core.inference import select_device
from ..core.morphology import (
    ClassifierTrainingConfig,
    CutoutConfig,
    MorphologyPackage,
    catalog_cutouts,
    class_index,
    classify,
    evaluate_classification,
    train_classifier,
)
from ..core.plots import confusion_matrix_figure
from ..core.threads import quantum_threads, torch_cpu_settings
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)
from .device import check_device, device_field

_PATCH_DIMENSIONS = ("tract", "patch", "skymap")


class DeepDiscTrainMorphologyConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=(),
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `DeepDiscTrainMorphologyTask`."""

    labels = cT.Input(
        doc="Matched morphology labels of every patch (BuildMorphologyLabelsTask).",
        name="deepdisc_morphology_labels",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
        multiple=True,
    )
    coadds = coadd_input_connection("Per-band coadds the cutouts are cut from (one patch at a time).")
    model = cT.Output(
        doc="The trained classifier; DeepDiscMorphologyTask takes it as its prerequisite input.",
        name=MORPHOLOGY_DATASET_TYPE,
        storageClass=MORPHOLOGY_STORAGE_CLASS,
        dimensions=(),
    )
    trainingHistory = cT.Output(
        doc="One row per epoch: loss, training and validation accuracies, learning rate, seconds.",
        name="deepdisc_morphology_history",
        storageClass="ArrowAstropy",
        dimensions=(),
    )
    confusionPlot = cT.Output(
        doc="Confusion matrix of the validation galaxies.",
        name="deepdisc_morphology_confusion_plot",
        storageClass="Plot",
        dimensions=(),
    )

    def __init__(self, *, config: DeepDiscTrainMorphologyConfig) -> None:
        super().__init__(config=config)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)


class DeepDiscTrainMorphologyConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=DeepDiscTrainMorphologyConnections
):
    """Configuration of `DeepDiscTrainMorphologyTask`."""

    coaddStorageClass = coadd_storage_class_field()
    packageName = pexConfig.Field[str](doc="Name of the package written.", default="deepdisc-morphology")
    packageVersion = pexConfig.Field[str](doc="Version of the package written.", default="1")
    bands = pexConfig.ListField[str](doc="Bands of the input planes, in order.", default=list("ugrizy"))
    classNames = pexConfig.ListField[str](
        doc="Classes in Hubble-sequence order (neighbours in this list are 'neighbouring types').",
        default=["E", "S0", "Sab", "Sc", "Sdm", "Im"],
    )
    architecture = pexConfig.ChoiceField[str](
        doc="Classifier architecture.",
        default="compact_cnn",
        allowed={
            "compact_cnn": "compact CNN, fast on a CPU",
            "swin": "shifted-window transformer (torchvision SwinTransformer)",
        },
    )
    architectureParams = pexConfig.DictField[str, int](
        doc="Integer parameters of the architecture (compact_cnn: width; swin: embed_dim, window_size, "
        "patch_size).",
        default={},
    )
    cutoutSize = pexConfig.Field[int](doc="Cutout side (pixels).", default=CutoutConfig.size)
    maxBinning = pexConfig.Field[int](doc="Largest cutout binning.", default=CutoutConfig.max_binning)
    maskDilation = pexConfig.Field[int](
        doc="Object mask dilation radius (pixels).", default=CutoutConfig.mask_dilation
    )
    magnitudeColumn = pexConfig.Field[str](
        doc="Label column of the magnitude cut (ref_<reference column>); None: no cut.",
        default="ref_mag_i",
        optional=True,
    )
    maxMagnitude = pexConfig.Field[float](doc="Faintest labelled galaxy trained on.", default=23.0)
    validationTracts = pexConfig.ListField[int](
        doc="Tracts held out for model selection; empty: every 7th galaxy by id.", default=[]
    )
    epochs = pexConfig.Field[int](doc="Training epochs.", default=ClassifierTrainingConfig.epochs)
    batchSize = pexConfig.Field[int](doc="Cutouts per step.", default=ClassifierTrainingConfig.batch_size)
    learningRate = pexConfig.Field[float](
        doc="Peak AdamW learning rate.", default=ClassifierTrainingConfig.learning_rate
    )
    imbalance = pexConfig.ChoiceField[str](
        doc="Class-imbalance handling.",
        default=ClassifierTrainingConfig.imbalance,
        allowed={
            "none": "plain cross-entropy",
            "balanced_sampling": "every class drawn equally often",
            "loss_weights": "cross-entropy weighted by inverse class frequency",
        },
    )
    seed = pexConfig.Field[int](doc="Seed of the weights and the sampling.", default=0)
    bandDropout = pexConfig.Field[float](
        doc="Probability that a training cutout loses a random subset of its bands (at least one kept); "
        "above 0 the package records minBands and classifies data with fewer bands.",
        default=0.0,
    )
    minBands = pexConfig.Field[int](
        doc="Fewest bands the package allows at inference when bandDropout > 0.", default=3
    )
    device = device_field()
    numThreads = pexConfig.Field[int](doc="Torch CPU threads; 0: the quantum's cores.", default=0)

    @override
    def validate(self) -> None:
        super().validate()
        check_device(self)
        if len(set(self.classNames)) != len(self.classNames) or len(self.classNames) < 2:
            raise pexConfig.FieldValidationError(
                DeepDiscTrainMorphologyConfig.classNames,
                self,
                "classNames must be at least two distinct names",
            )

    def cutout_config(self) -> CutoutConfig:
        """The cutout settings (recorded in the package, reused at inference)."""
        return CutoutConfig(
            size=self.cutoutSize, max_binning=self.maxBinning, mask_dilation=self.maskDilation
        )

    def classifier(self) -> dict[str, Any]:
        """The classifier description written into the package."""
        return {
            "architecture": self.architecture,
            "in_channels": len(self.bands) + 2,
            "num_classes": len(self.classNames),
            **dict(self.architectureParams),
        }


class DeepDiscTrainMorphologyTask(pipeBase.PipelineTask):
    """Train a Hubble-type classifier from labelled detections."""

    ConfigClass = DeepDiscTrainMorphologyConfig
    _DefaultName = "deepDiscTrainMorphology"
    config: DeepDiscTrainMorphologyConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        coadds_by_patch: dict[tuple[int, int], list[Any]] = defaultdict(list)
        for ref in inputRefs.coadds:
            coadds_by_patch[(int(ref.dataId["tract"]), int(ref.dataId["patch"]))].append(ref)
        parts = []
        start = time.perf_counter()
        for index, ref in enumerate(
            sorted(inputRefs.labels, key=lambda r: (r.dataId["tract"], r.dataId["patch"]))
        ):
            key = (int(ref.dataId["tract"]), int(ref.dataId["patch"]))
            labels = self.select_labels(butlerQC.get(ref))
            if len(labels) == 0:
                continue
            image = read_coadds(
                butlerQC,
                coadds_by_patch[key],
                list(self.config.bands),
                self.config.coaddStorageClass,
                "morphology training",
            )
            cutouts, _ = catalog_cutouts(image, labels, self.config.cutout_config())
            del image
            parts.append((key, labels, cutouts))
            self.log.info(
                "Patch %d/%d (tract %d, patch %d): %d labelled galaxies; %.1f s elapsed.",
                index + 1,
                len(inputRefs.labels),
                *key,
                len(labels),
                time.perf_counter() - start,
            )
        result = self.run(
            parts, num_threads=quantum_threads(self.config.numThreads, butlerQC.resources.num_cores)
        )
        butlerQC.put(result.model, outputRefs.model)
        butlerQC.put(to_arrow(result.trainingHistory), outputRefs.trainingHistory)
        butlerQC.put(result.confusionPlot, outputRefs.confusionPlot)

    def select_labels(self, labels: Table) -> Table:
        """Labels of the configured classes (others are dropped), within the magnitude cut."""
        keep = np.isin(np.asarray(labels["label"]).astype(str), list(self.config.classNames))
        column = self.config.magnitudeColumn
        if column is not None:
            if column not in labels.colnames:
                raise KeyError(
                    f"the labels lack magnitudeColumn {column!r}; they have {labels.colnames} "
                    "(set magnitudeColumn=None for no cut)"
                )
            keep &= np.asarray(labels[column], dtype=float) <= self.config.maxMagnitude
        return labels[keep]

    def run(
        self, parts: list[tuple[tuple[int, int], Table, np.ndarray]], num_threads: int | None = None
    ) -> pipeBase.Struct:
        """Train on the cutouts of every patch.

        Parameters
        ----------
        parts : `list`
            Per patch: ``((tract, patch), labels, cutouts)``.
        num_threads : `int`, optional
            Torch CPU threads.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``model`` (`MorphologyPackage`), ``trainingHistory`` (`astropy.table.Table`), ``confusionPlot``
            (`matplotlib.figure.Figure`), ``evaluation`` (validation `MorphologyEvaluation`).

        Raises
        ------
        RuntimeError
            If there is no training or no validation galaxy.
        """
        config = self.config
        if not parts:
            raise RuntimeError("no labelled galaxy in the selected patches: nothing to train on")
        cutouts = np.concatenate([p[2] for p in parts])
        labels = np.concatenate([np.asarray(p[1]["label"]).astype(str) for p in parts])
        ids = np.concatenate([np.asarray(p[1]["id"], dtype=np.int64) for p in parts])
        tracts = np.concatenate([np.full(len(p[1]), p[0][0]) for p in parts])
        targets = np.asarray(class_index(list(config.classNames), list(labels)), dtype=np.int64)
        if config.validationTracts:
            validation = np.isin(tracts, list(config.validationTracts))
        else:
            validation = (ids % 7) == 0
        if validation.all() or not validation.any():
            raise RuntimeError(
                f"{int(validation.sum())} of {len(validation)} galaxies are for validation; training and "
                "validation need galaxies (check validationTracts)"
            )
        counts = {name: int(np.sum(labels[~validation] == name)) for name in config.classNames}
        self.log.info(
            "Training a %s on %d galaxies (%s), validating on %d.",
            config.architecture,
            int((~validation).sum()),
            counts,
            int(validation.sum()),
        )
        training_config = ClassifierTrainingConfig(
            epochs=config.epochs,
            batch_size=config.batchSize,
            learning_rate=config.learningRate,
            imbalance=config.imbalance,
            seed=config.seed,
            band_dropout=config.bandDropout,
        )
        device = select_device(config.device)
        threads = config.numThreads if num_threads is None else num_threads
        with torch_cpu_settings(threads, log=self.log):
            model, history = train_classifier(
                config.classifier(),
                cutouts[~validation],
                targets[~validation],
                training_config,
                validation=(cutouts[validation], targets[validation]),
                device=device,
                log=self.log,
            )
            probabilities = classify(model, cutouts[validation], device=device)
        part_tables = [p[1] for p in parts]
        size = _column_or_none(part_tables, "ref_size")
        magnitude = _column_or_none(part_tables, config.magnitudeColumn)
        evaluation = evaluate_classification(
            probabilities,
            targets[validation],
            list(config.classNames),
            size=None if size is None else size[validation],
            magnitude=None if magnitude is None else magnitude[validation],
        )
        self.log.info("Validation: %s", {k: round(v, 3) for k, v in evaluation.summary().items()})
        package = MorphologyPackage(
            name=config.packageName,
            version=config.packageVersion,
            classifier=config.classifier(),
            state_dict=model.state_dict(),
            bands=list(config.bands),
            class_names=list(config.classNames),
            cutout=config.cutout_config(),
            provenance={
                "training": training_config.to_dict(),
                "n_train": int((~validation).sum()),
                "n_validation": int(validation.sum()),
                "train_class_counts": counts,
                "validation_tracts": list(config.validationTracts),
                "max_magnitude": config.maxMagnitude,
            },
            metrics={f"validation_{k}": float(v) for k, v in evaluation.summary().items()},
            min_bands=min(config.minBands, len(config.bands)) if config.bandDropout > 0 else None,
        )
        history_table = Table(
            rows=[tuple(entry.get(k, np.nan) for k in _HISTORY) for entry in history], names=_HISTORY
        )
        figure = confusion_matrix_figure(evaluation.confusion, list(config.classNames))
        return pipeBase.Struct(
            model=package, trainingHistory=history_table, confusionPlot=figure, evaluation=evaluation
        )


_HISTORY = ("epoch", "loss", "train_top1", "val_top1", "val_top2", "lr", "seconds")


def _column_or_none(tables: list[Table], name: str | None) -> np.ndarray | None:
    if name is None or any(name not in table.colnames for table in tables):
        return None
    return np.concatenate([np.asarray(table[name], dtype=float) for table in tables])
