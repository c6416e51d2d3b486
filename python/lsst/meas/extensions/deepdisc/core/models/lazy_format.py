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

"""Edits of LazyConfig-style model trees (``_target_`` dicts held as plain data).

The same yacs-style keys (``MODEL.RPN.POST_NMS_TOPK_TEST``, ``TEST.DETECTIONS_PER_IMAGE`` ...) tune both
kinds of architecture: `apply_yacs_key` maps each supported key onto the lazy tree of a GeneralizedRCNN.
Keys of the form ``model.<path>`` address the tree directly (``model.roi_heads.box_heads.0.fc_dims``).
"""

from __future__ import annotations

__all__ = [
    "LAZY_YACS_KEYS",
    "apply_override",
    "apply_yacs_key",
    "box_predictors",
    "get_path",
    "set_input_channels",
    "set_num_classes",
    "set_path",
]

from collections.abc import Callable, MutableMapping
from typing import Any

from .safe_config import TARGET_KEY, resolve_target

LazyTree = MutableMapping[str, Any]


def _split(path: str) -> list[str]:
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"malformed config path {path!r}")
    return parts


def get_path(tree: Any, path: str) -> Any:
    """Value at a dotted ``path`` (numeric segments index lists); `KeyError` naming the path if absent."""
    node = tree
    for part in _split(path):
        if isinstance(node, MutableMapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(f"config path {path!r} does not exist (no {part!r})")
    return node


def set_path(tree: Any, path: str, value: Any) -> None:
    """Set the value at a dotted ``path``; the parent must exist, the last key may be new in a dict."""
    *parents, last = _split(path)
    node = get_path(tree, ".".join(parents)) if parents else tree
    if isinstance(node, MutableMapping):
        node[last] = value
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    else:
        raise KeyError(f"config path {path!r} cannot be set")


def box_predictors(model: LazyTree) -> list[LazyTree]:
    """The box predictor dict(s) of a standard (``box_predictor``) or cascade (``box_predictors``) head."""
    roi_heads = model["roi_heads"]
    if "box_predictors" in roi_heads:
        return list(roi_heads["box_predictors"])
    return [roi_heads["box_predictor"]]


def _set_predictors(key: str) -> Callable[[LazyTree, Any], None]:
    def setter(model: LazyTree, value: Any) -> None:
        for predictor in box_predictors(model):
            predictor[key] = value

    return setter


def _set_topk(key: str, index: int) -> Callable[[LazyTree, Any], None]:
    # RPN pre/post_nms_topk are (train, test) pairs.
    def setter(model: LazyTree, value: Any) -> None:
        generator = model["proposal_generator"]
        pair = list(generator[key])
        pair[index] = value
        generator[key] = pair

    return setter


def _levels(param: Any) -> list[Any]:
    return list(param[0]) if isinstance(param[0], list | tuple) else list(param)


def _set_anchor(key: str) -> Callable[[LazyTree, Any], None]:
    def setter(model: LazyTree, value: Any) -> None:
        anchors = model["proposal_generator"]["anchor_generator"]
        anchors[key] = value
        # StandardRPNHead takes the number of anchors per location explicitly: keep it consistent.
        count = len(_levels(anchors["sizes"])) * len(_levels(anchors["aspect_ratios"]))
        model["proposal_generator"]["head"]["num_anchors"] = count

    return setter


def _set_in(section: str, key: str) -> Callable[[LazyTree, Any], None]:
    def setter(model: LazyTree, value: Any) -> None:
        model[section][key] = value

    return setter


LAZY_YACS_KEYS: dict[str, Callable[[LazyTree, Any], None]] = {
    "MODEL.ANCHOR_GENERATOR.SIZES": _set_anchor("sizes"),
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": _set_anchor("aspect_ratios"),
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": _set_topk("pre_nms_topk", 0),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": _set_topk("pre_nms_topk", 1),
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": _set_topk("post_nms_topk", 0),
    "MODEL.RPN.POST_NMS_TOPK_TEST": _set_topk("post_nms_topk", 1),
    "MODEL.RPN.NMS_THRESH": _set_in("proposal_generator", "nms_thresh"),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": _set_in("proposal_generator", "batch_size_per_image"),
    "MODEL.RPN.POSITIVE_FRACTION": _set_in("proposal_generator", "positive_fraction"),
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": _set_in("roi_heads", "batch_size_per_image"),
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": _set_in("roi_heads", "positive_fraction"),
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": _set_predictors("test_score_thresh"),
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": _set_predictors("test_nms_thresh"),
    "TEST.DETECTIONS_PER_IMAGE": _set_predictors("test_topk_per_image"),
}
"""yacs-style keys that lazy architectures understand, and how each edits the model tree."""


def apply_yacs_key(model: LazyTree, key: str, value: Any) -> None:
    """Apply one yacs-style key to a lazy model tree.

    Raises
    ------
    ValueError
        If the key has no lazy equivalent (the message lists those that do).
    """
    setter = LAZY_YACS_KEYS.get(key)
    if setter is None:
        raise ValueError(
            f"override {key!r} has no equivalent for a LazyConfig-style architecture; use one of "
            f"{sorted(LAZY_YACS_KEYS)} or a 'model.<path>' key"
        )
    try:
        setter(model, value)
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"cannot apply override {key!r} to this model: {exc}") from exc


def apply_override(model: LazyTree, key: str, value: Any) -> None:
    """Apply a `ModelSpec` override: a yacs-style key or a ``model.<dotted path>`` into the tree."""
    if key.startswith("model."):
        try:
            set_path(model, key.removeprefix("model."), value)
        except KeyError as exc:
            raise ValueError(f"cannot apply override {key!r}: {exc.args[0]}") from None
    else:
        apply_yacs_key(model, key, value)


def _backbone_trunk(model: LazyTree) -> LazyTree:
    """The node that sees the image: FPN's ``bottom_up``, SimpleFeaturePyramid's ``net``, or the backbone."""
    backbone = model["backbone"]
    for key in ("bottom_up", "net"):
        if isinstance(backbone.get(key), MutableMapping):
            return backbone[key]
    return backbone


def set_input_channels(model: LazyTree, num_bands: int) -> None:
    """Make the backbone take ``num_bands`` input channels (ResNet stem or transformer patch embedding)."""
    from detectron2.modeling.backbone import MViT, ResNet, SwinTransformer, ViT

    trunk = _backbone_trunk(model)
    target = resolve_target(trunk.get(TARGET_KEY))
    if target is ResNet:
        trunk["stem"]["in_channels"] = num_bands
    elif target in (MViT, SwinTransformer, ViT):
        trunk["in_chans"] = num_bands
    else:
        raise ValueError(
            f"do not know how to set the number of input bands of backbone {trunk[TARGET_KEY]!r}"
        )


def set_num_classes(model: LazyTree, num_classes: int) -> None:
    """Set the number of foreground classes of the ROI heads and of their predictors and mask head."""
    roi_heads = model["roi_heads"]
    previous = roi_heads.get("num_classes")
    roi_heads["num_classes"] = num_classes
    for predictor in box_predictors(model):
        if isinstance(predictor.get("num_classes"), int):
            predictor["num_classes"] = num_classes
    mask_head = roi_heads.get("mask_head")
    if isinstance(mask_head, MutableMapping) and isinstance(mask_head.get("num_classes"), int):
        # A class-agnostic mask head predicts one mask whatever the number of classes.
        if not (mask_head["num_classes"] == 1 and previous != 1):
            mask_head["num_classes"] = num_classes
