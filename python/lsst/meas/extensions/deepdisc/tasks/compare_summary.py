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
"""CompareDeepDiscSummaryTask: tract-level comparison metrics and plots from the per-patch match tables.

Input (dimensions tract, skymap): every patch's ``deepdisc_comparison`` (``multiple=True``).  Outputs:
``deepdisc_comparison_summary`` (``ArrowAstropy``, one row per method and magnitude bin plus one total row
per method, see `~lsst.meas.extensions.deepdisc.core.comparison.summarize_matches`) and one ``Plot``
dataset per figure: ``deepdisc_completeness_purity_plot``, ``deepdisc_classification_plot``,
``deepdisc_iou_plot`` and ``deepdisc_blend_outcomes_plot``.  The per-patch overlay images are written by
`~lsst.meas.extensions.deepdisc.tasks.compare.CompareDeepDiscTask` (``deepdisc_overlay_plot``), which has
the pixels.

Patches are simply stacked: each reference object is counted in the one patch whose inner region holds it
(see the compare task), so the tract numbers are totals over distinct objects.  COCO AP is not additive and
stays per patch (``deepdisc_comparison_metrics``).

Artifacts (``doArtifacts``): the per-patch ``deepdisc_comparison_metrics`` are read too; when they carry
artifact columns (a model with artifact classes, or ``truth_artifacts`` in the repository) their tract
summary (`~lsst.meas.extensions.deepdisc.core.comparison.summarize_artifact_metrics`) is added to the total
row of every method of ``deepdisc_comparison_summary`` (NaN in the magnitude-bin rows) and drawn in
``deepdisc_artifact_plot``, which is not written when there is no artifact column.
"""

from __future__ import annotations

__all__ = [
    "CompareDeepDiscSummaryConfig",
    "CompareDeepDiscSummaryConnections",
    "CompareDeepDiscSummaryTask",
    "merge_artifact_summary",
    "stack_match_tables",
]

import time
from collections.abc import Sequence
from typing import override

import numpy as np
from astropy.table import Table, vstack

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..core.comparison import (
    fill_masked_columns,
    match_table_methods,
    precision_recall_from_matches,
    summarize_artifact_metrics,
    summarize_matches,
)
from ..core.plots import (
    artifact_metrics_figure,
    blend_outcomes_figure,
    classification_figure,
    completeness_purity_figure,
    iou_figure,
    precision_recall_figure,
)

_TRACT_DIMENSIONS = ("tract", "skymap")


