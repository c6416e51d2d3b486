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
"""Unique 64-bit source ids from ``(tract, patch, counter)``.

The layout follows the Science Pipelines' ``SkyMapIdGenerator``: the data ID of the catalog (tract, patch
and an optional release number) is packed into the high bits, and a per-catalog counter fills the low
bits, so ids are unique across every patch of a run and can be unpacked again.  From the most to the least
significant bit (``total_bits`` in all, 63 by default so that ids are positive signed 64-bit integers)::

    | tract (n_tracts_bits) | patch (n_patches_bits) | release (n_releases_bits) | counter (the rest) |

``catalog_id = ((tract << n_patches_bits) | patch) << n_releases_bits | release_id`` is the packed data ID
and ``id = catalog_id << counter_bits | counter``.  Every field is checked: a value that does not fit its
bits raises `IdOverflowError` instead of silently colliding with another patch's ids.
"""

from __future__ import annotations

__all__ = ["IdOverflowError", "IdPacker", "UnpackedId"]

from typing import Any, NamedTuple

import numpy as np

# Ids are stored as signed 64-bit integers (Arrow int64, afw RecordId): keep the sign bit clear.
_MAX_TOTAL_BITS = 63


class IdOverflowError(ValueError):
    """A tract, patch, release or counter value does not fit in the bits reserved for it."""


class UnpackedId(NamedTuple):
    """The fields of a packed source id."""

    tract: Any
    patch: Any
    counter: Any


def _bits_for(count: int, what: str) -> int:
    """Number of bits needed to store the values ``0 .. count - 1``."""
    if int(count) != count or count < 1:
        raise ValueError(f"{what} must be a positive integer, got {count!r}")
    return (int(count) - 1).bit_length()


