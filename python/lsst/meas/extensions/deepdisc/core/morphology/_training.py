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
"""Training and running a morphology classifier on cutouts (`make_cutouts`)."""

from __future__ import annotations

__all__ = ["ClassifierTrainingConfig", "classify", "drop_bands", "train_classifier"]

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ._metrics import top_k_accuracy
from ._models import build_classifier

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """How a morphology classifier is trained.

    Parameters
    ----------
    epochs : `int`
        Passes over the training cutouts.
    batch_size : `int`
        Cutouts per step.
    learning_rate : `float`
        Peak AdamW learning rate (linear warm-up over the first epoch, cosine decay to 0).
    weight_decay : `float`
        AdamW weight decay.
    imbalance : `str`
        Class-imbalance handling, as studied in the morphology paper: ``"none"``, ``"balanced_sampling"``
        (each step draws classes equally often) or ``"loss_weights"`` (cross-entropy weights inversely
        proportional to the class frequencies, normalised to a mean of 1).
    label_smoothing : `float`
        Cross-entropy label smoothing.
    seed : `int`
        Seed of the initial weights and the sampling.
    band_dropout : `float`
        Probability that a training cutout loses a random subset of its bands (at least one band is kept):
        their planes become 0, as `make_cutouts` makes the planes of bands an image lacks, so that the
        classifier also serves data with fewer bands.
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.05
    imbalance: str = "loss_weights"
    label_smoothing: float = 0.05
    seed: int = 0
    band_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.imbalance not in ("none", "balanced_sampling", "loss_weights"):
            raise ValueError(
                f"imbalance must be none, balanced_sampling or loss_weights, got {self.imbalance!r}"
            )
        if not 0.0 <= self.band_dropout <= 1.0:
            raise ValueError(f"band_dropout must be in [0, 1], got {self.band_dropout}")
        if self.epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("epochs, batch_size and learning_rate must be positive")

    def to_dict(self) -> dict:
        """Plain data (provenance)."""
        return asdict(self)


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random element of the dihedral group (flips, 90 degree turns): morphology does not care."""
    if torch.rand(1, generator=generator).item() < 0.5:
        batch = batch.flip(-1)
    turns = int(torch.randint(0, 4, (1,), generator=generator).item())
    return torch.rot90(batch, turns, dims=(-2, -1)) if turns else batch


