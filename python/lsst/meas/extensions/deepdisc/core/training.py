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
"""Training of DeepDISC (detectron2 ``GeneralizedRCNN``) models on labelled, scaled training examples.

`train_model` implements the schedule of Merz et al. (2023): **stage 1** trains the heads only - the
backbone's feature extractor (``backbone.bottom_up`` of FPN models, ``backbone.net`` of ViTDet-style
models, the whole backbone otherwise) is frozen with ``requires_grad = False`` and kept in eval mode so
that its normalisation statistics do not move either; the FPN, RPN and ROI heads train at ``heads_lr``.
**Stage 2** trains every layer the model itself leaves trainable at ``full_lr``, multiplied by ``lr_gamma``
at each of ``lr_steps`` (counted from the start of stage 2).  An optional linear warm-up opens each stage.

The loop is written for reproducibility and restartability:

* Seeds: the model is initialised after ``torch.manual_seed(seed)``; the training batch of iteration ``i``
  and its augmentations are a pure function of ``(seed, i)`` (a fresh permutation of the examples per
  epoch); the global torch, numpy and Python RNG states are saved with every checkpoint and restored on
  resume; validation runs under a forked, seeded torch RNG and never disturbs the training stream.
* Checkpoints (every ``checkpoint_period`` iterations, at the end and on ``stop_after``) are written into
  ``checkpoint_dir``: ``model_<iter>.safetensors`` (weights, no pickle), ``optimizer_<iter>.pt`` (optimizer
  and gradient-scaler state and torch RNG states: plain tensors and containers, read back with
  ``torch.load(weights_only=True)``) and ``state_<iter>.json`` (iteration, schedule, numpy/Python RNG
  states, loss accumulators, validation history, best model); ``last_checkpoint.json`` names the newest and
  is written last, atomically.  Calling `train_model` again with the same directory resumes there.
* Validation every ``eval_period`` iterations: the mean loss on the validation examples (model in
  training mode, normalisation layers in eval mode, no gradients), and detection quality from the
  production inference path (`.inference.run_tiled_inference`): detections above ``eval_score_threshold``
  are matched one-to-one to the labels at IoU >= ``eval_iou`` (`.matching.match_catalogs`), giving
  precision, recall and F1 pooled over the validation examples (0 where nothing was detected or labelled),
  the fraction of matched pairs with the right class, and COCO AP/AP50 of all detections through `.coco`
  (pycocotools; omitted with a warning when it cannot be imported).  The best model
  (by ``best_metric``, ties broken by the lower validation loss) is kept as ``model_best.safetensors``.

Nothing is downloaded: training starts from random weights or from ``init_state_dict``, whose tensors
are loaded where names and shapes fit the model; the others (e.g. a 3-band first convolution for a 6-band
model, or heads for another class count) are skipped and reported.
"""

from __future__ import annotations

__all__ = [
    "BEST_WEIGHTS_FILE",
    "LAST_CHECKPOINT_FILE",
    "TrainingConfig",
    "TrainingResult",
    "backbone_body",
    "evaluate_detections",
    "infer_examples",
    "learning_rate_at",
    "load_matching_weights",
    "plot_training_history",
    "train_model",
]

import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from .augment import AugmentConfig, augment_example
from .footprints import spans_centroid
from .model_package import StateDictDiff, compare_state_dicts
from .threads import torch_cpu_settings
from .training_data import TrainingExample, to_detectron2_dict

_LOG = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint.json"
BEST_WEIGHTS_FILE = "model_best.safetensors"
STATE_FORMAT_VERSION = 1

# Metrics for which smaller is better when used as ``best_metric``.
_LOWER_IS_BETTER = frozenset({"val_loss"})
# Label-magnitude bins of the validation recall (``recall_mag_<low>_<high>`` in the history).
RECALL_MAG_EDGES = (16.0, 22.0, 23.0, 24.0, 25.0, 26.0)
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

    def __post_init__(self) -> None:
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


def backbone_body(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The part of a detectron2 model frozen in stage 1, and its attribute path.

    ``backbone.bottom_up`` for FPN backbones (ResNet, Swin, MViT under an FPN), ``backbone.net`` for
    ViTDet's simple feature pyramid, else the whole ``backbone`` (e.g. C4 and DC5 models).
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise ValueError(
            f"model {type(model).__name__} has no 'backbone' module; it is not a GeneralizedRCNN"
        )
    for name in ("bottom_up", "net"):
        body = getattr(backbone, name, None)
        if isinstance(body, torch.nn.Module):
            return body, f"backbone.{name}"
    return backbone, "backbone"


# ------------------------------------------------------------------------------------------ init weights


def load_matching_weights(
    model: torch.nn.Module, state_dict: Mapping[str, Any], log: logging.Logger | None = None
) -> StateDictDiff:
    """Load the tensors of ``state_dict`` whose names and shapes fit ``model``; report the rest.

    Parameters
    ----------
    model : `torch.nn.Module`
        Model to initialise (in place).
    state_dict : `~collections.abc.Mapping`
        Weights already loaded safely by the caller (e.g. safetensors, or ``torch.load(weights_only=True)``);
        a detectron2 checkpoint dict ``{"model": {...}, ...}`` is unwrapped; numpy arrays are accepted.
    log : `logging.Logger`, optional
        Receives one line with the counts and the names of the skipped tensors.

    Returns
    -------
    report : `.model_package.StateDictDiff`
        ``shape_mismatches`` and ``unexpected`` were skipped; ``missing`` keep their initial values.
    """
    log = log or _LOG
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"init weight {key!r} is a {type(value).__name__}, not a tensor or array")
        tensors[str(key)] = value
    expected = model.state_dict()
    report = compare_state_dicts(expected, tensors)
    skipped = {key for key, _, _ in report.shape_mismatches}
    loadable = {key: value for key, value in tensors.items() if key in expected and key not in skipped}
    model.load_state_dict(loadable, strict=False)
    log.info(
        "Initial weights: loaded %d of %d model tensors; skipped %s",
        len(loadable),
        len(expected),
        report.describe(limit=20) if not report.is_empty else "nothing",
    )
    return report


