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
"""DeepDiscDetectTask: DeepDISC instance segmentation of whole coadd patches."""

from __future__ import annotations

__all__ = ["DeepDiscDetectConfig", "DeepDiscDetectConnections", "DeepDiscDetectTask"]

import math
import time
from typing import Any, override

import numpy as np
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import (
    MODEL_DATASET_TYPE,
    MODEL_STORAGE_CLASS,
    MORPHOLOGY_DATASET_TYPE,
    MORPHOLOGY_STORAGE_CLASS,
)
from ..butler.regions import check_coadd_in_patch, inside_region, patch_and_tract_regions
from ..butler.tables import to_arrow
from ..core.binning import bin_image
from ..core.catalog import (
    build_artifact_mask,
    build_catalog,
    footprint_detection_snr,
    is_artifact_class,
    select_catalog_rows,
    set_primary_flags,
)
from ..core.footprints import spans_area
from ..core.ids import IdPacker
from ..core.inference import (
    InferenceConfig,
    add_coarse_detections,
    only_classes,
    run_tiled_inference,
    select_device,
)
from ..core.model_package import ModelPackage
from ..core.multiband import MissingBandError, MultibandImage
from ..core.peak_split import PeakSplitConfig, split_at_peaks
from ..core.star_galaxy import (
    ReliabilityClassifier,
    apply_star_galaxy,
    band_psf_sigmas,
    judge_reliability,
    measured_bands,
)
from ..core.threads import quantum_threads, torch_cpu_settings, torch_threads
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)
from .device import check_device, device_field
from .morphology import DeepDiscMorphologyTask


class DeepDiscDetectConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=("tract", "patch", "skymap"),
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `DeepDiscDetectTask`: per-band coadds and a model package in, a catalog out."""

    coadds = coadd_input_connection(
        "Per-band coadds to detect on (legacy name: deepCoadd_calexp, see config/tasks/)."
    )
    model = cT.PrerequisiteInput(
        doc="DeepDISC model package, found in an input collection such as pretrained_models/<name>.",
        name=MODEL_DATASET_TYPE,
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(),
    )
    catalog = cT.Output(
        doc="One row per detected source: footprint spans, class, probabilities, fluxes, flags.",
        name="object_deepdisc",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )
    sourceCatalog = cT.Output(
        doc="The same detections as an afw SourceCatalog with HeavyFootprints (needs lsst.afw).",
        name="object_deepdisc_footprints",
        storageClass="SourceCatalog",
        dimensions=("tract", "patch", "skymap"),
    )
    artifactMask = cT.Output(
        doc="Per-patch artifact mask: one row per artifact class with the union of its detected footprints "
        "as spans (no rows for a model without artifact classes).",
        name="object_deepdisc_artifact_mask",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )

    morphologyModel = cT.PrerequisiteInput(
        doc="Morphology classifier package (doMorphology), e.g. pretrained_models/deepdisc-morphology-sim.",
        name=MORPHOLOGY_DATASET_TYPE,
        storageClass=MORPHOLOGY_STORAGE_CLASS,
        dimensions=(),
    )
    morphology = cT.Output(
        doc="Hubble types of the bright galaxies (doMorphology; as DeepDiscMorphologyTask writes them).",
        name="object_deepdisc_morphology",
        storageClass="ArrowAstropy",
        dimensions=("tract", "patch", "skymap"),
    )

    def __init__(self, *, config: DeepDiscDetectConfig) -> None:
        super().__init__(config=config)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)
        if not config.doMorphology:
            del self.morphologyModel
            del self.morphology
        if not config.doWriteSourceCatalog:
            del self.sourceCatalog
        if not config.doWriteArtifactMask:
            del self.artifactMask


class DeepDiscDetectConfig(pipeBase.PipelineTaskConfig, pipelineConnections=DeepDiscDetectConnections):
    """Configuration of `DeepDiscDetectTask`."""

    bands = pexConfig.ListField[str](
        doc="Bands to feed the model, in order. Empty: the model package's bands (the usual choice).",
        default=[],
    )
    coaddStorageClass = coadd_storage_class_field()
    # Defaults come from the core's InferenceConfig (one source of truth; a test checks it).
    tileSize = pexConfig.Field[int](doc="Inference tile size (pixels).", default=InferenceConfig.tile_size)
    tileOverlap = pexConfig.Field[int](
        doc="Overlap between tiles (pixels); must exceed the largest expected source.",
        default=InferenceConfig.overlap,
    )
    batchSize = pexConfig.Field[int](
        doc="Tiles in flight at once: one forward pass on a GPU (8-16 keep one busy), shared among "
        "concurrent passes on the CPU (one tile per core: the default suits two cores).",
        default=InferenceConfig.batch_size,
    )
    device = device_field()
    halfPrecision = pexConfig.Field[bool](
        doc="fp16 autocast on GPU (ignored on CPU).", default=InferenceConfig.half
    )
    cpuBfloat16 = pexConfig.Field[bool](
        doc="CPU only: backbone and head layers under bfloat16 autocast, 1.2-1.3 times faster end to end on "
        "CPUs with bfloat16 instructions (Intel AMX, Sapphire Rapids and later; AVX512_BF16, AMD Zen 4); "
        "about 1% of the detections differ from float32's.  Off: the catalog is the float32 one.",
        default=InferenceConfig.cpu_bfloat16,
    )
    numThreads = pexConfig.Field[int](
        doc="Torch CPU threads; 0: pipetask's --cores-per-quantum (-n), outside pipetask $OMP_NUM_THREADS "
        "or the cores this process may use.  Logged; more threads than free cores slow torch several-fold.  "
        "The numpy stages (binning, peak splitting, the catalog's measurements) use as many threads.",
        default=0,
    )
    scoreThreshold = pexConfig.Field[float](
        doc="Detection score threshold of the model, lower or higher than the one it was packaged with. "
        "None: the package's operating point (chosen on validation data when it was trained; "
        "`deepdisc-model inspect` shows it), with a reliability classifier (doReliability) the network "
        "threshold of its candidates, else the model config's SCORE_THRESH_TEST.",
        default=None,
        optional=True,
    )
    minDetectionSnr = pexConfig.Field[float](
        doc="Drop detections whose footprint S/N over all bands (detection_snr) is below this (NaN: kept). "
        "A network also fires on noise blobs of a few pixels; like the 5-sigma threshold of a classical "
        "detection, this keeps them out of the catalog.  0 keeps every detection.",
        default=5.0,
    )
    doSplitPeaks = pexConfig.Field[bool](
        doc="Split a detection whose footprint holds two or more distinct, significant peaks of the "
        "PSF-smoothed detection image into one detection per peak (core.peak_split): the network "
        "sometimes outlines a bright galaxy and its neighbour as one source.  Footprints with saturated or "
        "missing pixels stay whole; needs the coadds' PSF FWHM (else skipped with a warning).",
        default=True,
    )
    splitMinPeakSnr = pexConfig.Field[float](
        doc="Significance of the PSF-smoothed detection image a peak needs to count (doSplitPeaks).",
        default=PeakSplitConfig.min_peak_snr,
    )
    splitMinContrast = pexConfig.Field[float](
        doc="Fraction of its height by which a peak must rise above the lowest point on the way to a "
        "brighter peak (doSplitPeaks).",
        default=PeakSplitConfig.min_contrast,
    )
    splitMinSeparation = pexConfig.Field[float](
        doc="Distance in PSF sigmas a peak must keep from every brighter peak (doSplitPeaks).",
        default=PeakSplitConfig.min_separation,
    )
    stitchMargin = pexConfig.Field[int](
        doc="Pixels by which tile interiors are widened when stitching, so that a source whose copies in two "
        "tiles jitter away from the tile boundary is still found once (duplicates are merged).",
        default=InferenceConfig.stitch_margin,
    )
    mergeIou = pexConfig.Field[float](
        doc="Mask IoU above which detections of the same source from different tiles are merged.",
        default=InferenceConfig.merge_iou,
    )
    edgeMargin = pexConfig.Field[int](
        doc="Footprints within this many pixels of the patch border get flag_patch_edge.", default=2
    )
    invalidMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes whose pixels carry no data (plus non-finite pixels).", default=["NO_DATA"]
    )
    maxInvalidFraction = pexConfig.Field[float](
        doc="If more than this fraction of the patch is invalid in every band, write an empty catalog.",
        default=0.999,
    )
    doWriteSourceCatalog = pexConfig.Field[bool](
        doc="Also write an afw SourceCatalog with HeavyFootprints (requires lsst.afw).", default=False
    )
    artifactOverlapFraction = pexConfig.Field[float](
        doc="A source whose footprint is covered by artifact footprints (classes 'artifact_*') over more "
        "than this fraction of its area gets flag_in_artifact.  Models without artifact classes flag "
        "nothing.",
        default=0.5,
    )
    doWriteArtifactMask = pexConfig.Field[bool](
        doc="Write object_deepdisc_artifact_mask (the union of the artifact footprints per class, as spans; "
        "empty for models without artifact classes).",
        default=True,
    )
    artifactBinning = pexConfig.Field[int](
        doc="Also run the model on the patch binned artifactBinning x artifactBinning, for its artifact "
        "classes only: large, faint ghosts and scattered light stand out of the noise there "
        "(core/binning.py).  -1: the binning the package was trained for (its artifact_binning; none: no "
        "binned pass); 0 or 1: no binned pass.",
        default=-1,
    )
    binnedArtifactMinArea = pexConfig.Field[int](
        doc="Binned-pass artifacts with a footprint smaller than this (patch pixels) are dropped: the "
        "binned examples of training have ghosts of 6 binned pixels radius and more (about 1400 pixels at "
        "binning 4), and smaller binned detections are mostly binned galaxies; small bright artifacts are "
        "left to the unbinned pass.",
        default=1024,
    )
    artifactScoreThreshold = pexConfig.Field[float](
        doc="Score threshold of the binned artifact pass; None: the package's (artifact_score_threshold), "
        "else the sources' threshold.",
        default=None,
        optional=True,
    )
    doStarGalaxy = pexConfig.Field[bool](
        doc="Set the class of star and galaxy rows from the package's star-galaxy classifier (PSF-matched "
        "excess, colours and the network's log-odds; core.star_galaxy) when the package has one and the "
        "patch has its bands; off: the network's class.  star_galaxy_prob is NaN where it is not run.",
        default=True,
    )
    doReliability = pexConfig.Field[bool](
        doc="Judge the detections with the package's reliability classifier when it has one and the patch "
        "has its bands (core.star_galaxy.ReliabilityClassifier): the network runs at the classifier's "
        "candidate threshold and the star and galaxy rows whose reliability (PSF-matched S/N and colours, "
        "the network's score) is below its threshold are dropped.  Off, or without enough bands: the "
        "package's score threshold alone.  The reliability column is NaN where it is not run.",
        default=True,
    )
    reliabilityThreshold = pexConfig.Field[float](
        doc="Reliability a star or galaxy detection needs to be kept; None: the package's (chosen on "
        "training detections for a target purity).",
        default=None,
        optional=True,
    )
    starGalaxyThreshold = pexConfig.Field[float](
        doc="Star-probability threshold of the star-galaxy classifier; None: the package's (chosen on "
        "validation when it was trained).",
        default=None,
        optional=True,
    )
    doMorphology = pexConfig.Field[bool](
        doc="Also classify the bright galaxies into Hubble types (the morphology subtask) on the coadds "
        "already in memory, and write object_deepdisc_morphology: the cheap way to run the morphology "
        "stage.  Off: run pipelines/DeepDiscMorphology.yaml#morphology afterwards if wanted.",
        default=False,
    )
    morphology = pexConfig.ConfigurableField(
        target=DeepDiscMorphologyTask,
        doc="Morphology classification of the detected galaxies (doMorphology).",
    )
    tractBits = pexConfig.Field[int](doc="Bits for the tract in packed source ids.", default=16)
    patchBits = pexConfig.Field[int](doc="Bits for the patch in packed source ids.", default=12)

    @override
    def validate(self) -> None:
        super().validate()
        check_device(self)
        if self.starGalaxyThreshold is not None and not 0.0 < self.starGalaxyThreshold < 1.0:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.starGalaxyThreshold, self, "starGalaxyThreshold must be in (0, 1)"
            )
        if self.tileOverlap >= self.tileSize:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.tileOverlap, self, "tileOverlap must be smaller than tileSize"
            )
        if self.scoreThreshold is not None and not 0.0 <= self.scoreThreshold <= 1.0:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.scoreThreshold, self, "scoreThreshold must be in [0, 1] or None"
            )
        if self.artifactBinning < -1:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.artifactBinning, self, "artifactBinning must be -1, 0 or positive"
            )
        if self.artifactScoreThreshold is not None and not 0.0 <= self.artifactScoreThreshold <= 1.0:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.artifactScoreThreshold, self, "artifactScoreThreshold must be in [0, 1]"
            )
        try:
            self.peak_split_config()
        except ValueError as error:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.doSplitPeaks, self, str(error)
            ) from None
        if not 0.0 <= self.artifactOverlapFraction < 1.0:
            raise pexConfig.FieldValidationError(
                DeepDiscDetectConfig.artifactOverlapFraction,
                self,
                "artifactOverlapFraction must be in [0, 1)",
            )

    def peak_split_config(self) -> PeakSplitConfig:
        """The peak-splitting thresholds (``split*`` fields) as a `..core.peak_split.PeakSplitConfig`."""
        return PeakSplitConfig(
            min_peak_snr=self.splitMinPeakSnr,
            min_contrast=self.splitMinContrast,
            min_separation=self.splitMinSeparation,
        )


def _artifact_classes(model_package: ModelPackage) -> np.ndarray:
    """Boolean per class of the package: an artifact class (``artifact_*``, `is_artifact_class`)."""
    return np.asarray(is_artifact_class(list(model_package.class_names)), dtype=bool)


class DeepDiscDetectTask(pipeBase.PipelineTask):
    """Detect, deblend and classify sources on a coadd patch with a DeepDISC model.

    The model package decides the bands (and their order), the contrast scaling and the classes; the task
    checks the data against it before any pixel is read, scales the patch, runs tiled inference and writes
    one catalog row per source with its footprint as spans.  A model with artifact classes (``artifact_*``)
    also gets artifact rows (``is_artifact``, never primary), ``flag_in_artifact`` on the sources they cover
    (``artifactOverlapFraction``) and the per-patch mask ``object_deepdisc_artifact_mask``.
    """

    ConfigClass = DeepDiscDetectConfig
    _DefaultName = "deepDiscDetect"
    config: DeepDiscDetectConfig

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.config.doMorphology:
            self.makeSubtask("morphology")

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        # Model first: a model that cannot serve these data fails before any coadd is read.
        model_package: ModelPackage = butlerQC.get(inputRefs.model)
        bands = self.select_bands(model_package, [str(ref.dataId["band"]) for ref in inputRefs.coadds])
        morphology_package = None
        if self.config.doMorphology:
            morphology_package = butlerQC.get(inputRefs.morphologyModel)
            try:  # Before any pixel is read: no half-done quantum.
                self.morphology.select_bands(morphology_package, list(bands))
            except MissingBandError as error:
                raise MissingBandError(
                    f"doMorphology: {error} (detection reads {list(bands)}); set doMorphology=False"
                ) from None
        image = read_coadds(
            butlerQC, inputRefs.coadds, bands, self.config.coaddStorageClass, f"model {model_package.name!r}"
        )
        data_id = butlerQC.quantum.dataId
        patch_region, tract_region = patch_and_tract_regions(data_id)
        check_coadd_in_patch(image, patch_region, data_id)  # A coadd filed under the wrong patch: an error.
        threads = quantum_threads(self.config.numThreads, butlerQC.resources.num_cores)
        result = self.run(
            image,
            model_package,
            tract=int(data_id["tract"]),
            patch=int(data_id["patch"]),
            patch_region=patch_region,
            tract_region=tract_region,
            num_threads=threads,
        )
        butlerQC.put(to_arrow(result.catalog), outputRefs.catalog)
        if self.config.doWriteSourceCatalog:
            from ..butler.afw_catalog import make_source_catalog  # lazy: needs lsst.afw

            butlerQC.put(make_source_catalog(result.catalog, image), outputRefs.sourceCatalog)
        if self.config.doWriteArtifactMask:
            butlerQC.put(to_arrow(result.artifactMask), outputRefs.artifactMask)
        if self.config.doMorphology:
            catalog = result.catalog
            galaxies = catalog[self.morphology.select(catalog)]
            morphology = self.morphology.run(galaxies, image, morphology_package, num_threads=threads)
            butlerQC.put(to_arrow(morphology.morphology), outputRefs.morphology)

    def select_bands(self, model_package: ModelPackage, available: list[str]) -> list[str]:
        """Bands to read, in the model's order; raise before any work if the data cannot serve the model.

        Raises
        ------
        MissingBandError
            If ``config.bands`` disagrees with the model's bands.
        BandMismatchError
            If a band the model needs has no coadd for this patch (the message names both band lists).
        """
        if self.config.bands:
            wanted = list(self.config.bands)
            subset = model_package.min_bands is not None and set(wanted) <= set(model_package.bands)
            if wanted != list(model_package.bands) and not subset:
                raise MissingBandError(
                    f"config.bands {wanted} differ from the bands the model {model_package.name!r} was "
                    f"trained on {list(model_package.bands)}; leave config.bands empty or use a model for "
                    "these bands"
                )
            available = [band for band in available if band in wanted]
        return list(model_package.usable_bands(available))

    def run(
        self,
        image: MultibandImage,
        model_package: ModelPackage,
        tract: int = 0,
        patch: int = 0,
        patch_region: Any | None = None,
        tract_region: Any | None = None,
        num_threads: int | None = None,
    ) -> pipeBase.Struct:
        """Detect sources on a multi-band image.

        Parameters
        ----------
        image : `MultibandImage`
            The patch, with the model's bands (reordered if needed).
        model_package : `ModelPackage`
            The model.
        tract, patch : `int`
            Used to pack ids unique across patches.
        patch_region, tract_region : `lsst.sphgeom.Region`, optional
            The patch's and the tract's inner regions, for ``detect_isPatchInner``, ``detect_isTractInner``
            and ``detect_isPrimary``; without them every row is flagged inner (with a warning).
        num_threads : `int`, optional
            Torch CPU threads, overriding ``config.numThreads`` (`runQuantum` passes pipetask's cores).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``catalog`` (`astropy.table.Table`), ``detections`` (core ``Detections``) and ``artifactMask``
            (`astropy.table.Table`, `~..core.catalog.build_artifact_mask`: the union of the artifact
            footprints per artifact class; no rows for a model without artifact classes).
        """
        start = time.perf_counter()
        used = model_package.usable_bands(image.bands)
        image = image.select_bands(used)
        self.metadata["bands_used"] = list(used)
        if used != model_package.bands:
            self.log.info(
                "Running model %r on bands %s of its %s (absent: %s).",
                model_package.name,
                "".join(used),
                "".join(model_package.bands),
                "".join(band for band in model_package.bands if band not in used),
            )
        threads_wanted = self.config.numThreads if num_threads is None else num_threads
        # Torch's thread count (torch_cpu_settings below applies it): the numpy stages around the inference
        # (binning, peak splitting, the catalog's measurements) spread their bands or rows over as many.
        threads, _ = torch_threads(threads_wanted)
        invalid = image.invalid_pixels(self.config.invalidMaskPlanes)
        valid_any_band = ~invalid.all(axis=0)
        id_packer = IdPacker(n_tracts_bits=self.config.tractBits, n_patches_bits=self.config.patchBits)
        catalog_kwargs = dict(
            class_names=tuple(model_package.class_names),
            tract=tract,
            patch=patch,
            model_name=model_package.name,
            model_version=str(model_package.version),
            id_packer=id_packer,
            edge_margin=self.config.edgeMargin,
            invalid_planes=tuple(self.config.invalidMaskPlanes),
            artifact_overlap_threshold=self.config.artifactOverlapFraction,
            threads=threads,
        )
        invalid_fraction = 1.0 - float(valid_any_band.mean())
        self.metadata["invalid_fraction"] = invalid_fraction
        if invalid_fraction > self.config.maxInvalidFraction:
            self.log.warning(
                "Patch tract=%d patch=%d: %.1f%% of pixels lack data in all bands; writing an empty catalog.",
                tract,
                patch,
                100 * invalid_fraction,
            )
            from ..core.inference import Detections

            detections = Detections.empty(len(model_package.class_names))
            catalog = build_catalog(detections, image, **catalog_kwargs)
            self.flag_primary(catalog, patch_region, tract_region)
            self.classify_stars(catalog, model_package)
            self._record(catalog, start, device="none", inference_seconds=0.0)
            return pipeBase.Struct(
                catalog=catalog, detections=detections, artifactMask=build_artifact_mask(catalog)
            )

        if tuple(used) == tuple(model_package.bands):
            # Scaled tile by tile as the inference reads the tiles: the scaled patch is never held whole.
            del invalid
            scaled = model_package.scaling.scaled_cube(image)
        else:
            scaled = self._network_input(model_package, image, invalid)
            del invalid
        device = select_device(self.config.device)
        with torch_cpu_settings(threads_wanted, log=self.log):
            if device.type == "cpu":
                self.metadata["torch_threads"] = threads
            reliability = self.reliability_classifier(model_package, used)
            model, inference_config = self._build_model(model_package, device, len(used), reliability)
            detections, inference_seconds = self._infer(
                model, model_package, inference_config, scaled, image, valid_any_band, tract, patch
            )
            if reliability is not None:
                # The classifier judges sources only: artifacts keep the operating threshold, before the
                # binned pass's artifacts are merged with them.
                detections = self._drop_faint_artifacts(detections, model_package, len(used))
            del scaled  # The binned pass and the catalog work from the unscaled image.
            binning = self.artifact_binning(model_package)
            if binning > 1:
                t0 = time.perf_counter()
                coarse = self._infer_binned_artifacts(
                    model, model_package, inference_config, image, binning, threads
                )
                detections = add_coarse_detections(detections, coarse, self.config.mergeIou)
                inference_seconds += time.perf_counter() - t0
        if self.config.doSplitPeaks and len(detections):
            detections = self.split_peaks(detections, image, model_package, threads)
        if self.config.minDetectionSnr > 0 and len(detections):
            snr = footprint_detection_snr(
                detections, image, invalid_planes=tuple(self.config.invalidMaskPlanes), threads=threads
            )
            # NaN compares false: kept.  Artifacts (ghosts, rays) are kept whatever their S/N: the cut is
            # the classical detection threshold of sources.
            artifact = _artifact_classes(model_package)
            faint = (snr < self.config.minDetectionSnr) & ~artifact[detections.class_ids]
            self.metadata["n_below_min_snr"] = int(faint.sum())
            if faint.any():
                self.log.info(
                    "Dropping %d of %d detections with detection_snr < %g",
                    int(faint.sum()),
                    len(detections),
                    self.config.minDetectionSnr,
                )
                # Cut before the catalog is built, so that ids, families and apportioning ignore them.
                detections = detections.select(~faint)
        # The catalog measures the unscaled image (the network's input is freed by now).
        catalog = build_catalog(detections, image, **catalog_kwargs)
        if reliability is not None:
            detections, catalog = self.judge(
                catalog, detections, reliability, model_package, image, catalog_kwargs
            )
        self.flag_primary(catalog, patch_region, tract_region)
        self.classify_stars(catalog, model_package)
        self._record(catalog, start, device=str(device), inference_seconds=inference_seconds)
        return pipeBase.Struct(
            catalog=catalog, detections=detections, artifactMask=build_artifact_mask(catalog)
        )

    def _network_input(
        self, model_package: ModelPackage, image: MultibandImage, invalid: np.ndarray
    ) -> np.ndarray:
        """The network input of an image scaled whole.

        ``invalid`` (`MultibandImage.invalid_pixels` of ``invalidMaskPlanes``), built once, is reused when
        the scaling counts the same planes; bands of the model absent from ``image`` become NaN planes
        (`ModelPackage.network_input`).
        """
        same_planes = tuple(model_package.scaling.invalid_planes) == tuple(self.config.invalidMaskPlanes)
        scaled, _ = model_package.scaling.apply(image, invalid if same_planes else None)
        return model_package.network_input(scaled, list(image.bands))

    def operating_threshold(self, model_package: ModelPackage, n_bands: int) -> float | None:
        """The score threshold of sources without a reliability classifier, and of artifacts.

        ``scoreThreshold`` if set, else the package's for ``n_bands`` bands present (`None`: the model
        config's).
        """
        if self.config.scoreThreshold is not None:
            return self.config.scoreThreshold
        return model_package.score_threshold_for(n_bands)

    def _build_model(
        self,
        model_package: ModelPackage,
        device: Any,
        n_bands: int,
        reliability: ReliabilityClassifier | None = None,
    ) -> tuple[Any, InferenceConfig]:
        """The network and the tiling settings.

        The score threshold is the configured one, else the ``network_threshold`` of the ``reliability``
        classifier that will judge the detections, else the package's for ``n_bands`` bands present.
        """
        score_threshold = self.operating_threshold(model_package, n_bands)
        if reliability is not None and self.config.scoreThreshold is None:
            score_threshold = reliability.network_threshold
        model = model_package.build_model(device=str(device), score_threshold=score_threshold)
        self.metadata["score_threshold"] = math.nan if score_threshold is None else score_threshold
        inference_config = InferenceConfig(
            tile_size=self.config.tileSize,
            overlap=self.config.tileOverlap,
            batch_size=self.config.batchSize,
            device=str(device),
            half=self.config.halfPrecision,
            cpu_bfloat16=self.config.cpuBfloat16,
            merge_iou=self.config.mergeIou,
            stitch_margin=self.config.stitchMargin,
        )
        return model, inference_config

    def _infer(
        self,
        model: Any,
        model_package: ModelPackage,
        inference_config: InferenceConfig,
        scaled: np.ndarray,
        image: MultibandImage,
        valid_any_band: np.ndarray,
        tract: int,
        patch: int,
    ) -> tuple[Any, float]:
        """Tiled inference on the scaled patch; returns the detections and the seconds it took."""
        self.log.info(
            "Running %s (%s) on tract=%d patch=%d: %dx%d px, bands %s, device %s",
            model_package.name,
            model_package.version,
            tract,
            patch,
            image.width,
            image.height,
            "".join(image.bands),
            inference_config.device,
        )
        t0 = time.perf_counter()
        detections = run_tiled_inference(
            model, scaled, xy0=image.xy0, config=inference_config, valid=valid_any_band, log=self.log
        )
        inference_seconds = time.perf_counter() - t0
        return detections, inference_seconds

    def artifact_binning(self, model_package: ModelPackage) -> int:
        """The binning of the artifact pass (`config.artifactBinning` or the package's); 0: none."""
        has_artifacts = bool(_artifact_classes(model_package).any())
        binning = self.config.artifactBinning
        if binning == -1:
            binning = model_package.artifact_binning or 0
        if binning > 1 and not has_artifacts:
            self.log.warning(
                "artifactBinning=%d ignored: model %r has no artifact classes", binning, model_package.name
            )
            return 0
        return binning if binning > 1 else 0

    def _infer_binned_artifacts(
        self,
        model: Any,
        model_package: ModelPackage,
        inference_config: InferenceConfig,
        image: MultibandImage,
        binning: int,
        threads: int = 1,
    ) -> Any:
        """The artifact classes found on the patch binned ``binning`` x ``binning``, in patch coordinates.

        ``threads``: the bands binned at once (`..core.binning.bin_image`).
        """
        planes = tuple(self.config.invalidMaskPlanes)
        binned = bin_image(image, binning, planes, threads=threads)
        invalid = binned.invalid_pixels(planes)
        scaled = self._network_input(model_package, binned, invalid)
        artifact_ids = np.flatnonzero(_artifact_classes(model_package))
        self.log.info(
            "Artifact pass on the patch binned %dx%d (%dx%d px), classes %s",
            binning,
            binning,
            binned.width,
            binned.height,
            ", ".join(model_package.class_names[i] for i in artifact_ids),
        )
        threshold = self.config.artifactScoreThreshold
        if threshold is None:
            threshold = model_package.artifact_score_threshold
        if threshold is None:
            threshold = self.operating_threshold(model_package, len(image.bands))
        self.metadata["artifact_score_threshold"] = math.nan if threshold is None else threshold
        with only_classes(model, artifact_ids.tolist(), threshold):
            coarse = run_tiled_inference(
                model, scaled, xy0=(0, 0), config=inference_config, valid=~invalid.all(axis=0), log=self.log
            )
        coarse = coarse.unbinned(binning, image.xy0, image.shape)
        areas = np.array([spans_area(f) for f in coarse.footprints], dtype=np.int64)
        coarse = coarse.select(areas >= self.config.binnedArtifactMinArea)
        self.metadata["n_binned_artifacts"] = len(coarse)
        return coarse

    def flag_primary(self, catalog: Table, patch_region: Any | None, tract_region: Any | None) -> None:
        """Set the primary flags of ``catalog`` from the inner regions (warn when they are unknown)."""
        if patch_region is None or tract_region is None:
            missing = [name for name, r in (("patch", patch_region), ("tract", tract_region)) if r is None]
            self.log.warning(
                "No %s region: detect_isPrimary is true for every row, so the patch overlaps are not "
                "resolved; concatenated patches will hold the sources of their overlaps twice",
                " and ".join(missing),
            )
            return
        ra, dec = np.asarray(catalog["coord_ra"]), np.asarray(catalog["coord_dec"])
        set_primary_flags(
            catalog,
            inside_region(patch_region, ra, dec),
            inside_region(tract_region, ra, dec),
            source="patch and tract regions of the data ID",
        )

    def reliability_classifier(
        self, model_package: ModelPackage, bands: tuple[str, ...] | list[str]
    ) -> ReliabilityClassifier | None:
        """The package's reliability classifier for ``bands`` (`ModelPackage.reliability_for`), or `None`.

        `None` when the package has none, ``doReliability`` is off, or too few of its bands are present (then
        logged: the package's score threshold applies).
        """
        self.metadata["reliability_applied"] = False
        if not model_package.reliability or not self.config.doReliability:
            return None
        classifier = model_package.reliability_for(bands)
        if classifier is None:
            self.log.warning(
                "Reliability classifier skipped: the package's need %s of bands %s and the patch has %s; "
                "the package's score threshold applies.",
                [c.min_bands for c in model_package.reliability],
                [list(c.bands) for c in model_package.reliability],
                list(bands),
            )
        return classifier

    def _drop_faint_artifacts(self, detections: Any, model_package: ModelPackage, n_bands: int) -> Any:
        """The detections without the artifact-class ones scoring below `operating_threshold`."""
        floor = self.operating_threshold(model_package, n_bands)
        if floor is None or not len(detections):
            return detections
        artifact = _artifact_classes(model_package)
        faint = artifact[detections.class_ids] & (np.asarray(detections.scores) < floor)
        return detections.select(~faint) if faint.any() else detections

    def judge(
        self,
        catalog: Table,
        detections: Any,
        classifier: ReliabilityClassifier,
        model_package: ModelPackage,
        image: MultibandImage,
        catalog_kwargs: dict[str, Any],
    ) -> tuple[Any, Table]:
        """Keep the detections that the reliability classifier accepts; the detections and their catalog.

        The kept rows' ids, families, apportioned fluxes and artifact cover are worked out again without the
        dropped ones (`select_catalog_rows`: no source is measured twice); the ``reliability`` column holds
        the classifier's probability.
        Rows it does not judge (artifacts, already held to `operating_threshold`) are kept.
        When the catalog lacks PSF photometry in enough of the classifier's bands (no PSF FWHM), the
        package's score threshold is applied instead, with a warning.
        """
        threshold = self.config.reliabilityThreshold
        measured = measured_bands(catalog)
        if classifier.runs_on(measured):
            result = judge_reliability(catalog, classifier, threshold)
            keep, reliability = result.keep, result.reliability
            self.metadata["reliability_applied"] = True
            self.metadata["reliability_threshold"] = result.threshold
            self.metadata["n_unreliable"] = result.dropped
            self.log.info(
                "Reliability classifier: kept %d of %d candidate sources scoring >= %.3g (reliability >= "
                "%.3g).",
                result.judged - result.dropped,
                result.judged,
                self.metadata["score_threshold"],
                result.threshold,
            )
        else:
            fallback = self.operating_threshold(model_package, len(image.bands))
            fallback = self.metadata["score_threshold"] if fallback is None else fallback
            keep = np.asarray(catalog["score"]) >= fallback
            reliability = np.full(len(catalog), np.nan, dtype=np.float32)
            self.log.warning(
                "Reliability classifier skipped: it needs PSF photometry in %d of bands %s and the catalog "
                "has it in %s (no PSF FWHM); keeping the %d detections scoring >= %.3g.",
                classifier.min_bands,
                list(classifier.bands),
                measured,
                int(keep.sum()),
                fallback,
            )
        catalog["reliability"][:] = reliability
        if keep.all():
            return detections, catalog
        catalog = select_catalog_rows(
            catalog,
            keep,
            detections,
            image,
            invalid_planes=catalog_kwargs["invalid_planes"],
            threads=catalog_kwargs["threads"],
        )
        return detections.select(keep), catalog

    def split_peaks(
        self, detections: Any, image: MultibandImage, model_package: ModelPackage, threads: int = 1
    ) -> Any:
        """Split the footprints holding several distinct bright peaks (`..core.peak_split.split_at_peaks`).

        Skipped, with a warning, when the coadds carry no PSF FWHM (the smoothing and the separation are
        in PSF sigmas).
        """
        sigmas = band_psf_sigmas(image)
        if not sigmas:
            self.log.warning("Peak splitting skipped: the coadds carry no PSF FWHM.")
            return detections
        detections, split = split_at_peaks(
            detections,
            image,
            _artifact_classes(model_package),
            sigma=float(np.median(list(sigmas.values()))),
            config=self.config.peak_split_config(),
            invalid_planes=tuple(self.config.invalidMaskPlanes),
            threads=threads,
        )
        self.metadata["n_split_footprints"] = split
        self.log.info("Peak splitting: %d footprints split, %d detections now.", split, len(detections))
        return detections

    def classify_stars(self, catalog: Table, model_package: ModelPackage) -> None:
        """Apply the package's star-galaxy classifier to ``catalog`` (in place) when configured and possible.

        The package's first classifier that the measured bands allow (`ModelPackage.star_galaxy_for`).
        Skipped, with a log line, when the package has none, ``doStarGalaxy`` is off, or no classifier has
        PSF photometry in enough of its bands (band subsets, coadds without a PSF FWHM): the network's
        classes stay.
        """
        self.metadata["star_galaxy_applied"] = False
        if not model_package.star_galaxy or not self.config.doStarGalaxy:
            return
        measured = measured_bands(catalog)
        classifier = model_package.star_galaxy_for(measured)
        if classifier is None:
            self.log.warning(
                "Star-galaxy classifier skipped: the package's need PSF photometry in %s of bands %s, and "
                "this catalog has it in %s (absent coadds or no PSF FWHM); classes are the network's.",
                [c.min_bands for c in model_package.star_galaxy],
                [list(c.bands) for c in model_package.star_galaxy],
                measured,
            )
            return
        missing = [band for band in classifier.bands if band not in measured]
        if missing:
            self.log.info(
                "Star-galaxy classifier (any %d bands) runs without %s.", classifier.min_bands, missing
            )
        result = apply_star_galaxy(
            catalog, classifier, model_package.class_names, threshold=self.config.starGalaxyThreshold
        )
        catalog.meta["star_galaxy"] = {"threshold": result.threshold, "changed": result.changed}
        self.metadata["star_galaxy_applied"] = True
        self.metadata["star_galaxy_changed"] = result.changed
        self.log.info(
            "Star-galaxy classifier: %d stars among %d sources (threshold %.3g); %d classes changed from the "
            "network's.",
            result.stars,
            result.classified,
            result.threshold,
            result.changed,
        )

    def _record(self, catalog: Table, start: float, device: str, inference_seconds: float) -> None:
        """Counts and timings in the task metadata (and one summary log line)."""
        n = len(catalog)
        counts = {}
        if n and "class_name" in catalog.colnames:
            names, numbers = np.unique(np.asarray(catalog["class_name"], dtype=str), return_counts=True)
            counts = {str(k): int(v) for k, v in zip(names, numbers)}
        total = time.perf_counter() - start
        self.metadata["n_sources"] = n
        n_bad_variance = int(np.sum(catalog["flag_bad_variance"])) if n else 0
        self.metadata["n_bad_variance"] = n_bad_variance
        if n_bad_variance:
            self.log.warning(
                "%d of %d sources cover pixels with zero, negative or non-finite variance: their flux errors "
                "leave those pixels out (NaN when none is left) and flag_bad_variance is set",
                n_bad_variance,
                n,
            )
        for name, value in counts.items():
            self.metadata[f"n_{name}"] = value
        if n and "is_artifact" in catalog.colnames:
            self.metadata["n_artifacts"] = int(np.sum(catalog["is_artifact"]))
            self.metadata["n_flag_in_artifact"] = int(np.sum(catalog["flag_in_artifact"]))
        self.metadata["inference_seconds"] = inference_seconds
        self.metadata["total_seconds"] = total
        self.metadata["device"] = device
        self.log.info(
            "Detected %d sources %s in %.1f s (inference %.1f s).", n, counts, total, inference_seconds
        )
