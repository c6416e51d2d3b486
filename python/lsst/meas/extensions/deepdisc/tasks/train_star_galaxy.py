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
"""DeepDiscTrainStarGalaxyTask: train the star-galaxy classifier on a model's detections and labelled stars.

One quantum over every patch the query selects.  Input: the ``object_deepdisc`` catalogs that a detection
model wrote (they carry the PSF photometry the classifier reads) and a labelled catalog with positions and a
star flag (``truth_patch`` in simulated repositories; in a real one, a catalog of spectroscopic or
space-based classifications put into the Butler).  The task matches the labels to the primary star and
galaxy rows one to one, fits `..core.star_galaxy.fit_star_galaxy` (an ensemble of small networks) on the
patches outside ``validationTracts``, chooses the star threshold with the best star F1 over out-of-fold
predictions of the training objects brighter than ``thresholdMaxMag`` (``thresholdFolds`` folds of patches),
reports the validation patches at that threshold, and writes the classifier
(``deepdisc_star_galaxy_classifier``, plain data) and its metrics per magnitude bin next to the detection
network's.  ``deepdisc-model star-galaxy``
puts the classifier into the model package, whose detection task then uses it.
"""

from __future__ import annotations

__all__ = [
    "DeepDiscTrainStarGalaxyConfig",
    "DeepDiscTrainStarGalaxyConnections",
    "DeepDiscTrainStarGalaxyTask",
]

from typing import override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import STAR_GALAXY_DATASET_TYPE
from ..core.morphology import match_labels
from ..core.plots import star_galaxy_figure
from ..core.star_galaxy import (
    FEATURE_NAMES_BASE,
    StarGalaxyClassifier,
    best_f1_threshold,
    catalog_features,
    fit_star_galaxy,
    star_f1,
)
from .reference_inputs import (
    SecondStageTrainingConfig,
    SecondStageTrainingConnections,
    SecondStageTrainingTask,
)


class DeepDiscTrainStarGalaxyConnections(
    SecondStageTrainingConnections,
    dimensions=(),
    defaultTemplates={"referenceName": "truth_patch"},
):
    """Connections of `DeepDiscTrainStarGalaxyTask` (the labelled catalog has a star flag column)."""

    classifier = cT.Output(
        doc="The trained star-galaxy classifier as plain data (deepdisc-model star-galaxy adds it to a "
        "model package).",
        name=STAR_GALAXY_DATASET_TYPE,
        storageClass="StructuredDataDict",
        dimensions=(),
    )
    metrics = cT.Output(
        doc="Star and galaxy F1 of the classifier and of the detection network per split and magnitude bin.",
        name="deepdisc_star_galaxy_metrics",
        storageClass="ArrowAstropy",
        dimensions=(),
    )
    plot = cT.Output(
        doc="Validation objects' PSF excess against magnitude (misclassified circled) and star F1 per bin.",
        name="deepdisc_star_galaxy_plot",
        storageClass="Plot",
        dimensions=(),
    )


class DeepDiscTrainStarGalaxyConfig(
    pipeBase.PipelineTaskConfig,
    SecondStageTrainingConfig,
    pipelineConnections=DeepDiscTrainStarGalaxyConnections,
):
    """Configuration of `DeepDiscTrainStarGalaxyTask`.

    With ``thresholdFolds`` below 2 the validation objects choose the star threshold.
    """

    starColumn = pexConfig.Field[str](doc="Reference column, true for stars.", default="is_star")
    maxMag = pexConfig.Field[float](doc="Objects fainter than this are not trained on.", default=25.0)
    thresholdMaxMag = pexConfig.Field[float](
        doc="The star threshold maximises the star F1 of validation objects brighter than this.", default=24.0
    )
    magBins = pexConfig.ListField[float](
        doc="Magnitude bin edges of the metrics table.", default=[16.0, 22.0, 23.0, 24.0, 25.0]
    )
    starWeight = pexConfig.Field[float](doc="Loss weight of stars relative to galaxies.", default=1.0)

    @override
    def validate(self) -> None:
        super().validate()
        if list(self.magBins) != sorted(self.magBins) or len(self.magBins) < 2:
            raise pexConfig.FieldValidationError(
                DeepDiscTrainStarGalaxyConfig.magBins, self, "magBins must be at least two increasing edges"
            )


