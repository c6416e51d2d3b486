"""The catalog comparison the tests share: two tables equal column by column, with their metadata."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

__all__ = ["assert_same_catalog"]


def assert_same_catalog(actual: Table, expected: Table) -> None:
    """Same columns in order, dtypes, units, descriptions, values (footprints element-wise) and metadata."""
    assert actual.colnames == expected.colnames
    for name in expected.colnames:
        a, e = actual[name], expected[name]
        assert a.dtype == e.dtype and a.unit == e.unit and a.description == e.description, name
        if a.dtype == object:
            assert all(np.array_equal(x, y) for x, y in zip(a, e)), name
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=name)
    assert actual.meta == expected.meta
