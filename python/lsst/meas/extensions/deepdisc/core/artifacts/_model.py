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

"""The artifact classes and kinds, and `Artifact`, one artifact's geometry and brightness."""

from __future__ import annotations

__all__ = [
    "ARTIFACT_CLASSES",
    "ARTIFACT_CLASS_PREFIX",
    "ARTIFACT_KINDS",
    "Artifact",
    "ArtifactStamp",
    "artifact_class_names",
]

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

ARTIFACT_CLASSES = ("ghost_bright", "ghost_faint", "rays")
"""Artifact classes (DeepGhostBusters' Bright, Faint and Rays; see the module docstring)."""

ARTIFACT_CLASS_PREFIX = "artifact_"
"""Prefix of artifact classes in catalogs and models: ``"artifact_" + name``."""

ARTIFACT_KINDS = ("ghost_disc", "ghost_annulus", "scattered_patch", "ray", "streak")
"""Shapes an `Artifact` can have."""

_LINE_KINDS = ("ray", "streak")
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_RAY_END_LEVEL = 0.3
_LOGISTIC_SUPPORT = 6.0  # edge scales beyond the edge: the logistic is below 0.25%
_GAUSS_SUPPORT = 3.5  # sigmas: exp(-3.5**2 / 2) = 0.2%
_LINE_SUPPORT = 4.0  # sigmas of the cross-section (and of the end caps)
_ROW_BLOCK = 64


def artifact_class_names() -> tuple[str, ...]:
    """Catalog/model names of the artifact classes, ``"artifact_" + name``, in `ARTIFACT_CLASSES` order."""
    return tuple(ARTIFACT_CLASS_PREFIX + name for name in ARTIFACT_CLASSES)


