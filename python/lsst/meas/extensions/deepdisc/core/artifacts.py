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
"""Image artifacts (ghosts, scattered light, rays and streaks): a pure-numpy generator and renderer.

The same code puts artifacts into the simulated coadds (``sim.artifacts``) and can inject them into training
tiles on the fly, so it only needs ``numpy`` and is fast on small crops (a few ms per artifact on a 320 px
tile; only the artifact's support is evaluated, long streaks row block by row block).

Classes
-------
`ARTIFACT_CLASSES` are the three classes of DeepGhostBusters (Tanoglidis et al. 2022, DES images), so that
their human annotations can be used as labels without relabelling:

``ghost_bright``
    Bright reflection ghosts: out-of-focus images of the pupil (discs, "donuts") at roughly 0.5-3 sigma of
    the per-pixel noise.
``ghost_faint``
    Faint ghosts (0.1-0.5 sigma per pixel) *and* diffuse scattered-light patches: DeepGhostBusters' "Faint"
    class holds both large faint reflections and diffuse scattered light, which are indistinguishable in
    shape and brightness at the patch scale, so the simulated ``scattered_patch`` artifacts belong to it.
``rays``
    Linear features: scattered-light rays from bright stars and straight streaks crossing the image
    (DeepGhostBusters' "Rays" are elongated scattered-light features; streaks share their morphology and
    what they do to a detector - long, thin, spurious detections - so they share the class).

Catalog and model class names prefix them with ``"artifact_"`` (`artifact_class_names`).

Geometry and units
------------------
An `Artifact` is defined in the pixel coordinates of the image it is drawn on (pixel centres at integer
coordinates; with ``xy0`` the image's pixel ``[0, 0]`` sits at parent coordinates ``xy0``).  Its brightness
is given per band in units of the image's per-pixel noise sigma (S/N per pixel), so it can be added to a
flux image (multiply by each band's noise sigma) or to an image already scaled to unit noise.  Profiles have
unit peak; ``surface_brightness`` (times the optional ``colour`` weights) is the peak per band.

Kinds and profiles:

``ghost_disc``
    Flat-topped elliptical disc of semi-major axis ``radius``, edges softened by a logistic of scale
    ``edge`` pixels.
``ghost_annulus``
    Flat-topped elliptical ring between ``inner_radius`` and ``radius`` (a "donut"), soft edges.
``scattered_patch``
    Elliptical Gaussian of standard deviation ``radius`` along the major axis.
``ray``
    A straight ray starting at ``(x, y)`` along ``angle``, of length ``length`` and Gaussian cross-section of
    FWHM ``width``; its brightness falls linearly to 30% at the far end.
``streak``
    A straight, uniform streak centred on ``(x, y)``, of length ``length`` and Gaussian cross-section of FWHM
    ``width``.

Masks
-----
The label mask of an artifact is its geometric support for discs and annuli (elliptical radius within
``[inner_radius, radius]``), and for the other kinds the pixels where the unit-peak profile reaches
``mask_fraction`` (default 0.25: within ~1.67 sigma of a scattered patch, ~0.7 FWHM either side of a ray's
axis).  Masks do not depend on the brightness, so a faint ghost is labelled as fully as a bright one.  Use
`artifact_spans` or the spans returned by `paint_artifacts` for the project's footprint spans
(`~.footprints`).

Limits: artifacts are not convolved with a PSF (their edges are softened instead), have no internal
structure (the spider shadows and asymmetric illumination of real ghosts) and no noise of their own; the
simulator adds their photon noise through the variance.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_CLASSES",
    "ARTIFACT_CLASS_PREFIX",
    "ARTIFACT_KINDS",
    "Artifact",
    "ArtifactConfig",
    "ArtifactStamp",
    "artifact_class_names",
    "artifact_spans",
    "draw_artifacts",
    "paint_artifacts",
    "render_artifact",
    "render_artifact_stamp",
]

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .footprints import SPAN_DTYPE, mask_to_spans

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


def _logistic(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _compact_block(
    artifact: Artifact, x0: int, y0: int, x1: int, y1: int, mask_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-peak profile and mask of a disc, annulus or patch on ``[x0, x1) x [y0, y1)``."""
    dx = np.arange(x0, x1, dtype=np.float32) - np.float32(artifact.x)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(artifact.y)
    cos, sin = np.float32(math.cos(artifact.angle)), np.float32(math.sin(artifact.angle))
    u = dx * cos + dy * sin
    v = (dy * cos - dx * sin) / np.float32(artifact.axis_ratio)
    r = np.sqrt(u * u + v * v)
    if artifact.kind == "scattered_patch":
        profile = np.exp(np.float32(-0.5 / artifact.radius**2) * (r * r))
        return profile, profile >= mask_fraction
    scale = np.float32(1.0 / artifact.edge)
    profile = _logistic((np.float32(artifact.radius) - r) * scale)
    inside = r <= artifact.radius
    if artifact.kind == "ghost_annulus":
        profile *= _logistic((r - np.float32(artifact.inner_radius)) * scale)
        inside &= r >= artifact.inner_radius
        # Normalise the plateau (the middle of the ring) to 1: narrow rings never reach it otherwise.
        half = 0.5 * (artifact.radius - artifact.inner_radius) / artifact.edge
        profile /= np.float32(_logistic(np.float64(half)) ** 2)
        np.minimum(profile, np.float32(1.0), out=profile)
    return profile, inside


