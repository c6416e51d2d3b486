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

"""`SourceArrays`, a catalog as arrays of positions, spans and boxes, and the tangent plane."""

from __future__ import annotations

__all__ = ["SourceArrays", "cos_separation", "sky_to_tangent_plane"]

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from astropy.table import Table

from ..footprints import SPAN_DTYPE


def _bbox_areas(boxes: np.ndarray) -> np.ndarray:
    width = np.clip(boxes[:, 2] - boxes[:, 0] + 1, 0, None)
    height = np.clip(boxes[:, 3] - boxes[:, 1] + 1, 0, None)
    return width * height


IoUType = Literal["auto", "mask", "bbox", "none"]


BBOX_COLUMNS = ("bbox_x_min", "bbox_y_min", "bbox_x_max", "bbox_y_max")
"""Default names of the inclusive bounding-box columns read by `SourceArrays.from_table`."""


def _as_spans(value: Any) -> np.ndarray:
    """One footprint as ``(N, 3)`` spans, accepting ``(N, 3)`` arrays and flattened vectors."""
    if value is None:
        return np.zeros((0, 3), dtype=SPAN_DTYPE)
    array = np.asarray(value)
    if array.ndim == 1:
        if array.size % 3:
            raise ValueError(f"a flattened footprint must have a multiple of 3 values, got {array.size}")
        return array.astype(SPAN_DTYPE, copy=False).reshape(-1, 3)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"footprint spans must have shape (N, 3) or be flattened, got {array.shape}")
    return array.astype(SPAN_DTYPE, copy=False)


def _bbox_from_spans(spans: Sequence[np.ndarray]) -> np.ndarray:
    """Inclusive bounding boxes of footprints; empty footprints give an empty box (``x_max < x_min``)."""
    counts = np.array([footprint.shape[0] for footprint in spans], dtype=np.int64)
    boxes = np.tile(np.array([0.0, 0.0, -1.0, -1.0]), (counts.size, 1))
    filled = counts > 0
    if filled.any():
        rows = np.concatenate(spans)
        starts = (np.cumsum(counts) - counts)[filled]  # Empty footprints own no rows: starts stay ordered.
        boxes[filled, 0] = np.minimum.reduceat(rows[:, 1], starts)
        boxes[filled, 1] = np.minimum.reduceat(rows[:, 0], starts)
        boxes[filled, 2] = np.maximum.reduceat(rows[:, 2], starts)
        boxes[filled, 3] = np.maximum.reduceat(rows[:, 0], starts)
    return boxes


def cos_separation(ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float) -> np.ndarray:
    """Cosine of the angular separation of sky positions from ``(ra0, dec0)`` (all in degrees).

    Positive for the hemisphere around ``(ra0, dec0)``: the positions `sky_to_tangent_plane` can project.
    """
    ra_rad, dec_rad = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    ra0_rad, dec0_rad = np.radians(ra0), np.radians(dec0)
    return np.sin(dec0_rad) * np.sin(dec_rad) + np.cos(dec0_rad) * np.cos(dec_rad) * np.cos(ra_rad - ra0_rad)