class DeepDiscTrainStarGalaxyTask(SecondStageTrainingTask):
    """Train the star-galaxy classifier of a detection model."""

    ConfigClass = DeepDiscTrainStarGalaxyConfig
    _DefaultName = "trainStarGalaxy"
    config: DeepDiscTrainStarGalaxyConfig

    def labelled_rows(
        self, catalog: Table, reference: Table, bands: list[str], absent: list[str] | None = None
    ) -> Table:
        """The primary star and galaxy rows of one catalog that match a labelled object, with features.

        ``absent`` bands are treated as unmeasured (`catalog_features`).  Returns a table with ``features``
        (one row per object), ``is_star``, ``mag``, ``network_star``, ``id``.
        """
        config = self.config
        eligible, features = catalog_features(catalog, bands, absent)
        primary = np.asarray(catalog["detect_isPrimary"], dtype=bool)[eligible]
        rows = catalog[eligible][primary]
        match = match_labels(
            np.asarray(rows["coord_ra"], dtype=float),
            np.asarray(rows["coord_dec"], dtype=float),
            np.asarray(reference[config.raColumn], dtype=float),
            np.asarray(reference[config.decColumn], dtype=float),
            config.matchRadius,
        )
        out = Table()
        out["features"] = features[primary][match.detection]
        out["is_star"] = np.asarray(reference[config.starColumn], dtype=bool)[match.label]
        out["mag"] = np.asarray(reference[config.magColumn], dtype=float)[match.label]
        out["network_star"] = np.asarray(rows["class_name"], dtype=str)[match.detection] == "star"
        out["id"] = np.asarray(rows["id"], dtype=np.int64)[match.detection]
        return out

    def run(self, catalogs: list[tuple[int, Table]], reference: Table) -> pipeBase.Struct:
        """Fit the classifier and measure it.

        Parameters
        ----------
        catalogs : `list` [`tuple` [`int`, `astropy.table.Table`]]
            ``(tract, object_deepdisc)`` of every patch.
        reference : `astropy.table.Table`
            The labelled objects of all patches (positions, star flag, magnitude).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``classifier`` (`dict`, plain data), ``metrics`` (`astropy.table.Table`) and ``plot``
            (`matplotlib.figure.Figure`).

        Raises
        ------
        KeyError
            If the reference lacks a configured column.
        RuntimeError
            If either split has no labelled star.
        """
        config = self.config
        table, bands, min_bands = self.labelled_table(catalogs, reference, ("starColumn",))
        features = np.asarray(table["features"], dtype=float)
        is_star = np.asarray(table["is_star"], dtype=bool)
        mag = np.asarray(table["mag"], dtype=float)
        validation = np.asarray(table["validation"], dtype=bool)
        augmented = np.asarray(table["augmented"], dtype=bool)
        train = ~validation & (mag < config.maxMag)
        for name, split in (("training", train), ("validation", validation)):
            if not is_star[split].any():
                raise RuntimeError(
                    f"no labelled star among the {int(split.sum())} {name} objects: the classifier cannot be "
                    "trained and judged (check validationTracts, maxMag and the reference's starColumn)"
                )
        self.log.info(
            "Training on %d objects (%d stars) of %d patches (%d of them copies with fewer bands); "
            "%d validation objects (%d stars).",
            int(train.sum()),
            int(is_star[train].sum()),
            len(catalogs),
            int((train & augmented).sum()),
            int(validation.sum()),
            int(is_star[validation].sum()),
        )
        classifier = self.fit(features[train], is_star[train], bands)
        classifier.min_bands = min_bands
        probability = classifier.predict(features)
        threshold_rows, threshold_probability = self.threshold_sample(
            features,
            is_star,
            mag,
            train,
            validation,
            augmented,
            np.asarray(table["patch_index"]),
            bands,
            probability,
        )
        classifier.threshold, threshold_f1 = best_f1_threshold(threshold_probability, is_star[threshold_rows])
        judged = validation & (mag < config.thresholdMaxMag)
        f1 = star_f1(is_star[judged], probability[judged] >= classifier.threshold)
        network_f1 = star_f1(is_star[judged], np.asarray(table["network_star"])[judged])
        limit = f"i<{config.thresholdMaxMag:g}"
        classifier.provenance.update(
            {
                "threshold_from": f"{config.thresholdFolds}-fold out-of-fold training predictions"
                if config.thresholdFolds >= 2
                else "validation objects",
                f"threshold_star_f1_{limit}": round(threshold_f1, 4),
                f"validation_star_f1_{limit}": round(f1, 4),
                f"validation_network_star_f1_{limit}": round(network_f1, 4),
                "n_validation": int(validation.sum()),
                "n_validation_stars": int(is_star[validation].sum()),
                "max_mag": config.maxMag,
                "patches": len(catalogs),
            }
        )
        self.log.info(
            "Star threshold %.3f (star F1 %.3f where chosen): validation star F1 %.3f for %s (the network's "
            "classes: %.3f).",
            classifier.threshold,
            threshold_f1,
            f1,
            limit,
            network_f1,
        )
        original = ~augmented
        metrics = self.metrics_table(
            is_star[original],
            (probability >= classifier.threshold)[original],
            table[original],
            mag[original],
            validation[original],
        )
        shown = validation & ~augmented
        plot = star_galaxy_figure(
            features[shown, FEATURE_NAMES_BASE.index("psf_excess_fraction")],
            mag[shown],
            is_star[shown],
            probability[shown] >= classifier.threshold,
            metrics[np.asarray(metrics["split"]) == "validation"],
            title=f"star-galaxy classifier on the validation objects (threshold {classifier.threshold:g})",
        )
        return pipeBase.Struct(classifier=classifier.to_dict(), metrics=metrics, plot=plot)

    def fit(self, features: np.ndarray, is_star: np.ndarray, bands: list[str]) -> StarGalaxyClassifier:
        """`fit_star_galaxy` with the configured network and schedule."""
        config = self.config
        return fit_star_galaxy(
            features,
            is_star,
            bands,
            hidden=tuple(config.hiddenLayers),
            ensemble=config.ensembleSize,
            epochs=config.epochs,
            learning_rate=config.learningRate,
            weight_decay=config.weightDecay,
            star_weight=config.starWeight,
            seed=config.seed,
        )

    def threshold_sample(
        self,
        features: np.ndarray,
        is_star: np.ndarray,
        mag: np.ndarray,
        train: np.ndarray,
        validation: np.ndarray,
        augmented: np.ndarray,
        patch_index: np.ndarray,
        bands: list[str],
        probability: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The objects the star threshold is chosen on and their star probabilities.

        With ``thresholdFolds >= 2``: every training object brighter than ``thresholdMaxMag`` (with all its
        bands), each predicted by a classifier fitted on the other folds of patches (several times the
        validation tract's stars, so the threshold is not set by a handful of them).  Otherwise the validation
        objects with ``probability``, the predictions of the classifier fitted on all training objects.
        """
        config = self.config
        bright = (mag < config.thresholdMaxMag) & ~augmented
        if config.thresholdFolds < 2:
            rows = validation & bright
            return rows, probability[rows]
        out_of_fold = self.out_of_fold(features, is_star, train, train & bright, patch_index, bands)
        rows = np.isfinite(out_of_fold)
        self.log.info(
            "Threshold chosen on %d out-of-fold training objects (%d stars, %d folds of patches).",
            int(rows.sum()),
            int(is_star[rows].sum()),
            config.thresholdFolds,
        )
        return rows, out_of_fold[rows]

    def metrics_table(
        self, is_star: np.ndarray, called: np.ndarray, table: Table, mag: np.ndarray, validation: np.ndarray
    ) -> Table:
        """Star and galaxy F1 of the classifier and of the network, per split and magnitude bin."""
        edges = list(self.config.magBins)
        network = np.asarray(table["network_star"], dtype=bool)
        rows = []
        bins = [(edges[0], self.config.thresholdMaxMag)] + list(zip(edges[:-1], edges[1:]))
        for split, selected in (("training", ~validation), ("validation", validation)):
            for low, high in bins:
                m = selected & (mag >= low) & (mag < high)
                rows.append(
                    {
                        "split": split,
                        "mag_min": low,
                        "mag_max": high,
                        "n_stars": int(is_star[m].sum()),
                        "n_galaxies": int((~is_star[m]).sum()),
                        "star_f1": star_f1(is_star[m], called[m]),
                        "galaxy_f1": star_f1(~is_star[m], ~called[m]),
                        "network_star_f1": star_f1(is_star[m], network[m]),
                        "network_galaxy_f1": star_f1(~is_star[m], ~network[m]),
                    }
                )
        return Table(rows=rows)