# ------------------------------------------------------------------------------------------- checkpoint


def _json_ready(value: Any) -> Any:
    """Plain JSON data: NaN and infinities become `None`, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old or the complete new content."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _save_weights(path: Path, model: torch.nn.Module, iteration: int) -> None:
    tensors = {
        key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()
    }
    temporary = path.with_name(path.name + ".tmp")
    save_safetensors(tensors, str(temporary), metadata={"iteration": str(iteration)})
    os.replace(temporary, path)


def _rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """Global RNG states: tensors (for ``torch.save``) and JSON-able numpy/Python states."""
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
    }
    return tensors, plain


def _set_rng_state(tensors: Mapping[str, Any], plain: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        states = tensors["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


@dataclass
class _LoopState:
    """Everything besides weights and optimizer that a resumed run needs."""

    iteration: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_iteration: int | None = None
    best_metric: float | None = None
    best_val_loss: float | None = None
    loss_sums: dict[str, float] = field(default_factory=dict)
    loss_count: int = 0


def _checkpoint_names(iteration: int) -> dict[str, str]:
    return {
        "weights": f"model_{iteration:07d}.safetensors",
        "optimizer": f"optimizer_{iteration:07d}.pt",
        "state": f"state_{iteration:07d}.json",
    }


def _save_checkpoint(
    directory: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loop: _LoopState,
    config: TrainingConfig,
    log: logging.Logger,
) -> Path:
    """Write one checkpoint and point ``last_checkpoint.json`` at it; prune older ones."""
    names = _checkpoint_names(loop.iteration)
    rng_tensors, rng_plain = _rng_state()
    _save_weights(directory / names["weights"], model, loop.iteration)
    temporary = directory / (names["optimizer"] + ".tmp")
    torch.save(
        {"optimizer": optimizer.state_dict(), "grad_scaler": scaler.state_dict(), "rng": rng_tensors},
        temporary,
    )
    os.replace(temporary, directory / names["optimizer"])
    state = {
        "format_version": STATE_FORMAT_VERSION,
        "iteration": loop.iteration,
        "next_stage": 1 if loop.iteration < config.heads_iterations else 2,
        "next_lr": learning_rate_at(config, loop.iteration)
        if loop.iteration < config.total_iterations
        else None,
        "files": names,
        "config": config.to_dict(),
        "rng": rng_plain,
        "history": loop.history,
        "best": {
            "iteration": loop.best_iteration,
            "metric": loop.best_metric,
            "metric_name": config.best_metric,
            "val_loss": loop.best_val_loss,
            "weights": BEST_WEIGHTS_FILE if loop.best_iteration is not None else None,
        },
        "loss_accumulator": {"sums": loop.loss_sums, "count": loop.loss_count},
        "saved_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _write_atomic(directory / names["state"], json.dumps(_json_ready(state), indent=1).encode())
    pointer = {"iteration": loop.iteration, "state": names["state"]}
    _write_atomic(directory / LAST_CHECKPOINT_FILE, json.dumps(pointer).encode())
    log.info("Saved checkpoint at iteration %d in %s", loop.iteration, directory)
    if config.keep_checkpoints:
        _prune_checkpoints(directory, config.keep_checkpoints)
    return directory / names["state"]


def _prune_checkpoints(directory: Path, keep: int) -> None:
    iterations = sorted(int(path.stem.split("_")[1]) for path in directory.glob("state_[0-9]*.json"))
    for iteration in iterations[:-keep]:
        for name in _checkpoint_names(iteration).values():
            (directory / name).unlink(missing_ok=True)


def _read_last_state(directory: Path) -> dict[str, Any] | None:
    pointer_path = directory / LAST_CHECKPOINT_FILE
    if not pointer_path.exists():
        return None
    try:
        pointer = json.loads(pointer_path.read_text())
        state = json.loads((directory / pointer["state"]).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot read the last checkpoint in {directory}: {exc}") from exc
    if state.get("format_version") != STATE_FORMAT_VERSION:
        raise RuntimeError(
            f"checkpoint state {pointer['state']} in {directory} has format version "
            f"{state.get('format_version')!r}; this code reads version {STATE_FORMAT_VERSION}"
        )
    return state


def _resume(
    directory: Path,
    state: Mapping[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: TrainingConfig,
    log: logging.Logger,
) -> _LoopState:
    """Restore weights, optimizer, scaler, RNG states and loop state from a checkpoint."""
    files = state["files"]
    weights = load_safetensors(str(directory / files["weights"]))
    diff = compare_state_dicts(model.state_dict(), weights)
    if not diff.is_empty:
        raise RuntimeError(
            f"the checkpoint in {directory} belongs to a different model than model_config builds: "
            f"{diff.describe()}"
        )
    model.load_state_dict(weights, strict=True)
    extra = torch.load(directory / files["optimizer"], map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scaler.load_state_dict(extra["grad_scaler"])
    _set_rng_state(extra["rng"], state["rng"])
    saved_config = state.get("config", {})
    changed = sorted(key for key, value in config.to_dict().items() if saved_config.get(key, value) != value)
    if changed:
        log.warning("Resuming with a changed training configuration: %s", ", ".join(changed))
    best = state.get("best", {})
    accumulator = state.get("loss_accumulator", {})
    log.info("Resuming training from the checkpoint at iteration %d in %s", state["iteration"], directory)
    return _LoopState(
        iteration=int(state["iteration"]),
        history=list(state.get("history", [])),
        best_iteration=best.get("iteration"),
        best_metric=best.get("metric"),
        best_val_loss=best.get("val_loss"),
        loss_sums={str(key): float(value) for key, value in accumulator.get("sums", {}).items()},
        loss_count=int(accumulator.get("count", 0)),
    )


# ----------------------------------------------------------------------------------------------- data


def _batch_indices(n_examples: int, batch_size: int, iteration: int, seed: int) -> list[int]:
    """Example indices of an iteration: consecutive slots of a seeded per-epoch permutation stream."""
    indices = []
    permutations: dict[int, np.ndarray] = {}
    for slot in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, position = divmod(slot, n_examples)
        if epoch not in permutations:
            permutations[epoch] = np.random.default_rng([seed, epoch]).permutation(n_examples)
        indices.append(int(permutations[epoch][position]))
    return indices


def _training_batch(
    examples: Sequence[TrainingExample], config: TrainingConfig, iteration: int
) -> list[dict[str, Any]]:
    augment = config.augment_config()
    batch = []
    for slot, index in enumerate(_batch_indices(len(examples), config.batch_size, iteration, config.seed)):
        rng = np.random.default_rng([config.seed, iteration, slot, 1])
        batch.append(to_detectron2_dict(augment_example(examples[index], augment, rng)))
    return batch


class _BatchSource:
    """Training batches by iteration, the next one built in a background thread while a step runs.

    A batch is a pure function of ``(seed, iteration)``, so prefetching changes no result.
    """

    def __init__(self, examples: Sequence[TrainingExample], config: TrainingConfig, total: int) -> None:
        self._examples = examples
        self._config = config
        self._total = total
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepdisc-batch")
            if config.prefetch
            else None
        )
        self._pending: dict[int, concurrent.futures.Future] = {}

    def get(self, iteration: int) -> list[dict[str, Any]]:
        """The batch of ``iteration``; schedules the one after it."""
        future = self._pending.pop(iteration, None)
        batch = (
            future.result()
            if future is not None
            else _training_batch(self._examples, self._config, iteration)
        )
        following = iteration + 1
        if self._executor is not None and following < self._total and following not in self._pending:
            self._pending[following] = self._executor.submit(
                _training_batch, self._examples, self._config, following
            )
        return batch

    def close(self) -> None:
        """Stop the background thread (a pending batch is dropped)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()


