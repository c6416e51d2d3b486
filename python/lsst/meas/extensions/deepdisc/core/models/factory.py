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

"""The model factory: DeepDISC-family detectron2 models for N-band coadds, from data only.

An architecture is a name in `ARCHITECTURES` whose recipe is ``config/models/<name>.yaml``:

* ``format: yacs`` recipes name a detectron2 model-zoo file (``base:``, inside the installed detectron2)
  plus our ``config:`` overrides;
* ``format: lazy`` recipes hold a whole LazyConfig-style ``model:`` tree of ``_target_`` dicts.

`make_model_config` turns a `ModelSpec` (architecture, bands, classes, per-band pixel statistics,
overrides) into one complete plain-data dict - the thing a model package stores next to its weights - and
`build_model` turns such a dict back into a ``torch.nn.Module`` without executing anything from the data:
yacs configs only name detectron2 registry entries, lazy ones go through the allowlist of
`~lsst.meas.extensions.deepdisc.core.models.safe_config`.  No weights are ever downloaded (``WEIGHTS`` is
always empty); a model package loads its own state dict.

Every built model is a detectron2 ``GeneralizedRCNN`` in eval mode with a mask head and our ROI heads:
``model([{"image": float32 [C, H, W], "height": H, "width": W}])`` returns one
``{"instances": Instances}`` per image with ``pred_boxes``, ``scores``, ``pred_classes``, ``pred_masks`` and
``class_probs`` (``[N, num_classes]``, rows sum to 1); ``model.inference(inputs, do_postprocess=False)``
keeps the box-relative soft masks.  The model never resizes its input.
"""

from __future__ import annotations

__all__ = [
    "ARCHITECTURES",
    "ModelSpec",
    "build_model",
    "build_model_from_spec",
    "list_architectures",
    "make_model_config",
    "model_config_dir",
]

import contextlib
import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import _product
from .compiled import check_compiled_features
from .defaults import ASTRO_DEFAULTS, DEFAULT_CLASS_NAMES, INPUT_FORMAT, PROTECTED_KEYS
from .safe_config import (
    TARGET_KEY,
    check_plain_data,
    load_yaml_data,
    resolve_interpolations,
    resolve_target,
    safe_instantiate,
    target_name,
    validate_targets,
)

if TYPE_CHECKING:
    import torch


ARCHITECTURES: dict[str, str] = {
    "compact-R18-FPN": "Mask R-CNN, slim ResNet-18 + 64-channel FPN, light heads: fast on CPU (tests, demo)",
    "R50-FPN": "Mask R-CNN, ResNet-50 + FPN (detectron2 model zoo)",
    "R101-FPN": "Mask R-CNN, ResNet-101 + FPN (detectron2 model zoo)",
    "X101-FPN": "Mask R-CNN, ResNeXt-101 32x8d + FPN (detectron2 model zoo)",
    "Cascade-R50-FPN": "Cascade Mask R-CNN, ResNet-50 + FPN (detectron2 model zoo, Misc)",
    "MViTv2-T": "Cascade Mask R-CNN, MViTv2-Tiny + FPN (detectron2 projects/ViTDet, as in DeepDISC)",
    "Swin-T": "Cascade Mask R-CNN, Swin-Tiny + FPN (detectron2 projects/ViTDet, as in DeepDISC)",
}
"""Architecture name -> short description."""

FORMAT_YACS = "yacs"
FORMAT_LAZY = "lazy"

# Our ROI heads (they add `class_probs`), by the detectron2 head they extend.
_ROI_HEADS_BY_BASE = {
    "StandardROIHeads": "DeepDISCStandardROIHeads",
    "CascadeROIHeads": "DeepDISCCascadeROIHeads",
}
_OUR_ROI_HEADS = frozenset(_ROI_HEADS_BY_BASE.values())

# Keys of a model config that make_model_config fills in and build_model reads.
_REQUIRED_KEYS = ("format", "num_bands", "class_names", "pixel_mean", "pixel_std")


