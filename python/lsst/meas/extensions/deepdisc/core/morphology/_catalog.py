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
"""From a detection catalog to classifier inputs, and from probabilities to the morphology table."""

from __future__ import annotations

__all__ = ["catalog_cutouts", "morphology_columns", "morphology_table", "select_galaxies"]

from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Table

from ..footprints import unflatten_spans
from ..multiband import MultibandImage
from ..photometry import njy_to_mag
from ._cutouts import CutoutConfig, CutoutError, make_cutouts

_NEEDED = ("id", "footprint", "centroid_x", "centroid_y", "class_name")


def _check_columns(catalog: Table, needed: Sequence[str]) -> None:
    missing = [name for name in needed if name not in catalog.colnames]
    if missing:
        raise CutoutError(
            f"the detection catalog lacks column(s) {missing}; a morphology stage reads object_deepdisc"
        )


def select_galaxies(
    catalog: Table,
    classes: Sequence[str],
    band: str,
    max_magnitude: float | None,
    min_area: int = 0,
) -> np.ndarray:
    """Rows of a detection catalog to classify: the given classes, bright enough, big enough.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        ``object_deepdisc`` rows.
    classes : sequence of `str`
        Detection classes to classify (``["galaxy"]``); artifacts are never selected.
    band : `str`
        Band of the magnitude cut (its ``<band>_footprintFlux`` column).
    max_magnitude : `float` or `None`
        Faintest footprint magnitude kept (`None`: no cut).
    min_area : `int`
        Smallest footprint (pixels).

    Returns
    -------
    selected : `numpy.ndarray`
        Boolean row mask.
    """
    _check_columns(catalog, _NEEDED)
    chosen = np.isin(np.asarray(catalog["class_name"]).astype(str), list(classes))
    if "is_artifact" in catalog.colnames:
        chosen &= ~np.asarray(catalog["is_artifact"], dtype=bool)
    if "footprint_area" in catalog.colnames:
        chosen &= np.asarray(catalog["footprint_area"]) >= min_area
    if max_magnitude is not None:
        column = f"{band}_footprintFlux"
        _check_columns(catalog, [column])
        flux = np.asarray(catalog[column], dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            magnitude = np.where(flux > 0, njy_to_mag(np.where(flux > 0, flux, 1.0)), np.inf)
        chosen &= magnitude <= max_magnitude
    return chosen


def catalog_cutouts(
    image: MultibandImage,
    catalog: Table,
    config: CutoutConfig,
    invalid: np.ndarray | None = None,
    bands: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`make_cutouts` for catalog rows: their footprints, centred on their centroids.

    ``bands`` are the classifier's bands (absent ones become zero planes), as in `make_cutouts`.
    """
    _check_columns(catalog, _NEEDED)
    footprints = [unflatten_spans(flat) for flat in catalog["footprint"]]
    centres = np.column_stack([np.asarray(catalog["centroid_x"]), np.asarray(catalog["centroid_y"])])
    return make_cutouts(image, footprints, centres, config, invalid=invalid, bands=bands)


def morphology_columns(class_names: Sequence[str]) -> list[tuple[str, Any, Any, str]]:
    """The schema of ``object_deepdisc_morphology``: ``(name, dtype, unit, description)`` per column."""
    columns: list[tuple[str, Any, Any, str]] = [
        ("id", np.int64, None, "Source id in object_deepdisc (join key)"),
        ("morph_class", str, None, "Most probable morphological class"),
        ("morph_class_id", np.int32, None, "Index of morph_class in the classifier's class list"),
        ("morph_prob", np.float32, u.dimensionless_unscaled, "Probability of morph_class"),
        ("morph_second_class", str, None, "Second most probable class (top-2)"),
        ("morph_binning", np.int16, None, "Block-averaging factor of the cutout (1: native pixels)"),
    ]
    for name in class_names:
        columns.append(
            (f"morph_prob_{name}", np.float32, u.dimensionless_unscaled, f"Probability of class {name!r}")
        )
    return columns


def morphology_table(
    ids: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], binning: np.ndarray
) -> Table:
    """The morphology catalog: one row per classified object, joined to ``object_deepdisc`` by ``id``.

    Columns: `morphology_columns` (``morph_class`` is the most probable class, ``morph_second_class`` the
    runner-up, the paper's top-2).
    """
    n = len(ids)
    probabilities = np.asarray(probabilities, dtype=np.float32).reshape(n, len(class_names))
    order = np.argsort(-probabilities, axis=1, kind="stable")
    names = np.asarray(class_names)
    second = order[:, 1] if len(class_names) > 1 else order[:, 0]
    values = {
        "id": np.asarray(ids, dtype=np.int64),
        "morph_class": names[order[:, 0]],
        "morph_class_id": order[:, 0],
        "morph_prob": probabilities[np.arange(n), order[:, 0]],
        "morph_second_class": names[second],
        "morph_binning": np.asarray(binning),
    }
    for index, name in enumerate(class_names):
        values[f"morph_prob_{name}"] = probabilities[:, index]
    table = Table()
    for name, dtype, unit, description in morphology_columns(class_names):
        column = np.asarray(values[name]).astype(dtype if dtype is not str else names.dtype)
        table[name] = column
        table[name].unit = unit
        table[name].description = description
    return table
