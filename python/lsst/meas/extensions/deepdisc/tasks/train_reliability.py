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
"""DeepDiscTrainReliabilityTask: train the reliability classifier on a model's candidate detections.

One quantum over every patch the query selects.  Input: the ``object_deepdisc`` catalogs that a detection
model wrote at a low score threshold (``networkThreshold``, the candidates; reliability and star-galaxy
classifiers off) and a catalog of the real objects' positions (``truth_patch`` in simulated repositories).
Each patch's primary star and galaxy rows are matched to the objects one to one within ``matchRadius``,
higher-scoring detections first (so a lower-scoring duplicate of a matched object counts as spurious): a
matched row is real.  The task fits `..core.star_galaxy.fit_reliability` on the patches outside
``validationTracts``, chooses the reliability threshold as the lowest whose out-of-fold predictions over the
training patches keep a purity of ``minPurity`` (`..core.star_galaxy.purity_threshold`), and reports the
validation patches per magnitude bin against the network's own operating point (``referenceScoreThreshold``):
``deepdisc_reliability_classifier`` (plain data; ``deepdisc-model second-stage`` puts it into a model
package), ``deepdisc_reliability_metrics`` and ``deepdisc_reliability_plot``.
"""

from __future__ import annotations

__all__ = [
    "DeepDiscTrainReliabilityConfig",
    "DeepDiscTrainReliabilityConnections",
    "DeepDiscTrainReliabilityTask",
]

from typing import override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import RELIABILITY_DATASET_TYPE
from ..core.morphology import match_labels
from ..core.plots import reliability_figure
from ..core.star_galaxy import (
    ReliabilityClassifier,
    catalog_features,
    fit_reliability,
    purity_threshold,
)
from .reference_inputs import (
    SecondStageTrainingConfig,
    SecondStageTrainingConnections,
    SecondStageTrainingTask,
)


class DeepDiscTrainReliabilityConnections(
    SecondStageTrainingConnections,
    dimensions=(),
    defaultTemplates={"referenceName": "truth_patch"},
):
    """Connections of `DeepDiscTrainReliabilityTask`.

    The catalogs are the candidates detected at ``networkThreshold``; the labelled catalog holds the real
    objects.
    """

    classifier = cT.Output(
        doc="The trained reliability classifier as plain data (deepdisc-model second-stage adds it to a "
        "model package).",
        name=RELIABILITY_DATASET_TYPE,
        storageClass="StructuredDataDict",
        dimensions=(),
    )
    metrics = cT.Output(
        doc="Completeness and purity per split and magnitude bin: the network at its operating point and "
        "the candidates judged by the classifier.",
        name="deepdisc_reliability_metrics",
        storageClass="ArrowAstropy",
        dimensions=(),
    )
    plot = cT.Output(
        doc="Validation purity against real detections kept, for the network score and the reliability.",
        name="deepdisc_reliability_plot",
        storageClass="Plot",
        dimensions=(),
    )


class DeepDiscTrainReliabilityConfig(
    pipeBase.PipelineTaskConfig,
    SecondStageTrainingConfig,
    pipelineConnections=DeepDiscTrainReliabilityConnections,
):
    """Configuration of `DeepDiscTrainReliabilityTask` (minBands 0 by default: all bands)."""

    networkThreshold = pexConfig.Field[float](
        doc="Network score threshold the catalogs were detected with (detect:scoreThreshold); the detection "
        "task runs the network there when the classifier is in the package.",
        default=0.2,
    )
    trustScore = pexConfig.Field[float](
        doc="Detections scoring at least this with detection_snr >= trustSnr are kept whatever their "
        "reliability (the network's own operating point, which is better than the classifier for bright "
        "sources); None: the classifier judges all.",
        default=0.5,
        optional=True,
    )
    trustSnr = pexConfig.Field[float](doc="Footprint S/N from which trustScore applies.", default=50.0)
    referenceScoreThreshold = pexConfig.Field[float](
        doc="The network's own operating point, reported beside the classifier; None: none reported.",
        default=0.5,
        optional=True,
    )
    minPurity = pexConfig.Field[float](
        doc="Purity the kept detections must reach in the out-of-fold predictions (threshold choice).",
        default=0.98,
    )
    magBins = pexConfig.ListField[float](
        doc="Magnitude bin edges of the metrics table.", default=[16.0, 22.0, 23.0, 24.0, 25.0, 26.0]
    )

    @override
    def setDefaults(self) -> None:
        super().setDefaults()
        self.minBands = 0

    @override
    def validate(self) -> None:
        super().validate()
        checks = (
            ("networkThreshold", 0 < self.networkThreshold < 1, "networkThreshold must be in (0, 1)"),
            (
                "trustScore",
                self.trustScore is None or self.networkThreshold <= self.trustScore <= 1,
                "trustScore must be in [networkThreshold, 1]",
            ),
            ("trustSnr", self.trustSnr >= 0, "trustSnr must be >= 0"),
            ("minPurity", 0 < self.minPurity < 1, "minPurity must be in (0, 1)"),
            ("thresholdFolds", self.thresholdFolds >= 2, "thresholdFolds must be at least 2"),
            (
                "magBins",
                list(self.magBins) == sorted(self.magBins) and len(self.magBins) >= 2,
                "magBins must be at least two increasing edges",
            ),
        )
        for name, ok, message in checks:
            if not ok:
                raise pexConfig.FieldValidationError(getattr(type(self), name), self, message)


