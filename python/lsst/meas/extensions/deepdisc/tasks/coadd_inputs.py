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
"""What every task that reads per-band coadds shares: the storage-class choice and its connection switch."""

from __future__ import annotations

__all__ = [
    "COADD_STORAGE_CLASSES",
    "coadd_input_connection",
    "coadd_storage_class_field",
    "use_coadd_storage_class",
]

import dataclasses

import lsst.pex.config as pexConfig
import lsst.pipe.base.connectionTypes as cT

COADD_STORAGE_CLASSES: dict[str, str] = {
    "MaskedImageV2": "lsst.images.MaskedImage (no afw needed)",
    "ExposureF": "lsst.afw.image.ExposureF (needs lsst.afw)",
}


def coadd_input_connection(doc: str) -> cT.Input:
    """The per-band coadd input of a patch task (``multiple=True`` over band; storage class switchable)."""
    return cT.Input(
        doc=doc,
        name="{coaddName}_coadd",
        storageClass="MaskedImageV2",
        dimensions=("tract", "patch", "band", "skymap"),
        multiple=True,
    )


def coadd_storage_class_field() -> pexConfig.ChoiceField:
    """The ``coaddStorageClass`` config field (one per task config class)."""
    return pexConfig.ChoiceField[str](
        doc="Storage class of the coadd inputs.",
        default="MaskedImageV2",
        allowed=dict(COADD_STORAGE_CLASSES),
    )


def use_coadd_storage_class(connection: cT.Input, storage_class: str) -> cT.Input:
    """The coadd input connection, switched to the configured storage class if it differs."""
    if connection.storageClass == storage_class:
        return connection
    return dataclasses.replace(connection, storageClass=storage_class)
