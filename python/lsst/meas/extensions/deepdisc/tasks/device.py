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

"""The ``device`` config field of the tasks that run a network (detection, training)."""

from __future__ import annotations

__all__ = ["DEVICE_PATTERN", "check_device", "device_field"]

import re

import lsst.pex.config as pexConfig

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""Device names the tasks accept (``core.inference.select_device`` resolves ``auto``)."""


def device_field() -> pexConfig.Field:
    """The ``device`` config field (one per task config class): one name and one rule for every task."""
    return pexConfig.Field[str](
        doc="Torch device: 'auto' (CUDA if available, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'.",
        default="auto",
    )


def check_device(config: pexConfig.Config) -> None:
    """Refuse, in a config's ``validate``, a ``device`` that is not a device name, naming the valid ones."""
    if not DEVICE_PATTERN.match(config.device):
        raise pexConfig.FieldValidationError(
            type(config).device,
            config,
            f"device must be auto, cpu, mps, cuda or cuda:N, got {config.device!r}",
        )
