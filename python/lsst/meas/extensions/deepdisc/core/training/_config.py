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

"""`TrainingConfig` (the two-stage schedule's hyper-parameters), `TrainingResult` and the learning rate."""

from __future__ import annotations

__all__ = ["TrainingConfig", "TrainingResult", "learning_rate_at"]

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..augment import AugmentConfig
from ..augment_sky import SkyAugmentConfig
from ..checkpoints import StateDictDiff

# Metrics for which smaller is better when used as ``best_metric``.
_LOWER_IS_BETTER = frozenset({"val_loss"})
_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class TrainingConfig:
    """Hyper-parameters of the two-stage training schedule.

    Parameters
    ----------
    heads_iterations : `int`
        Iterations of stage 1 (backbone frozen, heads train).
    full_iterations : `int`
        Iterations of stage 2 (all layers train).
    heads_lr, full_lr : `float`
        Base learning rates of the two stages.
    lr_steps : `tuple` [`int`, ...]
        Stage-2 iterations (counted from the start of stage 2) at which the rate is multiplied by
        ``lr_gamma``.
    lr_gamma : `float`
        Step-decay factor.
    batch_size : `int`
        Examples per iteration.
    crop_size : `int`, `float` or `None`
        Random crop: side in pixels (`int`), fraction of each side (`float` in ``(0, 1]``), or none.
    flips, rot90 : `bool`
        Random flips and 90-degree rotations.
    grad_clip : `float` or `None`
        Maximum global L2 norm of the gradients; `None` disables clipping.
    amp : `bool`
        Mixed precision (autocast, with a gradient scaler for float16); honoured on CUDA only.
    amp_dtype : `str`
        ``"float16"`` or ``"bfloat16"``.
    checkpoint_period : `int`
        Iterations between checkpoints (one is also written at the end).
    eval_period : `int`
        Iterations between validations (one is also run at the end).
    seed : `int`
        Seed of the initialisation, data order, augmentation and sampling.
    device : `str`
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    weight_decay : `float`
        Weight decay of weights with more than one dimension (biases and normalisation parameters get none).
    warmup_iterations : `int`
        Linear warm-up length at the start of each stage, from ``warmup_factor`` times the base rate.
    warmup_factor : `float`
        Starting fraction of the warm-up.
    log_period : `int`
        Iterations between progress log lines.
    optimizer : `str`
        ``"sgd"`` (momentum ``momentum``, detectron2's default) or ``"adamw"`` (ViTDet-style models).
    momentum : `float`
        SGD momentum.
    best_metric : `str`
        Validation metric selecting the best model: ``"f1"``, ``"precision"``, ``"recall"``, ``"ap"``,
        ``"ap50"`` (larger is better) or ``"val_loss"`` (smaller is better).
    eval_score_threshold : `float`
        Detections below this score are ignored by precision/recall/F1 (AP uses all of them).
    eval_iou : `float`
        Minimum IoU of a match.
    eval_iou_type : `str`
        ``"mask"`` (footprint IoU) or ``"bbox"``.
    keep_checkpoints : `int`
        Number of periodic checkpoints kept on disk (older ones are deleted); 0 keeps all.
    num_threads : `int`
        Torch CPU threads (`.threads.torch_threads`): 0 picks ``$OMP_NUM_THREADS`` or the available cores.
        Denormals are flushed to zero as well.
    prefetch : `bool`
        Build (augment and rasterise) the next batch in a background thread while the current step runs.
    band_dropout : `float`
        Fraction of training examples that lose some of their bands (`.augment.random_band_keep`): the
        absent bands become NaN planes, which a band-availability model
        (`.models.band_availability`) sees as absent.  0 for models that need all their bands.
    min_bands : `int`
        The fewest bands an example keeps under band dropout.
    class_loss_weights : `tuple` [`float`, ...]
        One weight per class (in class-id order) of the box classifier's loss
        (`.models.class_weights.set_class_loss_weights`; background 1); empty for the unweighted loss.
    sky : `.augment_sky.SkyAugmentConfig`
        Pixel-scale, seeing and artifact augmentations (off by default).
    """

    heads_iterations: int
    full_iterations: int
    heads_lr: float = 1e-3
    full_lr: float = 1e-4
    lr_steps: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    batch_size: int = 4
    crop_size: int | float | None = None
    flips: bool = True
    rot90: bool = True
    grad_clip: float | None = 1.0
    amp: bool = True
    amp_dtype: str = "float16"
    checkpoint_period: int = 1000
    eval_period: int = 500
    seed: int = 0
    device: str = "auto"
    weight_decay: float = 1e-4
    warmup_iterations: int = 0
    warmup_factor: float = 0.001
    log_period: int = 20
    optimizer: str = "sgd"
    momentum: float = 0.9
    best_metric: str = "f1"
    eval_score_threshold: float = 0.5
    eval_iou: float = 0.5
    eval_iou_type: str = "mask"
    keep_checkpoints: int = 2
    num_threads: int = 0
    prefetch: bool = True
    band_dropout: float = 0.0
    min_bands: int = 1
    class_loss_weights: tuple[float, ...] = ()
    sky: SkyAugmentConfig = dataclasses.field(default_factory=lambda: SkyAugmentConfig(probability=0.0))

    def __post_init__(self) -> None:
        if not 0.0 <= self.band_dropout <= 1.0:
            raise ValueError(f"band_dropout must be in [0, 1], got {self.band_dropout}")
        if self.min_bands < 1:
            raise ValueError(f"min_bands must be >= 1, got {self.min_bands}")
        self.class_loss_weights = tuple(float(w) for w in self.class_loss_weights)
        if not all(math.isfinite(w) and w > 0 for w in self.class_loss_weights):
            raise ValueError(f"class_loss_weights must be positive and finite, got {self.class_loss_weights}")
        if not isinstance(self.sky, SkyAugmentConfig):
            raise TypeError(f"sky must be a SkyAugmentConfig, got {type(self.sky).__name__}")
        self.lr_steps = tuple(int(step) for step in self.lr_steps)
        for name in (
            "heads_iterations",
            "full_iterations",
            "warmup_iterations",
            "keep_checkpoints",
            "num_threads",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_iterations < 1:
            raise ValueError("heads_iterations + full_iterations must be at least 1")
        for name in ("batch_size", "checkpoint_period", "eval_period", "log_period"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("heads_lr", "full_lr", "lr_gamma", "warmup_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if any(step < 0 for step in self.lr_steps) or list(self.lr_steps) != sorted(self.lr_steps):
            raise ValueError(f"lr_steps must be non-negative and increasing, got {self.lr_steps}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.amp_dtype not in _AMP_DTYPES:
            raise ValueError(f"amp_dtype must be one of {sorted(_AMP_DTYPES)}, got {self.amp_dtype!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        known_metrics = {"f1", "precision", "recall", "ap", "ap50", "val_loss"}
        if self.best_metric not in known_metrics:
            raise ValueError(f"best_metric must be one of {sorted(known_metrics)}, got {self.best_metric!r}")
        if not 0.0 < self.eval_iou <= 1.0:
            raise ValueError(f"eval_iou must be in (0, 1], got {self.eval_iou}")
        if self.eval_iou_type not in ("mask", "bbox"):
            raise ValueError(f"eval_iou_type must be 'mask' or 'bbox', got {self.eval_iou_type!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        # Validates crop_size with the augmentation's own rules.
        self.augment_config()

    @property
    def total_iterations(self) -> int:
        """Iterations of both stages."""
        return self.heads_iterations + self.full_iterations

    def augment_config(self) -> AugmentConfig:
        """The augmentation part of the configuration."""
        return AugmentConfig(flips=self.flips, rot90=self.rot90, crop_size=self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-safe)."""
        data = dataclasses.asdict(self)
        data["lr_steps"] = list(self.lr_steps)
        return data


@dataclass
class TrainingResult:
    """What `train_model` returns.

    Attributes
    ----------
    state_dict : `dict` [`str`, `torch.Tensor`]
        CPU weights of the best model (by ``best_metric``), or of the last iteration when no validation
        ran.
    best_iteration : `int` or `None`
        Iteration count at which the best model was evaluated.
    best_metric : `float` or `None`
        Its ``best_metric`` value.
    history : `list` [`dict`]
        One entry per validation: ``iteration``, ``stage``, ``lr``, ``train_loss`` and ``train_<component>``
        (means since the previous entry), ``val_loss`` and ``val_<component>``, ``precision``,
        ``recall``, ``f1``, ``class_accuracy`` (of matched pairs), ``ap``, ``ap50`` (`None` when COCO AP is
        unavailable), ``n_truth``, ``n_detections``, ``n_matched``, ``eval_seconds``.
    iterations_done : `int`
        Iterations completed in total (including those of earlier, resumed runs).
    seconds : `float`
        Wall time of this call.
    interrupted : `bool`
        Whether the run stopped early because of ``stop_after``.
    init_report : `StateDictDiff` or `None`
        What was skipped when loading ``init_state_dict`` (`None` when none was loaded).
    best_metric_name : `str`
        The metric used for selection.
    last_checkpoint : `pathlib.Path` or `None`
        State file of the newest checkpoint.
    """

    state_dict: dict[str, torch.Tensor]
    best_iteration: int | None
    best_metric: float | None
    history: list[dict[str, Any]]
    iterations_done: int
    seconds: float
    interrupted: bool = False
    init_report: StateDictDiff | None = None
    best_metric_name: str = "f1"
    last_checkpoint: Path | None = None


# ---------------------------------------------------------------------------------------------- schedule


def learning_rate_at(config: TrainingConfig, iteration: int) -> float:
    """Learning rate of (zero-based) ``iteration`` under ``config``'s two-stage schedule.

    Stage 1 (``iteration < heads_iterations``) uses ``heads_lr``; stage 2 uses ``full_lr`` times
    ``lr_gamma`` per step of ``lr_steps`` already reached (counted from the stage-2 start).  Each stage opens
    with a linear warm-up of ``warmup_iterations``.
    """
    if iteration < config.heads_iterations:
        base, local = config.heads_lr, iteration
    else:
        local = iteration - config.heads_iterations
        base = config.full_lr * config.lr_gamma ** sum(local >= step for step in config.lr_steps)
    if local < config.warmup_iterations:
        fraction = local / config.warmup_iterations
        base *= config.warmup_factor + (1.0 - config.warmup_factor) * fraction
    return float(base)