def list_architectures() -> list[str]:
    """Names of the architectures `make_model_config` knows."""
    return list(ARCHITECTURES)


def model_config_dir() -> Path:
    """Directory of the architecture recipes, the product's ``config/models``.

    ``$MEAS_EXTENSIONS_DEEPDISC_DIR/config/models`` (set by EUPS and by the Makefile) wins over the copy that
    travels with the package (see `lsst.meas.extensions.deepdisc.model_config_dir`).
    """
    return _product.model_config_dir()


def _as_str_tuple(values: Any, what: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a sequence of strings, got {values!r}")
    result = tuple(values)
    if not result:
        raise ValueError(f"{what} must not be empty")
    if not all(isinstance(v, str) and v for v in result):
        raise TypeError(f"{what} must hold non-empty strings, got {values!r}")
    if len(set(result)) != len(result):
        raise ValueError(f"{what} has duplicates: {values!r}")
    return result


def _as_stats(values: Any, num_bands: int, what: str, bands: tuple[str, ...]) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a sequence of numbers (one per band), got {values!r}")
    if len(values) != num_bands:
        raise ValueError(
            f"{what} has {len(values)} value(s) but there are {num_bands} bands {bands}; give one per band"
        )
    result = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in result):
        raise ValueError(f"{what} must be finite, got {values!r}")
    return result


