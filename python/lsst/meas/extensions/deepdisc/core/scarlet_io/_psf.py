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

"""PSF arrays of an archive: one kernel per band, checked and padded to a common, centred shape."""

from __future__ import annotations

__all__: list[str] = []

from collections.abc import Mapping, Sequence

import numpy as np


def _centered_pad(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad an odd-sized kernel symmetrically to a larger odd shape."""
    out = np.zeros(shape, dtype=np.float64)
    dy = (shape[0] - kernel.shape[0]) // 2
    dx = (shape[1] - kernel.shape[1]) // 2
    out[dy : dy + kernel.shape[0], dx : dx + kernel.shape[1]] = kernel
    return out


def _check_kernel(kernel: np.ndarray, what: str) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"{what} must be a 2-d image with odd sides, got shape {kernel.shape}")
    if not np.all(np.isfinite(kernel)) or kernel.sum() <= 0:
        raise ValueError(f"{what} must be finite with a positive sum")
    return kernel


def _stack_psfs(psf: np.ndarray | Mapping[str, np.ndarray], bands: Sequence[str]) -> np.ndarray:
    """``[C, h, w]`` float32 PSF cube in band order; per-band images of different sizes are zero-padded."""
    if isinstance(psf, Mapping):
        missing = [b for b in bands if b not in psf]
        if missing:
            raise ValueError(f"no PSF for band(s) {missing}; PSFs given for {sorted(psf)}")
        images = [_check_kernel(psf[b], f"PSF of band {b!r}") for b in bands]
    else:
        cube = np.asarray(psf)
        if cube.ndim == 2:
            cube = cube[None]
        if cube.ndim != 3 or cube.shape[0] != len(bands):
            raise ValueError(
                f"PSF cube of shape {cube.shape} does not match {len(bands)} bands {list(bands)}"
            )
        images = [_check_kernel(plane, f"PSF of band {b!r}") for plane, b in zip(cube, bands)]
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    return np.stack([_centered_pad(image, (height, width)) for image in images]).astype(np.float32)
