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
"""Astropy tables with footprint span columns <-> Arrow tables for the ``ArrowAstropy`` storage class.

The core builds `astropy.table.Table` catalogs whose footprint columns are object columns holding one
``int32`` array per row (flattened spans, see `..core.footprints.flatten_spans`).  daf_butler cannot write
such object columns, so `to_arrow` converts every other column with daf_butler's own converter (keeping
units and descriptions) and appends the object columns as ``list<int32>`` fields with the same metadata.
Reading back through the Butler returns an astropy table whose list columns hold ``int32`` arrays.
"""

from __future__ import annotations

__all__ = ["list_columns", "to_arrow"]

import numpy as np
import pyarrow as pa
from astropy.table import Table, meta

from lsst.daf.butler.formatters.parquet import astropy_to_arrow

_INT32 = pa.int32()


def list_columns(table: Table) -> list[str]:
    """Names of the object columns (variable-length arrays) of an astropy table."""
    return [name for name in table.colnames if table[name].dtype == object]


def to_arrow(table: Table, value_type: pa.DataType = _INT32) -> pa.Table:
    """Convert an astropy table to Arrow, turning object columns into ``list<value_type>`` fields.

    Parameters
    ----------
    table : `astropy.table.Table`
        Table whose object columns hold 1-d numpy arrays (or `None` for an empty list).
    value_type : `pyarrow.DataType`
        Element type of the list columns.

    Returns
    -------
    arrow_table : `pyarrow.Table`
        Columns in the original order; units and descriptions kept as field metadata.
    """
    list_names = list_columns(table)
    plain = table[[name for name in table.colnames if name not in list_names]] if list_names else table
    if list_names and not plain.colnames:
        raise ValueError("a table needs at least one non-list column")
    arrow = astropy_to_arrow(plain)
    for name in list_names:
        column = table[name]
        values = [
            np.asarray([] if v is None else v).astype(value_type.to_pandas_dtype(), copy=False)
            for v in column
        ]
        field_metadata = {}
        if column.description:
            field_metadata["description"] = column.description
        if column.unit:
            field_metadata["unit"] = str(column.unit)
        field = pa.field(name, pa.list_(value_type), metadata=field_metadata or None)
        arrow = arrow.append_column(field, pa.array(values, type=pa.list_(value_type)))
    arrow = arrow.select(table.colnames)  # Restore the original column order.
    if list_names:
        # daf_butler re-applies units/descriptions from the astropy header on read and expects every column
        # there: describe the list columns through an int32 placeholder carrying the same attributes.
        header_table = table.copy(copy_data=False)
        for name in list_names:
            original = table[name]
            header_table.replace_column(name, np.zeros(len(table), dtype=np.int32))
            header_table[name].unit = original.unit
            header_table[name].description = original.description
        metadata = dict(arrow.schema.metadata or {})
        metadata[b"table_meta_yaml"] = "\n".join(meta.get_yaml_from_table(header_table))
        arrow = arrow.replace_schema_metadata(metadata)
    return arrow
