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

"""Rendering artifacts: stamps, masks, spans, and painting them into an image."""

from __future__ import annotations

__all__ = ["artifact_spans", "paint_artifacts", "render_artifact", "render_artifact_stamp"]

import math
from collections.abc import Iterator, Sequence

import numpy as np

from ..footprints import SPAN_DTYPE, mask_to_spans
from ._model import (
    _LINE_KINDS,
    _RAY_END_LEVEL,
    _ROW_BLOCK,
    Artifact,
    ArtifactStamp,
    _line_ends,
    _line_reach,
    _line_sigma,
    _per_band,
)


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
