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
    "read_coadds",
    "use_coadd_storage_class",
]

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import lsst.pex.config as pexConfig
import lsst.pipe.base.connectionTypes as cT

from ..butler.conversions import LazyBands, multiband_from_coadds
from ..core.multiband import MissingBandError, MultibandImage

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


def read_coadds(
    butlerQC: Any, refs: Iterable[Any], bands: Sequence[str], storage_class: str, wanted_by: str
) -> MultibandImage:
    """Read a patch's coadds in ``bands`` (in that order) and stack them into the core's multi-band image.

    Parameters
    ----------
    butlerQC : `lsst.pipe.base.QuantumContext`
        The quantum's Butler.
    refs : iterable of `lsst.daf.butler.DatasetRef`
        The coadd references of the patch, one per band.
    bands : sequence of `str`
        The bands wanted.
    storage_class : `str`
        The coadds' storage class (``coaddStorageClass``).
    wanted_by : `str`
        Who wants the bands, for the error message (``"the model"``, ``"config.bands"``...).

    Raises
    ------
    MissingBandError
        If a wanted band has no coadd, naming both lists (before anything is read).
    """
    refs_by_band = {str(ref.dataId["band"]): ref for ref in refs}
    missing = [band for band in bands if band not in refs_by_band]
    if missing:
        raise MissingBandError(
            f"{wanted_by} needs band(s) {missing}, but this patch has coadds only in {sorted(refs_by_band)}"
        )
    if storage_class == "MaskedImageV2":
        # Read as the stacking asks for each band: one coadd in memory beside the cubes, not all of them
        # (six 4100 px coadds are about 1 GB).
        return multiband_from_coadds(LazyBands(refs_by_band, butlerQC.get), list(bands), storage_class)
    coadds = {band: butlerQC.get(refs_by_band[band]) for band in bands}
    return multiband_from_coadds(coadds, list(bands), storage_class)