def _check_examples(
    train: Sequence[TrainingExample], val: Sequence[TrainingExample], model: torch.nn.Module
) -> None:
    if not train:
        raise ValueError("no training examples")
    bands = train[0].bands
    for example in [*train, *val]:
        if not isinstance(example, TrainingExample):
            raise TypeError(f"examples must be TrainingExample objects, got {type(example).__name__}")
        if example.bands != bands:
            raise ValueError(
                f"example {example.example_id!r} has bands {example.bands}, "
                f"the first training example {bands}"
            )
    pixel_mean = dict(model.named_buffers()).get("pixel_mean")
    if isinstance(pixel_mean, torch.Tensor) and pixel_mean.numel() != len(bands):
        raise ValueError(
            f"the model normalises {pixel_mean.numel()} input channels but the examples have "
            f"{len(bands)} bands {list(bands)}"
        )


# ---------------------------------------------------------------------------------------------- model


def _set_stage(
    model: torch.nn.Module, body: torch.nn.Module, trainable: Mapping[str, bool], stage: int
) -> None:
    """``requires_grad`` for a stage: the model's own choice, minus the backbone body in stage 1."""
    frozen = {id(parameter) for parameter in body.parameters()} if stage == 1 else set()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable[name] and id(parameter) not in frozen)