def drop_bands(
    batch: torch.Tensor, n_bands: int, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """Zero a random subset of the band planes (never all) of each cutout with ``probability``.

    The planes after the first ``n_bands`` (no_data, object_mask) are kept.
    """
    if probability <= 0 or n_bands < 2:
        return batch
    size = batch.shape[0]
    chosen = torch.rand(size, generator=generator) < probability
    # Each band of a chosen cutout is dropped with probability 1/2, at least one band is kept.
    dropped = (torch.rand(size, n_bands, generator=generator) < 0.5) & chosen[:, None]
    keep_one = torch.randint(0, n_bands, (size,), generator=generator)
    dropped[torch.arange(size), keep_one] = False
    batch = batch.clone()
    batch[:, :n_bands] *= (~dropped).to(batch.dtype)[:, :, None, None]
    return batch


def classify(
    model: nn.Module, cutouts: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Class probabilities ``[N, K]`` (float32) of the cutouts, in batches.

    On CUDA the batches go from pinned memory and run under fp16 autocast.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(cutouts), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(cutouts[start : start + batch_size]))
            if device.type == "cuda":  # Pinned pages let the copy overlap the previous batch's work.
                batch = batch.pin_memory()
            batch = batch.to(device, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                logits = model(batch)
            outputs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def _class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    weights = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    return weights / weights[counts > 0].mean()


def train_classifier(
    classifier: dict,
    cutouts: np.ndarray,
    labels: np.ndarray,
    config: ClassifierTrainingConfig,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    device: torch.device | str = "cpu",
    log: logging.Logger | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, list[dict]]:
    """Train a classifier from scratch and keep the weights of its best validation epoch.

    Parameters
    ----------
    classifier : `dict`
        Description for `build_classifier`.
    cutouts : `numpy.ndarray`
        ``float32 [N, C, S, S]`` training cutouts.
    labels : `numpy.ndarray`
        ``[N]`` class indices.
    config : `ClassifierTrainingConfig`
        Schedule and imbalance handling.
    validation : `tuple`, optional
        ``(cutouts, labels)`` scored after every epoch (top-1 and top-2 accuracy); the weights of the best
        top-1 epoch are returned.  Without it, the last epoch's.
    device : `torch.device` or `str`
        Where to train.
    log : `logging.Logger`, optional
        Progress: one line per epoch with the loss, accuracies, rate and ETA.
    on_epoch : callable, optional
        Called with each epoch's history entry.

    Returns
    -------
    model : `torch.nn.Module`
        The trained classifier (eval mode, on CPU).
    history : `list` [`dict`]
        Per epoch: ``epoch``, ``loss``, ``train_top1``, ``val_top1``, ``val_top2``, ``lr``, ``seconds``.
    """
    log = log or _LOG
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(classifier["num_classes"])
    n_bands = int(classifier["in_channels"]) - 2
    if len(cutouts) != len(labels) or len(labels) == 0:
        raise ValueError(
            f"need as many labels as cutouts and at least one, got {len(cutouts)} and {len(labels)}"
        )
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes}), got [{labels.min()}, {labels.max()}]")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(device)
    model = build_classifier(classifier).to(device)
    weights = None
    if config.imbalance == "loss_weights":
        weights = torch.tensor(_class_weights(labels, n_classes), dtype=torch.float32, device=device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(len(labels) / config.batch_size))
    total_steps = steps_per_epoch * config.epochs

    def lr_at(step: int) -> float:
        if step < steps_per_epoch:
            return config.learning_rate * (step + 1) / steps_per_epoch
        progress = (step - steps_per_epoch) / max(1, total_steps - steps_per_epoch)
        return 0.5 * config.learning_rate * (1.0 + math.cos(math.pi * progress))

    sample_p = None
    if config.imbalance == "balanced_sampling":
        per_class = np.bincount(labels, minlength=n_classes)
        sample_p = 1.0 / per_class[labels]
        sample_p /= sample_p.sum()
    history: list[dict] = []
    best = (-1.0, None)
    step = 0
    start = time.perf_counter()
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        model.train()
        if sample_p is None:
            order = rng.permutation(len(labels))
        else:
            order = rng.choice(len(labels), size=len(labels), p=sample_p)
        total_loss, correct, seen = 0.0, 0, 0
        for begin in range(0, len(order), config.batch_size):
            index = np.sort(order[begin : begin + config.batch_size])
            batch = _augment(torch.from_numpy(cutouts[index]), generator)
            batch = drop_bands(batch, n_bands, config.band_dropout, generator).to(device)
            target = torch.from_numpy(labels[index]).to(device)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            logits = model(batch)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            total_loss += float(loss.detach()) * len(index)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(index)
        entry = {
            "epoch": epoch + 1,
            "loss": total_loss / seen,
            "train_top1": correct / seen,
            "lr": lr_at(step - 1),
        }
        if validation is not None:
            probabilities = classify(model, validation[0], device=device)
            entry["val_top1"] = top_k_accuracy(probabilities, validation[1], 1)
            entry["val_top2"] = top_k_accuracy(probabilities, validation[1], 2)
            if entry["val_top1"] > best[0]:
                best = (
                    entry["val_top1"],
                    {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                )
        entry["seconds"] = time.perf_counter() - epoch_start
        history.append(entry)
        elapsed = time.perf_counter() - start
        eta = elapsed / (epoch + 1) * (config.epochs - epoch - 1)
        log.info(
            "epoch %d/%d: loss %.3f, train top-1 %.3f%s; %.0f cutouts/s, ETA %.0f s",
            epoch + 1,
            config.epochs,
            entry["loss"],
            entry["train_top1"],
            ""
            if validation is None
            else f", validation top-1 {entry['val_top1']:.3f} top-2 {entry['val_top2']:.3f}",
            seen / entry["seconds"],
            eta,
        )
        if on_epoch is not None:
            on_epoch(entry)
    if best[1] is not None:
        model.load_state_dict(best[1])
    return model.cpu().eval(), history