@dataclass(frozen=True)
class Artifact:
    """One image artifact (see the module docstring for the kinds, profiles and masks).

    Parameters
    ----------
    kind : `str`
        One of `ARTIFACT_KINDS`.
    artifact_class : `str`
        One of `ARTIFACT_CLASSES`.
    x, y : `float`
        Centre (start of a ``ray``), pixel coordinates of the image it is drawn on (parent coordinates when
        rendered with an ``xy0``).
    surface_brightness : `tuple` [`float`, ...]
        Peak brightness per band in units of the per-pixel noise sigma; one value applies to every band.
    radius : `float`
        Semi-major axis of a disc or annulus (outer edge), Gaussian sigma along the major axis of a
        scattered patch (pixels).
    inner_radius : `float`
        Inner edge of an annulus (pixels, semi-major axis).
    width : `float`
        FWHM of the cross-section of a ray or streak (pixels).
    length : `float`
        Length of a ray or streak (pixels).
    angle : `float`
        Direction of a ray or streak, or of the major axis of a disc, annulus or patch (radians, from +x
        towards +y).
    axis_ratio : `float`
        Minor over major axis of a disc, annulus or patch, in ``(0, 1]``.
    edge : `float`
        Logistic scale (pixels) of the edges of a disc or annulus.
    colour : `tuple` [`float`, ...], optional
        Per-band weights multiplying ``surface_brightness`` (one value or one per band).
    source_index : `int`
        Index of the source (bright star) that caused the artifact in the ``sources`` given to
        `draw_artifacts`; -1 for an artifact tied to no source.
    """

    kind: str
    artifact_class: str
    x: float
    y: float
    surface_brightness: tuple[float, ...]
    radius: float = 0.0
    inner_radius: float = 0.0
    width: float = 0.0
    length: float = 0.0
    angle: float = 0.0
    axis_ratio: float = 1.0
    edge: float = 1.0
    colour: tuple[float, ...] | None = None
    source_index: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "surface_brightness", tuple(float(v) for v in self.surface_brightness))
        if self.colour is not None:
            object.__setattr__(self, "colour", tuple(float(v) for v in self.colour))
        if self.kind not in ARTIFACT_KINDS:
            raise ValueError(f"artifact kind must be one of {ARTIFACT_KINDS}, got {self.kind!r}")
        if self.artifact_class not in ARTIFACT_CLASSES:
            raise ValueError(f"artifact class must be one of {ARTIFACT_CLASSES}, got {self.artifact_class!r}")
        values = (self.x, self.y, self.radius, self.inner_radius, self.width, self.length, self.angle)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"artifact geometry must be finite: {self}")
        if not self.surface_brightness or not all(math.isfinite(v) for v in self.surface_brightness):
            raise ValueError("surface_brightness must hold at least one finite value")
        if self.kind in _LINE_KINDS:
            if self.width <= 0 or self.length <= 0:
                raise ValueError(
                    f"a {self.kind} needs a positive width and length, got {self.width}, {self.length}"
                )
        else:
            if self.radius <= 0:
                raise ValueError(f"a {self.kind} needs a positive radius, got {self.radius}")
            if not 0.0 < self.axis_ratio <= 1.0:
                raise ValueError(f"axis_ratio must be in (0, 1], got {self.axis_ratio}")
            if self.kind != "scattered_patch" and self.edge <= 0:
                raise ValueError(f"edge must be positive, got {self.edge}")
        if self.kind == "ghost_annulus" and not 0.0 <= self.inner_radius < self.radius:
            raise ValueError(f"inner_radius must be in [0, radius), got {self.inner_radius}")

    @property
    def class_name(self) -> str:
        """Catalog/model class name, ``"artifact_" + artifact_class``."""
        return ARTIFACT_CLASS_PREFIX + self.artifact_class

    def amplitudes(self, n_bands: int) -> np.ndarray:
        """Peak brightness per band (noise sigma per pixel): ``surface_brightness`` times ``colour``."""
        amplitude = _per_band(self.surface_brightness, n_bands, "surface_brightness")
        if self.colour is not None:
            amplitude = amplitude * _per_band(self.colour, n_bands, "colour")
        return amplitude

    @property
    def peak_sb_sigma(self) -> float:
        """Largest per-band peak brightness (noise sigma per pixel)."""
        n_bands = max(len(self.surface_brightness), len(self.colour or ()))
        return float(np.max(self.amplitudes(n_bands)))

    def shifted(self, dx: float, dy: float) -> Artifact:
        """The same artifact moved by ``(dx, dy)`` pixels (e.g. from tile to parent coordinates)."""
        return dataclasses.replace(self, x=self.x + dx, y=self.y + dy)

    def support_bbox(self) -> tuple[int, int, int, int]:
        """``(x_begin, y_begin, x_end, y_end)`` (end exclusive) of the pixels the profile can reach."""
        if self.kind in _LINE_KINDS:
            (ax, ay), (bx, by) = _line_ends(self)
            reach = _line_reach(self)
            x_lo, x_hi = min(ax, bx) - reach, max(ax, bx) + reach
            y_lo, y_hi = min(ay, by) - reach, max(ay, by) + reach
        else:
            support = _compact_support(self)
            cos, sin = math.cos(self.angle), math.sin(self.angle)
            q = self.axis_ratio
            half_x = support * math.hypot(cos, q * sin)
            half_y = support * math.hypot(sin, q * cos)
            x_lo, x_hi = self.x - half_x, self.x + half_x
            y_lo, y_hi = self.y - half_y, self.y + half_y
        return (
            int(math.floor(x_lo)),
            int(math.floor(y_lo)),
            int(math.ceil(x_hi)) + 1,
            int(math.ceil(y_hi)) + 1,
        )


class ArtifactStamp(NamedTuple):
    """An artifact rendered on the part of an image its support covers.

    ``stamp[:, i, j]`` and ``mask[i, j]`` belong to the pixel at parent coordinates ``(x0 + j, y0 + i)``.
    """

    x0: int
    y0: int
    stamp: np.ndarray  # (n_bands, h, w) float32, noise sigma per pixel
    mask: np.ndarray  # (h, w) bool


def _per_band(values: Sequence[float], n_bands: int, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 1:
        return np.full(n_bands, array[0])
    if array.size != n_bands:
        raise ValueError(f"{name} has {array.size} values for {n_bands} bands")
    return array


def _compact_support(artifact: Artifact) -> float:
    if artifact.kind == "scattered_patch":
        return _GAUSS_SUPPORT * artifact.radius
    return artifact.radius + _LOGISTIC_SUPPORT * artifact.edge


def _line_sigma(artifact: Artifact) -> float:
    return artifact.width / _FWHM_PER_SIGMA


def _line_reach(artifact: Artifact) -> float:
    return _LINE_SUPPORT * _line_sigma(artifact) + 1.0


def _line_ends(artifact: Artifact) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and end points of the line's core (without the end caps)."""
    dx, dy = math.cos(artifact.angle), math.sin(artifact.angle)
    if artifact.kind == "ray":
        start = (artifact.x, artifact.y)
    else:
        start = (artifact.x - 0.5 * artifact.length * dx, artifact.y - 0.5 * artifact.length * dy)
    return start, (start[0] + artifact.length * dx, start[1] + artifact.length * dy)