def _train_mode(model: torch.nn.Module, body: torch.nn.Module, stage: int) -> None:
    """Training mode, with the frozen body in eval mode so normalisation statistics stay fixed too."""
    model.train()
    if stage == 1:
        body.eval()


def _make_optimizer(
    model: torch.nn.Module, trainable: Mapping[str, bool], config: TrainingConfig
) -> torch.optim.Optimizer:
    """SGD or AdamW over the parameters the model itself trains; no weight decay on 1-d parameters.

    Parameters frozen in stage 1 are in the optimizer too: without gradients they are skipped, and the
    parameter groups stay the same through both stages, so optimizer states resume across the switch.
    """
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if trainable[name]:
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.heads_lr)
    return torch.optim.SGD(groups, lr=config.heads_lr, momentum=config.momentum)


def _apply_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> None:
    """Re-impose the configured weight decay and momentum (a restored optimizer brings the saved ones)."""
    decay_group, no_decay_group = optimizer.param_groups
    decay_group["weight_decay"] = config.weight_decay
    no_decay_group["weight_decay"] = 0.0
    if "momentum" in decay_group:
        for group in optimizer.param_groups:
            group["momentum"] = config.momentum


def _resolve_device(name: str) -> torch.device:
    from .inference import select_device

    return select_device(name)


# ------------------------------------------------------------------------------------------ validation


class _QuietLog:
    """Routes the per-image info lines of the inference module to debug level."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def info(self, *args: Any, **kwargs: Any) -> None:
        self._log.debug(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


@contextlib.contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """A seeded torch RNG for validation that leaves the training RNG stream untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _validation_loss(
    model: torch.nn.Module, val: Sequence[TrainingExample], config: TrainingConfig, device: torch.device
) -> dict[str, float]:
    """Mean loss components on the (unaugmented) validation examples, without gradients."""
    model.train()
    for module in model.modules():  # Running normalisation statistics must not learn from validation data.
        if getattr(module, "running_mean", None) is not None:
            module.eval()
    sums: dict[str, float] = {}
    with torch.no_grad(), _forked_rng(device, config.seed):
        for start in range(0, len(val), config.batch_size):
            batch = [to_detectron2_dict(example) for example in val[start : start + config.batch_size]]
            losses = model(batch)
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value) * len(batch)
    means = {f"val_{key}": value / len(val) for key, value in sums.items()}
    means["val_loss"] = sum(value / len(val) for value in sums.values())
    return means


def _truth_arrays(example: TrainingExample) -> Any:
    from .matching import SourceArrays

    centres = [spans_centroid(label.spans) for label in example.instances]
    return SourceArrays(
        x=np.array([x for x, _ in centres], dtype=np.float64),
        y=np.array([y for _, y in centres], dtype=np.float64),
        spans=[label.spans for label in example.instances],
        class_id=example.class_ids,
        mag=np.array([label.magnitude for label in example.instances], dtype=np.float64),
    )


def _detection_arrays(detections: Any) -> Any:
    from .matching import SourceArrays

    centres = [spans_centroid(spans) for spans in detections.footprints]
    return SourceArrays(
        x=np.array([x for x, _ in centres], dtype=np.float64),
        y=np.array([y for _, y in centres], dtype=np.float64),
        spans=detections.footprints,
        class_id=detections.class_ids,
        score=detections.scores,
    )


def _num_classes(model: Any, examples: Sequence[TrainingExample]) -> int:
    """The model's class count (``roi_heads.num_classes``), else one more than the largest label."""
    roi_heads = getattr(model, "roi_heads", None)
    count = getattr(roi_heads, "num_classes", None)
    if isinstance(count, int) and count > 0:
        return count
    return 1 + max((label.class_id for example in examples for label in example.instances), default=0)


def _coco_ap(
    truths: Sequence[Any],
    detections: Sequence[Any],
    examples: Sequence[TrainingExample],
    num_classes: int,
    config: TrainingConfig,
    log: logging.Logger,
) -> dict[str, float | None]:
    """COCO AP and AP50 over all validation examples with `.coco`; `None` when it cannot be computed.

    The examples are laid side by side on one virtual mosaic (each shifted right by the widths before
    it), so pooled COCO evaluation of the mosaic equals a multi-image evaluation: objects of different
    examples never overlap and therefore never match.
    """
    try:
        from .coco import CocoImage, coco_average_precision
        from .matching import SourceArrays
    except ImportError as exc:  # pycocotools missing: AP is omitted, the other metrics still run.
        log.warning("COCO AP omitted from validation: %s", exc)
        return {"ap": None, "ap50": None}

    def mosaic(catalogs: Sequence[Any], with_scores: bool) -> Any:
        xs, ys, spans, classes, scores = [], [], [], [], []
        offset = 0
        for catalog, example in zip(catalogs, examples):
            xs.append(catalog.x + offset)
            ys.append(catalog.y)
            spans.extend(
                footprint + np.array([0, offset, offset], dtype=footprint.dtype)
                for footprint in catalog.spans
            )
            classes.append(catalog.class_id)
            if with_scores:
                scores.append(catalog.score)
            offset += example.width
        return SourceArrays(
            x=np.concatenate(xs),
            y=np.concatenate(ys),
            spans=spans,
            class_id=np.concatenate(classes),
            score=np.concatenate(scores) if with_scores else None,
        )

    if not sum(len(truth) for truth in truths):
        return {"ap": None, "ap50": None}
    if not sum(len(found) for found in detections):
        return {"ap": 0.0, "ap50": 0.0}  # Labels but no detections: no recall at any threshold.
    iou_type = "segm" if config.eval_iou_type == "mask" else "bbox"
    image = CocoImage(
        width=sum(example.width for example in examples), height=max(e.height for e in examples)
    )
    scores = coco_average_precision(
        mosaic(truths, False),
        mosaic(detections, True),
        image,
        iou_types=(iou_type,),
        class_names={index: str(index) for index in range(num_classes)},
    )[iou_type]
    return {"ap": scores.ap, "ap50": scores.ap50}