def sky_to_tangent_plane(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float, pixel_scale_arcsec: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic projection of sky positions to pseudo-pixel coordinates around ``(ra0, dec0)``.

    Use it to match catalogs that have only sky coordinates: distances then come out in pixels of the given
    scale (x grows with right ascension).

    Parameters
    ----------
    ra, dec : `numpy.ndarray`
        Positions in degrees.
    ra0, dec0 : `float`
        Tangent point in degrees.
    pixel_scale_arcsec : `float`
        Arcseconds per output unit.

    Returns
    -------
    x, y : `numpy.ndarray`
        Projected positions.
    """
    if pixel_scale_arcsec <= 0:
        raise ValueError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}")
    ra_rad, dec_rad = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    ra0_rad, dec0_rad = np.radians(ra0), np.radians(dec0)
    cos_c = cos_separation(ra, dec, ra0, dec0)
    if np.any(cos_c <= 0):
        raise ValueError("positions more than 90 degrees from the tangent point cannot be projected")
    xi = np.cos(dec_rad) * np.sin(ra_rad - ra0_rad) / cos_c
    eta = (
        np.cos(dec0_rad) * np.sin(dec_rad) - np.sin(dec0_rad) * np.cos(dec_rad) * np.cos(ra_rad - ra0_rad)
    ) / cos_c
    scale = np.degrees(1.0) * 3600.0 / pixel_scale_arcsec
    return xi * scale, eta * scale


@dataclass(eq=False)
class SourceArrays:
    """A catalog as plain arrays: what matching, metrics, blend outcomes and COCO AP consume.

    Parameters
    ----------
    x, y : `numpy.ndarray`
        Centres in parent pixel coordinates.
    bbox : `numpy.ndarray`, optional
        ``(N, 4)`` inclusive boxes ``(x_min, y_min, x_max, y_max)``; derived from ``spans`` when omitted.
    spans : `list` [`numpy.ndarray`], optional
        One footprint per source, ``(M, 3)`` spans or flattened ``int32`` vectors (parent coordinates).
    class_id : `numpy.ndarray`, optional
        Integer class per source (``0`` = star, ``1`` = galaxy by default; negative = unknown).
    score : `numpy.ndarray`, optional
        Detection confidence, used to rank detections for COCO AP.
    mag : `numpy.ndarray`, optional
        Magnitude per source (truth magnitude for truth, measured magnitude for detections).
    """

    x: np.ndarray
    y: np.ndarray
    bbox: np.ndarray | None = None
    spans: list[np.ndarray] | None = None
    class_id: np.ndarray | None = None
    score: np.ndarray | None = None
    mag: np.ndarray | None = None
    _bank: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        self.y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        n = self.x.size
        if self.y.size != n:
            raise ValueError(f"x has {n} values but y has {self.y.size}")
        if self.spans is not None:
            self.spans = [_as_spans(footprint) for footprint in self.spans]
            if len(self.spans) != n:
                raise ValueError(f"{len(self.spans)} footprints for {n} sources")
        if self.bbox is None and self.spans is not None:
            self.bbox = _bbox_from_spans(self.spans)
        if self.bbox is not None:
            self.bbox = np.asarray(self.bbox, dtype=np.float64).reshape(-1, 4)
            if self.bbox.shape[0] != n:
                raise ValueError(f"{self.bbox.shape[0]} bounding boxes for {n} sources")
        for name in ("class_id", "score", "mag"):
            value = getattr(self, name)
            if value is None:
                continue
            array = np.asarray(value, dtype=np.int64 if name == "class_id" else np.float64).reshape(-1)
            if array.size != n:
                raise ValueError(f"{name} has {array.size} values for {n} sources")
            setattr(self, name, array)
        if not (np.all(np.isfinite(self.x)) and np.all(np.isfinite(self.y))):
            raise ValueError("source positions must be finite")

    def __len__(self) -> int:
        return int(self.x.size)

    def select(self, keep: np.ndarray) -> SourceArrays:
        """The sources selected by a boolean mask or an index array, as new `SourceArrays`."""
        keep = np.asarray(keep)
        index = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64).reshape(-1)
        return SourceArrays(
            x=self.x[index],
            y=self.y[index],
            bbox=None if self.bbox is None else self.bbox[index],
            spans=None if self.spans is None else [self.spans[i] for i in index],
            class_id=None if self.class_id is None else self.class_id[index],
            score=None if self.score is None else self.score[index],
            mag=None if self.mag is None else self.mag[index],
        )

    @classmethod
    def from_table(
        cls,
        table: Table,
        *,
        x: str = "x",
        y: str = "y",
        bbox: str | Sequence[str] | None = BBOX_COLUMNS,
        spans: str | None = "footprint",
        class_id: str | None = "class_id",
        score: str | None = "score",
        mag: str | None = None,
    ) -> SourceArrays:
        """Read the arrays from an astropy table; optional columns that are absent are skipped.

        Parameters
        ----------
        table : `astropy.table.Table`
            The catalog.
        x, y : `str`
            Centre columns (required).
        bbox : `str` or `tuple` [`str`, `str`, `str`, `str`] or `None`
            One ``(N, 4)`` column or four inclusive-bound columns ``x_min, y_min, x_max, y_max``.
        spans : `str` or `None`
            Footprint column (object column of flattened ``int32`` spans, or ``(M, 3)`` arrays).
        class_id, score, mag : `str` or `None`
            Optional columns.
        """
        for name in (x, y):
            if name not in table.colnames:
                raise KeyError(f"column {name!r} is missing; the table has {table.colnames}")

        def column(name: str | None) -> np.ndarray | None:
            return np.asarray(table[name]) if name is not None and name in table.colnames else None

        boxes = None
        if isinstance(bbox, str):
            boxes = column(bbox)
        elif bbox is not None and all(name in table.colnames for name in bbox):
            boxes = np.stack([np.asarray(table[name]) for name in bbox], axis=1)
        footprints = list(table[spans]) if spans is not None and spans in table.colnames else None
        return cls(
            x=np.asarray(table[x]),
            y=np.asarray(table[y]),
            bbox=boxes,
            spans=footprints,
            class_id=column(class_id),
            score=column(score),
            mag=column(mag),
        )

    def span_bank(self) -> tuple[np.ndarray, np.ndarray]:
        """All footprints concatenated: ``(S, 4)`` rows ``(source, y, x_begin, x_end)`` and ``offsets``.

        Rows are sorted by ``(source, y, x_begin)``; source ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
        """
        if self.spans is None:
            raise ValueError("these sources have no footprints")
        if self._bank is None:
            counts = np.array([footprint.shape[0] for footprint in self.spans], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(counts)])
            rows = np.empty((int(offsets[-1]), 4), dtype=np.int64)
            rows[:, 0] = np.repeat(np.arange(len(self.spans)), counts)
            if rows.shape[0]:
                rows[:, 1:] = np.concatenate(self.spans)
            order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
            self._bank = (rows[order], offsets)
        return self._bank

    def areas(self) -> np.ndarray:
        """Footprint areas in pixels (bounding-box areas when there are no footprints)."""
        if self.spans is not None:
            bank, _ = self.span_bank()
            lengths = bank[:, 3] - bank[:, 2] + 1
            return np.bincount(bank[:, 0], weights=lengths, minlength=len(self)).astype(np.int64)
        if self.bbox is None:
            raise ValueError("these sources have neither footprints nor bounding boxes")
        return _bbox_areas(self.bbox)