def _lists_for_tuples(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _lists_for_tuples(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_lists_for_tuples(item) for item in value]
    return value


@dataclass(frozen=True)
class ModelSpec:
    """What to build: architecture, input bands, classes, input normalisation and config overrides.

    Parameters
    ----------
    architecture : `str`
        A name of `ARCHITECTURES`, e.g. ``"compact-R18-FPN"``.
    bands : `tuple` [`str`, ...]
        Input bands in channel order; their number sets the first layer's input channels.
    class_names : `tuple` [`str`, ...]
        Foreground classes in label order (label ``i`` is ``class_names[i]``).
    pixel_mean, pixel_std : `tuple` [`float`, ...] or `None`
        Per-band normalisation the model applies to its input, ``(x - mean) / std``; `None` gives zeros
        and ones (inputs already scaled, see `~lsst.meas.extensions.deepdisc.core.scaling`).
    band_availability : `bool`
        Whether the model runs on any subset of its bands: an absent band is a NaN plane and the backbone
        sees one availability plane per band (`.band_availability`; yacs architectures only).
    overrides : `dict` [`str`, `~typing.Any`]
        Dotted keys -> values applied last: yacs keys (``"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.3``; for
        lazy architectures only those of `lazy_format.LAZY_YACS_KEYS`) or, for lazy architectures,
        ``"model.<path>"`` keys into the model tree.
    """

    architecture: str
    bands: tuple[str, ...]
    class_names: tuple[str, ...] = DEFAULT_CLASS_NAMES
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    band_availability: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.band_availability, bool):
            raise TypeError(f"band_availability must be a bool, got {self.band_availability!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {list_architectures()}")
        bands = _as_str_tuple(self.bands, "bands")
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "class_names", _as_str_tuple(self.class_names, "class_names"))
        object.__setattr__(self, "pixel_mean", _as_stats(self.pixel_mean, len(bands), "pixel_mean", bands))
        pixel_std = _as_stats(self.pixel_std, len(bands), "pixel_std", bands)
        if pixel_std is not None and not all(v > 0 for v in pixel_std):
            raise ValueError(f"pixel_std must be positive, got {pixel_std}")
        object.__setattr__(self, "pixel_std", pixel_std)
        if not isinstance(self.overrides, Mapping):
            raise TypeError(f"overrides must be a mapping of dotted keys to values, got {self.overrides!r}")
        overrides = dict(self.overrides)
        for key in overrides:
            if not isinstance(key, str) or not key:
                raise TypeError(f"override keys must be non-empty dotted strings, got {key!r}")
        check_plain_data(overrides, "overrides")
        # Tuples become lists so that to_dict() output is yaml.safe_dump-able (and equal after a round trip).
        object.__setattr__(self, "overrides", _lists_for_tuples(overrides))

    def __hash__(self) -> int:
        # `overrides` is a dict (unhashable): hash its canonical JSON text instead.
        overrides = json.dumps(self.overrides, sort_keys=True)
        fields = (self.architecture, self.bands, self.class_names, self.pixel_mean, self.pixel_std)
        return hash((*fields, overrides, self.band_availability))

    @property
    def num_bands(self) -> int:
        """Number of input channels."""
        return len(self.bands)

    def resolved_pixel_mean(self) -> list[float]:
        """Per-band mean, zeros if unset."""
        return list(self.pixel_mean) if self.pixel_mean is not None else [0.0] * self.num_bands

    def resolved_pixel_std(self) -> list[float]:
        """Per-band standard deviation, ones if unset."""
        return list(self.pixel_std) if self.pixel_std is not None else [1.0] * self.num_bands

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (``yaml.safe_dump``-able); inverse of `from_dict`."""
        return {
            "architecture": self.architecture,
            "bands": list(self.bands),
            "class_names": list(self.class_names),
            "pixel_mean": None if self.pixel_mean is None else list(self.pixel_mean),
            "pixel_std": None if self.pixel_std is None else list(self.pixel_std),
            "overrides": copy.deepcopy(self.overrides),
            "band_availability": self.band_availability,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Rebuild a spec from `to_dict` output (lists accepted for the tuple fields)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a ModelSpec dict must be a mapping, got {type(data).__name__}")
        known = {"architecture", "bands", "class_names", "pixel_mean", "pixel_std", "overrides"}
        known.add("band_availability")
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec field(s) {sorted(unknown)}; known: {sorted(known)}")
        for required in ("architecture", "bands"):
            if required not in data:
                raise ValueError(f"ModelSpec dict lacks {required!r}")
        kwargs = dict(data)
        if kwargs.get("class_names") is None:
            kwargs.pop("class_names", None)
        kwargs["overrides"] = dict(kwargs.get("overrides") or {})
        return cls(**kwargs)


def _load_recipe(architecture: str) -> dict[str, Any]:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {list_architectures()}")
    path = model_config_dir() / f"{architecture}.yaml"
    recipe = load_yaml_data(path.read_text())
    if not isinstance(recipe, dict) or recipe.get("format") not in (FORMAT_YACS, FORMAT_LAZY):
        raise ValueError(f"{path}: an architecture recipe needs 'format: yacs' or 'format: lazy'")
    needed = "base" if recipe["format"] == FORMAT_YACS else "model"
    if needed not in recipe:
        raise ValueError(f"{path}: a {recipe['format']} recipe needs a {needed!r} entry")
    return recipe


def _check_override_key(key: str, value: Any) -> None:
    reason = PROTECTED_KEYS.get(key)
    if reason is None:
        return
    harmless = (key == "MODEL.WEIGHTS" and value == "") or (key == "MODEL.MASK_ON" and value is True)
    if not harmless:
        raise ValueError(f"override {key!r} is not allowed: {reason}")


def _top_level(spec_like: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "num_bands": len(spec_like["bands"]),
        "bands": list(spec_like["bands"]),
        "class_names": list(spec_like["class_names"]),
        "pixel_mean": [float(v) for v in spec_like["pixel_mean"]],
        "pixel_std": [float(v) for v in spec_like["pixel_std"]],
        "band_availability": bool(spec_like.get("band_availability", False)),
    }


# --------------------------------------------------------------------------------------------- yacs ---


def _finish_yacs_cfg(
    cfg: Any,
    bands: Sequence[str],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    band_availability: bool = False,
) -> None:
    """Settings every yacs model of ours has, whatever its recipe or origin."""
    from .band_availability import ensure_registered, is_wrapped, wrapped_name

    if band_availability:
        cfg.MODEL.BACKBONE.NAME = wrapped_name(cfg.MODEL.BACKBONE.NAME)
        ensure_registered(cfg.MODEL.BACKBONE.NAME)
    elif is_wrapped(cfg.MODEL.BACKBONE.NAME):
        raise ValueError(f"backbone {cfg.MODEL.BACKBONE.NAME!r} needs band_availability")
    roi_name = cfg.MODEL.ROI_HEADS.NAME
    if roi_name not in _OUR_ROI_HEADS:
        if roi_name not in _ROI_HEADS_BY_BASE:
            raise ValueError(
                f"ROI heads {roi_name!r} are not supported: per-class probabilities exist for "
                f"{sorted(_ROI_HEADS_BY_BASE)} (mapped to {sorted(_OUR_ROI_HEADS)})"
            )
        cfg.MODEL.ROI_HEADS.NAME = _ROI_HEADS_BY_BASE[roi_name]
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise ValueError(f"META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not GeneralizedRCNN")
    if not cfg.MODEL.MASK_ON:
        raise ValueError("MODEL.MASK_ON is false: DeepDISC models need a mask head")
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(class_names)
    cfg.MODEL.PIXEL_MEAN = [float(v) for v in mean]
    cfg.MODEL.PIXEL_STD = [float(v) for v in std]
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.FORMAT = INPUT_FORMAT
    cfg.INPUT.MIN_SIZE_TEST = 0  # detectron2's "do not resize at test time".


def _make_yacs_config(spec: ModelSpec, recipe: Mapping[str, Any]) -> dict[str, Any]:
    from .yacs_format import (
        build_cfg,
        cfg_to_data,
        load_yacs_yaml,
        merge_dotted,
        merge_tree,
        model_zoo_config_dir,
    )

    zoo_dir = model_zoo_config_dir()
    cfg = build_cfg(load_yacs_yaml(zoo_dir / str(recipe["base"]), search_dirs=[zoo_dir]))
    # The recipe's own choices come after the generic astronomy defaults, the spec's overrides last.
    merge_dotted(cfg, ASTRO_DEFAULTS)
    merge_tree(cfg, recipe.get("config") or {})
    merge_dotted(cfg, recipe.get("overrides") or {})
    for key, value in spec.overrides.items():
        if key.startswith("model."):
            raise ValueError(f"override {key!r}: 'model.<path>' keys apply to lazy architectures only")
        _check_override_key(key, value)
    merge_dotted(cfg, spec.overrides)
    # Last, so that bands, classes and ROI heads hold whatever the overrides did.
    _finish_yacs_cfg(
        cfg,
        spec.bands,
        spec.class_names,
        spec.resolved_pixel_mean(),
        spec.resolved_pixel_std(),
        spec.band_availability,
    )
    return {"format": FORMAT_YACS, "config": cfg_to_data(cfg)}


# --------------------------------------------------------------------------------------------- lazy ---


def _our_roi_heads_target(current: Any) -> str:
    """The name of our ROI heads replacing (or equal to) the allowlisted head ``current``."""
    from . import roi_heads as ours

    head = resolve_target(current)
    if ours.is_class_probs_head(head):
        return target_name(head)
    replacement = _ROI_HEADS_BY_BASE.get(getattr(head, "__name__", ""))
    if replacement is None:
        raise ValueError(
            f"ROI heads {current!r} are not supported: per-class probabilities exist for "
            f"{sorted(_ROI_HEADS_BY_BASE)} (mapped to {sorted(_OUR_ROI_HEADS)})"
        )
    return target_name(getattr(ours, replacement))


def _finish_lazy_model(
    model: dict[str, Any],
    bands: Sequence[str],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
) -> None:
    """Settings every lazy model of ours has, whatever its recipe or origin (before interpolation)."""
    from .lazy_format import set_input_channels, set_num_classes

    for part in ("backbone", "proposal_generator", "roi_heads"):
        if not isinstance(model.get(part), dict):
            raise ValueError(f"a GeneralizedRCNN model config needs a {part!r} dict")
    if not isinstance(model["roi_heads"].get("mask_head"), dict):
        raise ValueError("the model config has no roi_heads.mask_head: DeepDISC models need a mask head")
    model["roi_heads"][TARGET_KEY] = _our_roi_heads_target(model["roi_heads"].get(TARGET_KEY))
    set_input_channels(model, len(bands))
    set_num_classes(model, len(class_names))
    model["pixel_mean"] = [float(v) for v in mean]
    model["pixel_std"] = [float(v) for v in std]
    model["input_format"] = INPUT_FORMAT
    # square_pad pads every input to a fixed square (and silently crops larger ones): tiles come at
    # their own size, padded only to the backbone's size divisibility.
    if "square_pad" in model["backbone"]:
        model["backbone"]["square_pad"] = 0


def _resolve_lazy_model(model: dict[str, Any], root: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Resolve interpolations (absolute paths from ``root``, default ``{"model": model}``) and validate."""
    root = {**(root or {}), "model": model}
    resolved = resolve_interpolations(root, only="model")
    validate_targets(resolved, "model")
    return resolved