def infer_examples(
    model: Any,
    examples: Sequence[TrainingExample],
    device: str = "auto",
    seed: int = 0,
    log: logging.Logger | None = None,
) -> tuple[list[Any], list[Any]]:
    """Run a model on labelled examples, each as one tile of the production inference path.

    Parameters
    ----------
    model : `torch.nn.Module` or callable
        A detectron2 ``GeneralizedRCNN``-style model (put in eval mode and on ``device``).
    examples : `~collections.abc.Sequence` [`TrainingExample`]
        Labelled, scaled examples.
    device : `str`
        Torch device name (``"auto"``: CUDA when available).
    seed : `int`
        Seed of a forked torch RNG (the caller's random stream is not disturbed).
    log : `logging.Logger`, optional
        For warnings (per-image lines are suppressed).

    Returns
    -------
    truths, detections : `list` [`.matching.SourceArrays`]
        Per example: its labels, and every detection the model returned (with scores).
    """
    from .inference import InferenceConfig, run_tiled_inference

    torch_device = _resolve_device(device)
    quiet = _QuietLog(log or _LOG)
    num_classes = _num_classes(model, examples)
    truths, found = [], []
    with _forked_rng(torch_device, seed):
        for example in examples:
            inference = InferenceConfig(
                tile_size=max(example.height, example.width),
                overlap=0,
                stitch_margin=0,
                batch_size=1,
                device=str(torch_device),
                progress_interval_s=1e9,
            )
            detections = run_tiled_inference(
                model, example.image, config=inference, log=quiet, num_classes=num_classes
            )
            truths.append(_truth_arrays(example))
            found.append(_detection_arrays(detections))
    return truths, found


