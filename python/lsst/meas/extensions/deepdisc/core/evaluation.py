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

"""Detection quality of a model on labelled training examples, as `.training.train_model` validates.

`infer_examples` runs a model on labelled examples through the production inference path
(`.inference.run_tiled_inference`, one tile per example); `evaluate_detections` matches the detections
one-to-one to the labels (`.matching.match_catalogs`) and reports precision, recall, F1, class accuracy,
recall per label-magnitude bin (`RECALL_MAG_EDGES`) and COCO AP/AP50 (`.coco`, omitted with a warning
when pycocotools cannot be imported).  Validation runs under a forked, seeded torch RNG and never disturbs
the training random stream.
"""

from __future__ import annotations

__all__ = ["RECALL_MAG_EDGES", "evaluate_detections", "infer_examples"]

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .footprints import spans_centroid
from .training_data import TrainingExample, to_detectron2_dict

if TYPE_CHECKING:
    from .training import TrainingConfig

_LOG = logging.getLogger(__name__)

# Label-magnitude bins of the validation recall (``recall_mag_<low>_<high>`` in the history).
RECALL_MAG_EDGES = (16.0, 22.0, 23.0, 24.0, 25.0, 26.0)
"""Label-magnitude bin edges of the validation recall (``recall_mag_<low>_<high>`` in the history)."""


def _resolve_device(name: str) -> torch.device:
    from .inference import select_device

    return select_device(name)


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
    keep_bands: Sequence[np.ndarray] | None = None,
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
    keep_bands : sequence of `numpy.ndarray`, optional
        Per example, a boolean mask of the bands given to the model; the others are absent bands (NaN
        planes, for a band-availability model).

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
        for index, example in enumerate(examples):
            image = example.image
            if keep_bands is not None:
                image = np.where(
                    np.asarray(keep_bands[index], bool)[:, None, None], image, np.float32(np.nan)
                )
            inference = InferenceConfig(
                tile_size=max(example.height, example.width),
                overlap=0,
                stitch_margin=0,
                batch_size=1,
                device=str(torch_device),
                progress_interval_s=1e9,
            )
            detections = run_tiled_inference(
                model, image, config=inference, log=quiet, num_classes=num_classes
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
