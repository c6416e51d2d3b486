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
r"""DeepDiscTrainTask: train a DeepDISC model on Butler labels and write the model package back.

One quantum trains one model.  The task has **no dimensions**: its inputs, ``deepdisc_labels`` (tract,
patch) and the per-band coadds (tract, patch, band), are ``multiple=True`` connections gathering every patch
that the data query (``-d``) selects, and its outputs have no dimensions either - ``deepdisc_model`` is
exactly what the detection task (``pipelines/DeepDisc.yaml``) takes as its ``PrerequisiteInput``, so the
training output collection can be passed straight to it with ``-i``.  Next to the model it writes
``deepdisc_training_history`` (ArrowAstropy, one row per validation: loss components and metrics; not
``..._log``, a suffix pipe_base reserves for task logs) and ``deepdisc_training_plot`` (Plot)::

    pipetask run -b REPO -i LABELS_COLLECTION -o u/$USER/deepdisc_train \
        -p $MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/DeepDiscTrain.yaml#train -d "skymap='SKYMAP' AND tract=T"
    pipetask run -b REPO -i COADDS,u/$USER/deepdisc_train -o u/$USER/deepdisc \
        -p $MEAS_EXTENSIONS_DEEPDISC_DIR/pipelines/DeepDisc.yaml -d "skymap='SKYMAP' AND tract=T"

Train/validation split
----------------------
Patches, not tiles, are split, so that no source is seen in both sets: ``validationPatches`` /
``trainPatches`` name them explicitly (``"TRACT:PATCH"``, or ``"PATCH"`` for that patch in every tract);
otherwise a ``validationFraction`` of the patches is drawn with ``splitSeed`` from the sorted patch list, so
the split depends only on the set of patches.  Each patch is then cut into scaled tiles of ``tileSize``
(`~lsst.meas.extensions.deepdisc.core.labels.labels_to_examples`); all examples are held in memory.
With ``doCacheExamples`` (the default) the examples of each patch are kept in
``<checkpointRoot>/examples/`` (`~lsst.meas.extensions.deepdisc.core.example_cache`), keyed by the ids of the
patch's label and coadd datasets and by every setting the examples depend on, so that a re-run or a resumed
run reads them back instead of reading and cutting the coadds again; the log says how many were reused.

Checkpoints and resuming
------------------------
Training checkpoints (`~lsst.meas.extensions.deepdisc.core.training`) go to ``checkpointDir`` if set, else
to ``<checkpointRoot>/<output collection>/<training key>``:

* ``checkpointRoot`` defaults to ``$DEEPDISC_CHECKPOINT_ROOT``, else
  ``$XDG_CACHE_HOME/meas_extensions_deepdisc/checkpoints`` (``~/.cache/...``).  Under BPS it must be on a
  file system that every job sees.
* The output collection is the output RUN with pipetask's trailing ``/<YYYYMMDDTHHMMSSZ>`` removed, i.e. the
  ``-o`` collection.  Re-issuing the *same* ``pipetask run -o COLL ...`` command after an interruption (it
  makes a new timestamped RUN) and ``--extend-run --clobber-outputs`` (the same RUN; the failed quantum left
  its log there, and pipetask then insists on an unchanged configuration) therefore both find the checkpoint
  and continue at its iteration.  A different ``-o``, or ``--output-run`` with another name, starts afresh.
* The training key is a hash of everything that determines the training: the task configuration (except
  ``stopAfter``, the checkpoint location, ``device``, ``logPeriod``, ``keepCheckpoints``, the package name
  and version and the connection names) and the training data (bands, patches of each set, example
  geometry, labels).  A changed configuration or data set gets a fresh directory, never a silently
  mismatched resume.  To continue a finished training with a longer schedule, set ``checkpointDir`` to
  its directory (logged, and recorded in the model provenance).

The directory is kept after success; re-running then returns the finished model without training again.
``stopAfter`` stops a run after that many iterations, once a checkpoint is written, and fails the quantum
with `TrainingInterruptedError` (like a batch-system time limit): no partial model is ever written.  Each
re-run with ``stopAfter`` trains that many more iterations (chunked training); one without it finishes.
"""

from __future__ import annotations

__all__ = [
    "DeepDiscTrainConfig",
    "DeepDiscTrainConnections",
    "DeepDiscTrainTask",
    "PatchKey",
    "TrainingInterruptedError",
    "choose_split",
    "default_checkpoint_root",
    "output_collection_of_run",
    "parse_patch_spec",
]

import dataclasses
import functools
import json
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, override

import numpy as np
import yaml
from astropy.table import Table

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from ..butler.model_formatter import MODEL_DATASET_TYPE, MODEL_STORAGE_CLASS
from ..butler.tables import to_arrow
from ..core.augment import band_subset
from ..core.augment_sky import SkyAugmentConfig
from ..core.binning import bin_image, bin_labels
from ..core.checkpoints import last_checkpoint_iteration, load_checkpoint_state_dict
from ..core.example_cache import ExampleCache, cache_key
from ..core.inference import select_device
from ..core.labels import labels_to_examples
from ..core.model_package import ModelPackage
from ..core.models import ARCHITECTURES, ModelSpec, make_model_config
from ..core.multiband import MissingBandError, MultibandImage
from ..core.operating_point import DEFAULT_THRESHOLDS, choose_operating_point, precision_recall_curve
from ..core.plots import training_history_figure
from ..core.scaling import SCALINGS, ScalingSpec
from ..core.threads import quantum_threads
from ..core.training import TrainingConfig, infer_examples, make_history_table, train_model
from ..core.training_data import (
    PatchKey,
    TrainingExample,
    choose_split,
    parse_patch_spec,
    pixel_statistics,
    training_key,
)
from ..version import __version__
from .coadd_inputs import (
    coadd_input_connection,
    coadd_storage_class_field,
    read_coadds,
    use_coadd_storage_class,
)
from .device import check_device, device_field

_PATCH_DIMENSIONS = ("tract", "patch", "skymap")
# Bands in wavelength order, for choosing the default band order; other bands follow, sorted by name.
_BAND_ORDER = ("u", "g", "r", "i", "z", "y")
_RUN_TIMESTAMP = re.compile(r"/\d{8}T\d{6}Z$")
# Config fields that do not change what is trained, so they stay out of the training key.
_NOT_IN_TRAINING_KEY = frozenset(
    {
        "stopAfter",
        "checkpointRoot",
        "checkpointDir",
        "device",
        "logPeriod",
        "keepCheckpoints",
        "numThreads",
        "doOperatingPoint",
        "operatingPointRule",
        "operatingMinPrecision",
        "operatingThresholds",
        "prefetchBatches",
        "doCacheExamples",
        "exampleCacheDir",
        "modelName",
        "modelVersion",
        "coaddStorageClass",
        "connections",
        "saveLogOutput",
        "saveMetadata",
    }
)


class TrainingInterruptedError(RuntimeError):
    """Training stopped early (``stopAfter``) after writing a checkpoint; re-running resumes it."""


