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

"""The training history as a table (`make_history_table`)."""

from __future__ import annotations

__all__ = ["make_history_table"]

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from astropy.table import Table

from ._config import TrainingConfig


def make_history_table(
    history: Sequence[Mapping[str, Any]], best_iteration: int | None, config: TrainingConfig
) -> Table:
    """The training history as a table: one row per validation, plus ``is_best``.

    Integer-valued entries (iteration, stage, counts) become integer columns, the others float columns
    with NaN where a value is missing (e.g. AP without pycocotools).
    """
    keys: list[str] = []
    for entry in history:
        keys.extend(key for key in entry if key not in keys)
    table = Table()
    for key in keys:
        values = [entry.get(key) for entry in history]
        present = [value for value in values if value is not None]
        if (
            present
            and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in present)
            and (len(present) == len(values))
        ):
            table[key] = np.array(values, dtype=np.int64)
        else:
            table[key] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    iterations = table["iteration"] if "iteration" in table.colnames else np.zeros(len(table), np.int64)
    table["is_best"] = np.asarray(iterations) == (-1 if best_iteration is None else best_iteration)
    table.meta["best_metric_name"] = config.best_metric
    table.meta["heads_iterations"] = config.heads_iterations
    table.meta["total_iterations"] = config.total_iterations
    return table
