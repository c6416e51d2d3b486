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
"""Image artifacts of the simulated coadds and their truth table, ``truth_artifacts``.

Artifacts are drawn once per tract *cell* (like the sources, `catalog`), from a random stream of their own
seeded by ``(seed, tract, patch, STREAM_ARTIFACTS)``, by `..core.artifacts.draw_artifacts`: the cell's stars
brighter than ``artifact_star_mag_max`` (r band) make ghosts and rays at ``artifact_rate`` per star (more for
brighter stars), with the tract centre as the notional optical axis; ``artifact_anywhere_per_mpix`` sets the
scattered-light patches and streaks placed anywhere in the cell.  Artifacts live in tract coordinates, so
overlapping patches see the same ones, and an artifact may spread over several patches (streaks cross the
tract).  Their brightness is in units of each band's per-pixel coadd noise; `render_patch_artifacts` turns
it into nJy with the patch's sky sigma.

Truth: one ``truth_artifacts`` row per artifact with a non-empty footprint in the patch.  The footprint is
the artifact's label mask (`..core.artifacts`: the outline of discs and annuli, ``artifact_mask_fraction`` of
the peak for the others) inside the patch, ``NO_DATA`` excluded.
"""

from __future__ import annotations

__all__ = [
    "ARTIFACT_COUNTER_FLAG",
    "STREAM_ARTIFACTS",
    "artifact_config",
    "cell_artifacts",
    "patch_artifacts",
    "render_patch_artifacts",
]

import functools
from collections.abc import Sequence

import astropy.units as u
import numpy as np
from astropy.table import Table

from ..core.artifacts import Artifact, ArtifactConfig, draw_artifacts, paint_artifacts
from ..core.footprints import flatten_spans, mask_to_spans, spans_bbox, spans_to_mask
from .catalog import draw_cell_sources
from .ids import TRUTH_COUNTER_FLAG, pack_id
from .presets import SimPreset
from .survey import lsst_band_conditions
from .types import PatchGeometry

STREAM_ARTIFACTS = 7
ARTIFACT_COUNTER_FLAG = TRUTH_COUNTER_FLAG | (1 << 30)
"""Counter bits of artifact ids: a truth id (bit 31) that no object of a cell can reach (bit 30)."""


def artifact_config(preset: SimPreset) -> ArtifactConfig:
    """Artifact distributions of a preset: the defaults, with the r-band median seeing as PSF FWHM."""
    conditions = lsst_band_conditions("r", preset.pixel_scale_arcsec)
    return ArtifactConfig(psf_fwhm=conditions.psf_fwhm_arcsec / preset.pixel_scale_arcsec)


@functools.lru_cache(maxsize=128)
def cell_artifacts(
    preset: SimPreset, tract: int, patch_x: int, patch_y: int, seed: int
) -> tuple[tuple[int, int, Artifact], ...]:
    """The artifacts drawn in one tract cell.

    Parameters
    ----------
    preset : `SimPreset`
        The preset.
    tract : `int`
        Tract id.
    patch_x, patch_y : `int`
        The patch whose cell to draw.
    seed : `int`
        Seed of the tract's scene.

    Returns
    -------
    artifacts : `tuple` [`tuple` [`int`, `int`, `~..core.artifacts.Artifact`]]
        ``(artifact id, truth id of the star that made it or -1, artifact in tract coordinates)``.
    """
    if not preset.has_artifacts:
        return ()
    patch = preset.patch_index(patch_x, patch_y)
    sources = draw_cell_sources(preset, tract, patch_x, patch_y, seed)
    cx0, cy0, cx1, cy1 = preset.cell_bbox(patch_x, patch_y)
    bright = np.asarray(sources["is_star"], bool) & (
        np.asarray(sources["mag_r"]) < preset.artifact_star_mag_max
    )
    stars = np.stack(
        [
            np.asarray(sources["x"], float)[bright] - cx0,
            np.asarray(sources["y"], float)[bright] - cy0,
            np.asarray(sources["mag_r"], float)[bright],
        ],
        axis=1,
    )
    star_ids = np.asarray(sources["id"], dtype=np.int64)[bright]
    height, width = preset.tract_shape
    shape = (cy1 - cy0, cx1 - cx0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, tract, patch, STREAM_ARTIFACTS]))
    drawn = draw_artifacts(
        rng,
        shape,
        len(preset.bands),
        sources=stars,
        rate=preset.artifact_rate,
        anywhere_rate=preset.artifact_anywhere_per_mpix * shape[0] * shape[1] / 1e6,
        field_centre=((width - 1) / 2.0 - cx0, (height - 1) / 2.0 - cy0),
        config=artifact_config(preset),
    )
    ids = pack_id(tract, patch, ARTIFACT_COUNTER_FLAG | np.arange(1, len(drawn) + 1, dtype=np.int64))
    return tuple(
        (
            int(artifact_id),
            int(star_ids[artifact.source_index]) if artifact.source_index >= 0 else -1,
            artifact.shifted(cx0, cy0),
        )
        for artifact_id, artifact in zip(np.atleast_1d(ids), drawn)
    )


