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
"""What the tasks that read a labelled catalog share: where it lives (its dimensions) and the config switch.

A labelled catalog (positions plus a class or star flag) is ``truth_patch`` in simulated repositories, one
table per patch; a real one (Galaxy Zoo, a spectroscopic star catalog) is put into the Butler per tract or as
one table with no dimensions.  ``referenceDimensions`` says which, and `use_reference_dimensions` adapts the
connection.
"""

from __future__ import annotations

__all__ = ["REFERENCE_DIMENSIONS", "reference_dimensions_field", "use_reference_dimensions"]

import dataclasses

import lsst.pex.config as pexConfig
import lsst.pipe.base.connectionTypes as cT

REFERENCE_DIMENSIONS: dict[str, tuple[str, ...]] = {
    "patch": ("tract", "patch", "skymap"),
    "tract": ("tract", "skymap"),
    "none": (),
}
"""``referenceDimensions`` value -> the labelled catalog's dataset dimensions."""


def reference_dimensions_field() -> pexConfig.ChoiceField:
    """The ``referenceDimensions`` config field (one per task config class)."""
    return pexConfig.ChoiceField[str](
        doc="Dimensions of the labelled catalog dataset.",
        default="patch",
        allowed={
            "patch": "one table per (tract, patch), as truth_patch",
            "tract": "one table per tract",
            "none": "one table for the whole repository (a survey-wide labelled catalog)",
        },
    )


def use_reference_dimensions(connection: cT.Input, choice: str) -> cT.Input:
    """The labelled-catalog connection with the dimensions of ``referenceDimensions`` (if they differ)."""
    dimensions = REFERENCE_DIMENSIONS[choice]
    if set(connection.dimensions) == set(dimensions):
        return connection
    return dataclasses.replace(connection, dimensions=dimensions)
