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

"""Features that need detectron2's compiled extension ``detectron2._C``.

detectron2 may be installed as Python code only (see ``bin/install-detectron2.sh``).  Everything the
DeepDISC family needs for inference then works (torchvision provides NMS and ROIAlign), except:
deformable convolution, rotated boxes (``ROIAlignRotated``, rotated NMS/IoU) and detectron2's fast
COCOeval.  detectron2 itself reports those only when they run, with an obscure error; this module finds
them in a model configuration up front and raises `CompiledExtensionMissingError` naming ``detectron2._C``.
"""

from __future__ import annotations

__all__ = [
    "CompiledExtensionMissingError",
    "check_compiled_features",
    "compiled_features_in_config",
    "has_compiled_extension",
    "require_compiled_extension",
]

import functools
import importlib.util
from collections.abc import Mapping
from typing import Any

DEFORMABLE_CONV = "deformable convolution"
ROTATED_BOXES = "rotated boxes"

# Names (last component of a `_target_`, a registry name or a pooler type) that need `_C`.
_COMPILED_NAMES: dict[str, str] = {
    "DeformBottleneckBlock": DEFORMABLE_CONV,
    "DeformConv": DEFORMABLE_CONV,
    "ModulatedDeformConv": DEFORMABLE_CONV,
    "RRPN": ROTATED_BOXES,
    "RROIHeads": ROTATED_BOXES,
    "RotatedAnchorGenerator": ROTATED_BOXES,
    "Box2BoxTransformRotated": ROTATED_BOXES,
    "ROIAlignRotated": ROTATED_BOXES,
}


class CompiledExtensionMissingError(RuntimeError):
    """A requested feature needs ``detectron2._C``, which this detectron2 installation lacks."""


@functools.cache
def has_compiled_extension() -> bool:
    """Whether ``detectron2._C`` can be imported here."""
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except ModuleNotFoundError:  # detectron2 itself missing.
        return False


def require_compiled_extension(feature: str) -> None:
    """Raise `CompiledExtensionMissingError` for ``feature`` unless ``detectron2._C`` is available."""
    if not has_compiled_extension():
        raise CompiledExtensionMissingError(
            f"{feature} needs detectron2's compiled extension `detectron2._C`, which is not available: this "
            "detectron2 is installed as Python code only. Build detectron2 from source (pip install "
            "--no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git') or choose a "
            "configuration without it."
        )


def compiled_features_in_config(model_config: Mapping[str, Any]) -> list[str]:
    """Features of a `make_model_config`-style config that need ``detectron2._C`` (sorted, unique)."""
    found: set[str] = set()
    if model_config.get("format") == "yacs":
        model = model_config.get("config", {}).get("MODEL", {})
        if any(model.get("RESNETS", {}).get("DEFORM_ON_PER_STAGE", ())):
            found.add(DEFORMABLE_CONV)
        names = [
            model.get("PROPOSAL_GENERATOR", {}).get("NAME"),
            model.get("ANCHOR_GENERATOR", {}).get("NAME"),
            model.get("ROI_HEADS", {}).get("NAME"),
            *(section.get("POOLER_TYPE") for section in model.values() if isinstance(section, Mapping)),
        ]
        found.update(_COMPILED_NAMES[name] for name in names if name in _COMPILED_NAMES)
    else:
        _scan_lazy(model_config.get("model", {}), found)
    return sorted(found)


def _scan_lazy(node: Any, found: set[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "deform_on_per_stage" and isinstance(value, list | tuple) and any(value):
                found.add(DEFORMABLE_CONV)
            _scan_lazy(value, found)
    elif isinstance(node, list | tuple):
        for value in node:
            _scan_lazy(value, found)
    elif isinstance(node, str):
        name = node.rsplit(".", 1)[-1]
        if name in _COMPILED_NAMES:
            found.add(_COMPILED_NAMES[name])


def check_compiled_features(model_config: Mapping[str, Any]) -> None:
    """Raise `CompiledExtensionMissingError` if the config needs ``detectron2._C`` and it is missing."""
    features = compiled_features_in_config(model_config)
    if features and not has_compiled_extension():
        require_compiled_extension(" and ".join(features))
