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
"""Integer ids of simulated objects: ``(tract, patch, counter)`` packed into one signed 64-bit integer.

The layout is that of the detection catalogs' `..core.ids.IdPacker` (the Rubin pipelines'
``SkyMapIdGenerator`` convention: the data ID in the high bits, a per-catalog counter in the low bits),
with fixed field widths, `SIM_ID_PACKER`::

    bit 63      : 0 (ids stay positive in a signed int64)
    bits 48..62 : tract   (15 bits, 0 <= tract < 32768)
    bits 32..47 : patch   (16 bits, 0 <= patch < 65536, the sequential patch index)
    bits  0..31 : counter (32 bits)

Catalog rows made for a patch (``object_deblend``, ``object_patch``) count from 1 with the patch's own
``patch`` index, so they are unique within the patch and across the tract.  Truth objects are drawn once per
tract *cell* (the inner region of one patch, see `catalog`) and keep their id in every patch they touch; their
counter has bit 31 set (`TRUTH_COUNTER_FLAG`), so a truth id never equals a catalog id.
"""

from __future__ import annotations

__all__ = [
    "COUNTER_BITS",
    "MAX_COUNTER",
    "MAX_PATCH",
    "MAX_TRACT",
    "PATCH_BITS",
    "SIM_ID_PACKER",
    "TRACT_BITS",
    "TRUTH_COUNTER_FLAG",
    "pack_id",
    "unpack_id",
]

import numpy as np

from ..core.ids import IdPacker

PATCH_BITS = 16
TRACT_BITS = 15
SIM_ID_PACKER = IdPacker(n_tracts_bits=TRACT_BITS, n_patches_bits=PATCH_BITS)
"""The packer of every simulated id (63 bits: 15 tract, 16 patch, 32 counter)."""
COUNTER_BITS = SIM_ID_PACKER.counter_bits
MAX_COUNTER = SIM_ID_PACKER.max_counter
MAX_PATCH = (1 << PATCH_BITS) - 1
MAX_TRACT = (1 << TRACT_BITS) - 1
TRUTH_COUNTER_FLAG = 1 << (COUNTER_BITS - 1)


def pack_id(tract: int, patch: int, counter: int | np.ndarray) -> int | np.ndarray:
    """Pack ``(tract, patch, counter)`` into ``int64`` ids (`SIM_ID_PACKER`).

    Returns an `int` for a scalar counter, else an ``int64`` array; raises `ValueError` (an
    `..core.ids.IdOverflowError`) if a field does not fit its bits.
    """
    counters = np.asarray(counter)
    if counters.ndim == 0:
        return SIM_ID_PACKER.pack(tract, patch, int(counters))
    return SIM_ID_PACKER.pack(tract, patch, counters.astype(np.int64))


def unpack_id(object_id: int | np.ndarray) -> tuple:
    """Inverse of `pack_id`: ``(tract, patch, counter)`` (ints or ``int64`` arrays)."""
    ids = np.asarray(object_id, dtype=np.int64)
    unpacked = SIM_ID_PACKER.unpack(int(ids) if ids.ndim == 0 else ids)
    return tuple(unpacked)