def patch_artifacts(
    preset: SimPreset, tract: int, bbox: tuple[int, int, int, int], seed: int
) -> list[tuple[int, int, Artifact]]:
    """Every artifact of the tract whose support reaches ``bbox`` (``x_begin, y_begin, x_end, y_end``)."""
    x_begin, y_begin, x_end, y_end = bbox
    found = []
    for patch_x, patch_y in preset.patches():
        for entry in cell_artifacts(preset, tract, patch_x, patch_y, seed):
            ax0, ay0, ax1, ay1 = entry[2].support_bbox()
            if ax0 < x_end and ax1 > x_begin and ay0 < y_end and ay1 > y_begin:
                found.append(entry)
    return found


def _owner_centre(artifact: Artifact, preset: SimPreset) -> tuple[float, float]:
    """Centre of the artifact's support clipped to the tract: the point that decides ``is_inner``."""
    height, width = preset.tract_shape
    x0, y0, x1, y1 = artifact.support_bbox()
    x0, x1 = min(max(x0, 0), width), min(max(x1, 0), width)
    y0, y1 = min(max(y0, 0), height), min(max(y1, 0), height)
    return (x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0


def render_patch_artifacts(
    preset: SimPreset,
    geometry: PatchGeometry,
    seed: int,
    noise_sigma: Sequence[float],
    no_data: np.ndarray | None = None,
) -> tuple[np.ndarray, Table]:
    """The artifacts' light in a patch and their truth table.

    Parameters
    ----------
    preset : `SimPreset`
        The preset.
    geometry : `PatchGeometry`
        The patch.
    seed : `int`
        Seed of the tract's scene.
    noise_sigma : sequence of `float`
        Per-pixel sky noise of each band (nJy), in the preset's band order.
    no_data : `numpy.ndarray`, optional
        ``[H, W]`` boolean ``NO_DATA`` map of the patch, removed from the footprints.

    Returns
    -------
    image : `numpy.ndarray`
        ``[C, H, W]`` float32 noise-free artifact image (nJy).
    truth : `astropy.table.Table`
        The ``truth_artifacts`` rows of the patch.
    """
    bands = preset.bands
    shape = (geometry.height, geometry.width)
    xy0 = (geometry.x0, geometry.y0)
    bbox = (geometry.x0, geometry.y0, geometry.x0 + geometry.width, geometry.y0 + geometry.height)
    entries = patch_artifacts(preset, geometry.tract, bbox, seed)
    image = np.zeros((len(bands), *shape), dtype=np.float32)
    spans_list = paint_artifacts(
        image,
        [entry[2] for entry in entries],
        np.asarray(noise_sigma, dtype=float),
        xy0=xy0,
        mask_fraction=preset.artifact_mask_fraction,
    )
    ix0, iy0, ix1, iy1 = preset.inner_bbox(geometry.patch_x, geometry.patch_y)
    rows = []
    for (artifact_id, star_id, artifact), spans in zip(entries, spans_list):
        if spans.shape[0] and no_data is not None:
            x_min, y_min, x_max, y_max = spans_bbox(spans)
            box_shape = (y_max - y_min + 1, x_max - x_min + 1)
            mask = spans_to_mask(spans, box_shape, (x_min, y_min))
            mask &= ~no_data[y_min - xy0[1] : y_max - xy0[1] + 1, x_min - xy0[0] : x_max - xy0[0] + 1]
            spans = mask_to_spans(mask, (x_min, y_min))
        if spans.shape[0] == 0:
            continue
        cx, cy = _owner_centre(artifact, preset)
        rows.append(
            (
                artifact_id,
                star_id,
                artifact,
                spans,
                ix0 - 0.5 <= cx < ix1 - 0.5 and iy0 - 0.5 <= cy < iy1 - 0.5,
            )
        )
    return image, _truth_table(rows, bands, preset)


def _truth_table(rows: list[tuple], bands: Sequence[str], preset: SimPreset) -> Table:
    table = Table()

    def column(name: str, values, dtype, unit, description: str) -> None:
        table[name] = np.asarray(values, dtype=dtype)
        table[name].unit = unit
        table[name].description = description

    artifacts = [row[2] for row in rows]
    spans_list = [row[3] for row in rows]
    boxes = np.array([spans_bbox(s) for s in spans_list], dtype=np.int32).reshape(-1, 4)
    column("id", [row[0] for row in rows], np.int64, None, "Artifact id, unique in the tract (sim.ids)")
    column(
        "artifact_class",
        [a.artifact_class for a in artifacts],
        "U16",
        None,
        "ghost_bright, ghost_faint or rays",
    )
    column(
        "kind",
        [a.kind for a in artifacts],
        "U16",
        None,
        "Shape: ghost_disc, ghost_annulus, scattered_patch, ray, streak",
    )
    column(
        "x", [a.x for a in artifacts], np.float64, u.pix, "Centre (start of a ray) column, parent coordinates"
    )
    column(
        "y", [a.y for a in artifacts], np.float64, u.pix, "Centre (start of a ray) row, parent coordinates"
    )
    for index, name in enumerate(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")):
        axis = "x" if name.endswith(("x0", "x1")) else "y"
        end = "minimum" if name.endswith("0") else "maximum"
        column(
            name, boxes[:, index], np.int32, u.pix, f"Footprint {end} {axis} (inclusive), parent coordinates"
        )
    column(
        "area",
        [int(np.sum(s[:, 2].astype(np.int64) - s[:, 1] + 1)) for s in spans_list],
        np.int32,
        u.pix,
        "Pixels in the footprint (in this patch)",
    )
    column(
        "peak_sb_sigma",
        [a.peak_sb_sigma for a in artifacts],
        np.float64,
        None,
        "Peak brightness, per-pixel noise sigma, brightest band",
    )
    for band_index, band in enumerate(bands):
        column(
            f"sb_sigma_{band}",
            [float(a.amplitudes(len(bands))[band_index]) for a in artifacts],
            np.float64,
            None,
            f"Peak brightness in band {band}, in units of its per-pixel noise sigma",
        )
    column(
        "star_id", [row[1] for row in rows], np.int64, None, "Truth id of the star that made it (-1: none)"
    )
    column(
        "radius",
        [a.radius for a in artifacts],
        np.float64,
        u.pix,
        "Outer semi-major axis (disc, annulus); Gaussian sigma (patch)",
    )
    column(
        "inner_radius",
        [a.inner_radius for a in artifacts],
        np.float64,
        u.pix,
        "Inner semi-major axis (annulus)",
    )
    column("width", [a.width for a in artifacts], np.float64, u.pix, "Cross-section FWHM (ray, streak)")
    column("length", [a.length for a in artifacts], np.float64, u.pix, "Length (ray, streak)")
    column(
        "angle",
        [a.angle for a in artifacts],
        np.float64,
        u.rad,
        "Direction or major axis, from +x towards +y",
    )
    column("axis_ratio", [a.axis_ratio for a in artifacts], np.float64, None, "Minor over major axis")
    column(
        "is_inner",
        [row[4] for row in rows],
        bool,
        None,
        "Centre of its tract-clipped support box in this patch's inner region (each artifact in one patch)",
    )
    spans_column = np.empty(len(rows), dtype=object)
    for index, spans in enumerate(spans_list):
        spans_column[index] = flatten_spans(spans)
    table["spans"] = spans_column
    table["spans"].description = (
        "Artifact footprint, flattened int32 spans (y, x_begin, x_end inclusive) in parent coordinates: its "
        "outline (discs, annuli) or where its profile reaches "
        f"{preset.artifact_mask_fraction:g} of the peak (patches, rays, streaks), NO_DATA excluded"
    )
    table.meta["artifact_mask_fraction"] = preset.artifact_mask_fraction
    return table