def _line_block(
    artifact: Artifact, x0: int, y0: int, x1: int, y1: int, mask_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-peak profile and mask of a ray or streak on ``[x0, x1) x [y0, y1)``."""
    (ax, ay), _ = _line_ends(artifact)
    cos, sin = np.float32(math.cos(artifact.angle)), np.float32(math.sin(artifact.angle))
    dx = np.arange(x0, x1, dtype=np.float32) - np.float32(ax)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(ay)
    t = dx * cos + dy * sin  # along the line, from its start
    d = dy * cos - dx * sin  # across
    sigma = _line_sigma(artifact)
    inv = np.float32(-0.5 / sigma**2)
    length = np.float32(artifact.length)
    if artifact.kind == "ray":
        along = 1.0 - np.float32(1.0 - _RAY_END_LEVEL) * np.clip(t / length, 0.0, 1.0)
    else:
        along = np.ones_like(t)
    before = np.minimum(t, 0.0)
    after = np.maximum(t - length, 0.0)
    along = along * np.exp(inv * (before * before + after * after))
    profile = along * np.exp(inv * (d * d))
    return profile.astype(np.float32, copy=False), profile >= mask_fraction


def _line_row_ranges(artifact: Artifact, y_begin: int, y_end: int) -> tuple[float, float] | None:
    """Conservative x range of the line's support over the rows ``[y_begin, y_end)``, or `None`."""
    (ax, ay), (bx, by) = _line_ends(artifact)
    reach = _line_reach(artifact)
    cos, sin = math.cos(artifact.angle), math.sin(artifact.angle)
    # The core segment extended by the end caps.
    px, py = ax - reach * cos, ay - reach * sin
    qx, qy = bx + reach * cos, by + reach * sin
    lo, hi = y_begin - reach, y_end - 1 + reach
    if abs(qy - py) < 1e-9:
        if not lo <= py <= hi:
            return None
        s0, s1 = 0.0, 1.0
    else:
        sa, sb = (lo - py) / (qy - py), (hi - py) / (qy - py)
        s0, s1 = max(min(sa, sb), 0.0), min(max(sa, sb), 1.0)
        if s0 > s1:
            return None
    xa, xb = px + s0 * (qx - px), px + s1 * (qx - px)
    return min(xa, xb) - reach, max(xa, xb) + reach


def _blocks(
    artifact: Artifact, shape: tuple[int, int], xy0: tuple[int, int], mask_fraction: float
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(x0, y0, profile, mask)`` pieces (parent coordinates) covering the support inside the image."""
    height, width = shape
    ix0, iy0 = int(xy0[0]), int(xy0[1])
    bx0, by0, bx1, by1 = artifact.support_bbox()
    x0, y0 = max(bx0, ix0), max(by0, iy0)
    x1, y1 = min(bx1, ix0 + width), min(by1, iy0 + height)
    if x1 <= x0 or y1 <= y0:
        return
    if artifact.kind not in _LINE_KINDS:
        yield (x0, y0, *_compact_block(artifact, x0, y0, x1, y1, mask_fraction))
        return
    for row in range(y0, y1, _ROW_BLOCK):
        row_end = min(row + _ROW_BLOCK, y1)
        extent = _line_row_ranges(artifact, row, row_end)
        if extent is None:
            continue
        cx0 = max(x0, int(math.floor(extent[0])))
        cx1 = min(x1, int(math.ceil(extent[1])) + 1)
        if cx1 <= cx0:
            continue
        yield (cx0, row, *_line_block(artifact, cx0, row, cx1, row_end, mask_fraction))


def _check_mask_fraction(mask_fraction: float) -> None:
    if not 0.0 < mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")


def render_artifact_stamp(
    artifact: Artifact,
    shape: tuple[int, int],
    n_bands: int,
    *,
    xy0: tuple[int, int] = (0, 0),
    mask_fraction: float = 0.25,
) -> ArtifactStamp:
    """Render an artifact on the bounding box of its support, clipped to the image.

    Parameters
    ----------
    artifact : `Artifact`
        The artifact, in the image's (parent) coordinates.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image.
    n_bands : `int`
        Number of bands.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of the image's pixel ``[0, 0]``.
    mask_fraction : `float`
        Fraction of the unit-peak profile that defines the mask of patches, rays and streaks.

    Returns
    -------
    stamp : `ArtifactStamp`
        ``(x0, y0, stamp, mask)``: parent coordinates of the box corner, the ``(n_bands, h, w)`` float32
        image in noise-sigma units and the ``(h, w)`` boolean mask; ``h = w = 0`` (at ``xy0``) when the
        artifact does not reach the image.
    """
    _check_mask_fraction(mask_fraction)
    blocks = list(_blocks(artifact, shape, xy0, mask_fraction))
    if not blocks:
        return ArtifactStamp(
            int(xy0[0]), int(xy0[1]), np.zeros((n_bands, 0, 0), np.float32), np.zeros((0, 0), bool)
        )
    x0 = min(b[0] for b in blocks)
    y0 = min(b[1] for b in blocks)
    x1 = max(b[0] + b[2].shape[1] for b in blocks)
    y1 = max(b[1] + b[2].shape[0] for b in blocks)
    amplitude = artifact.amplitudes(n_bands).astype(np.float32)
    stamp = np.zeros((n_bands, y1 - y0, x1 - x0), dtype=np.float32)
    mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for bx, by, profile, block_mask in blocks:
        h, w = profile.shape
        stamp[:, by - y0 : by - y0 + h, bx - x0 : bx - x0 + w] = amplitude[:, None, None] * profile
        mask[by - y0 : by - y0 + h, bx - x0 : bx - x0 + w] = block_mask
    return ArtifactStamp(x0, y0, stamp, mask)


def render_artifact(
    artifact: Artifact,
    shape: tuple[int, int],
    n_bands: int,
    *,
    xy0: tuple[int, int] = (0, 0),
    mask_fraction: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Render an artifact on a whole image.

    Parameters are those of `render_artifact_stamp`.

    Returns
    -------
    image : `numpy.ndarray`
        ``(n_bands, height, width)`` float32, noise sigma per pixel.
    mask : `numpy.ndarray`
        ``(height, width)`` boolean label mask.
    """
    _check_mask_fraction(mask_fraction)
    height, width = shape
    image = np.zeros((n_bands, height, width), dtype=np.float32)
    mask = np.zeros((height, width), dtype=bool)
    amplitude = artifact.amplitudes(n_bands).astype(np.float32)
    for bx, by, profile, block_mask in _blocks(artifact, shape, xy0, mask_fraction):
        h, w = profile.shape
        sy, sx = by - int(xy0[1]), bx - int(xy0[0])
        image[:, sy : sy + h, sx : sx + w] = amplitude[:, None, None] * profile
        mask[sy : sy + h, sx : sx + w] = block_mask
    return image, mask


def artifact_spans(
    artifact: Artifact,
    shape: tuple[int, int],
    *,
    xy0: tuple[int, int] = (0, 0),
    mask_fraction: float = 0.25,
) -> np.ndarray:
    """Label footprint of an artifact inside an image, as spans (`~.footprints`), parent coordinates."""
    _check_mask_fraction(mask_fraction)
    pieces = [
        mask_to_spans(mask, (bx, by)) for bx, by, _, mask in _blocks(artifact, shape, xy0, mask_fraction)
    ]
    return _join_row_blocks(pieces)


def _join_row_blocks(pieces: list[np.ndarray]) -> np.ndarray:
    """Concatenate spans of disjoint row blocks (each sorted, blocks in increasing rows)."""
    if not pieces:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    spans = np.concatenate(pieces).astype(SPAN_DTYPE, copy=False)
    return spans[np.lexsort((spans[:, 1], spans[:, 0]))] if len(pieces) > 1 else spans


def paint_artifacts(
    image: np.ndarray,
    artifacts: Sequence[Artifact],
    noise_sigma: float | Sequence[float] | np.ndarray = 1.0,
    *,
    xy0: tuple[int, int] = (0, 0),
    mask_fraction: float = 0.25,
) -> list[np.ndarray]:
    """Add artifacts to an image in place and return their label footprints.

    Parameters
    ----------
    image : `numpy.ndarray`
        ``(n_bands, height, width)`` floating-point image (flux, or already scaled to unit noise).
    artifacts : sequence of `Artifact`
        Artifacts in the image's parent coordinates.
    noise_sigma : `float` or sequence of `float`
        Per-pixel noise sigma of each band (or one for all): the artifact's brightness in sigma units is
        multiplied by it.  1 for an image in S/N units.
    xy0 : `tuple` [`int`, `int`]
        Parent coordinates of ``image[:, 0, 0]``.
    mask_fraction : `float`
        See `render_artifact_stamp`.

    Returns
    -------
    spans : `list` [`numpy.ndarray`]
        Per artifact, its ``(N, 3)`` spans inside the image (parent coordinates; empty when it misses the
        image).
    """
    _check_mask_fraction(mask_fraction)
    if image.ndim != 3:
        raise ValueError(f"image must be (n_bands, height, width), got shape {image.shape}")
    n_bands = image.shape[0]
    sigma = _per_band(np.atleast_1d(np.asarray(noise_sigma, dtype=np.float64)), n_bands, "noise_sigma")
    shape = image.shape[1:]
    out = []
    for artifact in artifacts:
        scale = (artifact.amplitudes(n_bands) * sigma).astype(image.dtype)
        pieces = []
        for bx, by, profile, mask in _blocks(artifact, shape, xy0, mask_fraction):
            h, w = profile.shape
            sy, sx = by - int(xy0[1]), bx - int(xy0[0])
            image[:, sy : sy + h, sx : sx + w] += scale[:, None, None] * profile
            pieces.append(mask_to_spans(mask, (bx, by)))
        out.append(_join_row_blocks(pieces))
    return out


# ---------------------------------------------------------------------------------------------------------
# Random artifacts


@dataclass(frozen=True)
class ArtifactConfig:
    """Distributions of `draw_artifacts` (ranges are ``(low, high)``; brightness and sizes log-uniform).

    Parameters
    ----------
    psf_fwhm : `float`
        PSF FWHM (pixels): the scale of the smallest ghosts, of edges and of ray widths.
    reference_mag : `float`
        Magnitude at which a source makes ``rate`` artifacts on average.
    mag_slope : `float`
        The rate scales as ``10**(-mag_slope (mag - reference_mag))``, clipped to ``[0.2, 5]`` times.
    ray_fraction : `float`
        Fraction of the source artifacts that are rays (the rest are ghosts).
    bright_fraction : `float`
        Fraction of the ghosts that are bright.
    annulus_fraction : `float`
        Fraction of the ghosts that are annuli (the rest are discs).
    streak_fraction : `float`
        Fraction of the artifacts tied to no source that are streaks (the rest are scattered patches).
    ghost_radius : `tuple` [`float`, `float`], optional
        Ghost semi-major axis (pixels); default ``(3 psf_fwhm, 200)``.
    ghost_offset : `tuple` [`float`, `float`]
        Distance of a ghost from its star (pixels), along the radial direction from the field centre.
    ghost_axis_ratio : `tuple` [`float`, `float`]
        Ghost axis ratio (uniform).
    ghost_inner_fraction : `tuple` [`float`, `float`]
        Inner over outer radius of an annulus (uniform).
    ghost_edge : `tuple` [`float`, `float`]
        Edge logistic scale in units of ``psf_fwhm`` (uniform).
    bright_sb, faint_sb : `tuple` [`float`, `float`]
        Peak brightness (noise sigma per pixel, brightest band) of bright and faint ghosts.
    ray_sb, streak_sb, patch_sb : `tuple` [`float`, `float`]
        Peak brightness of rays, streaks and scattered patches.
    ray_length : `tuple` [`float`, `float`]
        Ray length (pixels).
    ray_width, streak_width : `tuple` [`float`, `float`]
        Cross-section FWHM in units of ``psf_fwhm`` (uniform).
    streak_length : `tuple` [`float`, `float`]
        Streak length in units of the image diagonal (uniform), so streaks cross the image.
    patch_radius : `tuple` [`float`, `float`]
        Scattered-patch Gaussian sigma along the major axis (pixels).
    patch_axis_ratio : `tuple` [`float`, `float`]
        Scattered-patch axis ratio (uniform).
    colour_scatter : `float`
        Log-normal scatter of the per-band brightness (the brightest band keeps the drawn peak).
    """

    psf_fwhm: float = 3.5
    reference_mag: float = 15.0
    mag_slope: float = 0.2
    ray_fraction: float = 0.3
    bright_fraction: float = 0.4
    annulus_fraction: float = 0.5
    streak_fraction: float = 0.3
    ghost_radius: tuple[float, float] | None = None
    ghost_offset: tuple[float, float] = (20.0, 300.0)
    ghost_axis_ratio: tuple[float, float] = (0.8, 1.0)
    ghost_inner_fraction: tuple[float, float] = (0.3, 0.7)
    ghost_edge: tuple[float, float] = (0.2, 0.6)
    bright_sb: tuple[float, float] = (0.5, 3.0)
    faint_sb: tuple[float, float] = (0.1, 0.5)
    ray_sb: tuple[float, float] = (0.5, 4.0)
    streak_sb: tuple[float, float] = (0.3, 2.0)
    patch_sb: tuple[float, float] = (0.1, 0.5)
    ray_length: tuple[float, float] = (40.0, 400.0)
    ray_width: tuple[float, float] = (1.0, 2.5)
    streak_width: tuple[float, float] = (1.0, 2.0)
    streak_length: tuple[float, float] = (1.0, 2.0)
    patch_radius: tuple[float, float] = (30.0, 150.0)
    patch_axis_ratio: tuple[float, float] = (0.4, 1.0)
    colour_scatter: float = 0.25

    def __post_init__(self) -> None:
        if self.psf_fwhm <= 0:
            raise ValueError(f"psf_fwhm must be positive, got {self.psf_fwhm}")
        for name in ("ray_fraction", "bright_fraction", "annulus_fraction", "streak_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not 0 < value[0] <= value[1]:
                    raise ValueError(
                        f"{field.name} must be a (low, high) range of positive values, got {value}"
                    )

    @property
    def ghost_radius_range(self) -> tuple[float, float]:
        """Ghost radius range, with the default resolved."""
        if self.ghost_radius is not None:
            return self.ghost_radius
        return (min(3.0 * self.psf_fwhm, 200.0), 200.0)

    def binned(self, factor: int) -> ArtifactConfig:
        """The same artifacts seen on the image binned ``factor x factor`` (`.binning.bin_image`).

        Lengths (PSF, radii, offsets, ray lengths, patch sizes) shrink ``factor``-fold; surface brightnesses,
        in units of the pixel noise, grow ``factor``-fold, as the noise of a block mean falls that much.
        """
        if int(factor) != factor or factor < 1:
            raise ValueError(f"the binning factor must be a positive integer, got {factor}")
        if factor == 1:
            return self

        def shrink(bounds: tuple[float, float]) -> tuple[float, float]:
            return (bounds[0] / factor, bounds[1] / factor)

        def brighten(bounds: tuple[float, float]) -> tuple[float, float]:
            return (bounds[0] * factor, bounds[1] * factor)

        return dataclasses.replace(
            self,
            psf_fwhm=self.psf_fwhm / factor,
            ghost_radius=shrink(self.ghost_radius_range),
            ghost_offset=shrink(self.ghost_offset),
            ray_length=shrink(self.ray_length),
            patch_radius=shrink(self.patch_radius),
            bright_sb=brighten(self.bright_sb),
            faint_sb=brighten(self.faint_sb),
            ray_sb=brighten(self.ray_sb),
            streak_sb=brighten(self.streak_sb),
            patch_sb=brighten(self.patch_sb),
        )


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1]))))


