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

"""The per-patch artifact mask (spans per artifact, and as an image)."""

from __future__ import annotations

__all__ = ["artifact_mask_columns", "artifact_mask_image", "build_artifact_mask"]

from collections.abc import Sequence
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import Column, Table

from ..footprints import flatten_spans, spans_area, spans_to_mask, spans_union, unflatten_spans


def artifact_mask_columns() -> list[tuple[str, Any, Any, str]]:
    """The schema of the artifact mask table (`build_artifact_mask`): ``(name, dtype, unit, description)``."""
    return [
        ("class_name", str, None, "Artifact class name (with its artifact_ prefix)"),
        ("n_instances", np.int32, None, "Number of detected artifacts of the class in the patch"),
        ("area", np.int64, u.pix, "Number of pixels in the union of their footprints"),
        ("bbox_x0", np.int32, u.pix, "Bounding box minimum x (inclusive) of the union, parent coordinates"),
        ("bbox_y0", np.int32, u.pix, "Bounding box minimum y (inclusive) of the union, parent coordinates"),
        ("bbox_x1", np.int32, u.pix, "Bounding box maximum x (inclusive) of the union, parent coordinates"),
        ("bbox_y1", np.int32, u.pix, "Bounding box maximum y (inclusive) of the union, parent coordinates"),
        ("max_score", np.float32, u.dimensionless_unscaled, "Highest model score among the instances"),
        ("ids", object, None, "Catalog ids (object_deepdisc id) of the instances"),
        (
            "spans",
            object,
            None,
            "Union of the instances' footprints as canonical spans flattened as [y, x_begin, x_end, ...]",
        ),
    ]


def build_artifact_mask(catalog: Table) -> Table:
    """The per-patch artifact mask: one row per artifact class, the union of its footprints as spans.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        A `build_catalog` table (``is_artifact``, ``class_name``, ``footprint``, ``score``, ``id``).

    Returns
    -------
    mask : `astropy.table.Table`
        Columns of `artifact_mask_columns`, classes in the order of ``catalog.meta["artifact_classes"]``
        (classes without detections have no row); no rows when the patch has no artifact (always, for a
        model without artifact classes).  ``meta`` carries ``image_bbox``, ``tract``, ``patch``, the model
        and ``artifact_classes``; `artifact_mask_image` rasterises it.
    """
    is_artifact = (
        np.asarray(catalog["is_artifact"], dtype=bool)
        if "is_artifact" in catalog.colnames
        else np.zeros(len(catalog), dtype=bool)
    )
    names = np.asarray(catalog["class_name"]).astype(str) if len(catalog) else np.zeros(0, dtype=str)
    classes = list(catalog.meta.get("artifact_classes", []))
    classes += sorted(set(names[is_artifact].tolist()) - set(classes))
    rows: dict[str, list[Any]] = {name: [] for name, *_ in artifact_mask_columns()}
    for class_name in classes:
        rows_of_class = np.flatnonzero(is_artifact & (names == class_name))
        if not rows_of_class.size:
            continue
        union = spans_union([unflatten_spans(catalog["footprint"][i]) for i in rows_of_class])
        rows["class_name"].append(class_name)
        rows["n_instances"].append(rows_of_class.size)
        rows["area"].append(spans_area(union))
        rows["bbox_x0"].append(int(union[:, 1].min()))
        rows["bbox_y0"].append(int(union[:, 0].min()))
        rows["bbox_x1"].append(int(union[:, 2].max()))
        rows["bbox_y1"].append(int(union[:, 0].max()))
        rows["max_score"].append(float(np.max(np.asarray(catalog["score"])[rows_of_class])))
        rows["ids"].append(np.asarray(catalog["id"])[rows_of_class].astype(np.int64))
        rows["spans"].append(flatten_spans(union))
    table = Table()
    for name, dtype, unit, description in artifact_mask_columns():
        values = rows[name]
        if dtype is object:
            data = np.empty(len(values), dtype=object)
            for i, value in enumerate(values):
                data[i] = value
        else:
            data = np.asarray(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)
        table[name] = Column(data=data, name=name, unit=unit, description=description)
    for key in ("image_bbox", "tract", "patch", "model", "artifact_classes", "artifact_overlap_threshold"):
        if key in catalog.meta:
            table.meta[key] = catalog.meta[key]
    return table


def artifact_mask_image(
    mask_table: Table,
    shape: tuple[int, int] | None = None,
    xy0: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Rasterise an artifact mask table (`build_artifact_mask`) into a boolean image.

    Parameters
    ----------
    mask_table : `astropy.table.Table`
        The artifact mask of a patch (``object_deepdisc_artifact_mask``).
    shape, xy0 : `tuple` [`int`, `int`], optional
        ``(height, width)`` and parent ``(x0, y0)`` of the output; default: ``meta["image_bbox"]``.
    classes : sequence of `str`, optional
        Artifact classes to include (default all rows).

    Returns
    -------
    mask : `numpy.ndarray`
        True on pixels covered by an artifact; spans outside the image are clipped.
    """
    if shape is None or xy0 is None:
        bbox = mask_table.meta.get("image_bbox")
        if not bbox:
            raise ValueError("the mask table has no image_bbox: give shape and xy0")
        shape = (int(bbox["height"]), int(bbox["width"]))
        xy0 = (int(bbox["x0"]), int(bbox["y0"]))
    out = np.zeros(shape, dtype=bool)
    for row in mask_table:
        if classes is None or str(row["class_name"]) in classes:
            out |= spans_to_mask(unflatten_spans(row["spans"]), shape, xy0, clip=True)
    return out


def _plain(value: Any) -> Any:
    """Numpy scalars and containers to plain Python values (table metadata must serialise as YAML)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
