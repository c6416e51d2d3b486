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

"""Checks that a package's model config, network and metadata agree, and that its config is safe to build."""

from __future__ import annotations

__all__ = ["check_config_agrees", "check_config_safety", "check_model_consistency"]

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._archive import METADATA_MEMBER, MODEL_MEMBER, ModelPackageError

if TYPE_CHECKING:
    from ._package import ModelPackage


def check_config_agrees(package: ModelPackage) -> None:
    """Where the model config repeats bands, classes or pixel statistics, they must be the package's."""
    config = package.model_config
    disagreements = []
    for key, ours in (("bands", list(package.bands)), ("class_names", list(package.class_names))):
        if key in config and config[key] != ours:
            disagreements.append(f"{key} {config[key]!r} vs {ours!r}")
    if "num_bands" in config and config["num_bands"] != len(package.bands):
        disagreements.append(f"num_bands {config['num_bands']!r} vs {len(package.bands)} bands")
    for key in ("pixel_mean", "pixel_std"):
        ours_stats = getattr(package, key)
        theirs = config.get(key)
        if ours_stats is None or theirs is None:
            continue
        try:
            same = len(theirs) == len(ours_stats) and np.allclose(theirs, ours_stats, rtol=1e-6, atol=0)
        except (TypeError, ValueError):
            same = False
        if not same:
            disagreements.append(f"{key} {theirs!r} vs {list(ours_stats)!r}")
    if disagreements:
        raise ModelPackageError(
            f"the model config and the package metadata disagree: {'; '.join(disagreements)}"
        )


def check_model_consistency(package: ModelPackage, model: torch.nn.Module) -> None:
    """The built model must take as many channels as there are bands and agree on pixel statistics."""
    buffers = dict(model.named_buffers())
    for attribute in ("pixel_mean", "pixel_std"):
        buffer = buffers.get(attribute)
        if not isinstance(buffer, torch.Tensor):
            continue
        values = buffer.detach().cpu().reshape(-1).tolist()
        if len(values) != len(package.bands):
            raise ModelPackageError(
                f"model package {package.name!r} lists {len(package.bands)} bands {list(package.bands)} but "
                f"its model normalises {len(values)} input channels ({attribute})"
            )
        declared = getattr(package, attribute)
        if declared is not None and not np.allclose(values, declared, rtol=1e-6, atol=1e-6):
            raise ModelPackageError(
                f"model package {package.name!r}: {attribute} {list(declared)} in {METADATA_MEMBER} differs "
                f"from the model's {values}"
            )
    num_classes = getattr(getattr(model, "roi_heads", None), "num_classes", None)
    if isinstance(num_classes, int) and num_classes != len(package.class_names):
        raise ModelPackageError(
            f"model package {package.name!r} names {len(package.class_names)} classes "
            f"{list(package.class_names)} but its model predicts {num_classes}"
        )


def check_config_safety(model_config: dict[str, Any]) -> None:
    """Refuse, before anything is built, a config that names a callable outside the allowlist."""
    from ..models import UnsafeConfigError
    from ..models.safe_config import validate_targets

    try:
        validate_targets(model_config, "model")
    except UnsafeConfigError as exc:
        raise ModelPackageError(f"{MODEL_MEMBER} is refused: {exc}") from None
