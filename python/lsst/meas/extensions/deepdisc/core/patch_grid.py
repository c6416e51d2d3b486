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
"""A one-tract skymap cut from an image's own pixel grid: the tract is the image, patches tile it.

A foreign coadd (another survey's image) has no Rubin skymap.  `PatchGrid.for_image` makes one from the
image itself: the tract's pixel grid is the image's (its WCS, parent coordinates from ``xy0``), its bounding
box the image's.  An image no larger than ``patch_size`` is one patch; a larger one is cut into a grid of
patches whose *inner* boxes (at most ``patch_size - 2 * border`` on a side, of equal sizes but for a few
pixels at the far edges) tile the image without overlap and whose *outer* boxes add ``border`` pixels on
every side (clipped to the image), like a Rubin skymap's patches.  Patch ids run ``patch_y * nx + patch_x``.
"""

from __future__ import annotations

__all__ = ["DEFAULT_PATCH_BORDER", "DEFAULT_PATCH_SIZE", "PatchGrid"]

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

from astropy.wcs import WCS

DEFAULT_PATCH_SIZE = 4000
"""Largest side (pixels, with the overlap border) of a patch; a larger image becomes a grid of patches."""

DEFAULT_PATCH_BORDER = 100
"""Overlap border of the patches of a grid (pixels on each side), as in Rubin's skymaps."""

Box = tuple[int, int, int, int]
"""``(x_begin, y_begin, x_end, y_end)`` in parent pixel coordinates, end exclusive."""


@dataclass(frozen=True)
class PatchGrid:
    """Patches of a one-tract skymap covering an image's bounding box.

    Parameters
    ----------
    x0, y0 : `int`
        Parent coordinates of the tract's (image's) first pixel.
    width, height : `int`
        Tract (image) size.
    inner_width, inner_height : `int`
        Size of a patch's inner box (the last column/row of patches may be narrower).
    border : `int`
        Overlap border of the outer boxes.
    """

    x0: int
    y0: int
    width: int
    height: int
    inner_width: int
    inner_height: int
    border: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"the image must have pixels, got {self.width}x{self.height}")
        if self.inner_width < 1 or self.inner_height < 1 or self.border < 0:
            raise ValueError(
                f"need inner sizes >= 1 and border >= 0, got {self.inner_width}x{self.inner_height}, "
                f"{self.border}"
            )

    @classmethod
    def for_image(
        cls,
        shape: tuple[int, int],
        xy0: tuple[int, int] = (0, 0),
        patch_size: int = DEFAULT_PATCH_SIZE,
        border: int = DEFAULT_PATCH_BORDER,
    ) -> PatchGrid:
        """The grid for an image: one patch if it fits ``patch_size``, else patches of that size.

        Parameters
        ----------
        shape : `tuple` [`int`, `int`]
            ``(height, width)`` of the image.
        xy0 : `tuple` [`int`, `int`]
            Parent coordinates of its first pixel.
        patch_size : `int`
            Largest side of a patch, border included.
        border : `int`
            Overlap border of a grid's patches.

        Raises
        ------
        ValueError
            If ``patch_size <= 2 * border`` for an image that needs a grid.
        """
        height, width = (int(v) for v in shape)
        if max(height, width) <= patch_size:
            return cls(int(xy0[0]), int(xy0[1]), width, height, width, height, 0)
        if patch_size <= 2 * border:
            raise ValueError(f"patch size {patch_size} must exceed twice the border {border}")
        largest = patch_size - 2 * border
        # As few patches as fit, then of (nearly) equal sizes, so that no sliver is left at the far edge.
        inner_width = -(-width // -(-width // largest))
        inner_height = -(-height // -(-height // largest))
        return cls(int(xy0[0]), int(xy0[1]), width, height, inner_width, inner_height, border)

    @property
    def nx(self) -> int:
        """Patches along x."""
        return -(-self.width // self.inner_width)

    @property
    def ny(self) -> int:
        """Patches along y."""
        return -(-self.height // self.inner_height)

    @property
    def n_patches(self) -> int:
        """Number of patches."""
        return self.nx * self.ny

    @property
    def tract_box(self) -> Box:
        """The tract's (image's) box."""
        return self.x0, self.y0, self.x0 + self.width, self.y0 + self.height

    def patch_index(self, patch_x: int, patch_y: int) -> int:
        """Sequential patch id; `ValueError` outside the grid."""
        if not (0 <= patch_x < self.nx and 0 <= patch_y < self.ny):
            raise ValueError(f"patch ({patch_x}, {patch_y}) is outside the {self.nx}x{self.ny} grid")
        return patch_y * self.nx + patch_x

    def patch_xy(self, patch: int) -> tuple[int, int]:
        """``(patch_x, patch_y)`` of a patch id."""
        if not 0 <= patch < self.n_patches:
            raise ValueError(f"patch {patch} is outside [0, {self.n_patches})")
        return patch % self.nx, patch // self.nx

    def patches(self) -> Iterator[tuple[int, int]]:
        """Every ``(patch_x, patch_y)``, in id order."""
        for patch in range(self.n_patches):
            yield self.patch_xy(patch)

    def inner_box(self, patch_x: int, patch_y: int) -> Box:
        """Inner box of a patch: the part of the tract it is responsible for."""
        self.patch_index(patch_x, patch_y)
        x_begin = self.x0 + patch_x * self.inner_width
        y_begin = self.y0 + patch_y * self.inner_height
        return (
            x_begin,
            y_begin,
            min(x_begin + self.inner_width, self.x0 + self.width),
            min(y_begin + self.inner_height, self.y0 + self.height),
        )

    def outer_box(self, patch_x: int, patch_y: int) -> Box:
        """Outer box of a patch: the inner box grown by the border, clipped to the tract."""
        x_begin, y_begin, x_end, y_end = self.inner_box(patch_x, patch_y)
        return (
            max(x_begin - self.border, self.x0),
            max(y_begin - self.border, self.y0),
            min(x_end + self.border, self.x0 + self.width),
            min(y_end + self.border, self.y0 + self.height),
        )

    def geometry_hash(self, wcs: WCS) -> bytes:
        """20-byte SHA-1 of everything that fixes the skymap: the WCS (parent coordinates) and the grid."""
        header = wcs.to_header(relax=True)
        cards = sorted(f"{key}={header[key]!r}" for key in header if key not in ("DATE-OBS", "MJD-OBS"))
        geometry = {
            "wcs": cards,
            "box": list(self.tract_box),
            "inner": [self.inner_width, self.inner_height],
            "border": self.border,
        }
        return hashlib.sha1(json.dumps(geometry, sort_keys=True).encode()).digest()
