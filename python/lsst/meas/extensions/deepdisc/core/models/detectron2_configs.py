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

"""Models from a user's detectron2 config file (yacs ``.yaml`` or LazyConfig data), read as data only."""

from __future__ import annotations

__all__ = ["config_from_detectron2_yaml"]

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .compiled import check_compiled_features
from .defaults import DEFAULT_CLASS_NAMES
from .factory import (
    FORMAT_LAZY,
    FORMAT_YACS,
    _as_stats,
    _as_str_tuple,
    _finish_lazy_model,
    _finish_yacs_cfg,
    _resolve_lazy_model,
    _top_level,
)
from .safe_config import (
    TARGET_KEY,
    load_yaml_data,
    validate_targets,
)

_NOT_YAML = {".py": "a .py config is a Python program and loading it would execute code", ".pkl": "a pickle"}

_LOG = logging.getLogger(__name__)


def config_from_detectron2_yaml(
    path: str | os.PathLike[str],
    bands: Sequence[str],
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    pixel_mean: Sequence[float] | None = None,
    pixel_std: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Import a user's detectron2 YAML config as our config-as-data, adapted to ``bands`` and classes.

    Accepts a yacs YAML (with ``_BASE_`` chains, resolved next to the file or in detectron2's model zoo)
    or a LazyConfig *saved as YAML* (``LazyConfig.save`` output, e.g. from DeepDISC; only its ``model``
    is used).  The model keeps its own anchors, thresholds and sizes (they belong to its trained weights);
    the input channels, number of classes and pixel statistics are set, standard/cascade ROI heads become
    ours (adding ``class_probs``), ``WEIGHTS`` is emptied (recorded as ``original_weights``) and input
    padding/resizing is switched off.

    Parameters
    ----------
    path : path-like
        The ``.yaml`` file.
    bands : sequence of `str`
        Input bands in channel order.
    class_names : sequence of `str`
        Foreground classes in label order.
    pixel_mean, pixel_std : sequence of `float`, optional
        Per-band input normalisation.  By default the file's own values are kept if they have one value
        per band, otherwise zeros and ones are used.

    Raises
    ------
    ValueError
        For a ``.py`` (or other non-YAML) file - it would execute code - or an unsupported model.
    UnsafeConfigError
        For a ``_target_`` outside the allowlist or YAML tags that are not data.
    """
    path = Path(path)
    if path.suffix.lower() in _NOT_YAML:
        raise ValueError(
            f"refusing {path}: {_NOT_YAML[path.suffix.lower()]}. Convert it once, in a trusted environment, "
            "with detectron2.config.LazyConfig.save(LazyConfig.load(file), 'model.yaml') and import the YAML."
        )
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"refusing {path}: expected a .yaml detectron2 config")
    bands = _as_str_tuple(bands, "bands")
    class_names = _as_str_tuple(class_names, "class_names")
    mean = _as_stats(pixel_mean, len(bands), "pixel_mean", bands)
    std = _as_stats(pixel_std, len(bands), "pixel_std", bands)
    document = load_yaml_data(path.read_text(), python_tags=True)
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold a detectron2 config mapping")

    def pick_stats(own: Any, given: tuple[float, ...] | None, fill: float, what: str) -> list[float]:
        if given is not None:
            return list(given)
        if isinstance(own, list | tuple) and len(own) == len(bands):
            return [float(v) for v in own]
        _LOG.warning("%s: %s %s does not match %d bands; using %s", path, what, own, len(bands), fill)
        return [fill] * len(bands)

    if isinstance(document.get("model"), dict) and TARGET_KEY in document["model"]:
        model = copy.deepcopy(document["model"])
        validate_targets(model, "model")  # Refuse hostile targets before looking any closer.
        _add_shape_spec_targets(model)
        mean_list = pick_stats(model.get("pixel_mean"), mean, 0.0, "pixel_mean")
        std_list = pick_stats(model.get("pixel_std"), std, 1.0, "pixel_std")
        _finish_lazy_model(model, bands, class_names, mean_list, std_list)
        body: dict[str, Any] = {
            "format": FORMAT_LAZY,
            "model": _resolve_lazy_model(model, root=document),
        }
        original_weights = str((document.get("train") or {}).get("init_checkpoint") or "")
    elif "MODEL" in document or "_BASE_" in document:
        from .yacs_format import build_cfg, cfg_to_data, load_yacs_yaml, model_zoo_config_dir

        cfg = build_cfg(load_yacs_yaml(path, search_dirs=[model_zoo_config_dir()]))
        original_weights = str(cfg.MODEL.WEIGHTS)
        mean_list = pick_stats(list(cfg.MODEL.PIXEL_MEAN), mean, 0.0, "pixel_mean")
        std_list = pick_stats(list(cfg.MODEL.PIXEL_STD), std, 1.0, "pixel_std")
        _finish_yacs_cfg(cfg, bands, class_names, mean_list, std_list)
        body = {"format": FORMAT_YACS, "config": cfg_to_data(cfg)}
    else:
        raise ValueError(
            f"{path} is neither a yacs config (MODEL/_BASE_) nor a saved LazyConfig (model._target_)"
        )
    config = {
        **body,
        "architecture": f"imported:{path.name}",
        **_top_level(
            {"bands": bands, "class_names": class_names, "pixel_mean": mean_list, "pixel_std": std_list}
        ),
        "imported_from": str(path),
        "original_weights": original_weights,
    }
    check_compiled_features(config)
    return config


_SHAPE_SPEC_FIELDS = frozenset({"channels", "height", "width", "stride"})


def _add_shape_spec_targets(node: Any) -> None:
    """Give plain ``input_shape`` dicts (dataclasses flattened by some exporters) their ShapeSpec target."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "input_shape" and isinstance(value, dict) and TARGET_KEY not in value:
                if value and set(value) <= _SHAPE_SPEC_FIELDS:
                    value[TARGET_KEY] = "detectron2.layers.ShapeSpec"
            _add_shape_spec_targets(value)
    elif isinstance(node, list):
        for value in node:
            _add_shape_spec_targets(value)
