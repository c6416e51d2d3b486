"""Task configs and the core dataclasses they feed agree on every default: the core is the single source."""

from __future__ import annotations

import dataclasses

import pytest

from lsst.meas.extensions.deepdisc.core.inference import InferenceConfig
from lsst.meas.extensions.deepdisc.core.labels import LabelConfig
from lsst.meas.extensions.deepdisc.core.training import TrainingConfig
from lsst.meas.extensions.deepdisc.tasks.detect import DeepDiscDetectConfig
from lsst.meas.extensions.deepdisc.tasks.labels import BuildDeepDiscLabelsConfig
from lsst.meas.extensions.deepdisc.tasks.train import DeepDiscTrainConfig

# Task field -> core field, where the two mean the same thing in the same unit.
DETECT_FIELDS = {
    "tileSize": "tile_size",
    "tileOverlap": "overlap",
    "batchSize": "batch_size",
    "halfPrecision": "half",
    "stitchMargin": "stitch_margin",
    "mergeIou": "merge_iou",
    "device": "device",
}
TRAIN_FIELDS = {
    "headsLr": "heads_lr",
    "fullLr": "full_lr",
    "lrGamma": "lr_gamma",
    "warmupIterations": "warmup_iterations",
    "warmupFactor": "warmup_factor",
    "batchSize": "batch_size",
    "flips": "flips",
    "rot90": "rot90",
    "weightDecay": "weight_decay",
    "momentum": "momentum",
    "optimizer": "optimizer",
    "amp": "amp",
    "ampDtype": "amp_dtype",
    "seed": "seed",
    "device": "device",
    "bestMetric": "best_metric",
    "evalScoreThreshold": "eval_score_threshold",
    "evalIou": "eval_iou",
    "evalIouType": "eval_iou_type",
    "logPeriod": "log_period",
    "keepCheckpoints": "keep_checkpoints",
    "numThreads": "num_threads",
    "prefetchBatches": "prefetch",
}


def _core_defaults(cls: type) -> dict[str, object]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def _drift(task_config: object, core: type, fields: dict[str, str]) -> dict[str, tuple[object, object]]:
    defaults = _core_defaults(core)
    return {
        task: (getattr(task_config, task), defaults[name])
        for task, name in fields.items()
        if getattr(task_config, task) != defaults[name]
    }


@pytest.mark.parametrize(
    ("config_class", "core", "fields"),
    [
        (DeepDiscDetectConfig, InferenceConfig, DETECT_FIELDS),
        (DeepDiscTrainConfig, TrainingConfig, TRAIN_FIELDS),
    ],
    ids=["detect", "train"],
)
def test_task_defaults_are_the_core_defaults(config_class: type, core: type, fields: dict[str, str]) -> None:
    assert not _drift(config_class(), core, fields)
    # A drifted default is caught (the check can fail).
    drifted = config_class()
    first = next(iter(fields))
    value = getattr(drifted, first)
    setattr(drifted, first, not value if isinstance(value, bool) else value * 2 + 1)
    assert first in _drift(drifted, core, fields)


def test_label_task_defaults_are_the_core_defaults() -> None:
    assert BuildDeepDiscLabelsConfig().label_config() == LabelConfig()
