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

"""Weights files: reading checkpoints safely, comparing state dicts, and loading the weights that fit.

`load_checkpoint_state_dict` reads the weights of a checkpoint (safetensors, weights-only torch file or
model package) without executing anything; `compare_state_dicts` reports how two state dicts differ;
`load_matching_weights` initialises a model from the tensors of a related one that fit.

The training checkpoints of `.training.train_model` are also written and read here (private helpers):
``model_<iter>.safetensors`` (weights), ``optimizer_<iter>.pt`` (optimizer, gradient scaler and torch RNG
states, read back with ``torch.load(weights_only=True)``), ``state_<iter>.json`` (loop state, numpy and
Python RNG states, history, best model) and the pointer ``last_checkpoint.json``, written last, atomically.
"""

from __future__ import annotations

__all__ = [
    "BEST_WEIGHTS_FILE",
    "LAST_CHECKPOINT_FILE",
    "STATE_FORMAT_VERSION",
    "StateDictDiff",
    "compare_state_dicts",
    "last_checkpoint_iteration",
    "load_checkpoint_state_dict",
    "load_matching_weights",
    "read_checkpoint_pointer",
]

import datetime
import json
import logging
import math
import os
import pickle
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

from .model_package._archive import ModelPackageError, file_sha256

if TYPE_CHECKING:
    from .training import TrainingConfig

_LOG = logging.getLogger(__name__)

LAST_CHECKPOINT_FILE = "last_checkpoint.json"
"""Name of the pointer to the newest checkpoint in a checkpoint directory."""

BEST_WEIGHTS_FILE = "model_best.safetensors"
"""Name of the weights of the best validated model in a checkpoint directory."""

STATE_FORMAT_VERSION = 1
"""Version of the ``state_<iter>.json`` files written (and the only one read)."""