class DeepDiscTrainConnections(
    pipeBase.PipelineTaskConnections,
    dimensions=(),
    defaultTemplates={"coaddName": "deep"},
):
    """Connections of `DeepDiscTrainTask`: labels and coadds of every selected patch in, a model out."""

    labels = cT.Input(
        doc="Training labels of every patch (BuildDeepDiscLabelsTask).",
        name="deepdisc_labels",
        storageClass="ArrowAstropy",
        dimensions=_PATCH_DIMENSIONS,
        multiple=True,
    )
    coadds = coadd_input_connection("Per-band coadds the labels were made on (read one patch at a time).")
    model = cT.Output(
        doc="The trained model package; DeepDiscDetectTask takes it as its prerequisite input.",
        name=MODEL_DATASET_TYPE,
        storageClass=MODEL_STORAGE_CLASS,
        dimensions=(),
    )
    # Not "..._log": pipe_base reserves dataset types ending in "_log" for the task's own log output and
    # refuses to let a task put them.
    trainingHistory = cT.Output(
        doc="One row per validation: iteration, stage, learning rate, loss components, validation metrics.",
        name="deepdisc_training_history",
        storageClass="ArrowAstropy",
        dimensions=(),
    )
    trainingPlot = cT.Output(
        doc="Loss curves and validation metrics against iteration.",
        name="deepdisc_training_plot",
        storageClass="Plot",
        dimensions=(),
    )

    def __init__(self, *, config: DeepDiscTrainConfig) -> None:
        super().__init__(config=config)
        self.coadds = use_coadd_storage_class(self.coadds, config.coaddStorageClass)
        if not config.doWritePlot:
            del self.trainingPlot


def output_collection_of_run(run: str) -> str:
    """The ``-o`` collection of a pipetask RUN: ``run`` without a trailing ``/<YYYYMMDDTHHMMSSZ>``."""
    return _RUN_TIMESTAMP.sub("", run)


def default_checkpoint_root() -> Path:
    """``$DEEPDISC_CHECKPOINT_ROOT``, else ``<cache>/meas_extensions_deepdisc/checkpoints``.

    ``<cache>`` is ``$XDG_CACHE_HOME``, else ``~/.cache``.
    """
    explicit = os.environ.get("DEEPDISC_CHECKPOINT_ROOT", "")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "") or os.path.join("~", ".cache")
    return Path(cache).expanduser() / "meas_extensions_deepdisc" / "checkpoints"