def _brightness(rng: np.random.Generator, bounds: tuple[float, float], n_bands: int, scatter: float):
    """Per-band peak brightness: a log-uniform level for the brightest band, log-normal colours."""
    level = _log_uniform(rng, bounds)
    colour = np.exp(rng.normal(0.0, scatter, n_bands)) if scatter > 0 else np.ones(n_bands)
    return tuple(float(v) for v in level * colour / colour.max())


def _ghost(
    rng: np.random.Generator,
    star: tuple[float, float],
    centre: tuple[float, float],
    n_bands: int,
    config: ArtifactConfig,
    index: int,
) -> Artifact:
    radial = np.array([star[0] - centre[0], star[1] - centre[1]], dtype=float)
    norm = float(np.hypot(*radial))
    if norm > 1e-6:
        direction = radial / norm
    else:  # A star on the optical axis: any direction.
        phi = rng.uniform(0.0, 2.0 * math.pi)
        direction = np.array([math.cos(phi), math.sin(phi)])
    offset = rng.uniform(*config.ghost_offset) * (1.0 if rng.uniform() < 0.5 else -1.0)
    bright = rng.uniform() < config.bright_fraction
    annulus = rng.uniform() < config.annulus_fraction
    radius = _log_uniform(rng, config.ghost_radius_range)
    inner = radius * rng.uniform(*config.ghost_inner_fraction) if annulus else 0.0
    return Artifact(
        kind="ghost_annulus" if annulus else "ghost_disc",
        artifact_class="ghost_bright" if bright else "ghost_faint",
        x=float(star[0] + offset * direction[0]),
        y=float(star[1] + offset * direction[1]),
        surface_brightness=_brightness(
            rng, config.bright_sb if bright else config.faint_sb, n_bands, config.colour_scatter
        ),
        radius=radius,
        inner_radius=inner,
        angle=float(rng.uniform(0.0, math.pi)),
        axis_ratio=float(rng.uniform(*config.ghost_axis_ratio)),
        edge=float(config.psf_fwhm * rng.uniform(*config.ghost_edge)),
        source_index=index,
    )


