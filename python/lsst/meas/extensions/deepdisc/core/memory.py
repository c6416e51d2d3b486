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
"""Handing freed heap memory back to the operating system.

glibc keeps memory freed by a process in its arenas for reuse, and the worker threads of the tiled inference
each get arenas of their own.  After a few hundred tiles, each freeing tensors of tens of megabytes, the
process holds hundreds of megabytes it no longer uses, and the peak resident memory of a patch grows by as
much.  `release_free_memory` asks glibc (``malloc_trim``) to return the free pages of every arena; the
inference calls it every few batches and at its end.  Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

__all__ = ["release_free_memory"]

import ctypes
import ctypes.util
import functools
from typing import Any


@functools.cache
def _malloc_trim() -> Any | None:
    """The C library's ``malloc_trim`` (glibc), or `None` where it has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_memory() -> bool:
    """Return the heap's free pages to the operating system; whether the C library could be asked."""
    function = _malloc_trim()
    if function is None:
        return False
    function(0)
    return True