class IdPacker:
    """Pack ``(tract, patch, counter)`` into unique integer ids and back.

    Parameters
    ----------
    n_tracts_bits : `int`
        Bits for the tract id (tracts ``0 .. 2**n_tracts_bits - 1``).
    n_patches_bits : `int`
        Bits for the sequential patch index within a tract.
    n_releases_bits : `int`, optional
        Bits for a release (processing campaign) number, 0 for none.
    release_id : `int`, optional
        The release number stored in every id of this packer.
    total_bits : `int`, optional
        Width of the ids, at most 63 (the default) so that they stay positive as signed 64-bit integers.

    Raises
    ------
    ValueError
        If the fields leave no bit for the counter, a bit count is negative, or ``release_id`` does not fit.
    """

    def __init__(
        self,
        n_tracts_bits: int,
        n_patches_bits: int,
        n_releases_bits: int = 0,
        release_id: int = 0,
        total_bits: int = 63,
    ) -> None:
        for name, value in (
            ("n_tracts_bits", n_tracts_bits),
            ("n_patches_bits", n_patches_bits),
            ("n_releases_bits", n_releases_bits),
        ):
            if int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not 1 <= total_bits <= _MAX_TOTAL_BITS:
            raise ValueError(f"total_bits must be in [1, {_MAX_TOTAL_BITS}], got {total_bits}")
        self.n_tracts_bits = int(n_tracts_bits)
        self.n_patches_bits = int(n_patches_bits)
        self.n_releases_bits = int(n_releases_bits)
        self.total_bits = int(total_bits)
        self.counter_bits = self.total_bits - self.n_tracts_bits - self.n_patches_bits - self.n_releases_bits
        if self.counter_bits < 1:
            raise ValueError(
                f"no bits left for the counter: {self.n_tracts_bits} tract + {self.n_patches_bits} patch + "
                f"{self.n_releases_bits} release bits >= total_bits={self.total_bits}"
            )
        self._check_scalar("release_id", release_id, self.n_releases_bits)
        self.release_id = int(release_id)

    @classmethod
    def from_skymap(
        cls,
        tract_max: int,
        patch_nx_max: int,
        patch_ny_max: int,
        *,
        n_releases: int = 1,
        release_id: int = 0,
        total_bits: int = 63,
    ) -> IdPacker:
        """Size the fields from a skymap's dimension record (``tract_max``, ``patch_nx_max/ny_max``).

        Parameters
        ----------
        tract_max : `int`
            One more than the largest tract id (the skymap record's ``tract_max``).
        patch_nx_max, patch_ny_max : `int`
            Patches per tract along x and y.
        n_releases : `int`, optional
            Number of distinct release numbers to reserve room for.
        release_id : `int`, optional
            The release number of this packer.
        total_bits : `int`, optional
            Width of the ids.
        """
        return cls(
            n_tracts_bits=_bits_for(tract_max, "tract_max"),
            n_patches_bits=_bits_for(patch_nx_max * patch_ny_max, "patch_nx_max * patch_ny_max"),
            n_releases_bits=_bits_for(n_releases, "n_releases"),
            release_id=release_id,
            total_bits=total_bits,
        )

    @property
    def max_counter(self) -> int:
        """Largest counter value an id can hold."""
        return (1 << self.counter_bits) - 1

    @staticmethod
    def _check_scalar(name: str, value: int, bits: int) -> None:
        if int(value) != value:
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if not 0 <= int(value) < (1 << bits):
            raise IdOverflowError(f"{name}={value} does not fit in {bits} bit(s) (0 .. {(1 << bits) - 1})")

    @staticmethod
    def _check_array(name: str, values: np.ndarray, bits: int) -> np.ndarray:
        if values.dtype.kind not in "iub":
            raise TypeError(f"{name} must be integers, got dtype {values.dtype}")
        values = values.astype(np.int64)
        bad = (values < 0) | (values >= (1 << bits))
        if np.any(bad):
            first = int(values[bad].reshape(-1)[0])
            raise IdOverflowError(
                f"{int(bad.sum())} {name} value(s) do not fit in {bits} bit(s) (0 .. {(1 << bits) - 1}), "
                f"e.g. {first}"
            )
        return values

    def catalog_id(self, tract: int, patch: int) -> int:
        """The packed data ID ``(tract, patch, release)``: the high bits shared by one catalog's ids."""
        self._check_scalar("tract", tract, self.n_tracts_bits)
        self._check_scalar("patch", patch, self.n_patches_bits)
        packed = (int(tract) << self.n_patches_bits) | int(patch)
        return (packed << self.n_releases_bits) | self.release_id

    def pack(self, tract: int, patch: int, counter: Any) -> Any:
        """Pack a source id.

        Parameters
        ----------
        tract, patch : `int`
            The catalog's data ID.
        counter : `int` or `numpy.ndarray`
            Row counter(s) within the catalog, ``0 .. max_counter`` (catalogs use 1, 2, ... so that no
            source gets id 0, which means "no parent").

        Returns
        -------
        id : `int` or `numpy.ndarray`
            A Python `int` for a scalar counter, an ``int64`` array for an array of counters.

        Raises
        ------
        IdOverflowError
            If any field does not fit in its bits.
        """
        high = self.catalog_id(tract, patch) << self.counter_bits
        if np.ndim(counter) == 0 and not isinstance(counter, np.ndarray):
            self._check_scalar("counter", counter, self.counter_bits)
            return high | int(counter)
        counters = self._check_array("counter", np.asarray(counter), self.counter_bits)
        return np.int64(high) | counters

    def unpack(self, source_id: Any) -> UnpackedId:
        """Split id(s) into ``(tract, patch, counter)``.

        Raises
        ------
        ValueError
            If an id is negative, wider than ``total_bits``, or carries another release number.
        """
        scalar = np.ndim(source_id) == 0 and not isinstance(source_id, np.ndarray)
        ids = np.asarray(source_id)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.dtype.kind == "i" and np.any(ids < 0):
            raise ValueError("negative ids were not made by an IdPacker")
        raw = ids.astype(np.uint64)
        if np.any(raw >> np.uint64(self.total_bits)):
            raise ValueError(f"id(s) wider than {self.total_bits} bits were not made by this packer")
        counter = raw & np.uint64(self.max_counter)
        rest = raw >> np.uint64(self.counter_bits)
        release = rest & np.uint64((1 << self.n_releases_bits) - 1)
        if np.any(release != np.uint64(self.release_id)):
            raise ValueError(f"id(s) carry a release number other than this packer's ({self.release_id})")
        rest = rest >> np.uint64(self.n_releases_bits)
        patch = rest & np.uint64((1 << self.n_patches_bits) - 1)
        tract = rest >> np.uint64(self.n_patches_bits)
        if scalar:
            return UnpackedId(int(tract), int(patch), int(counter))
        return UnpackedId(tract.astype(np.int64), patch.astype(np.int64), counter.astype(np.int64))

    def to_dict(self) -> dict[str, int]:
        """The layout as plain data (for table metadata and provenance)."""
        return {
            "n_tracts_bits": self.n_tracts_bits,
            "n_patches_bits": self.n_patches_bits,
            "n_releases_bits": self.n_releases_bits,
            "release_id": self.release_id,
            "total_bits": self.total_bits,
            "counter_bits": self.counter_bits,
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "counter_bits")
        return f"IdPacker({fields})"
