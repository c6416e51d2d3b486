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
* Checkpoints (every ``checkpoint_period`` iterations, at the end and on ``stop_after``; written and read
  by `.checkpoints`) go into ``checkpoint_dir``: ``model_<iter>.safetensors`` (weights, no pickle),
  ``optimizer_<iter>.pt`` (optimizer and gradient-scaler state and torch RNG states: plain tensors and
  containers, read back with ``torch.load(weights_only=True)``) and ``state_<iter>.json`` (iteration,
  schedule, numpy/Python RNG states, loss accumulators, validation history, best model);
  ``last_checkpoint.json`` names the newest and is written last, atomically.  Calling `train_model` again
  with the same directory resumes there.
* Validation every ``eval_period`` iterations (`.evaluation`): the mean loss on the validation examples
  (model in training mode, normalisation layers in eval mode, no gradients), and detection quality from the
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
    "make_history_table",
    "plot_training_history",
    "train_model",
]

from ..checkpoints import BEST_WEIGHTS_FILE, LAST_CHECKPOINT_FILE, load_matching_weights
from ..evaluation import evaluate_detections, infer_examples
from ..plots import plot_training_history
from ._config import TrainingConfig, TrainingResult, learning_rate_at
from ._history import make_history_table
from ._loop import backbone_body, train_model