def _ray(
    rng: np.random.Generator, star: tuple[float, float], n_bands: int, config: ArtifactConfig, index: int
) -> Artifact:
    return Artifact(
        kind="ray",
        artifact_class="rays",
        x=float(star[0]),
        y=float(star[1]),
        surface_brightness=_brightness(rng, config.ray_sb, n_bands, config.colour_scatter),
        width=float(config.psf_fwhm * rng.uniform(*config.ray_width)),
        length=_log_uniform(rng, config.ray_length),
        angle=float(rng.uniform(0.0, 2.0 * math.pi)),
        source_index=index,
    )


def _anywhere(
    rng: np.random.Generator, shape: tuple[int, int], n_bands: int, config: ArtifactConfig
) -> Artifact:
    height, width = shape
    x, y = float(rng.uniform(-0.5, width - 0.5)), float(rng.uniform(-0.5, height - 0.5))
    angle = float(rng.uniform(0.0, math.pi))
    if rng.uniform() < config.streak_fraction:
        return Artifact(
            kind="streak",
            artifact_class="rays",
            x=x,
            y=y,
            surface_brightness=_brightness(rng, config.streak_sb, n_bands, config.colour_scatter),
            width=float(config.psf_fwhm * rng.uniform(*config.streak_width)),
            length=float(math.hypot(height, width) * rng.uniform(*config.streak_length)),
            angle=angle,
        )
    return Artifact(
        kind="scattered_patch",
        artifact_class="ghost_faint",
        x=x,
        y=y,
        surface_brightness=_brightness(rng, config.patch_sb, n_bands, config.colour_scatter),
        radius=_log_uniform(rng, config.patch_radius),
        angle=angle,
        axis_ratio=float(rng.uniform(*config.patch_axis_ratio)),
    )


