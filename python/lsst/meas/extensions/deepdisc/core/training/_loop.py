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

"""The training loop (`train_model`): batches, stages, optimiser, validation, checkpoints and resumption."""

from __future__ import annotations

__all__ = ["backbone_body", "train_model"]

import concurrent.futures
import contextlib
import datetime
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors

from ..augment import augment_example, random_band_keep
from ..augment_sky import sky_augment_example
from ..checkpoints import (
    BEST_WEIGHTS_FILE,
    _json_ready,
    _LoopState,
    _read_last_state,
    _resume,
    _save_checkpoint,
    _save_weights,
    load_matching_weights,
    read_checkpoint_pointer,
)
from ..evaluation import _resolve_device, _validation_loss, evaluate_detections
from ..threads import torch_cpu_settings
from ..training_data import TrainingExample, to_detectron2_dict
from ._config import _AMP_DTYPES, _LOWER_IS_BETTER, TrainingConfig, TrainingResult, learning_rate_at

_LOG = logging.getLogger(__package__)


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
        example = augment_example(examples[index], augment, rng)
        if config.sky.enabled:
            example = sky_augment_example(example, config.sky, rng)
        record = to_detectron2_dict(example)
        if config.band_dropout > 0 and rng.random() < config.band_dropout:
            from ..models.band_availability import ABSENT_BAND_VALUE

            keep = random_band_keep(len(example.bands), config.min_bands, rng)
            record["image"][torch.from_numpy(~keep)] = ABSENT_BAND_VALUE
        batch.append(record)
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

    from ..models import build_model

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
    if config.class_loss_weights:
        from ..models.class_weights import set_class_loss_weights

        count = set_class_loss_weights(model, config.class_loss_weights)
        log.info(
            "Classification loss weighted by class (%s; background 1) in %d box predictor(s)",
            ", ".join(f"{w:g}" for w in config.class_loss_weights),
            count,
        )
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
                next_lr = learning_rate_at(config, done) if done < total else None
                last_state_path = _save_checkpoint(
                    checkpoint_dir, model, optimizer, scaler, loop, config, log, next_lr=next_lr
                )
            if stopping:
                interrupted = True
                log.info(
                    "Stopping after %d iterations of this run (iteration %d of %d)", stop_after, done, total
                )
                break

    pointer = read_checkpoint_pointer(checkpoint_dir) if last_state_path is None else None
    if pointer is not None:
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