class CompareDeepDiscSummaryConnections(pipeBase.PipelineTaskConnections, dimensions=_TRACT_DIMENSIONS):
    """Connections of `CompareDeepDiscSummaryTask`: a tract's per-patch comparisons in, summary out."""

    comparisons = cT.Input(
        doc="Per-patch match tables of CompareDeepDiscTask.",
        name="deepdisc_comparison",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
        multiple=True,
    )
    metrics = cT.Input(
        doc="Per-patch metrics of CompareDeepDiscTask (artifact columns, when there are artifacts).",
        name="deepdisc_comparison_metrics",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
        multiple=True,
    )
    summary = cT.Output(
        doc="Metrics per method and magnitude bin over the tract (plus one total row per method).",
        name="deepdisc_comparison_summary",
        storageClass="ArrowAstropy",
        dimensions=_TRACT_DIMENSIONS,
    )
    completenessPurityPlot = cT.Output(
        doc="Completeness and purity versus magnitude for every method.",
        name="deepdisc_completeness_purity_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )
    classificationPlot = cT.Output(
        doc="Star and galaxy precision, recall and F1 versus magnitude for every method.",
        name="deepdisc_classification_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )
    iouPlot = cT.Output(
        doc="Bounding-box and footprint IoU distributions of the matched pairs.",
        name="deepdisc_iou_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )
    precisionRecall = cT.Output(
        doc="Precision and recall of the scored methods' detections above each score threshold.",
        name="deepdisc_precision_recall",
        storageClass="ArrowAstropy",
        dimensions=_TRACT_DIMENSIONS,
    )
    precisionRecallPlot = cT.Output(
        doc="Precision against recall over score thresholds, per scored method.",
        name="deepdisc_precision_recall_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )
    blendOutcomesPlot = cT.Output(
        doc="Fractions of reference objects by blend outcome versus magnitude, per method.",
        name="deepdisc_blend_outcomes_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )
    artifactPlot = cT.Output(
        doc="Artifact AP per class, purity with and without artifact flags, false positives in truth "
        "artifacts (written only when the metrics have artifact columns).",
        name="deepdisc_artifact_plot",
        storageClass="Plot",
        dimensions=_TRACT_DIMENSIONS,
    )

    def __init__(self, *, config: CompareDeepDiscSummaryConfig) -> None:
        super().__init__(config=config)
        if not config.doPlots:
            for name in (
                "completenessPurityPlot",
                "classificationPlot",
                "iouPlot",
                "blendOutcomesPlot",
                "precisionRecallPlot",
            ):
                delattr(self, name)
        if not config.scoreMethods:
            del self.precisionRecall
            if config.doPlots:
                del self.precisionRecallPlot
        if not config.doArtifacts:
            del self.metrics
        if not (config.doArtifacts and config.doPlots):
            del self.artifactPlot


class CompareDeepDiscSummaryConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=CompareDeepDiscSummaryConnections
):
    """Configuration of `CompareDeepDiscSummaryTask`."""

    magBins = pexConfig.ListField[float](
        doc="Reference-magnitude bin edges (half-open bins).",
        default=[float(m) for m in range(16, 29)],
    )
    classNames = pexConfig.ListField[str](
        doc="Class names by class id (as in the compare task).", default=["star", "galaxy"]
    )
    methods = pexConfig.ListField[str](
        doc="Methods to summarise and plot, in this order; empty: every method of the match tables.",
        default=[],
    )
    doPlots = pexConfig.Field[bool](doc="Write the Plot datasets.", default=True)
    scoreMethods = pexConfig.ListField[str](
        doc="Methods whose detections carry scores: their precision-recall curve is written "
        "(deepdisc_precision_recall); empty: none.",
        default=["deepdisc"],
    )
    scoreThresholds = pexConfig.ListField[float](
        doc="Score thresholds of the precision-recall curve.",
        default=[round(0.05 * i, 2) for i in range(20)],
    )
    doArtifacts = pexConfig.Field[bool](
        doc="Read the per-patch metrics and summarise their artifact columns (deepdisc_artifact_plot).",
        default=True,
    )
    artifactFlagTarget = pexConfig.Field[float](
        doc="Goal for the fraction of false positives inside truth artifacts that the artifact flags catch "
        "(drawn on deepdisc_artifact_plot, logged).",
        default=0.9,
    )

    @override
    def validate(self) -> None:
        super().validate()
        edges = np.asarray(self.magBins, dtype=float)
        if edges.size < 2 or np.any(np.diff(edges) <= 0) or not np.all(np.isfinite(edges)):
            raise pexConfig.FieldValidationError(
                CompareDeepDiscSummaryConfig.magBins, self, "magBins must be >= 2 increasing finite edges"
            )


def stack_match_tables(tables: Sequence[Table]) -> Table:
    """Stack per-patch match tables.

    Columns missing from some patches get neutral fill values (`fill_masked_columns`); a method missing
    from a patch would then count that patch's reference objects as unmatched, so run every patch with the
    same configuration.
    """
    tables = [table for table in tables if table is not None]
    if not tables:
        raise ValueError("no match table to stack")
    stacked = vstack(list(tables), join_type="outer", metadata_conflicts="silent")
    return fill_masked_columns(stacked)


class CompareDeepDiscSummaryTask(pipeBase.PipelineTask):
    """Summarise the per-patch comparisons of a tract: a metrics table and the comparison plots."""

    ConfigClass = CompareDeepDiscSummaryConfig
    _DefaultName = "compareDeepDiscSummary"
    config: CompareDeepDiscSummaryConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        tables = [butlerQC.get(ref) for ref in inputRefs.comparisons]
        metrics = [butlerQC.get(ref) for ref in inputRefs.metrics] if self.config.doArtifacts else None
        tract = int(butlerQC.quantum.dataId["tract"])
        result = self.run(tables, tract=tract, metrics=metrics)
        butlerQC.put(result.summary, outputRefs.summary)
        if self.config.scoreMethods:
            butlerQC.put(result.precisionRecall, outputRefs.precisionRecall)
        if self.config.doPlots:
            butlerQC.put(result.completenessPurityPlot, outputRefs.completenessPurityPlot)
            butlerQC.put(result.classificationPlot, outputRefs.classificationPlot)
            butlerQC.put(result.iouPlot, outputRefs.iouPlot)
            butlerQC.put(result.blendOutcomesPlot, outputRefs.blendOutcomesPlot)
            if self.config.scoreMethods:
                butlerQC.put(result.precisionRecallPlot, outputRefs.precisionRecallPlot)
            if self.config.doArtifacts and result.artifactPlot is not None:
                butlerQC.put(result.artifactPlot, outputRefs.artifactPlot)

    def run(
        self, comparisons: Sequence[Table], tract: int = 0, metrics: Sequence[Table] | None = None
    ) -> pipeBase.Struct:
        """Summarise match tables.

        Parameters
        ----------
        comparisons : `~collections.abc.Sequence` [`astropy.table.Table`]
            ``deepdisc_comparison`` of every patch.
        tract : `int`
            Tract id, for the titles and the table metadata.
        metrics : `~collections.abc.Sequence` [`astropy.table.Table`], optional
            ``deepdisc_comparison_metrics`` of every patch, for the artifact summary.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``summary`` (`astropy.table.Table`), ``matches`` (the stacked match table) and, when
            ``doPlots``, the figures ``completenessPurityPlot``, ``classificationPlot``, ``iouPlot`` and
            ``blendOutcomesPlot``; with ``scoreMethods``, ``precisionRecall`` (the curves of
            `~lsst.meas.extensions.deepdisc.core.comparison.precision_recall_from_matches`, with a ``method``
            column) and, when ``doPlots``, ``precisionRecallPlot``; ``artifacts`` (the artifact summary, one
            row per method, or `None`) and ``artifactPlot`` (figure or `None`).
        """
        start = time.perf_counter()
        matches = stack_match_tables(comparisons)
        methods = list(self.config.methods) or match_table_methods(matches)
        missing = [m for m in methods if f"{m}_matched" not in matches.colnames]
        if missing:
            raise ValueError(
                f"methods {missing} are not in the match tables (they have {match_table_methods(matches)})"
            )
        class_names = list(self.config.classNames)
        summary = summarize_matches(
            matches, list(self.config.magBins), class_names=class_names, methods=methods
        )
        summary.meta["tract"] = tract
        summary.meta["n_patches"] = len(comparisons)
        artifacts = None
        if self.config.doArtifacts and metrics:
            artifacts = summarize_artifact_metrics(stack_match_tables(metrics))
            if artifacts is not None:
                merge_artifact_summary(summary, artifacts)
        result = pipeBase.Struct(summary=summary, matches=matches, artifacts=artifacts, artifactPlot=None)
        curves = [
            precision_recall_from_matches(matches, method, self.config.scoreThresholds)
            for method in self.config.scoreMethods
            if method in methods
        ]
        if self.config.scoreMethods:
            for curve in curves:
                curve["method"] = np.full(len(curve), curve.meta["method"], dtype="U16")
            result.precisionRecall = vstack(curves) if curves else Table()
            result.precisionRecall.meta["tract"] = tract
        if self.config.doPlots:
            reference = summary.meta.get("reference", "reference")
            suffix = f" (tract {tract}, reference: {reference})"
            result.completenessPurityPlot = completeness_purity_figure(
                summary, methods, title="Completeness and purity" + suffix
            )
            result.classificationPlot = classification_figure(
                summary, class_names, methods, title="Star/galaxy classification" + suffix
            )
            result.iouPlot = iou_figure(matches, methods, title="IoU of matched pairs" + suffix)
            result.blendOutcomesPlot = blend_outcomes_figure(
                summary, methods, title="Blend outcomes" + suffix
            )
            if self.config.scoreMethods:
                result.precisionRecallPlot = precision_recall_figure(
                    result.precisionRecall, title="Precision-recall over score thresholds" + suffix
                )
            if artifacts is not None:
                result.artifactPlot = artifact_metrics_figure(
                    artifacts, title="Artifacts" + suffix, target=self.config.artifactFlagTarget
                )
        if artifacts is not None:
            self._log_artifacts(artifacts, tract)
        totals = summary[np.asarray(summary["is_total"], dtype=bool)]
        for row in totals:
            self.metadata[f"{row['method']}_completeness"] = float(row["completeness"])
            self.metadata[f"{row['method']}_purity"] = float(row["purity"])
            self.log.info(
                "tract %d, %s vs %s: completeness %.3f, purity %.3f over %d reference objects",
                tract,
                row["method"],
                summary.meta.get("reference", "reference"),
                row["completeness"],
                row["purity"],
                row["n_ref"],
            )
        self.metadata["total_seconds"] = time.perf_counter() - start
        return result

    def _log_artifacts(self, artifacts: Table, tract: int) -> None:
        """Headline artifact numbers in the metadata and the log."""
        target = self.config.artifactFlagTarget
        for row in artifacts:
            method = str(row["method"])
            caught = float(row["frac_fp_in_truth_artifact_flagged"])
            self.metadata[f"{method}_purity_artifact_flagged"] = float(row["purity_artifact_flagged"])
            self.metadata[f"{method}_frac_fp_in_truth_artifact_flagged"] = caught
            self.log.info(
                "tract %d, %s: purity %.3f (every row a source %.3f, artifact flags applied %.3f); %.0f of "
                "%.0f false positives inside truth artifacts, %.1f%% of them flagged (target %.0f%%)",
                tract,
                method,
                row["purity"],
                row["purity_all_rows"],
                row["purity_artifact_flagged"],
                row["n_fp_in_truth_artifact"],
                row["n_fp"],
                100 * caught,
                100 * target,
            )
            if np.isfinite(caught) and caught < target:
                self.log.warning(
                    "tract %d, %s: only %.1f%% of the false positives inside truth artifacts are flagged "
                    "(target %.0f%%)",
                    tract,
                    method,
                    100 * caught,
                    100 * target,
                )


def merge_artifact_summary(summary: Table, artifacts: Table) -> None:
    """Add the artifact summary's columns to the total row of each method of ``summary``, in place.

    Columns already in ``summary`` (``purity``, ``completeness``) are not repeated; the magnitude-bin rows
    get NaN (the artifact metrics are not binned).
    """
    is_total = np.asarray(summary["is_total"], dtype=bool)
    methods = np.asarray(summary["method"]).astype(str)
    by_method = {str(row["method"]): row for row in artifacts}
    for name in artifacts.colnames:
        if name in summary.colnames or name == "method":
            continue
        values = np.full(len(summary), np.nan)
        for i in np.flatnonzero(is_total):
            if methods[i] in by_method:
                values[i] = float(by_method[methods[i]][name])
        summary[name] = values
    summary.meta["artifacts"] = "artifact columns in the total rows (summarize_artifact_metrics)"
