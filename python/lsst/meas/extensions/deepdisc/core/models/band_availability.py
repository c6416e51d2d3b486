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

"""Models that run on any subset of their bands: a backbone that sees which bands are present.

A band a coadd does not have is given to the network as a plane of NaN (`ABSENT_BAND_VALUE`) in its
channel.  `BandAvailabilityBackbone` wraps the usual backbone: it replaces every NaN plane by zero (the
band's mean level, since the model has already normalised its input) and appends one availability plane
per band (1 where the band is present, 0 where it is absent), so the inner backbone's first layer takes
``2 * n_bands`` channels and the network can tell "absent" from "blank sky".  Training drops bands at
random the same way (`..training.TrainingConfig.band_dropout`).

The rest of the pipeline stays in the model's bands: pixel statistics, scaling and the package's
``bands`` are per band, and a model without band availability is unchanged.

For yacs (detectron2 registry) architectures the wrapper is selected by naming a registry entry
``BandAvailability:<inner builder>`` in ``MODEL.BACKBONE.NAME``; `ensure_registered` adds such entries on
demand, so only registry names, never code, travel in a model package.
"""

from __future__ import annotations

__all__ = [
    "ABSENT_BAND_VALUE",
    "BACKBONE_PREFIX",
    "BandAvailabilityBackbone",
    "ensure_registered",
    "is_wrapped",
    "wrapped_name",
]

import math
from typing import Any, override

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

ABSENT_BAND_VALUE = math.nan
"""Value of every pixel of a band the data do not have (the whole plane)."""

BACKBONE_PREFIX = "BandAvailability:"
"""Prefix of the registry names of wrapped backbone builders."""


class BandAvailabilityBackbone(Backbone):
    """Zero the planes of absent (NaN) bands and append one availability plane per band.

    Parameters
    ----------
    inner : `detectron2.modeling.Backbone`
        The wrapped backbone; its input has ``2 * num_bands`` channels.
    num_bands : `int`
        Number of bands of the model's input.
    """

    def __init__(self, inner: Backbone, num_bands: int) -> None:
        super().__init__()
        self.inner = inner
        self.num_bands = int(num_bands)

    @override
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] != self.num_bands:
            raise ValueError(f"expected {self.num_bands} input bands, got {x.shape[1]} channels")
        absent = torch.isnan(x).flatten(2).any(dim=2)
        x = torch.nan_to_num(x, nan=0.0)
        planes = (~absent).to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.inner(torch.cat([x, planes], dim=1))

    @override
    def output_shape(self) -> dict[str, ShapeSpec]:
        return self.inner.output_shape()

    @property
    @override
    def size_divisibility(self) -> int:
        return self.inner.size_divisibility

    @property
    @override
    def padding_constraints(self) -> dict[str, Any]:
        return self.inner.padding_constraints


def wrapped_name(inner: str) -> str:
    """Registry name of the band-availability wrapper of the builder ``inner``."""
    return inner if is_wrapped(inner) else f"{BACKBONE_PREFIX}{inner}"


def is_wrapped(name: str) -> bool:
    """Whether a backbone registry name is a band-availability wrapper."""
    return str(name).startswith(BACKBONE_PREFIX)


def ensure_registered(name: str) -> None:
    """Register the wrapper builder ``name`` (``BandAvailability:<inner>``) if it is not yet registered.

    Raises
    ------
    ValueError
        If ``name`` is not a wrapper name or its inner builder is not in detectron2's registry.
    """
    if not is_wrapped(name):
        raise ValueError(f"{name!r} is not a band-availability backbone name ({BACKBONE_PREFIX}<builder>)")
    if name in BACKBONE_REGISTRY:
        return
    inner_name = name[len(BACKBONE_PREFIX) :]
    if inner_name not in BACKBONE_REGISTRY:
        raise ValueError(f"backbone builder {inner_name!r} is not in detectron2's BACKBONE_REGISTRY")
    inner_builder = BACKBONE_REGISTRY.get(inner_name)

    def build(cfg: Any, input_shape: ShapeSpec) -> Backbone:
        doubled = ShapeSpec(
            channels=2 * input_shape.channels,
            height=input_shape.height,
            width=input_shape.width,
            stride=input_shape.stride,
        )
        return BandAvailabilityBackbone(inner_builder(cfg, doubled), input_shape.channels)

    build.__name__ = name
    BACKBONE_REGISTRY._do_register(name, build)
