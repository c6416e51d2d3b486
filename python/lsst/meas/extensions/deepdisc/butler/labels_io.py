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
"""Butler-side helpers of the training labels: scarlet models from either storage class.

Label tables (``deepdisc_labels``) are stored as ``ArrowAstropy`` through `.tables.to_arrow` (the
``footprint`` column becomes ``list<int32>``); reading them back gives an astropy table whose ``footprint``
cells are flattened ``int32`` span arrays, which every function of ``core.labels`` accepts.

Scarlet models arrive in one of two storage classes:

``ScarletModelArchive``
    This package's reader of the ``.scarlet`` archives (simulated repositories, or any Rubin archive
    registered under that storage class): already a `~..core.scarlet_io.ScarletModelData`.
``LsstScarletModelData``
    The Rubin pipelines' own storage class; the Butler returns ``meas_extensions_scarlet``'s
    ``LsstScarletModelData`` (only where that package is installed).  `scarlet_models_from_butler` converts
    it through its ``as_dict()`` JSON form, which ``ScarletModelData.from_dict`` reads for the schema
    versions ``core.scarlet_io`` knows (up to 1.0.1); newer schemas (typed PSF objects in the metadata) are
    refused with an explanation.  Alternatively read the archive files with ``core.scarlet_io``.
"""

from __future__ import annotations

__all__ = ["scarlet_models_from_butler"]

from typing import Any

import numpy as np

from ..core.scarlet_io import ScarletFormatError, ScarletModelData


def scarlet_models_from_butler(models: Any) -> ScarletModelData:
    """A `~..core.scarlet_io.ScarletModelData` from what the Butler returned for the scarlet models.

    Parameters
    ----------
    models : `ScarletModelData` or upstream ``LsstScarletModelData``
        The in-memory dataset.

    Returns
    -------
    models : `~..core.scarlet_io.ScarletModelData`
        With ``bands``, ``psf`` (``[C, h, w]``) and ``model_psf`` usable for rendering.

    Raises
    ------
    TypeError
        If the object is neither type.
    ScarletFormatError
        If the upstream object's schema cannot be converted (e.g. PSFs stored as typed objects).
    """
    if isinstance(models, ScarletModelData):
        converted = models
    elif callable(getattr(models, "as_dict", None)):
        converted = ScarletModelData.from_dict(models.as_dict())
    else:
        raise TypeError(
            f"cannot read scarlet models from a {type(models).__name__}; expected ScarletModelData "
            "(storage class ScarletModelArchive) or meas_extensions_scarlet's LsstScarletModelData"
        )
    _check_renderable(converted)
    return converted


def _check_renderable(models: ScarletModelData) -> None:
    """Fail early, with the reason, when the metadata lacks what rendering needs."""
    version = models.version
    try:
        bands = models.bands
        psf = np.asarray(models.psf, dtype=np.float32)
        model_psf = np.asarray(models.model_psf, dtype=np.float32)
    except (ScarletFormatError, TypeError, ValueError) as err:
        raise ScarletFormatError(
            f"scarlet models (schema {version}) lack usable model-level bands/PSFs: {err}; labels need "
            "the observed PSF per band and the model PSF in the archive metadata"
        ) from None
    if psf.ndim != 3 or psf.shape[0] != len(bands) or model_psf.ndim != 2:
        raise ScarletFormatError(
            f"scarlet models (schema {version}) have PSFs of shapes {psf.shape} / {model_psf.shape} for "
            f"bands {list(bands)}; expected [C, h, w] and a 2-d model PSF"
        )
