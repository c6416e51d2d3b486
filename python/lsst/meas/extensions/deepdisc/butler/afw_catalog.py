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
"""Optional adapter between afw ``SourceCatalog`` objects and the package's tables.

`make_source_catalog` writes our detection catalog as a ``SourceCatalog`` with HeavyFootprints;
`source_catalog_to_table` reads a deblender's ``SourceCatalog`` into the table the comparison reads.

Only usable where ``lsst.afw`` is installed (the Rubin stack); everything is imported lazily so that the
package works without it.  Written against the upstream afw API: ``SourceTable.makeMinimalSchema``,
``SpanSet``/``Span``, ``Footprint.addPeak``, ``makeHeavyFootprint``.
"""

from __future__ import annotations

__all__ = ["AFW_MISSING_MESSAGE", "afw_available", "make_source_catalog", "source_catalog_to_table"]

import importlib.util
import math
from typing import Any

import numpy as np
from astropy.table import Table

from ..core.footprints import spans_centroid, unflatten_spans
from ..core.multiband import MultibandImage

AFW_MISSING_MESSAGE = (
    "lsst.afw is not installed: the SourceCatalog/HeavyFootprint output needs the Rubin stack. "
    "Set config.doWriteSourceCatalog=False (the ArrowAstropy catalog has the same footprints as spans)."
)


def afw_available() -> bool:
    """Whether ``lsst.afw`` can be imported."""
    try:
        return importlib.util.find_spec("lsst.afw.table") is not None
    except ModuleNotFoundError:
        return False


def make_source_catalog(catalog: Table, image: MultibandImage, heavy_band: str | None = None) -> Any:
    """Convert a detection catalog to an afw ``SourceCatalog`` with one HeavyFootprint per source.

    Parameters
    ----------
    catalog : `astropy.table.Table`
        Output of ``core.catalog.build_catalog``.
    image : `MultibandImage`
        The patch; the heavy footprints carry the pixels of ``heavy_band``.
    heavy_band : `str`, optional
        Band whose pixels go into the HeavyFootprints (default: the middle band of the model's list).

    Returns
    -------
    sources : `lsst.afw.table.SourceCatalog`
    """
    if not afw_available():
        raise ImportError(AFW_MISSING_MESSAGE)
    import lsst.afw.detection as afwDetection
    import lsst.afw.geom as afwGeom
    import lsst.afw.image as afwImage
    import lsst.afw.table as afwTable
    import lsst.geom

    band = heavy_band or image.bands[len(image.bands) // 2]
    b = image.band_index(band)
    xy0 = lsst.geom.Point2I(*image.xy0)
    masked = afwImage.MaskedImageF(
        afwImage.ImageF(np.ascontiguousarray(image.image[b], dtype=np.float32), xy0=xy0),
        afwImage.Mask(
            np.ascontiguousarray(
                image.mask[b] if image.mask is not None else np.zeros(image.shape), dtype=np.int32
            ),
            xy0=xy0,
        ),
        afwImage.ImageF(
            np.ascontiguousarray(
                image.variance[b] if image.variance is not None else np.ones(image.shape), dtype=np.float32
            ),
            xy0=xy0,
        ),
    )

    schema = afwTable.SourceTable.makeMinimalSchema()
    score_key = schema.addField("deepdisc_score", type="F", doc="DeepDISC detection score")
    class_key = schema.addField("deepdisc_classId", type="I", doc="DeepDISC class index")
    n_child_key = schema.addField("deblend_nChild", type="I", doc="Number of children of this family parent")
    prob_keys = {
        column: schema.addField(f"deepdisc_{column}", type="F", doc=f"DeepDISC class probability ({column})")
        for column in catalog.colnames
        if column.startswith("prob_")
    }
    table = afwTable.SourceTable.make(schema)
    sources = afwTable.SourceCatalog(table)
    for row in catalog:
        record = sources.addNew()
        record.setId(int(row["id"]))
        record.setParent(int(row["parent"]))
        record.set(score_key, float(row["score"]))
        record.set(class_key, int(row["class_id"]))
        record.set(n_child_key, int(row["nChild"]))
        for column, key in prob_keys.items():
            record.set(key, float(row[column]))
        spans = unflatten_spans(row["footprint"])
        span_set = afwGeom.SpanSet([afwGeom.Span(int(y), int(x0), int(x1)) for y, x0, x1 in spans])
        footprint = afwDetection.Footprint(span_set)
        footprint.addPeak(float(row["centroid_x"]), float(row["centroid_y"]), float(row["score"]))
        record.setFootprint(afwDetection.makeHeavyFootprint(footprint, masked))
    return sources


def source_catalog_to_table(catalog: Any) -> Table:
    """An afw ``SourceCatalog`` with footprints as the table the comparison reads (needs lsst.afw).

    Written against the upstream afw API: ``record.getFootprint().getSpans()`` (a ``SpanSet`` of ``Span``
    with ``getY``, ``getMinX``, ``getMaxX``) and the footprint's first peak for the position (the footprint
    centroid when it has none).  Columns: ``id``, ``parent``, ``deblend_nChild``, ``x``, ``y``,
    ``coord_ra``, ``coord_dec`` (degrees; NaN when the catalog has no coordinates yet) and ``spans``.
    """
    ids, parents, n_child, xs, ys, ras, decs = [], [], [], [], [], [], []
    spans_column = np.empty(len(catalog), dtype=object)
    has_n_child = "deblend_nChild" in catalog.schema.getNames()
    for row, record in enumerate(catalog):
        footprint = record.getFootprint()
        spans = np.zeros((0, 3), dtype=np.int32)
        if footprint is not None:
            spans = np.array(
                [(span.getY(), span.getMinX(), span.getMaxX()) for span in footprint.getSpans()],
                dtype=np.int32,
            ).reshape(-1, 3)
        peaks = footprint.getPeaks() if footprint is not None else []
        if len(peaks):
            x, y = float(peaks[0].getFx()), float(peaks[0].getFy())
        elif spans.shape[0]:
            x, y = spans_centroid(spans)
        else:
            x = y = math.nan
        coord = record.getCoord()
        ids.append(int(record.getId()))
        parents.append(int(record.getParent()))
        n_child.append(int(record["deblend_nChild"]) if has_n_child else 0)
        xs.append(x)
        ys.append(y)
        ras.append(coord.getRa().asDegrees())
        decs.append(coord.getDec().asDegrees())
        spans_column[row] = spans.reshape(-1)
    table = Table(
        {
            "id": np.array(ids, dtype=np.int64),
            "parent": np.array(parents, dtype=np.int64),
            "deblend_nChild": np.array(n_child, dtype=np.int32),
            "x": np.array(xs, dtype=np.float64),
            "y": np.array(ys, dtype=np.float64),
            "coord_ra": np.array(ras, dtype=np.float64),
            "coord_dec": np.array(decs, dtype=np.float64),
        }
    )
    table["spans"] = spans_column
    return table