def draw_artifacts(
    rng: np.random.Generator,
    shape: tuple[int, int],
    n_bands: int,
    *,
    sources: np.ndarray | None = None,
    rate: float = 1.0,
    anywhere_rate: float = 0.0,
    field_centre: tuple[float, float] | None = None,
    config: ArtifactConfig | None = None,
) -> list[Artifact]:
    """Draw random artifacts for an image.

    Every source (a bright star) makes ``Poisson(rate x w)`` artifacts, ``w = 1`` without magnitudes and
    ``10**(-mag_slope (mag - reference_mag))`` (clipped to ``[0.2, 5]``) with them: a ray from the star
    (``ray_fraction``) or a reflection ghost, displaced from the star along the line through the notional
    optical axis ``field_centre`` (towards or away from it), as internal reflections are.  Then
    ``Poisson(anywhere_rate)`` artifacts tied to no source are placed uniformly in the image: straight
    streaks that cross it (``streak_fraction``) or diffuse scattered-light patches.

    Parameters
    ----------
    rng : `numpy.random.Generator`
        Random generator; the same state gives the same artifacts.
    shape : `tuple` [`int`, `int`]
        ``(height, width)`` of the image.
    n_bands : `int`
        Number of bands (brightness per band).
    sources : `numpy.ndarray`, optional
        ``(N, 2)`` source positions ``x, y`` (pixels), or ``(N, 3)`` with a magnitude.
    rate : `float`
        Mean number of artifacts per source (at ``config.reference_mag``).
    anywhere_rate : `float`
        Mean number of artifacts tied to no source, per image.
    field_centre : `tuple` [`float`, `float`], optional
        ``(x, y)`` of the optical axis for the ghost directions; default the image centre.
    config : `ArtifactConfig`, optional
        Size, brightness and mixture distributions.

    Returns
    -------
    artifacts : `list` [`Artifact`]
        Source artifacts in source order (``source_index`` set), then the others.
    """
    config = config or ArtifactConfig()
    if rate < 0 or anywhere_rate < 0:
        raise ValueError(f"rates must be non-negative, got rate={rate}, anywhere_rate={anywhere_rate}")
    height, width = shape
    centre = ((width - 1) / 2.0, (height - 1) / 2.0) if field_centre is None else field_centre
    artifacts: list[Artifact] = []
    if sources is not None and rate > 0:
        sources = np.asarray(sources, dtype=float)
        if sources.ndim != 2 or sources.shape[1] not in (2, 3):
            raise ValueError(f"sources must be (N, 2) or (N, 3), got shape {sources.shape}")
        weights = np.ones(len(sources))
        if sources.shape[1] == 3:
            weights = np.clip(10.0 ** (-config.mag_slope * (sources[:, 2] - config.reference_mag)), 0.2, 5.0)
        counts = rng.poisson(rate * weights)
        for index, count in enumerate(counts):
            star = (float(sources[index, 0]), float(sources[index, 1]))
            for _ in range(int(count)):
                if rng.uniform() < config.ray_fraction:
                    artifacts.append(_ray(rng, star, n_bands, config, index))
                else:
                    artifacts.append(_ghost(rng, star, centre, n_bands, config, index))
    for _ in range(int(rng.poisson(anywhere_rate))):
        artifacts.append(_anywhere(rng, shape, n_bands, config))
    return artifacts
