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
"""CompareDeepDiscTask: DeepDISC against the scarlet deblender, a sep baseline and truth, per patch.

Inputs (dimensions tract, patch, skymap): ``object_deepdisc``, the DRP's deblended catalog
``object_deblend`` (``ArrowAstropy`` in simulated repositories; a ``SourceCatalog`` in the Rubin pipelines,
see ``deblendStorageClass``), the object table ``object_patch`` (scarlet classes and magnitudes), optionally
``truth_patch`` (``doTruth``), ``deepdisc_labels`` (``doLabels``) and the per-band coadds (``deep_coadd``,
for the sep baseline on the same pixels and the overlay plot).

Reference: ``truth_patch`` when ``doTruth``; otherwise ``deepdisc_labels`` when ``doLabels``; otherwise the
scarlet catalog itself, so that DeepDISC (and sep) are measured by their agreement with scarlet (then
"completeness" is the fraction of scarlet objects DeepDISC also finds, and scarlet is not a compared method).

Outputs: ``deepdisc_comparison`` (``ArrowAstropy``), the match table of
`~lsst.meas.extensions.deepdisc.core.comparison`; ``deepdisc_comparison_metrics`` (``ArrowAstropy``), one
row of per-patch metrics per method; ``deepdisc_overlay_plot`` (``Plot``), the RGB image of a region of the
patch with every catalog's footprints outlined by class (``doOverlayPlot``).  Metrics count the objects of
the patch's inner sky region only (when the data ID carries the patch region), so the tract summary counts
every object once.

Artifacts (``doArtifacts``): DeepDISC's artifact rows (classes ``artifact_*``) are never compared as sources.
When the model has artifact classes, or the repository has the optional ``truth_artifacts`` of a simulation
(a prerequisite input with ``minimum=0``: patches and repositories without it simply have no truth-artifact
metrics), the metrics table gains the artifact columns of
`~lsst.meas.extensions.deepdisc.core.comparison.add_artifact_metrics`: purity with and without the artifact
flags for every method (other methods are flagged by DeepDISC's artifact mask with the same overlap rule),
and with truth artifacts the mask AP per artifact class, the patch's has-artifact flags, the pixel IoU of the
artifact masks and the false positives inside truth artifacts; ``deepdisc_artifact_overlay_plot`` shows the
truth and detected artifacts.
"""

from __future__ import annotations

__all__ = [
    "CompareDeepDiscConfig",
    "CompareDeepDiscConnections",
    "CompareDeepDiscTask",
]

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, override

import numpy as np
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.afw_catalog import source_catalog_to_table
from ..butler.regions import inside_region, patch_and_tract_regions
from ..core.artifacts import ARTIFACT_CLASSES
from ..core.baseline import run_sep_baseline
from ..core.coco import CocoImage
from ..core.comparison import (
    ComparisonCatalog,
    add_artifact_metrics,
    artifact_cover_flags,
    artifact_row_mask,
    artifact_scores,
    compare_to_reference,
    deepdisc_artifact_sources,
    deepdisc_catalog,
    has_artifact_classes,
    labels_catalog,
    scarlet_catalog,
    sep_catalog,
    truth_artifact_sources,
    truth_catalog,
)
from ..core.footprints import spans_union
from ..core.multiband import MultibandImage
from ..core.plots import ARTIFACT_COLORS, OverlayPanel, artifact_overlay_box, lupton_rgb, overlay_figure
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)

_PATCH_DIMENSIONS = ("tract", "patch", "skymap")


class CompareDeepDiscConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=_PATCH_DIMENSIONS,
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `CompareDeepDiscTask`: one patch's detections, reference catalogs and plots."""

    deepdisc = cT.Input(
        doc="DeepDISC detection catalog of the patch.",
        name="object_deepdisc",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    deblend = cT.Input(
        doc="The DRP's deblended catalog (scarlet parents and children with footprints).",
        name="object_deblend",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    objects = cT.Input(
        doc="Object table of the patch: scarlet classes (extendedness) and magnitudes.",
        name="object_patch",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    truth = cT.Input(
        doc="Truth catalog of a simulated patch (footprint spans, type, magnitudes).",
        name="truth_patch",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    truthArtifacts = cT.PrerequisiteInput(
        doc="Truth artifacts of a simulated patch (ghosts, rays: class, footprint spans); optional: without "
        "it there are no truth-artifact metrics.",
        name="truth_artifacts",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
        minimum=0,
    )
    labels = cT.Input(
        doc="DeepDISC training labels of the patch (scarlet-model footprints and classes).",
        name="deepdisc_labels",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    coadds = coadd_input_connection("Per-band coadds: pixels of the sep baseline and of the overlay plot.")
    comparison = cT.Output(
        doc="Per-source match table: every reference object's match in each method, plus unmatched "
        "detections.",
        name="deepdisc_comparison",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    metrics = cT.Output(
        doc="Per-patch metrics, one row per method.",
        name="deepdisc_comparison_metrics",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
    )
    overlayPlot = cT.Output(
        doc="RGB image of the patch with each catalog's footprints outlined by class.",
        name="deepdisc_overlay_plot",
        storageClass="Plot",
        dimensions=_PATCH_DIMENSIONS,
    )
    artifactOverlayPlot = cT.Output(
        doc="RGB image around the patch's artifacts with the truth and the detected artifact footprints "
        "(written only when the patch has some).",
        name="deepdisc_artifact_overlay_plot",
        storageClass="Plot",
        dimensions=_PATCH_DIMENSIONS,
    )

    def __init__(self, *, config: CompareDeepDiscConfig) -> None:
        super().__init__(config=config)
        if config.deblendStorageClass != self.deblend.storageClass:
            self.deblend = dataclasses.replace(self.deblend, storageClass=config.deblendStorageClass)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)
        if not config.doObjectTable:
            del self.objects
        if not config.doTruth:
            del self.truth
        if not config.doLabels:
            del self.labels
        if not (config.doSepBaseline or config.doOverlayPlot):
            del self.coadds
        if not config.doOverlayPlot:
            del self.overlayPlot
        if not config.doArtifacts:
            del self.truthArtifacts
        if not (config.doArtifacts and config.doOverlayPlot):
            del self.artifactOverlayPlot


class CompareDeepDiscConfig(pipeBase.PipelineTaskConfig, pipelineConnections=CompareDeepDiscConnections):
    """Configuration of `CompareDeepDiscTask`."""

    doTruth = pexConfig.Field[bool](
        doc="Compare against the truth catalog (simulations). Off: the labels (doLabels) or scarlet are "
        "the reference.",
        default=True,
    )
    doLabels = pexConfig.Field[bool](
        doc="Read deepdisc_labels: a compared method when doTruth, else the reference.", default=False
    )
    doObjectTable = pexConfig.Field[bool](
        doc="Read the object table for scarlet's classes, magnitudes and ranking scores.", default=True
    )
    doSepBaseline = pexConfig.Field[bool](
        doc="Run the sep baseline on the same coadd pixels and compare it too.", default=True
    )
    doOverlayPlot = pexConfig.Field[bool](doc="Write deepdisc_overlay_plot.", default=True)
    doCocoAp = pexConfig.Field[bool](doc="Compute COCO AP (bbox and segm).", default=True)
    doInnerRegion = pexConfig.Field[bool](
        doc="Count only objects whose centres are in the patch's inner sky region (needs the patch region "
        "in the data ID), so that patches can be summed without double counting.",
        default=True,
    )
    deblendStorageClass = pexConfig.ChoiceField[str](
        doc="Storage class of the deblended catalog.",
        default="ArrowAstropy",
        allowed={
            "ArrowAstropy": "table with span columns (simulated repositories)",
            "SourceCatalog": "lsst.afw.table.SourceCatalog with footprints (needs lsst.afw)",
        },
    )
    coaddStorageClass = coadd_storage_class_field()
    classNames = pexConfig.ListField[str](doc="Class names by class id.", default=["star", "galaxy"])
    refBand = pexConfig.Field[str](doc="Band of every magnitude (truth, measured).", default="i")
    truthMagColumn = pexConfig.Field[str](
        doc="Truth magnitude column ('{band}' replaced by refBand).", default="mag_{band}"
    )
    truthTypeColumn = pexConfig.Field[str](doc="Truth column of class names.", default="type")
    truthMinFootprintArea = pexConfig.Field[int](
        doc="Truth objects with fewer footprint pixels (never above the truth threshold) are not in the "
        "reference.",
        default=1,
    )
    deepdiscFluxColumn = pexConfig.Field[str](
        doc="DeepDISC flux column ('{band}' replaced by refBand), nJy.", default="{band}_footprintFlux"
    )
    scarletFluxColumn = pexConfig.Field[str](
        doc="Object-table flux column ('{band}' replaced by refBand), nJy.", default="{band}_cModelFlux"
    )
    sepFluxColumn = pexConfig.Field[str](
        doc="sep catalog flux column ('{band}' replaced by refBand), nJy.", default="{band}_flux"
    )
    objectIdColumn = pexConfig.Field[str](doc="Object-table id column.", default="objectId")
    extendednessColumn = pexConfig.Field[str](
        doc="Object-table extendedness column.", default="refExtendedness"
    )
    extendednessThreshold = pexConfig.Field[float](
        doc="Extendedness at or above which scarlet's object is a galaxy.", default=0.5
    )
    minIou = pexConfig.Field[float](doc="IoU threshold of the one-to-one matching.", default=0.5)
    maxDistance = pexConfig.Field[float](
        doc="Radius (pixels) of the centre-distance matching among IoU leftovers; 0 disables it.", default=5.0
    )
    linkingLength = pexConfig.Field[float](
        doc="Friends-of-friends linking length (pixels) of the blend outcomes.", default=5.0
    )
    cocoMaxDetections = pexConfig.Field[int](
        doc="Highest-scoring detections kept for COCO AP; 0 keeps all.", default=0
    )
    sepThreshold = pexConfig.Field[float](doc="sep detection threshold (sigma).", default=1.5)
    sepMinArea = pexConfig.Field[int](doc="sep minimum area (pixels).", default=5)
    sepDeblendNthresh = pexConfig.Field[int](doc="sep deblending thresholds.", default=32)
    sepDeblendCont = pexConfig.Field[float](doc="sep deblending minimum contrast.", default=0.005)
    sepPsfFwhm = pexConfig.Field[float](
        doc="PSF FWHM (pixels) for sep's star/galaxy guess; 0: from the coadds' metadata (psf_fwhm_arcsec "
        "and the WCS), no guess when unknown.",
        default=0.0,
    )
    sepStarSizeRatio = pexConfig.Field[float](
        doc="sep: half-light radius, in PSF half-light radii, below which a source is a star.", default=1.25
    )
    bands = pexConfig.ListField[str](
        doc="Bands of the coadds read (sep detection image, overlay); empty: every band of the patch.",
        default=[],
    )
    invalidMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes of pixels without data (sep baseline).", default=["NO_DATA"]
    )
    overlayBands = pexConfig.ListField[str](
        doc="Red, green, blue bands of the overlay (those present are used).", default=["i", "r", "g"]
    )
    overlayBox = pexConfig.ListField[int](
        doc="Overlay region (x0, y0, width, height) in parent pixels; empty: a square of overlaySize at the "
        "patch centre.",
        default=[],
    )
    overlaySize = pexConfig.Field[int](doc="Side (pixels) of the default overlay region.", default=400)
    overlayStretch = pexConfig.Field[float](
        doc="Lupton linear stretch (image units); 0: 5 times the robust noise.", default=0.0
    )
    overlayQ = pexConfig.Field[float](doc="Lupton asinh softening Q.", default=8.0)
    doArtifacts = pexConfig.Field[bool](
        doc="Artifact metrics: read truth_artifacts when present, report purity with and without the "
        "artifact flags and the artifact AP, presence and pixel scores (see metrics.rst).",
        default=True,
    )
    artifactClasses = pexConfig.ListField[str](
        doc="Artifact classes evaluated, without the 'artifact_' prefix of the catalog's class names.",
        default=list(ARTIFACT_CLASSES),
    )
    artifactOverlapFraction = pexConfig.Field[float](
        doc="A detection lies in an artifact when more than this fraction of its footprint is covered by the "
        "artifact mask (DeepDISC's, to flag other methods; the truth's, for false positives in truth "
        "artifacts); the detection task's artifactOverlapFraction rule.",
        default=0.5,
    )
    truthArtifactClassColumn = pexConfig.Field[str](
        doc="truth_artifacts column of the artifact class names.", default="artifact_class"
    )

    @override
    def validate(self) -> None:
        super().validate()
        if len(set(self.classNames)) != len(self.classNames) or not all(self.classNames):
            raise pexConfig.FieldValidationError(
                CompareDeepDiscConfig.classNames, self, "class names must be unique and non-empty"
            )
        if not 0.0 < self.minIou <= 1.0:
            raise pexConfig.FieldValidationError(
                CompareDeepDiscConfig.minIou, self, "minIou must be in (0, 1]"
            )
        if not 0.0 <= self.artifactOverlapFraction < 1.0:
            raise pexConfig.FieldValidationError(
                CompareDeepDiscConfig.artifactOverlapFraction,
                self,
                "artifactOverlapFraction must be in [0, 1)",
            )
        if self.overlayBox and len(self.overlayBox) != 4:
            raise pexConfig.FieldValidationError(
                CompareDeepDiscConfig.overlayBox, self, "overlayBox is (x0, y0, width, height)"
            )

    @property
    def reference_name(self) -> str:
        """The reference catalog: ``truth``, ``labels`` or ``scarlet`` (see the module documentation)."""
        return "truth" if self.doTruth else "labels" if self.doLabels else "scarlet"


class CompareDeepDiscTask(pipeBase.PipelineTask):
    """Compare DeepDISC, scarlet and a sep baseline with a reference catalog, on one patch.

    Matching, metrics and blend outcomes are those of the package's core (`~..core.matching`,
    `~..core.metrics`, `~..core.blend_outcomes`, `~..core.coco`); the glue is
    `~..core.comparison.compare_to_reference`.  See ``doc/lsst.meas.extensions.deepdisc/metrics.rst``.
    """

    ConfigClass = CompareDeepDiscConfig
    _DefaultName = "compareDeepDisc"
    config: CompareDeepDiscConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        config = self.config
        deepdisc = butlerQC.get(inputRefs.deepdisc)
        deblend = butlerQC.get(inputRefs.deblend)
        if config.deblendStorageClass == "SourceCatalog":
            deblend = source_catalog_to_table(deblend)
        objects = butlerQC.get(inputRefs.objects) if config.doObjectTable else None
        truth = butlerQC.get(inputRefs.truth) if config.doTruth else None
        labels = butlerQC.get(inputRefs.labels) if config.doLabels else None
        truth_artifacts = None
        artifact_ref = getattr(inputRefs, "truthArtifacts", None) if config.doArtifacts else None
        if artifact_ref is not None:
            truth_artifacts = butlerQC.get(artifact_ref)
        image = None
        if config.doSepBaseline or config.doOverlayPlot:
            bands = list(config.bands) or sorted({str(ref.dataId["band"]) for ref in inputRefs.coadds})
            image = read_coadds(butlerQC, inputRefs.coadds, bands, config.coaddStorageClass, "config.bands")
        data_id = butlerQC.quantum.dataId
        region = self._patch_region(data_id)
        result = self.run(
            deepdisc,
            deblend,
            objects=objects,
            truth=truth,
            labels=labels,
            truth_artifacts=truth_artifacts,
            image=image,
            inner_region=region,
            tract=int(data_id["tract"]),
            patch=int(data_id["patch"]),
        )
        butlerQC.put(result.comparison, outputRefs.comparison)
        butlerQC.put(result.metrics, outputRefs.metrics)
        if config.doOverlayPlot and result.overlay is not None:
            butlerQC.put(result.overlay, outputRefs.overlayPlot)
        if config.doArtifacts and config.doOverlayPlot and result.artifactOverlay is not None:
            butlerQC.put(result.artifactOverlay, outputRefs.artifactOverlayPlot)

    def _patch_region(self, data_id: Any) -> Any | None:
        """The patch's inner sky region from the expanded data ID, or `None` (with a warning)."""
        if not self.config.doInnerRegion:
            return None
        region, _ = patch_and_tract_regions(data_id)
        if region is None:
            self.log.warning("The data ID has no patch region: counting every object of the patch.")
        return region

    def run(
        self,
        deepdisc: Table,
        deblend: Table,
        *,
        objects: Table | None = None,
        truth: Table | None = None,
        labels: Table | None = None,
        truth_artifacts: Table | None = None,
        image: MultibandImage | None = None,
        inner_region: Any | None = None,
        tract: int = 0,
        patch: int = 0,
    ) -> pipeBase.Struct:
        """Compare the catalogs of one patch.

        Parameters
        ----------
        deepdisc : `astropy.table.Table`
            ``object_deepdisc``.
        deblend : `astropy.table.Table`
            The deblended catalog as a table (a ``SourceCatalog`` is converted by
            `~lsst.meas.extensions.deepdisc.butler.afw_catalog.source_catalog_to_table`).
        objects : `astropy.table.Table`, optional
            Object table (scarlet classes and magnitudes).
        truth : `astropy.table.Table`, optional
            Truth catalog; required when ``doTruth``.
        labels : `astropy.table.Table`, optional
            Training labels; required when ``doLabels``.
        truth_artifacts : `astropy.table.Table`, optional
            Truth artifacts of a simulated patch (``truth_artifacts``); `None`: no truth-artifact metrics.
        image : `MultibandImage`, optional
            The coadd, for the sep baseline and the overlay plot.
        inner_region : `lsst.sphgeom.Region`, optional
            Region whose objects are counted (anything with a vectorised ``contains(lon, lat)`` in
            radians); `None` counts every object.
        tract, patch : `int`
            Recorded in the outputs.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``comparison`` and ``metrics`` (`astropy.table.Table`), ``overlay`` (`matplotlib.figure.Figure`
            or `None`), ``artifactOverlay`` (figure or `None`: no artifact in the patch, or no image),
            ``artifacts`` (`~..core.comparison.ArtifactScores` or `None` without truth artifacts), ``sep``
            (the sep catalog or `None`) and ``details`` (per-method intermediate objects).
        """
        start = time.perf_counter()
        config = self.config
        class_names = list(config.classNames)
        band = config.refBand
        reference_name = config.reference_name
        if reference_name == "truth" and truth is None:
            raise ValueError("doTruth is set but no truth catalog was given")
        if reference_name == "labels" and labels is None:
            raise ValueError("doLabels is set (and doTruth is not) but no label table was given")

        catalogs: dict[str, ComparisonCatalog] = {}
        catalogs["deepdisc"] = deepdisc_catalog(
            deepdisc, class_names=class_names, band=band, flux_column=config.deepdiscFluxColumn
        )
        catalogs["scarlet"] = scarlet_catalog(
            deblend,
            objects,
            class_names=class_names,
            band=band,
            flux_column=config.scarletFluxColumn,
            extendedness_column=config.extendednessColumn,
            extendedness_threshold=config.extendednessThreshold,
            object_id_column=config.objectIdColumn,
        )
        sep_table = None
        if config.doSepBaseline:
            if image is None:
                raise ValueError("doSepBaseline is set but no coadd image was given")
            sep_table = self.run_sep(image)
            catalogs["sep"] = sep_catalog(sep_table, band=band, flux_column=config.sepFluxColumn)
        if labels is not None:
            catalogs["labels"] = labels_catalog(labels, class_names=class_names)
        if truth is not None and reference_name == "truth":
            catalogs["truth"] = truth_catalog(
                truth,
                class_names=class_names,
                mag_column=config.truthMagColumn.format(band=band),
                type_column=config.truthTypeColumn,
                min_footprint_area=config.truthMinFootprintArea,
            )
        if inner_region is not None:
            for catalog in catalogs.values():
                catalog.in_region = inside_region(inner_region, catalog.ra, catalog.dec)

        reference = catalogs.pop(reference_name)
        image_bbox = None if image is None else (image.xy0[0], image.xy0[1], image.width, image.height)
        result = compare_to_reference(
            reference,
            catalogs,
            class_names=class_names,
            min_iou=config.minIou,
            max_distance=config.maxDistance,
            linking_length=config.linkingLength,
            image_bbox=image_bbox,
            do_coco=config.doCocoAp,
            coco_max_detections=config.cocoMaxDetections or None,
            tract=tract,
            patch=patch,
            reference_name=reference_name,
        )
        result.matches.meta["ref_band"] = band
        result.metrics.meta["ref_band"] = band
        overlay = artifact_overlay = scores = None
        if config.doOverlayPlot and image is not None:
            overlay = self.make_overlay(image, reference, catalogs, tract=tract, patch=patch)
        if config.doArtifacts and (truth_artifacts is not None or has_artifact_classes(deepdisc)):
            scores, truth_sources, detected = self.add_artifact_metrics(
                result, catalogs, deepdisc, truth_artifacts, image, inner_region
            )
            if config.doOverlayPlot and image is not None:
                artifact_overlay = self.make_artifact_overlay(image, truth_sources, detected, tract, patch)
        self._record(result.metrics, time.perf_counter() - start, tract, patch)
        return pipeBase.Struct(
            comparison=result.matches,
            metrics=result.metrics,
            overlay=overlay,
            artifactOverlay=artifact_overlay,
            artifacts=scores,
            sep=sep_table,
            details=result.details,
        )

    def add_artifact_metrics(
        self,
        result: Any,
        catalogs: Mapping[str, ComparisonCatalog],
        deepdisc: Table,
        truth_artifacts: Table | None,
        image: MultibandImage | None,
        inner_region: Any | None,
    ) -> tuple[Any, Any, Any]:
        """Artifact flags of every method and the artifact columns of the metrics (see the module docs).

        Returns
        -------
        scores, truth_sources, detected
            `~..core.comparison.ArtifactScores` (`None` without truth artifacts), the truth artifacts and
            DeepDISC's artifact detections as `~..core.matching.SourceArrays` (truth `None` when absent).
        """
        config = self.config
        classes = list(config.artifactClasses)
        threshold = config.artifactOverlapFraction
        detected = deepdisc_artifact_sources(deepdisc, classes)
        cover = spans_union(detected.spans)
        for catalog in catalogs.values():
            if catalog.artifact_flagged is None:
                catalog.artifact_flagged = artifact_cover_flags(catalog.sources, cover, threshold)
        artifact_rows = deepdisc[artifact_row_mask(deepdisc)]
        n_artifact_rows = len(artifact_rows)
        if inner_region is not None and n_artifact_rows:
            ra, dec = np.asarray(artifact_rows["coord_ra"]), np.asarray(artifact_rows["coord_dec"])
            n_artifact_rows = int(np.sum(inside_region(inner_region, ra, dec)))
        in_truth = scores = truth_sources = None
        if truth_artifacts is not None:
            truth_sources = truth_artifact_sources(
                truth_artifacts, classes, class_column=config.truthArtifactClassColumn
            )
            truth_cover = spans_union(truth_sources.spans)
            in_truth = {
                name: artifact_cover_flags(catalog.sources, truth_cover, threshold)
                for name, catalog in catalogs.items()
            }
            coco_image = None
            if image is not None:
                coco_image = CocoImage(width=image.width, height=image.height, xy0=image.xy0)
            scores = artifact_scores(truth_sources, detected, artifact_classes=classes, image=coco_image)
            self.log.info(
                "Artifacts: %d truth, %d detected; mask AP50 %.3f, AP %.3f, pixel IoU %.3f",
                scores.n_truth,
                scores.n_det,
                scores.ap50,
                scores.ap,
                scores.pixel_iou,
            )
        add_artifact_metrics(
            result,
            catalogs,
            in_truth_artifact=in_truth,
            n_artifact_rows={"deepdisc": n_artifact_rows},
            scores=scores,
        )
        return scores, truth_sources, detected

    def make_artifact_overlay(
        self, image: MultibandImage, truth: Any | None, detected: Any, tract: int = 0, patch: int = 0
    ) -> Any | None:
        """Truth artifacts next to DeepDISC's artifact detections around them (`None` without any)."""
        config = self.config
        classes = list(config.artifactClasses)
        panels_spans = [("truth artifacts", truth), ("DeepDISC artifacts", detected)]
        footprints = [s for _, sources in panels_spans if sources is not None for s in sources.spans]
        box = artifact_overlay_box(footprints, (image.xy0[0], image.xy0[1], image.width, image.height))
        if box is None:
            return None
        bands = [band for band in config.overlayBands if band in image.bands] or None
        rgb, xy0 = lupton_rgb(image, bands, box, stretch=config.overlayStretch or None, q=config.overlayQ)
        panels = []
        for label, sources in panels_spans:
            if sources is None:
                continue
            names = [
                f"artifact_{classes[c]}" if 0 <= c < len(classes) else "" for c in sources.class_id.tolist()
            ]
            panels.append(OverlayPanel(f"{label} ({len(sources)})", list(sources.spans), names))
        return overlay_figure(
            rgb, xy0, panels, class_colors=ARTIFACT_COLORS, title=f"tract {tract} patch {patch}: artifacts"
        )

    def run_sep(self, image: MultibandImage) -> Table:
        """The sep baseline on the coadd, with the configured parameters."""
        config = self.config
        return run_sep_baseline(
            image,
            thresh=config.sepThreshold,
            minarea=config.sepMinArea,
            deblend_nthresh=config.sepDeblendNthresh,
            deblend_cont=config.sepDeblendCont,
            invalid_planes=tuple(config.invalidMaskPlanes),
            psf_fwhm_pixels=self._psf_fwhm_pixels(image),
            star_size_ratio=config.sepStarSizeRatio,
        )

    def _psf_fwhm_pixels(self, image: MultibandImage) -> float | None:
        """PSF FWHM in pixels: the config value, else the largest band FWHM of the coadd metadata."""
        if self.config.sepPsfFwhm > 0:
            return float(self.config.sepPsfFwhm)
        fwhm_arcsec = image.metadata.get("psf_fwhm_arcsec")
        if not fwhm_arcsec or image.wcs is None:
            return None
        values = fwhm_arcsec.values() if isinstance(fwhm_arcsec, Mapping) else [fwhm_arcsec]
        values = [float(v) for v in values if v is not None and np.isfinite(float(v))]
        if not values:
            return None
        pixel_scale_arcsec = float(np.mean(proj_plane_pixel_scales(image.wcs.celestial))) * 3600.0
        return max(values) / pixel_scale_arcsec

    def _overlay_box(self, image: MultibandImage) -> tuple[int, int, int, int]:
        if self.config.overlayBox:
            x0, y0, width, height = (int(v) for v in self.config.overlayBox)
            return x0, y0, width, height
        size = self.config.overlaySize
        centre_x = image.xy0[0] + image.width // 2
        centre_y = image.xy0[1] + image.height // 2
        return centre_x - size // 2, centre_y - size // 2, size, size

    def make_overlay(
        self,
        image: MultibandImage,
        reference: ComparisonCatalog,
        catalogs: Mapping[str, ComparisonCatalog],
        tract: int = 0,
        patch: int = 0,
    ) -> Any:
        """The overlay figure: the reference's and every method's footprints, coloured by class."""
        config = self.config
        bands = [band for band in config.overlayBands if band in image.bands] or None
        rgb, xy0 = lupton_rgb(
            image, bands, self._overlay_box(image), stretch=config.overlayStretch or None, q=config.overlayQ
        )
        height, width = rgb.shape[:2]
        class_names = list(config.classNames)
        panels = []
        for name, catalog in {config.reference_name: reference, **catalogs}.items():
            sources = catalog.sources
            if sources.spans is None or sources.bbox is None:
                continue
            box = sources.bbox
            visible = np.flatnonzero(
                (box[:, 2] >= xy0[0])
                & (box[:, 0] < xy0[0] + width)
                & (box[:, 3] >= xy0[1])
                & (box[:, 1] < xy0[1] + height)
            )
            names = [
                class_names[c] if 0 <= c < len(class_names) else ""
                for c in sources.class_id[visible].tolist()
            ]
            label = f"{name} ({visible.size} footprints)"
            if name == config.reference_name:
                label = f"reference: {label}"
            panels.append(OverlayPanel(label, [sources.spans[i] for i in visible], names))
        title = f"tract {tract} patch {patch}: footprints by class"
        return overlay_figure(rgb, xy0, panels, title=title)

    def _record(self, metrics: Table, seconds: float, tract: int, patch: int) -> None:
        """Headline numbers in the task metadata and one log line per method."""
        self.metadata["total_seconds"] = seconds
        for row in metrics:
            method = str(row["method"])
            for key in ("n_ref", "n_det", "n_matched"):
                self.metadata[f"{method}_{key}"] = int(row[key])
            for key in ("completeness", "purity", "f1"):
                self.metadata[f"{method}_{key}"] = float(row[key])
            self.log.info(
                "tract=%d patch=%d %s vs %s: completeness %.3f, purity %.3f, F1 %.3f (%d reference, %d "
                "detections)",
                tract,
                patch,
                method,
                row["reference"],
                row["completeness"],
                row["purity"],
                row["f1"],
                row["n_ref"],
                row["n_det"],
            )