@dataclass(frozen=True)
class StateDictDiff:
    """Differences between the state dict a model expects and the one a package (or checkpoint) gives.

    Parameters
    ----------
    missing : `tuple` [`str`, ...]
        Keys the model has and the weights lack.
    unexpected : `tuple` [`str`, ...]
        Keys the weights have and the model lacks.
    shape_mismatches : `tuple` [`tuple` [`str`, `tuple`, `tuple`], ...]
        ``(key, model shape, weights shape)`` for common keys whose shapes differ.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    shape_mismatches: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def is_empty(self) -> bool:
        """Whether the weights fit the model exactly."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def describe(self, limit: int = 5) -> str:
        """One line per kind of problem, naming the first ``limit`` offending keys."""

        def first(items: Sequence[Any]) -> str:
            shown = ", ".join(str(item) for item in items[:limit])
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            return f"{shown}{more}"

        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing key(s): {first(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected key(s): {first(self.unexpected)}")
        if self.shape_mismatches:
            shapes = [f"{key} (model {list(m)}, weights {list(w)})" for key, m, w in self.shape_mismatches]
            lines.append(f"{len(shapes)} shape mismatch(es): {first(shapes)}")
        return "; ".join(lines) if lines else "weights match the model"


def compare_state_dicts(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> StateDictDiff:
    """Compare the keys and shapes of two state dicts.

    Parameters
    ----------
    expected : `~collections.abc.Mapping` [`str`, `torch.Tensor`]
        The state dict of the built model.
    given : `~collections.abc.Mapping` [`str`, `torch.Tensor`]
        The weights to load into it.

    Returns
    -------
    diff : `StateDictDiff`
        Keys in model order; empty if ``given`` loads with ``strict=True``.
    """
    missing = tuple(key for key in expected if key not in given)
    unexpected = tuple(key for key in given if key not in expected)
    mismatches = tuple(
        (key, tuple(expected[key].shape), tuple(given[key].shape))
        for key in expected
        if key in given and tuple(expected[key].shape) != tuple(given[key].shape)
    )
    return StateDictDiff(missing=missing, unexpected=unexpected, shape_mismatches=mismatches)


def load_checkpoint_state_dict(
    path: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the weights of a training checkpoint without executing anything from it.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        A ``.safetensors`` file, a model package (``.zip``, to fine-tune it), or a torch checkpoint
        (``.pth``, ``.pt``, ...) read with
        ``torch.load(weights_only=True)``.  detectron2/DeepDISC checkpoints keep the weights under ``"model"``
        (Lightning ones under ``"state_dict"``); a ``module.`` prefix left by DistributedDataParallel is
        removed.

    Returns
    -------
    state_dict : `dict` [`str`, `torch.Tensor`]
        The weights, on the CPU.
    info : `dict`
        Provenance: ``source_checkpoint`` (file name), ``source_checkpoint_sha256`` and, when the checkpoint
        records it, ``iterations``.

    Raises
    ------
    ModelPackageError
        If the file is not a checkpoint, holds anything but tensors and plain containers (the
        ``weights_only`` unpickler refuses it; there is no fallback to unsafe loading), or has no weights.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    info: dict[str, Any] = {"source_checkpoint": path.name, "source_checkpoint_sha256": file_sha256(path)}
    if path.suffix == ".zip":  # A model package: its (checked) weights, for fine-tuning.
        from .model_package import ModelPackage  # It imports this module.

        package = ModelPackage.load(path)
        info["source_package"] = {"name": package.name, "version": package.version}
        return {key: value.float() for key, value in package.state_dict.items()}, info
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            content: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # The Rust parser raises its own error types.
            raise ModelPackageError(f"{path} is not a valid safetensors file: {exc}") from None
    else:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0:1]
            raise ModelPackageError(
                f"refused checkpoint {path}: it is not a weights-only torch file "
                f"({reason[0] if reason else exc}). Pickled objects other than tensors and plain containers "
                "are never loaded (that could run code); save the model's state_dict with torch.save or "
                "safetensors and use that file"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise ModelPackageError(f"cannot read checkpoint {path}: {exc}") from None
    if isinstance(content, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(content.get(key), Mapping):
                iteration = content.get("iteration")
                if type(iteration) is int:
                    info["iterations"] = iteration
                content = content[key]
                break
    if not isinstance(content, Mapping) or not content:
        raise ModelPackageError(f"checkpoint {path} holds no state dict (a mapping of names to tensors)")
    not_tensors = [str(key) for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ModelPackageError(
            f"checkpoint {path} has entries that are not tensors, e.g. {not_tensors[:5]}; "
            "expected a state dict"
        )
    state_dict = {str(key): value.detach().cpu() for key, value in content.items()}
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict, info


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
    report : `StateDictDiff`
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
    tensors = _adapt_to_model(tensors, expected, log)
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


def _adapt_to_model(
    tensors: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor], log: logging.Logger
) -> dict[str, torch.Tensor]:
    """Fit weights of a related model: a wrapped backbone, more input channels or more classes.

    - ``backbone.X`` becomes ``backbone.inner.X`` when the model wraps its backbone
      (`.models.band_availability.BandAvailabilityBackbone`);
    - a tensor smaller than the model's in exactly one dimension fills the leading part of that dimension,
      the rest being zero (new input channels, e.g. availability planes, start without effect) or, for the
      class-score layer, the model's initial values with the background row (the last) carried over: so a
      model fine-tuned with classes appended to its class list starts where it was.
    """
    adapted: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key not in expected and key.startswith("backbone."):
            wrapped = "backbone.inner." + key.removeprefix("backbone.")
            key = wrapped if wrapped in expected else key
        target = expected.get(key)
        if target is not None and target.shape != value.shape and target.ndim == value.ndim:
            differing = [d for d in range(value.ndim) if value.shape[d] != target.shape[d]]
            if len(differing) == 1 and value.shape[differing[0]] < target.shape[differing[0]]:
                dim = differing[0]
                is_score = key.endswith("cls_score.weight") or key.endswith("cls_score.bias")
                grown = target.detach().clone() if is_score else torch.zeros_like(target)
                n = value.shape[dim]
                if is_score:  # Foreground rows, then the background row at the end.
                    grown.narrow(dim, 0, n - 1).copy_(value.narrow(dim, 0, n - 1))
                    grown.narrow(dim, target.shape[dim] - 1, 1).copy_(value.narrow(dim, n - 1, 1))
                else:
                    grown.narrow(dim, 0, n).copy_(value)
                log.info(
                    "Initial weights: %s grown from %s to %s", key, tuple(value.shape), tuple(target.shape)
                )
                value = grown.to(target.dtype)
        adapted[key] = value
    return adapted


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
    *,
    next_lr: float | None,
) -> Path:
    """Write one checkpoint and point ``last_checkpoint.json`` at it; prune older ones.

    ``next_lr`` is the learning rate of the next iteration (`None` at the end), recorded for inspection.
    """
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
        "next_lr": next_lr,
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


def read_checkpoint_pointer(directory: Path) -> dict[str, Any] | None:
    """The content of ``last_checkpoint.json`` (``iteration`` and ``state`` file name), or `None`.

    Raises
    ------
    RuntimeError
        If the pointer exists but cannot be read.
    """
    path = Path(directory) / LAST_CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text())
        return {"iteration": int(pointer["iteration"]), "state": str(pointer["state"])}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(f"cannot read the checkpoint pointer {path}: {exc}") from exc


def last_checkpoint_iteration(directory: Path) -> int | None:
    """Iteration of the last checkpoint in ``directory``, or `None` when there is none."""
    pointer = read_checkpoint_pointer(directory)
    return None if pointer is None else pointer["iteration"]


def _read_last_state(directory: Path) -> dict[str, Any] | None:
    pointer = read_checkpoint_pointer(directory)
    if pointer is None:
        return None
    try:
        state = json.loads((directory / pointer["state"]).read_text())
    except (OSError, ValueError) as exc:
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