def evaluate_detections(
    model: Any,
    examples: Sequence[TrainingExample],
    config: TrainingConfig,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Detection quality of a model on labelled examples, as `train_model` validates.

    Each example goes through `.inference.run_tiled_inference` as one tile (so the model is put in eval
    mode and on ``config.device``).  Detections scoring ``>= config.eval_score_threshold`` are matched
    one-to-one to the labels at IoU ``>= config.eval_iou`` (``config.eval_iou_type``), class-agnostically.

    Parameters
    ----------
    model : `torch.nn.Module` or callable
        A detectron2 ``GeneralizedRCNN``-style model.
    examples : `~collections.abc.Sequence` [`TrainingExample`]
        Labelled, scaled examples (not augmented).
    config : `TrainingConfig`
        Supplies the device and the ``eval_*`` parameters.
    log : `logging.Logger`, optional
        For warnings (per-image inference lines go to debug level).

    Returns
    -------
    metrics : `dict`
        ``precision``, ``recall``, ``f1`` (pooled over the examples; 0 when there is nothing to count),
        ``class_accuracy`` (fraction of matched pairs with the label's class; `None` without matches),
        ``ap`` and ``ap50`` (COCO, all detections, per class then averaged; `None` when unavailable),
        ``n_truth``, ``n_detections`` (above the threshold), ``n_matched`` and, per bin of the labels'
        magnitudes (`RECALL_MAG_EDGES`), ``recall_mag_<low>_<high>`` (`None` for an empty bin).
    """
    from .matching import match_catalogs

    log = log or _LOG
    val = list(examples)
    n_truth = n_detections = n_matched = n_same_class = 0
    num_classes = _num_classes(model, val)
    truths, all_detections = infer_examples(model, val, config.device, config.seed, log)
    edges = np.asarray(RECALL_MAG_EDGES)
    bin_truth = np.zeros(edges.size - 1, dtype=np.int64)
    bin_found = np.zeros(edges.size - 1, dtype=np.int64)
    for truth, found in zip(truths, all_detections):
        kept = found.select(found.score >= config.eval_score_threshold)
        n_truth += len(truth)
        n_detections += len(kept)
        found_truth = np.zeros(len(truth), dtype=bool)
        if len(truth) and len(kept):
            match = match_catalogs(
                truth, kept, min_iou=config.eval_iou, iou_type=config.eval_iou_type, max_distance=0.0
            )
            n_matched += match.n_matched
            n_same_class += int(np.sum(truth.class_id[match.truth_index] == kept.class_id[match.det_index]))
            found_truth[match.truth_index] = True
        bins = np.digitize(truth.mag, edges) - 1
        usable = np.isfinite(truth.mag) & (bins >= 0) & (bins < edges.size - 1)
        bin_truth += np.bincount(bins[usable], minlength=edges.size - 1)
        bin_found += np.bincount(bins[usable & found_truth], minlength=edges.size - 1)
    precision = n_matched / n_detections if n_detections else 0.0
    recall = n_matched / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    metrics: dict[str, Any] = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "class_accuracy": n_same_class / n_matched if n_matched else None,
        "n_truth": n_truth,
        "n_detections": n_detections,
        "n_matched": n_matched,
    }
    for low, high, count, hits in zip(edges[:-1], edges[1:], bin_truth, bin_found):
        metrics[f"recall_mag_{low:g}_{high:g}"] = float(hits / count) if count else None
    metrics.update(_coco_ap(truths, all_detections, val, num_classes, config, log))
    return metrics


def _is_better(metric: float | None, val_loss: float | None, loop: _LoopState, name: str) -> bool:
    """Whether a validation result beats the best so far (ties go to the lower validation loss)."""
    if metric is None or not math.isfinite(metric):
        return False
    if loop.best_iteration is None or loop.best_metric is None:
        return True
    sign = -1.0 if name in _LOWER_IS_BETTER else 1.0
    if sign * metric != sign * loop.best_metric:
        return sign * metric > sign * loop.best_metric
    return val_loss is not None and (loop.best_val_loss is None or val_loss < loop.best_val_loss)


# ------------------------------------------------------------------------------------------- the loop


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def train_model(
    model_config: dict[str, Any],
    train: list[TrainingExample],
    val: list[TrainingExample],
    config: TrainingConfig,
    checkpoint_dir: Path,
    init_state_dict: dict[str, Any] | None = None,
    log: logging.Logger | None = None,
    stop_after: int | None = None,
) -> TrainingResult:
    """Train a DeepDISC model with the two-stage schedule, resuming from a checkpoint in ``checkpoint_dir``.

    Parameters
    ----------
    model_config : `dict`
        Plain model config for `.models.build_model` (e.g. from `.models.make_model_config`).
    train : `list` [`TrainingExample`]
        Training examples (augmented on the fly).
    val : `list` [`TrainingExample`]
        Validation examples (not augmented); may be empty, then no metrics are computed and the final
        weights are returned.
    config : `TrainingConfig`
        Schedule and hyper-parameters.
    checkpoint_dir : `pathlib.Path`
        Directory for checkpoints (created if needed); a checkpoint already there is resumed.
    init_state_dict : `dict`, optional
        Initial weights, loaded where names and shapes fit (ignored when resuming).
    log : `logging.Logger`, optional
        Logger for progress (this module's by default).
    stop_after : `int`, optional
        Stop after this many iterations *of this call*, writing a checkpoint first (simulates an
        interruption; a later call resumes).

    Returns
    -------
    result : `TrainingResult`
    """
    start_time = time.perf_counter()
    log = log or _LOG
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1 or None, got {stop_after}")
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    train, val = list(train), list(val)
    with torch_cpu_settings(config.num_threads, log=log):
        return _train(
            model_config, train, val, config, checkpoint_dir, init_state_dict, log, stop_after, start_time
        )


def _train(
    model_config: dict[str, Any],
    train: list[TrainingExample],
    val: list[TrainingExample],
    config: TrainingConfig,
    checkpoint_dir: Path,
    init_state_dict: dict[str, Any] | None,
    log: logging.Logger,
    stop_after: int | None,
    start_time: float,
) -> TrainingResult:
    """The body of `train_model`, run under its CPU settings."""
    from detectron2.utils.events import EventStorage

    from .models import build_model

    device = _resolve_device(config.device)
    use_amp = config.amp and device.type == "cuda"
    if config.amp and not use_amp:
        log.info("Mixed precision requested but not used on device %s (CUDA only)", device)
    amp_dtype = _AMP_DTYPES[config.amp_dtype]

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    np.random.seed(config.seed)
    model = build_model(model_config, device=str(device))
    model.to(device)
    _check_examples(train, val, model)
    body, body_name = backbone_body(model)
    trainable = {name: parameter.requires_grad for name, parameter in model.named_parameters()}
    optimizer = _make_optimizer(model, trainable, config)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    init_report = None
    saved_state = _read_last_state(checkpoint_dir)
    if saved_state is not None:
        if init_state_dict is not None:
            log.info("A checkpoint exists in %s: init_state_dict is ignored", checkpoint_dir)
        loop = _resume(checkpoint_dir, saved_state, model, optimizer, scaler, config, log)
        _apply_hyperparameters(optimizer, config)
    else:
        if init_state_dict is not None:
            init_report = load_matching_weights(model, init_state_dict, log)
        loop = _LoopState()

    total = config.total_iterations
    log.info(
        "Training %d iterations (stage 1 heads-only: %d, %s frozen; stage 2 all layers: %d) on %s, "
        "%d training and %d validation examples, batch size %d, starting at iteration %d",
        total,
        config.heads_iterations,
        body_name,
        config.full_iterations,
        device,
        len(train),
        len(val),
        config.batch_size,
        loop.iteration,
    )
    interrupted = False
    last_state_path: Path | None = None
    iterations_this_call = 0
    # Progress rates count training steps only, not the time spent validating and checkpointing.
    window_seconds, window_iterations = 0.0, 0
    window_sums: dict[str, float] = {}
    current_stage = 0
    batches = _BatchSource(train, config, total)
    with contextlib.ExitStack() as cleanup, EventStorage(loop.iteration) as storage:
        cleanup.callback(batches.close)
        while loop.iteration < total:
            iteration = loop.iteration
            stage = 1 if iteration < config.heads_iterations else 2
            if stage != current_stage:
                _set_stage(model, body, trainable, stage)
                current_stage = stage
                log.info("Stage %d from iteration %d", stage, iteration)
            _train_mode(model, body, stage)
            lr = learning_rate_at(config, iteration)
            for group in optimizer.param_groups:
                group["lr"] = lr
            storage.iter = iteration
            step_start = time.perf_counter()

            batch = batches.get(iteration)
            autocast = torch.autocast("cuda", dtype=amp_dtype) if use_amp else contextlib.nullcontext()
            with autocast:
                losses = model(batch)
            loss = sum(losses.values())
            loss_values = {key: float(value.detach()) for key, value in losses.items()}
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(
                    f"non-finite loss at iteration {iteration}: {loss_values}; lower the learning rate or "
                    "check the inputs"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(
                    [p for p in model.parameters() if p.requires_grad], config.grad_clip
                )
            scaler.step(optimizer)
            scaler.update()

            if device.type == "cuda":
                torch.cuda.synchronize(device)
            window_seconds += time.perf_counter() - step_start
            loop.iteration += 1
            iterations_this_call += 1
            window_iterations += 1
            loss_values["loss"] = float(loss.detach())
            for key, value in loss_values.items():
                loop.loss_sums[key] = loop.loss_sums.get(key, 0.0) + value
                window_sums[key] = window_sums.get(key, 0.0) + value
            loop.loss_count += 1

            done = loop.iteration
            if done % config.log_period == 0 or done == total:
                rate = window_iterations / window_seconds if window_seconds > 0 else float("inf")
                means = {key: value / window_iterations for key, value in window_sums.items()}
                components = ", ".join(
                    f"{key} {value:.4f}" for key, value in sorted(means.items()) if key != "loss"
                )
                log.info(
                    "iter %d/%d stage %d: loss %.4f (%s), lr %.3g, %.2f it/s, ETA %s",
                    done,
                    total,
                    stage,
                    means["loss"],
                    components,
                    lr,
                    rate,
                    _format_duration((total - done) / rate if rate > 0 else 0.0),
                )
                window_seconds, window_iterations, window_sums = 0.0, 0, {}

            if done % config.eval_period == 0 or done == total:
                _evaluate(model, body, stage, val, config, device, loop, lr, checkpoint_dir, log)
                _train_mode(model, body, stage)

            stopping = stop_after is not None and iterations_this_call >= stop_after and done < total
            if done % config.checkpoint_period == 0 or done == total or stopping:
                last_state_path = _save_checkpoint(
                    checkpoint_dir, model, optimizer, scaler, loop, config, log
                )
            if stopping:
                interrupted = True
                log.info(
                    "Stopping after %d iterations of this run (iteration %d of %d)", stop_after, done, total
                )
                break

    if last_state_path is None and (checkpoint_dir / LAST_CHECKPOINT_FILE).exists():
        pointer = json.loads((checkpoint_dir / LAST_CHECKPOINT_FILE).read_text())
        last_state_path = checkpoint_dir / pointer["state"]
    best_path = checkpoint_dir / BEST_WEIGHTS_FILE
    if loop.best_iteration is not None and best_path.exists():
        state_dict = load_safetensors(str(best_path))
    else:
        state_dict = {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}
    seconds = time.perf_counter() - start_time
    log.info(
        "Training %s at iteration %d after %s; best %s = %s at iteration %s",
        "interrupted" if interrupted else "finished",
        loop.iteration,
        _format_duration(seconds),
        config.best_metric,
        loop.best_metric,
        loop.best_iteration,
    )
    return TrainingResult(
        state_dict=state_dict,
        best_iteration=loop.best_iteration,
        best_metric=loop.best_metric,
        history=loop.history,
        iterations_done=loop.iteration,
        seconds=seconds,
        interrupted=interrupted,
        init_report=init_report,
        best_metric_name=config.best_metric,
        last_checkpoint=last_state_path,
    )


def _evaluate(
    model: torch.nn.Module,
    body: torch.nn.Module,
    stage: int,
    val: Sequence[TrainingExample],
    config: TrainingConfig,
    device: torch.device,
    loop: _LoopState,
    lr: float,
    checkpoint_dir: Path,
    log: logging.Logger,
) -> None:
    """Append one history entry (training loss means since the last entry, validation); track the best."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"iteration": loop.iteration, "stage": stage, "lr": lr}
    count = max(loop.loss_count, 1)
    for key, value in sorted(loop.loss_sums.items()):
        entry[f"train_{key}"] = value / count
    loop.loss_sums, loop.loss_count = {}, 0
    if val:
        entry.update(_validation_loss(model, val, config, device))
        entry.update(evaluate_detections(model, val, config, log))
    entry["eval_seconds"] = time.perf_counter() - start
    entry = _json_ready(entry)
    loop.history.append(entry)
    if not val:
        return
    metric = entry.get(config.best_metric)
    if metric is None and config.best_metric in ("ap", "ap50"):
        log.warning(
            "best_metric %r is unavailable (no COCO AP evaluator); no best model selected", config.best_metric
        )
    val_loss = entry.get("val_loss")
    log.info(
        "Validation at iteration %d: val_loss %.4f, precision %.3f, recall %.3f, F1 %.3f, AP %s",
        loop.iteration,
        val_loss if val_loss is not None else float("nan"),
        entry["precision"],
        entry["recall"],
        entry["f1"],
        "n/a" if entry.get("ap") is None else f"{entry['ap']:.3f}",
    )
    if _is_better(metric, val_loss, loop, config.best_metric):
        loop.best_iteration = loop.iteration
        loop.best_metric = metric
        loop.best_val_loss = val_loss
        _save_weights(checkpoint_dir / BEST_WEIGHTS_FILE, model, loop.iteration)
        log.info("New best model at iteration %d (%s = %s)", loop.iteration, config.best_metric, metric)


# ------------------------------------------------------------------------------------------- plotting


def plot_training_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], stage_boundary: int | None = None
) -> Path:
    """Plot loss components and validation metrics against iteration into a PNG.

    Parameters
    ----------
    history : `~collections.abc.Sequence` [`dict`]
        `TrainingResult.history` (or the ``history`` of a checkpoint state file).
    path : `str` or `os.PathLike`
        Output file (PNG).
    stage_boundary : `int`, optional
        Iteration at which stage 2 starts (``heads_iterations``), drawn as a vertical line; by default
        the last validation of stage 1 (exact when ``eval_period`` divides ``heads_iterations``).

    Returns
    -------
    path : `pathlib.Path`
        The file written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not history:
        raise ValueError("the training history is empty: nothing to plot")
    path = Path(path)
    iterations = np.array([entry["iteration"] for entry in history], dtype=np.float64)

    def series(key: str) -> np.ndarray:
        return np.array(
            [np.nan if entry.get(key) is None else float(entry[key]) for entry in history], dtype=np.float64
        )

    keys = {key for entry in history for key in entry}
    # One colour per loss component; training solid, validation dashed; totals thicker.
    components = sorted({key.split("_", 1)[1] for key in keys if key.startswith(("train_loss", "val_loss"))})
    colours = {name: f"C{index % 10}" for index, name in enumerate(components)}
    figure = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(figure)  # Renders without pyplot, so no global backend is touched.
    losses, metrics = figure.subplots(1, 2)
    all_positive = True
    for prefix, style in (("train", "-"), ("val", "--")):
        for name in components:
            values = series(f"{prefix}_{name}")
            finite = np.isfinite(values)
            if not finite.any():
                continue
            all_positive &= bool(np.all(values[finite] > 0))
            losses.plot(
                iterations,
                values,
                color=colours[name],
                linestyle=style,
                linewidth=2.2 if name == "loss" else 1.0,
                marker="o",
                markersize=3,
                label=f"{prefix}_{name}",
            )
    if stage_boundary is None:
        # An entry's stage is that of its last iteration: stage 2 began after the last stage-1 entry.
        switch = np.flatnonzero(np.diff(series("stage")) > 0)
        stage_boundary = int(iterations[switch[0]]) if switch.size else None
    for axes in (losses, metrics):
        if stage_boundary is not None:
            axes.axvline(stage_boundary, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("iteration")
    losses.set_ylabel("loss")
    losses.set_title("Losses (solid: training, dashed: validation)")
    if all_positive and components:
        losses.set_yscale("log")
    if components:
        losses.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plotted = False
    for key in ("precision", "recall", "f1", "class_accuracy", "ap", "ap50"):
        values = series(key)
        if np.any(np.isfinite(values)):
            metrics.plot(iterations, values, marker="o", markersize=3, label=key)
            plotted = True
    metrics.set_title("Validation metrics")
    metrics.set_ylim(-0.02, 1.02)
    if plotted:
        metrics.legend(fontsize="small")
    else:
        metrics.text(0.5, 0.5, "no validation metrics", ha="center", va="center", transform=metrics.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=100, format="png")
    return path
