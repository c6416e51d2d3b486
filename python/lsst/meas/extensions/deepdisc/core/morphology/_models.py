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
"""Morphology classifiers, built from plain data: a registry of architectures, as detectron2 keeps one.

A model is described by a mapping ``{"architecture": <name>, "in_channels": C, "num_classes": K, ...}`` and
`build_classifier` builds it; only registered names are accepted, so a package's description can never name
code to run.

``compact_cnn``
    Four stages of two 3x3 convolutions with batch norm and GELU, each stage halving the resolution (the
    first one too: 64 px cutouts are seen at 32, 16, 8 and 4 px) and doubling the channels, global average
    pooling and a linear head: 0.66 M parameters at width 24, fast on a CPU.
``swin``
    A shifted-window transformer (torchvision's ``SwinTransformer``: window attention with cyclic shifts and
    patch merging, the attention family of the Deformable Attention Transformer the morphology paper uses)
    with a patch embedding for ``in_channels`` planes; three stages (depths 2, 2, 4) at embed width 48 by
    default, for 64 px cutouts.
"""

from __future__ import annotations

__all__ = ["ARCHITECTURES", "build_classifier", "check_classifier_config"]

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class _CompactCnn(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 24, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(4):
            out = width * 2**stage
            for repeat in range(2):
                stride = 2 if repeat == 0 else 1
                layers += [
                    nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.GELU(),
                ]
                channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _compact_cnn(in_channels: int, num_classes: int, width: int = 24, dropout: float = 0.2) -> nn.Module:
    return _CompactCnn(in_channels, num_classes, width=width, dropout=dropout)


def _swin(
    in_channels: int,
    num_classes: int,
    embed_dim: int = 48,
    depths: tuple[int, ...] | list[int] = (2, 2, 4),
    num_heads: tuple[int, ...] | list[int] = (3, 6, 12),
    window_size: int = 4,
    patch_size: int = 2,
    stochastic_depth_prob: float = 0.1,
) -> nn.Module:
    from torchvision.models.swin_transformer import SwinTransformer

    model = SwinTransformer(
        patch_size=[patch_size, patch_size],
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(num_heads),
        window_size=[window_size, window_size],
        stochastic_depth_prob=stochastic_depth_prob,
        num_classes=num_classes,
    )
    # The patch embedding takes our planes instead of RGB.
    model.features[0][0] = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
    return model


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"compact_cnn": _compact_cnn, "swin": _swin}
"""Registered classifier builders by name."""

_PARAMETERS = {
    "compact_cnn": {"width", "dropout"},
    "swin": {"embed_dim", "depths", "num_heads", "window_size", "patch_size", "stochastic_depth_prob"},
}


def check_classifier_config(config: Mapping[str, Any]) -> None:
    """Check a classifier description before anything is built.

    Raises
    ------
    ValueError
        If the architecture is not registered, a parameter is unknown or the sizes are not positive integers.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a classifier description is a mapping, got {type(config).__name__}")
    name = config.get("architecture")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown morphology architecture {name!r}; registered: {sorted(ARCHITECTURES)}")
    for key in ("in_channels", "num_classes"):
        value = config.get(key)
        if type(value) is not int or value < 1:
            raise ValueError(f"classifier {key} must be a positive integer, got {value!r}")
    unknown = sorted(set(config) - {"architecture", "in_channels", "num_classes"} - _PARAMETERS[name])
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for architecture {name!r}")


def build_classifier(config: Mapping[str, Any]) -> nn.Module:
    """Build the classifier a description names (`check_classifier_config` first).

    Parameters
    ----------
    config : `~collections.abc.Mapping`
        ``architecture``, ``in_channels``, ``num_classes`` and the architecture's own parameters.

    Returns
    -------
    model : `torch.nn.Module`
        Maps ``[N, in_channels, S, S]`` cutouts to ``[N, num_classes]`` logits.
    """
    check_classifier_config(config)
    params = {k: v for k, v in config.items() if k != "architecture"}
    return ARCHITECTURES[config["architecture"]](**params)