def _make_lazy_config(spec: ModelSpec, recipe: Mapping[str, Any]) -> dict[str, Any]:
    from .lazy_format import apply_override, apply_yacs_key

    if spec.band_availability:
        raise ValueError(
            "band_availability is supported for yacs (registry) architectures, not the lazy "
            f"{spec.architecture!r}"
        )
    model = copy.deepcopy(recipe["model"])
    check_plain_data(model, "model")
    for key, value in ASTRO_DEFAULTS.items():
        apply_yacs_key(model, key, value)
    for key, value in (recipe.get("overrides") or {}).items():
        apply_override(model, key, value)
    for key, value in spec.overrides.items():
        _check_override_key(key, value)
        apply_override(model, key, value)
    # Last, so that bands, classes and ROI heads hold whatever the overrides did.
    _finish_lazy_model(
        model, spec.bands, spec.class_names, spec.resolved_pixel_mean(), spec.resolved_pixel_std()
    )
    return {"format": FORMAT_LAZY, "model": _resolve_lazy_model(model)}


# ------------------------------------------------------------------------------------------ public ---


def make_model_config(spec: ModelSpec) -> dict[str, Any]:
    """The complete plain-data configuration of the model ``spec`` describes.

    Returns
    -------
    config : `dict`
        ``{"format": "yacs", "config": {...every CfgNode key...}}`` or ``{"format": "lazy", "model":
        {..._target_ tree...}}``, plus ``architecture``, ``num_bands``, ``bands``, ``class_names``,
        ``pixel_mean`` and ``pixel_std``.  It survives ``yaml.safe_dump``/``yaml.safe_load`` unchanged and
        `build_model` rebuilds the same architecture from it.

    Raises
    ------
    ValueError
        For an override that does not apply or is not allowed (e.g. one that sets the number of classes).
    UnsafeConfigError
        If an override introduces a ``_target_`` that is not allowlisted.
    CompiledExtensionMissingError
        If the result needs ``detectron2._C`` (deformable conv, rotated boxes) and it is missing.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"make_model_config needs a ModelSpec, got {type(spec).__name__}")
    recipe = _load_recipe(spec.architecture)
    if recipe["format"] == FORMAT_YACS:
        body = _make_yacs_config(spec, recipe)
    else:
        body = _make_lazy_config(spec, recipe)
    config = {
        **body,
        "architecture": spec.architecture,
        **_top_level(
            {
                "bands": spec.bands,
                "class_names": spec.class_names,
                "pixel_mean": spec.resolved_pixel_mean(),
                "pixel_std": spec.resolved_pixel_std(),
                "band_availability": spec.band_availability,
            }
        ),
    }
    check_compiled_features(config)
    return config


def _validate_model_config(model_config: Mapping[str, Any]) -> None:
    if not isinstance(model_config, Mapping):
        raise TypeError(f"a model config must be a mapping, got {type(model_config).__name__}")
    missing = [key for key in _REQUIRED_KEYS if key not in model_config]
    if missing:
        raise ValueError(f"model config lacks {missing} (make it with make_model_config)")
    check_plain_data(model_config)
    num_bands = model_config["num_bands"]
    class_names = list(model_config["class_names"])
    mean, std = list(model_config["pixel_mean"]), list(model_config["pixel_std"])
    if not isinstance(num_bands, int) or num_bands < 1:
        raise ValueError(f"num_bands must be a positive integer, got {num_bands!r}")
    if len(mean) != num_bands or len(std) != num_bands:
        raise ValueError(f"pixel_mean/pixel_std have {len(mean)}/{len(std)} values for {num_bands} bands")
    if not class_names:
        raise ValueError("class_names must not be empty")
    fmt = model_config["format"]
    if fmt == FORMAT_YACS:
        inner = model_config.get("config")
        if not isinstance(inner, Mapping) or not isinstance(inner.get("MODEL"), Mapping):
            raise ValueError("a yacs model config needs a 'config' dict with a MODEL section")
        inner_mean = inner["MODEL"].get("PIXEL_MEAN")
        inner_std = inner["MODEL"].get("PIXEL_STD")
        inner_classes = inner["MODEL"].get("ROI_HEADS", {}).get("NUM_CLASSES")
        from .band_availability import is_wrapped

        wrapped = is_wrapped(inner["MODEL"].get("BACKBONE", {}).get("NAME", ""))
        if wrapped != bool(model_config.get("band_availability", False)):
            raise ValueError(
                f"the backbone {'is' if wrapped else 'is not'} a band-availability backbone but the config's "
                f"band_availability is {model_config.get('band_availability', False)!r}"
            )
    elif fmt == FORMAT_LAZY:
        inner = model_config.get("model")
        if not isinstance(inner, Mapping) or TARGET_KEY not in inner:
            raise ValueError("a lazy model config needs a 'model' dict with a _target_")
        inner_mean, inner_std = inner.get("pixel_mean"), inner.get("pixel_std")
        inner_classes = inner.get("roi_heads", {}).get("num_classes")
    else:
        raise ValueError(f"unknown model config format {fmt!r}; expected 'yacs' or 'lazy'")
    if inner_mean is None or list(inner_mean) != mean or inner_std is None or list(inner_std) != std:
        raise ValueError("the model's pixel_mean/pixel_std disagree with the config's top-level values")
    if inner_classes != len(class_names):
        raise ValueError(f"the model predicts {inner_classes} classes but class_names has {len(class_names)}")


def _without_random_init() -> Any:
    """A torch function mode in which the random fills of weight initialisation draw nothing.

    ``torch.nn.init``'s random initialisers (which detectron2's and the layers' own defaults call) and the
    tensors' ``uniform_`` and ``normal_`` fill their tensor with the distribution's centre instead (a
    constant: a fill costs a fraction of a draw, and code that checks the values it drew, such as the
    rejection loop of ``trunc_normal_``, sees values in range).  Only for weights all overwritten next.
    """
    import torch
    from torch.overrides import TorchFunctionMode

    init = torch.nn.init
    # Per function, the parameters (after the tensor, with their defaults) whose mean is the centre.  With
    # a mode active, torch.nn.init's functions reach it themselves (and what they call does not).
    centres: dict[Any, tuple[tuple[str, float], ...]] = {
        torch.Tensor.uniform_: (("from", 0.0), ("to", 1.0)),
        torch.Tensor.normal_: (("mean", 0.0),),
        init.uniform_: (("a", 0.0), ("b", 1.0)),
        init.normal_: (("mean", 0.0),),
        init.trunc_normal_: (("mean", 0.0),),
    }
    zero_centred = (init.kaiming_uniform_, init.kaiming_normal_, init.xavier_uniform_, init.xavier_normal_)
    centres.update(dict.fromkeys((*zero_centred, init.orthogonal_, init.sparse_), ()))

    class _CentredFills(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            if func not in centres:
                return func(*args, **kwargs)
            tensor = args[0] if args else kwargs["tensor"]
            values = [
                float(args[1 + k]) if 1 + k < len(args) else float(kwargs.get(name, default))
                for k, (name, default) in enumerate(centres[func])
            ]
            with torch.no_grad():
                tensor.fill_(sum(values) / len(values) if values else 0.0)
            return tensor

    return _CentredFills()


def build_model(
    model_config: Mapping[str, Any], device: str = "cpu", *, init_weights: bool = True
) -> torch.nn.Module:
    """Build a randomly initialised model, in eval mode, from a `make_model_config`-style dict.

    Nothing in ``model_config`` is executed or imported: yacs configs select detectron2 registry entries,
    lazy configs are instantiated through the allowlist.  No weights are loaded.

    ``init_weights=False`` skips the random draws of the weights' initialisation (their values are then
    placeholders): for a caller that loads every parameter and buffer next, as
    `..model_package.ModelPackage.build_model` does.  The draws cost 0.1 s for the compact model and 0.3 s
    for R50-FPN on every build.

    Raises
    ------
    ValueError
        For a malformed or inconsistent config.
    UnsafeConfigError
        For anything that is not plain data or names a callable outside the allowlist.
    CompiledExtensionMissingError
        If the model needs ``detectron2._C`` and it is missing.
    """
    import torch

    _validate_model_config(model_config)
    check_compiled_features(model_config)
    from detectron2.modeling import GeneralizedRCNN

    from . import roi_heads  # Registers our heads in ROI_HEADS_REGISTRY.

    torch_device = torch.device(device)
    if model_config["format"] == FORMAT_YACS:
        from detectron2.modeling import build_model as build_detectron2_model

        from .yacs_format import build_cfg

        cfg = build_cfg(model_config["config"])
        if model_config.get("band_availability", False):
            from .band_availability import ensure_registered

            ensure_registered(cfg.MODEL.BACKBONE.NAME)
        if cfg.MODEL.ROI_HEADS.NAME not in _OUR_ROI_HEADS:
            raise ValueError(
                f"ROI heads {cfg.MODEL.ROI_HEADS.NAME!r} are not ours; expected {_OUR_ROI_HEADS}"
            )
        if cfg.MODEL.WEIGHTS:
            raise ValueError("MODEL.WEIGHTS must be empty: weights are never loaded from a config")
        cfg.MODEL.DEVICE = str(torch_device)
        with contextlib.nullcontext() if init_weights else _without_random_init():
            model = build_detectron2_model(cfg)
    else:
        tree = _resolve_lazy_model(copy.deepcopy(dict(model_config["model"])))
        if not roi_heads.is_class_probs_head(resolve_target(tree["roi_heads"][TARGET_KEY])):
            raise ValueError(f"ROI heads {tree['roi_heads'][TARGET_KEY]!r} are not ours ({_OUR_ROI_HEADS})")
        with contextlib.nullcontext() if init_weights else _without_random_init():
            model = safe_instantiate(tree, "model")
        if not isinstance(model, GeneralizedRCNN):
            raise ValueError(f"the model config builds a {type(model).__name__}, not a GeneralizedRCNN")
        model.to(torch_device)
    return model.eval()


def build_model_from_spec(spec: ModelSpec, device: str = "cpu") -> torch.nn.Module:
    """``build_model(make_model_config(spec), device)``."""
    return build_model(make_model_config(spec), device=device)