class DeepDiscTrainReliabilityTask(SecondStageTrainingTask):
    """Train the reliability classifier of a detection model."""

    ConfigClass = DeepDiscTrainReliabilityConfig
    _DefaultName = "trainReliability"
    config: DeepDiscTrainReliabilityConfig

    def labelled_rows(
        self, catalog: Table, reference: Table, bands: list[str], absent: list[str] | None = None
    ) -> Table:
        """The primary star and galaxy rows of one catalog with features, real or not, and magnitude.

        Returns a table with ``features``, ``is_real``, ``mag`` (the matched object's; NaN when spurious),
        ``score`` and ``id``.
        """
        config = self.config
        eligible, features = catalog_features(catalog, bands, absent, ReliabilityClassifier)
        primary = np.asarray(catalog["detect_isPrimary"], dtype=bool)[eligible]
        rows = catalog[eligible][primary]
        score = np.asarray(rows["score"], dtype=float)
        match = match_labels(
            np.asarray(rows["coord_ra"], dtype=float),
            np.asarray(rows["coord_dec"], dtype=float),
            np.asarray(reference[config.raColumn], dtype=float),
            np.asarray(reference[config.decColumn], dtype=float),
            config.matchRadius,
            priority=score,
        )
        out = Table()
        out["features"] = features[primary]
        out["is_real"] = np.zeros(len(rows), dtype=bool)
        out["is_real"][match.detection] = True
        out["mag"] = np.full(len(rows), np.nan)
        out["mag"][match.detection] = np.asarray(reference[config.magColumn], dtype=float)[match.label]
        out["score"] = score
        out["detection_snr"] = np.asarray(rows["detection_snr"], dtype=float)
        out["id"] = np.asarray(rows["id"], dtype=np.int64)
        return out

    def check_candidates(self, catalogs: list[tuple[int, Table]]) -> None:
        """Raise if the catalogs were not detected at ``networkThreshold`` (the classifier's candidates)."""
        scores = np.concatenate([np.asarray(c["score"], dtype=float) for _, c in catalogs if len(c)])
        if scores.size == 0:
            raise RuntimeError("the catalogs have no detections")
        low, threshold = float(scores.min()), self.config.networkThreshold
        if low < threshold - 1e-6 or low > threshold + 0.05:
            raise RuntimeError(
                f"the catalogs' lowest detection score is {low:.3f}, not about "
                f"networkThreshold={threshold:g}: "
                f"detect with -c detect:scoreThreshold={threshold:g} -c detect:doReliability=False (or set "
                "networkThreshold to the threshold they were detected with)"
            )

    def run(self, catalogs: list[tuple[int, Table]], reference: Table) -> pipeBase.Struct:
        """Fit the classifier, choose its threshold and measure it.

        Parameters
        ----------
        catalogs : `list` [`tuple` [`int`, `astropy.table.Table`]]
            ``(tract, object_deepdisc)`` of every patch, detected at ``networkThreshold``.
        reference : `astropy.table.Table`
            The real objects of all patches (positions, magnitude).

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
            If the catalogs were detected at another threshold, or a split has no real detection.
        """
        config = self.config
        self.check_candidates(catalogs)
        table, bands, min_bands = self.labelled_table(catalogs, reference)
        features = np.asarray(table["features"], dtype=float)
        is_real = np.asarray(table["is_real"], dtype=bool)
        validation = np.asarray(table["validation"], dtype=bool)
        augmented = np.asarray(table["augmented"], dtype=bool)
        train = ~validation
        for name, split in (("training", train), ("validation", validation)):
            if not is_real[split].any() or is_real[split].all():
                raise RuntimeError(
                    f"the {int(split.sum())} {name} detections are all real or all spurious: the classifier "
                    "cannot be trained and judged (check validationTracts and the reference catalog)"
                )
        self.log.info(
            "Training on %d candidate detections (%d real) of %d patches (%d of them copies with fewer "
            "bands); %d validation detections (%d real).",
            int(train.sum()),
            int(is_real[train].sum()),
            len(catalogs),
            int((train & augmented).sum()),
            int(validation.sum()),
            int(is_real[validation].sum()),
        )
        classifier = self.fit(features[train], is_real[train], bands)
        classifier.min_bands = min_bands
        probability = classifier.predict(features)
        trusted = classifier.trusted(np.asarray(table["score"]), np.asarray(table["detection_snr"]))
        fold_rows = train & ~augmented
        predicted = self.out_of_fold(features, is_real, fold_rows, fold_rows, table["patch_index"], bands)
        rows = np.isfinite(predicted)
        if not rows.any():
            raise RuntimeError(
                f"no out-of-fold predictions: {len(np.unique(table['patch_index'][fold_rows]))} training "
                f"patches for {config.thresholdFolds} folds"
            )
        out_of_fold = predicted[rows]
        threshold, oof_purity, oof_kept = purity_threshold(
            out_of_fold, is_real[rows], config.minPurity, trusted[rows]
        )
        classifier.threshold = threshold
        self.log.info(
            "Reliability threshold %.3f: out-of-fold purity %.4f keeping %.3f of the real candidates "
            "(%d training detections, %d folds of patches).",
            threshold,
            oof_purity,
            oof_kept,
            int(rows.sum()),
            config.thresholdFolds,
        )
        original = ~augmented
        metrics = self.metrics_table(
            table[original], (probability >= threshold)[original] | trusted[original]
        )
        judged = metrics[(metrics["split"] == "validation") & (metrics["method"] == "reliability")]
        classifier.provenance.update(
            {
                "threshold_from": f"{config.thresholdFolds}-fold out-of-fold training predictions, purity "
                f">= {config.minPurity:g}",
                "threshold_purity": round(oof_purity, 4),
                "threshold_kept_real": round(oof_kept, 4),
                "n_validation": int(validation.sum()),
                "patches": len(catalogs),
                **{
                    f"validation_{row['name']}": round(float(row["value"]), 4)
                    for row in self.headline(judged)
                },
            }
        )
        shown = validation & ~augmented
        plot = reliability_figure(
            np.asarray(table["score"])[shown],
            np.where(trusted[shown], 1.0, probability[shown]),
            is_real[shown],
            threshold,
            config.referenceScoreThreshold,
            title=f"reliability classifier on the validation detections (threshold {threshold:g})",
        )
        return pipeBase.Struct(classifier=classifier.to_dict(), metrics=metrics, plot=plot)

    def fit(self, features: np.ndarray, is_real: np.ndarray, bands: list[str]) -> ReliabilityClassifier:
        """`fit_reliability` with the configured network and schedule."""
        config = self.config
        return fit_reliability(
            features,
            is_real,
            bands,
            config.networkThreshold,
            config.trustScore,
            config.trustSnr,
            hidden=tuple(config.hiddenLayers),
            ensemble=config.ensembleSize,
            epochs=config.epochs,
            learning_rate=config.learningRate,
            weight_decay=config.weightDecay,
            seed=config.seed,
        )

    def metrics_table(self, table: Table, accepted: np.ndarray) -> Table:
        """Per split, method and magnitude bin: real detections kept (by matched magnitude) and purity.

        ``method``: ``network`` (score at ``referenceScoreThreshold``), ``candidates`` (every detection)
        and ``reliability`` (the ``accepted`` rows: the classifier at its threshold, or trusted).  Purity
        is over all magnitudes (the spurious rows have none); ``n_real`` per bin counts the real
        candidates, the denominator of ``kept``.
        """
        config = self.config
        is_real = np.asarray(table["is_real"], dtype=bool)
        mag = np.asarray(table["mag"], dtype=float)
        score = np.asarray(table["score"], dtype=float)
        validation = np.asarray(table["validation"], dtype=bool)
        methods = {"candidates": np.ones(len(table), dtype=bool), "reliability": np.asarray(accepted, bool)}
        if config.referenceScoreThreshold is not None:
            methods["network"] = score >= config.referenceScoreThreshold
        edges = list(config.magBins)
        bins = [(-np.inf, np.inf)] + list(zip(edges[:-1], edges[1:]))
        rows = []
        for split, selected in (("training", ~validation), ("validation", validation)):
            for method, kept in methods.items():
                purity = float(is_real[selected & kept].mean()) if (selected & kept).any() else np.nan
                for low, high in bins:
                    real = selected & is_real & (mag >= low) & (mag < high)
                    rows.append(
                        {
                            "split": split,
                            "method": method,
                            "mag_min": low,
                            "mag_max": high,
                            "n_real": int(real.sum()),
                            "n_kept_real": int((real & kept).sum()),
                            "kept": float((real & kept).sum() / real.sum()) if real.any() else np.nan,
                            "n_kept": int((selected & kept).sum()),
                            "purity": purity,
                        }
                    )
        return Table(rows=rows)

    @staticmethod
    def headline(rows: Table) -> list[dict[str, float | str]]:
        """Provenance values from the classifier's validation rows: purity and kept fraction per bin."""
        out: list[dict[str, float | str]] = []
        for row in rows:
            if not np.isfinite(row["mag_min"]):
                out.append({"name": "purity", "value": row["purity"]})
                out.append({"name": "kept_real", "value": row["kept"]})
            else:
                out.append({"name": f"kept_real_{row['mag_min']:g}-{row['mag_max']:g}", "value": row["kept"]})
        return out