def _safe_path_parts(collection: str) -> list[str]:
    """Path components of a collection name, each restricted to characters safe in a file name."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in collection.split("/") if part]
    return [part if part not in (".", "..") else part.replace(".", "_") for part in parts] or ["_"]


def _parse_value(value: Any) -> Any:
    """A config dict value: strings are read as YAML scalars or flow collections.

    Values given on the command line (``-c train:scalingParams=...``) are always strings, so ``"1.0"`` must
    become a number and ``"[0, 0, 0]"`` a list; other strings stay strings.
    """
    if isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"cannot parse {value!r} as a YAML value: {err}") from None
    return value


def _band_sort_key(band: str) -> tuple[int, str]:
    return (_BAND_ORDER.index(band) if band in _BAND_ORDER else len(_BAND_ORDER), band)


class DeepDiscTrainConfig(pipeBase.PipelineTaskConfig, pipelineConnections=DeepDiscTrainConnections):
    """Configuration of `DeepDiscTrainTask`."""

    # --- model
    architecture = pexConfig.ChoiceField[str](
        doc="Model architecture (config/models/<name>.yaml).  DeepDISC (Merz et al. 2023) compared R101-C4, "
        "R101-DC5, R101-FPN, R50-cascade, R50-deformable, X101-FPN, MViTv2 and Swin backbones and found the "
        "transformers (MViTv2, Swin) best; the CPU-friendly default is for tests and demonstrations.",
        default="compact-R18-FPN",
        allowed=dict(ARCHITECTURES),
    )
    modelOverrides = pexConfig.DictField(
        doc="Model config overrides (dotted yacs keys, or 'model.<path>' for lazy architectures) -> value; "
        "a string value starting with '[' or '{' is read as YAML (e.g. '[[8], [16], [32], [64], [128]]').",
        keytype=str,
        itemtype=None,
        default={},
    )
    modelName = pexConfig.Field[str](
        doc="Name of the model package (letters, digits, '.', '_', '-'); empty: '<architecture>-<bands>'.",
        default="",
    )
    modelVersion = pexConfig.Field[str](doc="Version string of the model package.", default="1.0")
    bands = pexConfig.ListField[str](
        doc="Bands fed to the network, in channel order; empty: the bands with a coadd in every training and "
        "validation patch, in the order u g r i z y (others after, by name).",
        default=[],
    )
    classNames = pexConfig.ListField[str](
        doc="Class names by class id; labels are mapped to them by their class_name.",
        default=["star", "galaxy"],
    )
    initCheckpoint = pexConfig.Field[str](
        doc="Initial weights: a detectron2/DeepDISC checkpoint (.safetensors, or .pth/.pt read with "
        "torch.load(weights_only=True)); tensors whose names and shapes fit are loaded, the others are "
        "reported.  Empty: random initialisation.  Ignored when resuming from a checkpoint.",
        default="",
    )
    # --- input scaling
    scalingName = pexConfig.Field[str](
        doc=f"Contrast scaling applied before the network, one of {sorted(SCALINGS)}.", default="lupton"
    )
    scalingParams = pexConfig.DictField(
        doc="Keyword parameters of the scaling (e.g. stretch, Q for lupton); a string value starting with "
        "'[' is read as a YAML list (per-band values, e.g. minimum='[0, 0, 0]').",
        keytype=str,
        itemtype=None,
        default={},
    )
    invalidMaskPlanes = pexConfig.ListField[str](
        doc="Mask planes of pixels without data (for the scaling and the tile quality cut).",
        default=["NO_DATA"],
    )
    pixelMean = pexConfig.ListField[float](
        doc="Per-band mean the network subtracts from the scaled image; empty: the mean of the scaled "
        "training images (valid pixels).",
        default=[],
    )
    pixelStd = pexConfig.ListField[float](
        doc="Per-band standard deviation the network divides by; empty: that of the scaled training images.",
        default=[],
    )
    # --- training examples
    tileSize = pexConfig.Field[int](
        doc="Side of the training tiles cut from each patch (pixels).", default=512
    )
    tileOverlap = pexConfig.Field[int](doc="Overlap of neighbouring tiles (pixels).", default=0)
    minFractionInside = pexConfig.Field[float](
        doc="A label goes into a tile when at least this fraction of its footprint lies inside.", default=0.5
    )
    maxNoDataFraction = pexConfig.Field[float](
        doc="Tiles with a larger fraction of pixels without data are not used (DeepDISC: 0.3).", default=0.3
    )
    skipEmptyTiles = pexConfig.Field[bool](doc="Leave out tiles without any label.", default=True)
    # --- train/validation split
    trainPatches = pexConfig.ListField[str](
        doc="Patches to train on, 'TRACT:PATCH' or 'PATCH' (that patch in every tract); empty: all those not "
        "used for validation.",
        default=[],
    )
    validationPatches = pexConfig.ListField[str](
        doc="Validation patches, 'TRACT:PATCH' or 'PATCH'; empty: validationFraction of the patches.",
        default=[],
    )
    validationFraction = pexConfig.Field[float](
        doc="Fraction of the patches drawn for validation when validationPatches is empty (0: no validation, "
        "the final weights are kept).",
        default=0.2,
    )
    splitSeed = pexConfig.Field[int](doc="Seed of the validation draw.", default=0)
    # --- schedule (Merz et al. 2023: heads 15 epochs at 1e-3, then all layers 35 epochs at 1e-4, x0.1 / 10)
    scheduleUnit = pexConfig.ChoiceField[str](
        doc="Unit of headsLength, fullLength, lrSteps, evalPeriod and checkpointPeriod.",
        default="epoch",
        allowed={
            "epoch": "passes over the training examples: ceil(n_examples / batchSize) iterations each",
            "iteration": "optimizer steps (the values must be integers)",
        },
    )
    headsLength = pexConfig.Field[float](
        doc="Stage 1: backbone body frozen, heads train (scheduleUnit).", default=15.0
    )
    fullLength = pexConfig.Field[float](doc="Stage 2: all layers train (scheduleUnit).", default=35.0)
    headsLr = pexConfig.Field[float](doc="Learning rate of stage 1.", default=TrainingConfig.heads_lr)
    fullLr = pexConfig.Field[float](doc="Learning rate of stage 2.", default=TrainingConfig.full_lr)
    lrSteps = pexConfig.ListField[float](
        doc="Points of stage 2 (scheduleUnit, from its start) where the rate is multiplied by lrGamma.",
        default=[10.0, 20.0, 30.0],
    )
    lrGamma = pexConfig.Field[float](
        doc="Step-decay factor of the learning rate.", default=TrainingConfig.lr_gamma
    )
    warmupIterations = pexConfig.Field[int](
        doc="Linear warm-up at the start of each stage (iterations).",
        default=TrainingConfig.warmup_iterations,
    )
    warmupFactor = pexConfig.Field[float](
        doc="Starting fraction of the warm-up.", default=TrainingConfig.warmup_factor
    )
    batchSize = pexConfig.Field[int](doc="Examples per iteration.", default=TrainingConfig.batch_size)
    cropSize = pexConfig.Field[int](doc="Random crop side (pixels); 0: see cropFraction.", default=0)
    cropFraction = pexConfig.Field[float](
        doc="Random crop as a fraction of each side (DeepDISC: 0.5); 0: no crop.  Exclusive with cropSize.",
        default=0.5,
    )
    flips = pexConfig.Field[bool](doc="Random horizontal and vertical flips.", default=TrainingConfig.flips)
    rot90 = pexConfig.Field[bool](doc="Random 90-degree rotations.", default=TrainingConfig.rot90)
    gradClip = pexConfig.Field[float](doc="Largest gradient L2 norm; 0: no clipping.", default=1.0)
    weightDecay = pexConfig.Field[float](
        doc="Weight decay of multi-dimensional weights.", default=TrainingConfig.weight_decay
    )
    optimizer = pexConfig.ChoiceField[str](
        doc="Optimizer.",
        default="sgd",
        allowed={"sgd": "SGD with momentum (detectron2's default)", "adamw": "AdamW (ViTDet-style models)"},
    )
    momentum = pexConfig.Field[float](doc="SGD momentum.", default=TrainingConfig.momentum)
    amp = pexConfig.Field[bool](doc="Mixed precision (CUDA only).", default=TrainingConfig.amp)
    ampDtype = pexConfig.ChoiceField[str](
        doc="Mixed-precision type.", default="float16", allowed={"float16": "float16", "bfloat16": "bfloat16"}
    )
    seed = pexConfig.Field[int](
        doc="Seed of initialisation, data order and augmentation.", default=TrainingConfig.seed
    )
    device = device_field()
    numThreads = pexConfig.Field[int](
        doc="Torch CPU threads; 0: pipetask's --cores-per-quantum (-n), outside pipetask $OMP_NUM_THREADS "
        "or the cores this process may use (logged).  More threads than free cores slow every step "
        "several-fold.",
        default=TrainingConfig.num_threads,
    )
    prefetchBatches = pexConfig.Field[bool](
        doc="Build the next training batch in a background thread while a step runs.",
        default=TrainingConfig.prefetch,
    )
    bandDropout = pexConfig.Field[float](
        doc="Fraction of training examples that lose some bands (absent bands become NaN planes).  Above 0 "
        "the model gets a band-availability backbone and the package runs on any minBands of its bands.",
        default=TrainingConfig.band_dropout,
    )
    minBands = pexConfig.Field[int](
        doc="The fewest bands an example keeps under band dropout; recorded as the package's min_bands.",
        default=TrainingConfig.min_bands,
    )
    classLossWeights = pexConfig.DictField[str, float](
        doc="Weight of each named class in the box classifier's training loss (classes not named: 1; "
        "background: 1).  Rare classes learn against the prior of common ones: stars are ~1% of a field's "
        "labels.  Empty: detectron2's unweighted loss.",
        default={},
    )
    skyAugmentProbability = pexConfig.Field[float](
        doc="Fraction of training examples given another pixel scale and seeing (pixelScaleRange, "
        "seeingRange); needs the asinh_per_band scaling.",
        default=0.0,
    )
    nativePixelScale = pexConfig.Field[float](
        doc="Pixel scale of the training coadds (arcsec).", default=SkyAugmentConfig.native_pixel_scale
    )
    pixelScaleRange = pexConfig.ListField[float](
        doc="Pixel scales (arcsec) simulated by the sky augmentation, [low, high]; empty: none.", default=[]
    )
    nativeSeeing = pexConfig.Field[float](
        doc="Typical PSF FWHM of the training coadds (arcsec).", default=SkyAugmentConfig.native_seeing
    )
    seeingRange = pexConfig.ListField[float](
        doc="PSF FWHM (arcsec) simulated by the sky augmentation, [low, high]; empty: none.", default=[]
    )
    artifactRate = pexConfig.Field[float](
        doc="Mean number of simulated artifacts (ghosts, scattered light, rays) drawn into each training "
        "example and labelled with the artifact classes, which classNames must then list "
        "(artifact_ghost_bright, artifact_ghost_faint, artifact_rays); 0: none.",
        default=0.0,
    )
    artifactBinning = pexConfig.Field[int](
        doc="With artifactRate > 0: also train on each training patch binned artifactBinning x "
        "artifactBinning (core/binning.py), with artifacts drawn at that scale (binnedArtifactRate per "
        "example): the detection task finds the large, faint artifacts there (the package records this "
        "binning); 0 or 1: no binned examples.",
        default=0,
    )
    binnedArtifactRate = pexConfig.Field[float](
        doc="Mean number of bright stars at random places that seed ghosts and rays in each binned example "
        "(one each on average), besides its own bright sources and one artifact tied to no source.",
        default=SkyAugmentConfig.binned_artifact_rate,
    )
    binnedLabelMagnitude = pexConfig.Field[float](
        doc="Binned examples keep the labels of the sources brighter than this (label magnitude): the "
        "thousands of fainter ones would leave the few artifacts of an example out of the sampled "
        "proposals.",
        default=SkyAugmentConfig.bright_magnitude,
    )
    artifactScoreThreshold = pexConfig.Field[float](
        doc="With artifactBinning > 1: the score threshold of the detection task's binned artifact pass, "
        "recorded in the package (artifact_score_threshold); None: the sources' operating point.",
        default=None,
        optional=True,
    )
    binnedExampleRepeat = pexConfig.Field[int](
        doc="How many times each binned example appears in the training set (each draw gets its own "
        "artifacts): a patch gives one binned example per tileSize x tileSize binned pixels, few against its "
        "unbinned tiles.",
        default=8,
    )
    doOperatingPoint = pexConfig.Field[bool](
        doc="Choose the package's score threshold (its operating point) on the validation patches.",
        default=True,
    )
    operatingPointRule = pexConfig.ChoiceField[str](
        doc="How the operating point is chosen.",
        default="best_f1",
        allowed={
            "best_f1": "the threshold with the best validation F1",
            "min_precision": "the lowest threshold with validation precision >= operatingMinPrecision "
            "(best F1 when none reaches it)",
        },
    )
    operatingMinPrecision = pexConfig.Field[float](
        doc="Precision the 'min_precision' rule asks for.", default=0.98
    )
    operatingThresholds = pexConfig.ListField[float](
        doc="Score thresholds tried; the lowest is the model's threshold when the curve is measured.",
        default=list(DEFAULT_THRESHOLDS),
    )
    # --- validation and checkpoints
    evalPeriod = pexConfig.Field[float](doc="Validation period (scheduleUnit).", default=1.0)
    checkpointPeriod = pexConfig.Field[float](doc="Checkpoint period (scheduleUnit).", default=1.0)
    bestMetric = pexConfig.ChoiceField[str](
        doc="Validation metric selecting the model written.",
        default="f1",
        allowed={
            "f1": "F1 of matched detections (larger is better)",
            "precision": "precision",
            "recall": "recall",
            "ap": "COCO AP (IoU .50:.95)",
            "ap50": "COCO AP at IoU 0.5",
            "val_loss": "validation loss (smaller is better)",
        },
    )
    evalScoreThreshold = pexConfig.Field[float](
        doc="Detections below this score do not count for precision/recall/F1.",
        default=TrainingConfig.eval_score_threshold,
    )
    evalIou = pexConfig.Field[float](
        doc="Minimum IoU of a validation match.", default=TrainingConfig.eval_iou
    )
    evalIouType = pexConfig.ChoiceField[str](
        doc="IoU of validation matches.", default="mask", allowed={"mask": "footprint IoU", "bbox": "box IoU"}
    )
    logPeriod = pexConfig.Field[int](
        doc="Iterations between progress log lines.", default=TrainingConfig.log_period
    )
    keepCheckpoints = pexConfig.Field[int](
        doc="Periodic checkpoints kept on disk; 0: all.", default=TrainingConfig.keep_checkpoints
    )
    checkpointRoot = pexConfig.Field[str](
        doc="Root of the checkpoint directories; empty: $DEEPDISC_CHECKPOINT_ROOT, else "
        "~/.cache/meas_extensions_deepdisc/checkpoints (see the module documentation).",
        default="",
    )
    checkpointDir = pexConfig.Field[str](
        doc="Explicit checkpoint directory (overrides checkpointRoot and the derived key).", default=""
    )
    stopAfter = pexConfig.Field[int](
        doc="Stop after this many iterations of this run, after writing a checkpoint, and fail the quantum "
        "(re-running resumes); 0: run to the end.",
        default=0,
    )
    doCacheExamples = pexConfig.Field[bool](
        doc="Keep each patch's training examples in a file cache keyed by its input datasets and the "
        "example settings, so that a re-run or a resumed run rebuilds nothing.",
        default=True,
    )
    exampleCacheDir = pexConfig.Field[str](
        doc="Directory of the example cache; empty: <checkpoint root>/examples.", default=""
    )
    coaddStorageClass = coadd_storage_class_field()
    doWritePlot = pexConfig.Field[bool](doc="Write deepdisc_training_plot.", default=True)

    def scaling_spec(self) -> ScalingSpec:
        """The contrast scaling of these settings."""
        params = {str(key): _parse_value(value) for key, value in self.scalingParams.items()}
        return ScalingSpec(name=self.scalingName, params=params, invalid_planes=tuple(self.invalidMaskPlanes))

    def model_overrides(self) -> dict[str, Any]:
        """``modelOverrides`` with YAML-looking strings parsed."""
        return {str(key): _parse_value(value) for key, value in self.modelOverrides.items()}

    def iterations_per_epoch(self, n_train_examples: int) -> int:
        """Iterations of one pass over ``n_train_examples`` examples."""
        return max(1, math.ceil(n_train_examples / self.batchSize))

    def training_config(self, n_train_examples: int) -> TrainingConfig:
        """The core `~lsst.meas.extensions.deepdisc.core.training.TrainingConfig` for a training set size.

        Schedule lengths in epochs become ``round(value * iterations_per_epoch)`` iterations (periods at
        least 1).
        """
        per_unit = self.iterations_per_epoch(n_train_examples) if self.scheduleUnit == "epoch" else 1

        def iterations(value: float, minimum: int = 0) -> int:
            return max(minimum, int(round(value * per_unit)))

        if self.cropSize > 0:
            crop: int | float | None = int(self.cropSize)
        elif self.cropFraction > 0:
            crop = float(self.cropFraction)
        else:
            crop = None
        return TrainingConfig(
            heads_iterations=iterations(self.headsLength),
            full_iterations=iterations(self.fullLength),
            heads_lr=self.headsLr,
            full_lr=self.fullLr,
            lr_steps=tuple(iterations(step) for step in self.lrSteps),
            lr_gamma=self.lrGamma,
            batch_size=self.batchSize,
            crop_size=crop,
            flips=self.flips,
            rot90=self.rot90,
            grad_clip=self.gradClip if self.gradClip > 0 else None,
            amp=self.amp,
            amp_dtype=self.ampDtype,
            checkpoint_period=iterations(self.checkpointPeriod, 1),
            eval_period=iterations(self.evalPeriod, 1),
            seed=self.seed,
            device=self.device,
            weight_decay=self.weightDecay,
            warmup_iterations=self.warmupIterations,
            warmup_factor=self.warmupFactor,
            log_period=self.logPeriod,
            optimizer=self.optimizer,
            momentum=self.momentum,
            best_metric=self.bestMetric,
            eval_score_threshold=self.evalScoreThreshold,
            eval_iou=self.evalIou,
            eval_iou_type=self.evalIouType,
            keep_checkpoints=self.keepCheckpoints,
            num_threads=self.numThreads,
            prefetch=self.prefetchBatches,
            band_dropout=self.bandDropout,
            min_bands=self.minBands,
            class_loss_weights=self.class_loss_weights(),
            sky=self.sky_augment_config(),
        )

    def sky_augment_config(self) -> SkyAugmentConfig:
        """The pixel-scale, seeing and artifact augmentations of these settings."""
        from ..core.artifacts import ARTIFACT_CLASSES

        names = list(self.classNames)
        artifact_ids = (
            tuple(names.index(f"artifact_{name}") for name in ARTIFACT_CLASSES)
            if self.artifactRate > 0
            else ()
        )
        return SkyAugmentConfig(
            probability=self.skyAugmentProbability,
            native_pixel_scale=self.nativePixelScale,
            pixel_scale_range=tuple(self.pixelScaleRange) or None,
            native_seeing=self.nativeSeeing,
            seeing_range=tuple(self.seeingRange) or None,
            softening_sigma=float(self.scaling_spec().params.get("softening_sigma", 1.0)),
            artifact_rate=self.artifactRate,
            artifact_class_ids=artifact_ids,
            binned_artifact_rate=self.binnedArtifactRate,
        )

    def class_loss_weights(self) -> tuple[float, ...]:
        """``classLossWeights`` as one weight per class of ``classNames`` (empty when none is set)."""
        if not self.classLossWeights:
            return ()
        return tuple(float(self.classLossWeights.get(name, 1.0)) for name in self.classNames)

    def training_key_config(self) -> dict[str, Any]:
        """The settings that determine the training (the configuration part of the training key).

        An empty ``classLossWeights`` is left out, so that the keys of trainings from before the field
        existed do not change.
        """
        return {
            key: value
            for key, value in self.toDict().items()
            if key not in _NOT_IN_TRAINING_KEY and not (key == "classLossWeights" and not value)
        }

    @override
    def validate(self) -> None:
        super().validate()
        cls = type(self)

        def fail(field: pexConfig.Field, message: str) -> None:
            raise pexConfig.FieldValidationError(field, self, message)

        if self.scalingName not in SCALINGS:
            fail(cls.scalingName, f"unknown scaling {self.scalingName!r}; known: {sorted(SCALINGS)}")
        try:
            self.scaling_spec()
            self.model_overrides()
        except ValueError as err:
            fail(cls.scalingParams, str(err))
        bands = list(self.bands)
        if len(set(bands)) != len(bands) or not all(bands):
            fail(cls.bands, f"bands must be unique and non-empty, got {bands}")
        for name in ("pixelMean", "pixelStd"):
            values = list(getattr(self, name))
            if values and len(values) != len(bands):
                fail(
                    getattr(cls, name),
                    f"{name} needs one value per band of config.bands ({bands}), got {values}",
                )
            if not all(math.isfinite(v) for v in values) or (
                name == "pixelStd" and any(v <= 0 for v in values)
            ):
                fail(getattr(cls, name), f"{name} values must be finite (and std positive), got {values}")
        names = list(self.classNames)
        if not names or len(set(names)) != len(names) or not all(names):
            fail(cls.classNames, f"classNames must be unique non-empty names, got {names}")
        unknown = sorted(set(self.classLossWeights) - set(names))
        if unknown:
            fail(cls.classLossWeights, f"classLossWeights names classes {unknown} not in classNames {names}")
        if not all(math.isfinite(w) and w > 0 for w in self.classLossWeights.values()):
            fail(
                cls.classLossWeights, f"classLossWeights must be positive, got {dict(self.classLossWeights)}"
            )
        if not 0.0 <= self.bandDropout <= 1.0:
            fail(cls.bandDropout, f"bandDropout must be in [0, 1], got {self.bandDropout}")
        if self.minBands < 1 or (self.bands and self.minBands > len(self.bands)):
            fail(cls.minBands, f"minBands must be in [1, number of bands], got {self.minBands}")
        sky_on = self.skyAugmentProbability > 0 or self.artifactRate > 0
        if sky_on and self.scalingName != "asinh_per_band":
            fail(
                cls.skyAugmentProbability,
                f"the sky augmentation (pixel scale, seeing, artifacts) needs the asinh_per_band scaling, "
                f"not {self.scalingName!r}",
            )
        if self.artifactRate > 0:
            from ..core.artifacts import ARTIFACT_CLASSES

            missing = [f"artifact_{name}" for name in ARTIFACT_CLASSES if f"artifact_{name}" not in names]
            if missing:
                fail(cls.artifactRate, f"artifactRate > 0 needs classNames to list {missing}")
        try:
            self.sky_augment_config()
        except ValueError as err:
            fail(cls.skyAugmentProbability, str(err))
        if self.artifactBinning < 0 or self.binnedExampleRepeat < 1:
            fail(cls.artifactBinning, "artifactBinning must be >= 0 and binnedExampleRepeat >= 1")
        if self.artifactBinning > 1 and self.artifactRate <= 0:
            fail(cls.artifactBinning, "artifactBinning > 1 trains artifacts: it needs artifactRate > 0")
        if self.tileSize < 16:
            fail(cls.tileSize, f"tileSize must be at least 16 pixels, got {self.tileSize}")
        if not 0 <= self.tileOverlap < self.tileSize:
            fail(cls.tileOverlap, "tileOverlap must be >= 0 and smaller than tileSize")
        if not 0.0 < self.minFractionInside <= 1.0:
            fail(cls.minFractionInside, "minFractionInside must be in (0, 1]")
        if not 0.0 <= self.maxNoDataFraction <= 1.0:
            fail(cls.maxNoDataFraction, "maxNoDataFraction must be in [0, 1]")
        if not 0.0 <= self.validationFraction < 1.0:
            fail(cls.validationFraction, "validationFraction must be in [0, 1)")
        for name in ("trainPatches", "validationPatches"):
            for spec in getattr(self, name):
                try:
                    parse_patch_spec(spec)
                except ValueError as err:
                    fail(getattr(cls, name), str(err))
        if self.cropSize < 0 or not 0.0 <= self.cropFraction <= 1.0:
            fail(cls.cropSize, "cropSize must be >= 0 and cropFraction in [0, 1]")
        if self.cropSize > 0 and self.cropFraction > 0:
            fail(cls.cropSize, "set cropSize or cropFraction, not both (the other to 0)")
        if self.scheduleUnit == "iteration":
            for name in ("headsLength", "fullLength", "evalPeriod", "checkpointPeriod"):
                if not float(getattr(self, name)).is_integer():
                    fail(getattr(cls, name), f"{name} must be a whole number of iterations")
            if not all(float(step).is_integer() for step in self.lrSteps):
                fail(cls.lrSteps, "lrSteps must be whole numbers of iterations")
        for name in ("headsLength", "fullLength"):
            if getattr(self, name) < 0:
                fail(getattr(cls, name), f"{name} must be >= 0")
        for name in ("evalPeriod", "checkpointPeriod"):
            if not getattr(self, name) > 0:
                fail(getattr(cls, name), f"{name} must be positive")
        check_device(self)
        if self.stopAfter < 0:
            fail(cls.stopAfter, "stopAfter must be >= 0")
        if self.modelName and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", self.modelName):
            fail(cls.modelName, f"modelName {self.modelName!r} may hold only letters, digits, '.', '_', '-'")
        try:
            self.training_config(n_train_examples=1)
        except ValueError as err:
            fail(cls.headsLength, f"inconsistent training settings: {err}")


@dataclasses.dataclass
class _PatchInputs:
    """The Butler references of one patch."""

    labels: Any
    coadds: dict[str, Any] = dataclasses.field(default_factory=dict)


class DeepDiscTrainTask(pipeBase.PipelineTask):
    """Train a DeepDISC model on the labels of many patches and write it as a model package.

    The patches are split into training and validation sets, cut into scaled, labelled tiles and fed to
    `~lsst.meas.extensions.deepdisc.core.training.train_model` (two-stage schedule, checkpoints, resume,
    validation metrics); the best model by ``bestMetric`` is packaged with its bands, scaling, pixel
    statistics, classes and provenance.  Progress lines (iterations per second, ETA) go to this task's log.
    """

    ConfigClass = DeepDiscTrainConfig
    _DefaultName = "deepDiscTrain"
    config: DeepDiscTrainConfig

    @override
    def runQuantum(
        self,
        butlerQC: pipeBase.QuantumContext,
        inputRefs: pipeBase.InputQuantizedConnection,
        outputRefs: pipeBase.OutputQuantizedConnection,
    ) -> None:
        skymaps = sorted({str(ref.dataId["skymap"]) for ref in inputRefs.labels})
        if len(skymaps) > 1:
            raise ValueError(
                f"the labels span several skymaps {skymaps}, whose patch numbers collide; constrain the data "
                "query to one skymap"
            )
        patches: dict[PatchKey, _PatchInputs] = {}
        for ref in inputRefs.labels:
            patches[(int(ref.dataId["tract"]), int(ref.dataId["patch"]))] = _PatchInputs(labels=ref)
        for ref in inputRefs.coadds:
            key = (int(ref.dataId["tract"]), int(ref.dataId["patch"]))
            if key in patches:
                patches[key].coadds[str(ref.dataId["band"])] = ref
        train_keys, validation_keys = choose_split(
            patches,
            self.config.trainPatches,
            self.config.validationPatches,
            self.config.validationFraction,
            self.config.splitSeed,
        )
        used = train_keys + validation_keys
        bands = self.select_bands({key: list(patches[key].coadds) for key in used})
        self.log.info(
            "Training on %d patch(es) %s, validating on %d %s, bands %s",
            len(train_keys),
            _format_keys(train_keys),
            len(validation_keys),
            _format_keys(validation_keys),
            "".join(bands),
        )
        examples: dict[str, list[TrainingExample]] = {"train": [], "validation": []}
        label_counts = {"train": 0, "validation": 0}
        cache = ExampleCache(self.example_cache_directory()) if self.config.doCacheExamples else None
        for role, keys in (("train", train_keys), ("validation", validation_keys)):
            for key in keys:
                inputs = patches[key]

                # Read only when an example file is missing, and once for both kinds of examples.
                @functools.cache
                def read(inputs: _PatchInputs = inputs) -> tuple[MultibandImage, Table]:
                    return self.read_patch(butlerQC, inputs, bands), butlerQC.get(inputs.labels)

                def build(read=read, key: PatchKey = key) -> list[TrainingExample]:
                    return self.make_examples(*read(), tract=key[0], patch=key[1])

                refs = {"labels": str(inputs.labels.id)}
                refs.update({band: str(inputs.coadds[band].id) for band in bands})
                if cache is None:
                    patch_examples = build()
                else:
                    # Examples built with fewer classes (a prefix of classNames) are the same examples:
                    # such a file exists only if every label of the patch had one of those classes, and
                    # appended classes leave the class ids of the earlier ones unchanged.
                    names = list(self.config.classNames)
                    prefixes = [self.example_cache_key(refs, names[:n]) for n in range(len(names) - 1, 0, -1)]
                    patch_examples = cache.get_or_build(self.example_cache_key(refs), build, prefixes)
                examples[role].extend(patch_examples)
                label_counts[role] += sum(len(example.instances) for example in patch_examples)
                if role == "train" and self.config.artifactBinning > 1:

                    def build_binned(read=read, key: PatchKey = key) -> list[TrainingExample]:
                        return self.make_binned_examples(*read(), tract=key[0], patch=key[1])

                    binned = (
                        build_binned()
                        if cache is None
                        else cache.get_or_build(self.example_cache_key(refs, binning=True), build_binned)
                    )
                    examples[role].extend(binned * self.config.binnedExampleRepeat)
                read.cache_clear()  # One patch of pixels in memory at a time (plus the examples).
        if cache is not None:
            self.log.info(
                "Example cache %s: %d patch(es) read, %d built", cache.directory, cache.hits, cache.misses
            )
        output_run = outputRefs.model.run
        input_runs = sorted({ref.run for ref in [*inputRefs.labels, *inputRefs.coadds]})
        checkpoint_dir = self.checkpoint_directory(output_run, examples["train"], examples["validation"])
        provenance = {
            "output_run": output_run,
            "input_runs": input_runs,
            "train_patches": _format_keys(train_keys),
            "validation_patches": _format_keys(validation_keys),
            "n_train_labels": label_counts["train"],
            "n_validation_labels": label_counts["validation"],
        }
        result = self.run(
            examples["train"],
            examples["validation"],
            checkpoint_dir=checkpoint_dir,
            provenance=provenance,
            stop_after=self.config.stopAfter or None,
            num_threads=quantum_threads(self.config.numThreads, butlerQC.resources.num_cores),
        )
        if result.interrupted:
            raise TrainingInterruptedError(
                f"training stopped after {self.config.stopAfter} iteration(s) of this run (stopAfter), at "
                f"iteration {result.iterations_done} of {result.total_iterations}; the checkpoint is in "
                f"{checkpoint_dir}. Run pipetask again with the same -o to continue (without stopAfter to "
                "finish)."
            )
        butlerQC.put(result.model, outputRefs.model)
        butlerQC.put(to_arrow(result.trainingHistory), outputRefs.trainingHistory)
        if self.config.doWritePlot:
            butlerQC.put(result.trainingPlot, outputRefs.trainingPlot)

    def select_bands(self, available: Mapping[PatchKey, Sequence[str]]) -> list[str]:
        """The bands to train on: ``config.bands``, else those with a coadd in every patch used.

        Raises
        ------
        MissingBandError
            If a patch lacks a configured band, or no band is common to all patches.
        """
        if self.config.bands:
            wanted = list(self.config.bands)
            for key, bands in sorted(available.items()):
                missing = [band for band in wanted if band not in bands]
                if missing:
                    raise MissingBandError(
                        f"patch {key[0]}:{key[1]} has no coadd in band(s) {missing} (it has "
                        f"{sorted(bands)}); fix the data query or config.bands"
                    )
            return wanted
        common = set.intersection(*(set(bands) for bands in available.values())) if available else set()
        if not common:
            raise MissingBandError(
                "no band has a coadd in every training and validation patch: "
                f"{dict(sorted(available.items()))}"
            )
        return sorted(common, key=_band_sort_key)

    def read_patch(
        self, butlerQC: pipeBase.QuantumContext, inputs: _PatchInputs, bands: list[str]
    ) -> MultibandImage:
        """The patch's coadds in the training bands, as the core's multi-band image."""
        return read_coadds(
            butlerQC, inputs.coadds.values(), bands, self.config.coaddStorageClass, "the training"
        )

    def make_examples(
        self, image: MultibandImage, labels: Table, tract: int, patch: int
    ) -> list[TrainingExample]:
        """Cut one labelled patch into scaled training examples with this task's classes.

        Parameters
        ----------
        image : `MultibandImage`
            The patch in the training bands, in order.
        labels : `astropy.table.Table`
            Its ``deepdisc_labels`` table; ``class_name`` (when present) is mapped to ``config.classNames``.
        tract, patch : `int`
            Used in the example ids.

        Returns
        -------
        examples : `list` [`TrainingExample`]

        Raises
        ------
        ValueError
            If a label's class is not one of ``config.classNames``.
        """
        labels = self.map_classes(labels, tract, patch)
        examples = labels_to_examples(
            image,
            labels,
            self.config.scaling_spec(),
            tile_size=self.config.tileSize,
            overlap=self.config.tileOverlap,
            min_fraction_inside=self.config.minFractionInside,
            max_no_data_fraction=self.config.maxNoDataFraction,
            invalid_planes=tuple(self.config.invalidMaskPlanes),
            skip_empty=self.config.skipEmptyTiles,
            example_prefix=f"t{tract}_p{patch}_",
        )
        self.log.info(
            "tract=%d patch=%d: %d labels -> %d training tile(s) with %d labelled sources",
            tract,
            patch,
            len(labels),
            len(examples),
            sum(len(example.instances) for example in examples),
        )
        return examples

    def make_binned_examples(
        self, image: MultibandImage, labels: Table, tract: int, patch: int
    ) -> list[TrainingExample]:
        """The patch binned ``artifactBinning`` x ``artifactBinning``, cut into scaled examples.

        Its labels' footprints are binned too (`.core.binning`); metadata ``binning`` tells the sky
        augmentation to draw artifacts at that scale.
        """
        factor = self.config.artifactBinning
        planes = tuple(self.config.invalidMaskPlanes)
        binned = bin_image(image, factor, planes)
        labels = self.map_classes(labels, tract, patch)
        if "mag" in labels.colnames:
            # Only the bright sources stay labelled: binned, the thousands of faint ones would outnumber the
            # few artifacts of an example in the sampled proposals, and the network would not learn those.
            labels = labels[np.asarray(labels["mag"], dtype=float) < self.config.binnedLabelMagnitude]
        labels = bin_labels(labels, factor, image.xy0, binned.shape)
        examples = labels_to_examples(
            binned,
            labels,
            self.config.scaling_spec(),
            tile_size=self.config.tileSize,
            overlap=0,
            min_fraction_inside=self.config.minFractionInside,
            max_no_data_fraction=self.config.maxNoDataFraction,
            invalid_planes=planes,
            skip_empty=False,
            example_prefix=f"t{tract}_p{patch}_bin{factor}_",
        )
        for example in examples:
            example.metadata["binning"] = factor
        self.log.info(
            "tract=%d patch=%d: binned %dx%d -> %d example(s) with %d labelled sources",
            tract,
            patch,
            factor,
            factor,
            len(examples),
            sum(len(example.instances) for example in examples),
        )
        return examples

    def map_classes(self, labels: Table, tract: int, patch: int) -> Table:
        """A copy of ``labels`` whose ``class_id`` indexes ``config.classNames``."""
        class_names = list(self.config.classNames)
        labels = labels.copy(copy_data=False)
        if "class_name" in labels.colnames:
            names = np.asarray(labels["class_name"], dtype=str)
            unknown = sorted(set(names) - set(class_names))
            if unknown:
                raise ValueError(
                    f"labels of tract={tract} patch={patch} have classes {unknown} that are not in "
                    f"config.classNames {class_names}"
                )
            lookup = {name: index for index, name in enumerate(class_names)}
            labels["class_id"] = np.array([lookup[name] for name in names], dtype=np.int64)
        elif "class_id" in labels.colnames and len(labels):
            ids = np.asarray(labels["class_id"], dtype=np.int64)
            if ids.min() < 0 or ids.max() >= len(class_names):
                raise ValueError(
                    f"labels of tract={tract} patch={patch} have class ids outside 0..{len(class_names) - 1} "
                    f"(config.classNames {class_names})"
                )
        return labels

    def example_cache_key(
        self, refs: Mapping[str, str], class_names: Sequence[str] | None = None, binning: bool = False
    ) -> str:
        """Cache key of one patch's examples: its input dataset ids and every setting the examples use.

        ``class_names`` replaces ``config.classNames`` (for the keys of equivalent, earlier files);
        ``binning``: the key of its binned examples (`make_binned_examples`).
        """
        settings = {
            "tileSize": self.config.tileSize,
            "tileOverlap": self.config.tileOverlap,
            "minFractionInside": self.config.minFractionInside,
            "maxNoDataFraction": self.config.maxNoDataFraction,
            "skipEmptyTiles": self.config.skipEmptyTiles,
            "invalidMaskPlanes": list(self.config.invalidMaskPlanes),
            "classNames": list(self.config.classNames if class_names is None else class_names),
            "scaling": self.config.scaling_spec().to_dict(),
            "coaddStorageClass": self.config.coaddStorageClass,
        }
        if binning:
            settings["artifactBinning"] = self.config.artifactBinning
            settings["binnedLabelMagnitude"] = self.config.binnedLabelMagnitude
        return cache_key({"refs": dict(refs), "settings": settings})

    def example_cache_directory(self) -> Path:
        """Directory of the example cache: ``exampleCacheDir``, else ``<checkpoint root>/examples``."""
        if self.config.exampleCacheDir:
            return Path(os.path.expandvars(self.config.exampleCacheDir)).expanduser()
        return self.checkpoint_root() / "examples"

    def checkpoint_root(self) -> Path:
        """``checkpointRoot``, else `default_checkpoint_root`."""
        if self.config.checkpointRoot:
            return Path(os.path.expandvars(self.config.checkpointRoot)).expanduser()
        return default_checkpoint_root()

    def checkpoint_directory(
        self,
        output_run: str,
        train: Sequence[TrainingExample],
        validation: Sequence[TrainingExample],
    ) -> Path:
        """Where the checkpoints of this training live (see the module documentation)."""
        if self.config.checkpointDir:
            return Path(os.path.expandvars(self.config.checkpointDir)).expanduser()
        collection = output_collection_of_run(output_run)
        return self.checkpoint_root().joinpath(
            *_safe_path_parts(collection), self.training_key(train, validation)
        )

    def training_key(self, train: Sequence[TrainingExample], validation: Sequence[TrainingExample]) -> str:
        """16 hex digits of a hash of the training settings and data (`.core.training_data.training_key`)."""
        return training_key(self.config.training_key_config(), train, validation)

    def pixel_statistics(self, examples: Sequence[TrainingExample]) -> tuple[list[float], list[float]]:
        """Per-band mean and std of the valid pixels of scaled examples; ``pixelMean``/``pixelStd`` win."""
        mean, std = pixel_statistics(examples)
        return list(self.config.pixelMean) or mean, list(self.config.pixelStd) or std

    def run(
        self,
        train: Sequence[TrainingExample],
        validation: Sequence[TrainingExample],
        *,
        checkpoint_dir: str | os.PathLike[str],
        provenance: Mapping[str, Any] | None = None,
        stop_after: int | None = None,
        num_threads: int | None = None,
    ) -> pipeBase.Struct:
        """Train a model on labelled examples and package it.

        Parameters
        ----------
        train, validation : sequence of `TrainingExample`
            Scaled examples (`make_examples`); all with the same bands, in the model's channel order.
        checkpoint_dir : `str` or `os.PathLike`
            Checkpoint directory; a checkpoint there is resumed.
        provenance : `~collections.abc.Mapping`, optional
            Plain data added to the package provenance (e.g. collections and patches).
        stop_after : `int`, optional
            Stop after this many iterations of this call, once a checkpoint is written.
        num_threads : `int`, optional
            Torch CPU threads, overriding ``config.numThreads`` (`runQuantum` passes pipetask's cores).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``model`` (`ModelPackage`, `None` when interrupted), ``trainingHistory`` (`astropy.table.Table`),
            ``trainingPlot`` (`matplotlib.figure.Figure` or `None`), ``training`` (the core
            `~lsst.meas.extensions.deepdisc.core.training.TrainingResult`), ``interrupted``,
            ``iterations_done``, ``total_iterations``, ``start_iteration`` and ``checkpoint_dir``.
        """
        start = time.perf_counter()
        train, validation = list(train), list(validation)
        if not train:
            raise ValueError("no training examples: every training patch was empty or skipped")
        bands = train[0].bands
        if self.config.bands and tuple(self.config.bands) != bands:
            raise MissingBandError(
                f"the examples have bands {list(bands)} but config.bands is {list(self.config.bands)}"
            )
        scaling = self.config.scaling_spec()
        class_names = tuple(self.config.classNames)
        pixel_mean, pixel_std = self.pixel_statistics(train)
        architecture = self.config.architecture
        spec = ModelSpec(
            architecture=architecture,
            bands=bands,
            class_names=class_names,
            pixel_mean=tuple(pixel_mean),
            pixel_std=tuple(pixel_std),
            overrides=self.config.model_overrides(),
            band_availability=self.config.bandDropout > 0,
        )
        model_config = make_model_config(spec)
        training_config = self.config.training_config(len(train))
        if num_threads is not None:
            training_config = dataclasses.replace(training_config, num_threads=num_threads)
        checkpoint_dir = Path(checkpoint_dir)
        start_iteration = last_checkpoint_iteration(checkpoint_dir)
        init_state_dict, init_info = None, None
        if start_iteration is None:  # A resumed run takes its weights from the checkpoint.
            init_state_dict, init_info = self._initial_weights()
        self.log.info(
            "Model %s: %d training and %d validation examples, pixel mean %s, std %s; %d iterations "
            "(%d heads-only + %d all layers, %d per epoch); checkpoints in %s",
            architecture,
            len(train),
            len(validation),
            _format_numbers(pixel_mean),
            _format_numbers(pixel_std),
            training_config.total_iterations,
            training_config.heads_iterations,
            training_config.full_iterations,
            self.config.iterations_per_epoch(len(train)),
            checkpoint_dir,
        )
        training = train_model(
            model_config,
            train,
            validation,
            training_config,
            checkpoint_dir,
            init_state_dict=init_state_dict,
            log=self.log,
            stop_after=stop_after,
        )
        history_table = make_history_table(training.history, training.best_iteration, training_config)
        figure = None
        if self.config.doWritePlot and training.history:
            figure = training_history_figure(training.history, training_config.heads_iterations)
        self.metadata["checkpoint_dir"] = str(checkpoint_dir)
        self.metadata["iterations_done"] = training.iterations_done
        self.metadata["total_iterations"] = training_config.total_iterations
        self.metadata["training_seconds"] = training.seconds
        common = dict(
            trainingHistory=history_table,
            trainingPlot=figure,
            training=training,
            iterations_done=training.iterations_done,
            total_iterations=training_config.total_iterations,
            start_iteration=start_iteration or 0,
            checkpoint_dir=checkpoint_dir,
        )
        if training.interrupted:
            return pipeBase.Struct(model=None, interrupted=True, **common)

        package_provenance = {
            **dict(provenance or {}),
            "task": type(self).__name__,
            "package_version": __version__,
            "torch_version": _torch_version(),
            "n_train_examples": len(train),
            "n_validation_examples": len(validation),
            "iterations": training.iterations_done,
            "heads_iterations": training_config.heads_iterations,
            "full_iterations": training_config.full_iterations,
            "iterations_per_epoch": self.config.iterations_per_epoch(len(train)),
            "resumed_from_iteration": start_iteration,
            "best_metric_name": training.best_metric_name,
            "best_metric": training.best_metric,
            "best_iteration": training.best_iteration,
            "final_validation": _final_validation(training.history),
            "init_checkpoint": init_info,
            "checkpoint_dir": str(checkpoint_dir),
            "training_key": checkpoint_dir.name,
            "training_config": training_config.to_dict(),
            "config": _plain_config(self.config),
        }
        model = ModelPackage(
            name=self.config.modelName or f"{architecture}-{''.join(bands)}",
            version=self.config.modelVersion,
            model_config=model_config,
            state_dict=training.state_dict,
            bands=bands,
            scaling=scaling,
            class_names=class_names,
            pixel_mean=tuple(pixel_mean),
            pixel_std=tuple(pixel_std),
            architecture=architecture,
            provenance=package_provenance,
            min_bands=self.config.minBands if self.config.bandDropout > 0 else None,
        )
        if self.config.artifactBinning > 1:
            model = dataclasses.replace(
                model,
                artifact_binning=self.config.artifactBinning,
                artifact_score_threshold=self.config.artifactScoreThreshold,
            )
        if self.config.doOperatingPoint and validation:
            model = self.choose_operating_point(model, validation, training_config)
        self.metadata["best_iteration"] = -1 if training.best_iteration is None else training.best_iteration
        self.metadata["best_metric"] = math.nan if training.best_metric is None else training.best_metric
        self.log.info(
            "Trained %s in %.1f s: %d iterations, best %s = %s at iteration %s",
            model.name,
            time.perf_counter() - start,
            training.iterations_done,
            training.best_metric_name,
            training.best_metric,
            training.best_iteration,
        )
        return pipeBase.Struct(model=model, interrupted=False, **common)

    def choose_operating_point(
        self, model: ModelPackage, validation: Sequence[TrainingExample], training_config: TrainingConfig
    ) -> ModelPackage:
        """The package with its score threshold chosen on the validation examples (and the curve recorded).

        The detections of the trained model above the lowest threshold of the grid are matched to the
        validation labels as in training validation (``evalIou``, ``evalIouType``) with a 3 px centre-distance
        fallback; ``operatingPointRule`` then picks the threshold
        (`~lsst.meas.extensions.deepdisc.core.operating_point.choose_operating_point`).
        """
        network = model.build_model(
            device=str(select_device(training_config.device)),
            score_threshold=min(self.config.operatingThresholds),
        )
        point, curve = self._validation_operating_point(network, validation, training_config)
        self.log.info(
            "Operating point (%s%s): score >= %.2f, validation precision %.3f, recall %.3f, F1 %.3f",
            point["rule"],
            "" if point["rule_met"] else f": precision {point['min_precision']:g} not reached, best F1 used",
            point["threshold"],
            point["precision"],
            point["recall"],
            point["f1"],
        )
        provenance = {**model.provenance, "operating_point": {**point, "curve": curve}}
        model = dataclasses.replace(model, score_threshold=point["threshold"], provenance=provenance)
        if model.min_bands is not None:
            model = self.choose_band_count_thresholds(model, validation, training_config, network)
        return model

    def _validation_operating_point(
        self,
        network: Any,
        validation: Sequence[TrainingExample],
        training_config: TrainingConfig,
        keep_bands: Sequence[np.ndarray] | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The operating point and the precision-recall curve of ``network`` on the validation examples.

        The point follows ``operatingPointRule`` and the curve spans ``operatingThresholds`` (``network``
        is built at the lowest of them); only ``keep_bands`` of each example are used when given.
        """
        truths, found = infer_examples(
            network, validation, training_config.device, training_config.seed, keep_bands=keep_bands
        )
        curve = precision_recall_curve(
            truths,
            found,
            sorted(self.config.operatingThresholds),
            min_iou=self.config.evalIou,
            iou_type=self.config.evalIouType,
        )
        point = choose_operating_point(
            curve, self.config.operatingPointRule, self.config.operatingMinPrecision
        )
        return point, curve

    def choose_band_count_thresholds(
        self,
        model: ModelPackage,
        validation: Sequence[TrainingExample],
        training_config: TrainingConfig,
        network: Any,
    ) -> ModelPackage:
        """The package with an operating point per number of bands present (``band_count_thresholds``).

        For every count from ``min_bands`` to one less than all the bands, each validation example keeps a
        random set of that many bands (seeded by the count and the example), the others absent, and the
        threshold is chosen as for all bands.  A model sees fewer bands with lower scores, so one threshold
        for all counts would trade completeness away on three-band data.  ``network`` is ``model`` built at
        the lowest of ``operatingThresholds`` (as `choose_operating_point` builds it).
        """
        n_bands = len(model.bands)
        chosen: dict[int, float] = {}
        points: dict[str, Any] = {}
        for count in range(model.min_bands or 1, n_bands):
            keep = [
                band_subset(n_bands, count, np.random.default_rng([training_config.seed, count, index]))
                for index in range(len(validation))
            ]
            point, _ = self._validation_operating_point(network, validation, training_config, keep)
            chosen[count] = point["threshold"]
            points[str(count)] = point
            self.log.info(
                "Operating point with %d of %d bands: score >= %.2f, validation precision %.3f, recall %.3f, "
                "F1 %.3f",
                count,
                n_bands,
                point["threshold"],
                point["precision"],
                point["recall"],
                point["f1"],
            )
        provenance = {**model.provenance, "band_count_operating_points": points}
        return dataclasses.replace(model, band_count_thresholds=chosen, provenance=provenance)

    def _initial_weights(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The weights of ``config.initCheckpoint`` and their provenance, or `None` for random ones."""
        if not self.config.initCheckpoint:
            if self.config.headsLength > 0:
                self.log.warning(
                    "No initCheckpoint: stage 1 trains the heads on a random, frozen backbone body; "
                    "set headsLength=0 when training from scratch"
                )
            return None, None
        path = Path(os.path.expandvars(self.config.initCheckpoint)).expanduser()
        state_dict, info = load_checkpoint_state_dict(path)
        info = {**info, "path": str(path)}
        self.log.info("Initial weights from %s (%d tensors)", path, len(state_dict))
        return state_dict, info


def _final_validation(history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The validation metrics of the last history entry."""
    if not history:
        return {}
    keys = ("iteration", "val_loss", "precision", "recall", "f1", "class_accuracy", "ap", "ap50")
    return {key: history[-1].get(key) for key in keys if key in history[-1]}


def _plain_config(config: pexConfig.Config) -> dict[str, Any]:
    """The task configuration as JSON-safe plain data."""
    return json.loads(json.dumps(config.toDict(), default=str))


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _format_keys(keys: Iterable[PatchKey]) -> list[str]:
    return [f"{tract}:{patch}" for tract, patch in keys]


def _format_numbers(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"
