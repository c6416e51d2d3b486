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
"""The tract's source list: galaxies and stars drawn once per tract cell from the seed.

A tract is tiled by *cells*, one per patch: the patch's inner box, stretched to the tract edge for the outer
patches (`SimPreset.cell_bbox`).  The sources of a cell are drawn from a random generator seeded by
``(seed, tract, patch)`` only, so the tract's source list is fixed by the seed, and two overlapping patches
see the very same objects in their shared border (`sources_near_patch` collects every cell that reaches a
patch).

Populations (all numbers are per preset, see `SimPreset`):

* Galaxies: i-band differential counts rising as ``10**(0.31 m)``, normalised to ``N(i < 25) = 60
  arcmin^-2`` (the LSST Science Book quotes ~55 arcmin^-2 for its i < 25.3 "gold" sample; 60 puts the
  blended fraction in the HSC/LSST range), from i = 17 down to 1.5 mag below the i-band 10-year 5-sigma
  point-source depth.  Two colour populations (red sequence, blue cloud; the red fraction falls with
  magnitude) with 0.12 mag scatter per colour; a bulge (de Vaucouleurs, truncated at 5 half-light radii) plus
  an exponential disk sharing one half-light radius and shape, so the object's half-light radius is exactly
  ``size``; bulge-to-total ratio ~ U(0.4, 0.95) for red, U(0, 0.3) for blue galaxies.
  Size-magnitude relation ``log10(r50 / arcsec) = log10(0.55) - 0.09 (i - 22)`` with 0.18 dex scatter
  (red galaxies 0.1 dex smaller), as in HST/COSMOS size distributions.  Shapes: reduced shear ``(e1, e2)``
  with 0.22 (blue) or 0.15 (red) per component, ``|e| < 0.7``.
* Stars: r-band counts ``10**(0.12 m)`` normalised to ``star_density_deg2`` stars brighter than the r-band
  depth, from r = 16 to 0.5 mag below the depth; colours along a stellar locus parametrised by ``g - r`` from
  halo turn-off stars (g - r ~ 0.4) to M dwarfs (g - r ~ 1.45).  Plus ``bright_stars_per_patch`` saturated
  stars per cell.
"""

from __future__ import annotations

__all__ = [
    "band_fluxes",
    "cell_density_factor",
    "draw_cell_sources",
    "sources_near_patch",
    "stamp_half_size",
]

import math

import numpy as np
from astropy.table import Table, vstack

from .ids import TRUTH_COUNTER_FLAG, pack_id
from .morphology import assign_morphology, bright_galaxy_magnitudes
from .presets import LSST_BANDS, SimPreset
from .survey import lsst_band_conditions, mag_to_njy

# Random streams of one (seed, tract, patch): keep them apart so adding one never shifts another.
STREAM_CATALOG = 1
STREAM_DENSITY = 6
STREAM_MORPHOLOGY = 7
ARCMIN2_PER_DEG2 = 3600.0

# Colour offsets mag_band - mag_i of the two galaxy populations, in LSST_BANDS order (u g r i z y).
_BLUE_OFFSETS = np.array([1.00, 0.55, 0.20, 0.0, -0.10, -0.15])
_RED_OFFSETS = np.array([3.05, 1.35, 0.45, 0.0, -0.30, -0.45])
_COLOUR_SCATTER = 0.12


def _cumulative_power_law_draw(rng: np.random.Generator, n: int, slope: float, bright: float, faint: float):
    """Magnitudes with ``dN/dm`` proportional to ``10**(slope m)`` between ``bright`` and ``faint``."""
    lo, hi = 10.0 ** (slope * bright), 10.0 ** (slope * faint)
    return np.log10(lo + rng.uniform(size=n) * (hi - lo)) / slope


def stamp_half_size(size_arcsec: np.ndarray, e1: np.ndarray, e2: np.ndarray, preset: SimPreset) -> np.ndarray:
    """Half side (pixels) of the model-space stamp of each object.

    Five half-light radii along the major axis (99.8% of an exponential disk, the truncation radius of the
    bulge) plus three model-PSF sigmas; point sources get five model-PSF sigmas.
    """
    shear = np.hypot(e1, e2)
    major = np.asarray(size_arcsec) / preset.pixel_scale_arcsec * np.sqrt((1.0 + shear) / (1.0 - shear))
    half = np.ceil(5.0 * major + 3.0 * preset.model_psf_sigma) + 1
    point = np.ceil(5.0 * preset.model_psf_sigma) + 1
    return np.clip(np.where(np.asarray(size_arcsec) > 0, half, point), point, 400).astype(np.int32)


def _galaxy_magnitudes(rng: np.random.Generator, n: int, preset: SimPreset) -> np.ndarray:
    i_depth = lsst_band_conditions("i", preset.pixel_scale_arcsec).gaussian_point_source_depth()
    faint = i_depth + preset.galaxy_mag_faint_offset
    return _cumulative_power_law_draw(rng, n, preset.galaxy_count_slope, preset.galaxy_mag_bright, faint)


def _expected_galaxies(area_arcmin2: float, preset: SimPreset) -> float:
    i_depth = lsst_band_conditions("i", preset.pixel_scale_arcsec).gaussian_point_source_depth()
    faint = i_depth + preset.galaxy_mag_faint_offset
    slope = preset.galaxy_count_slope
    cumulative = preset.galaxy_density_i25_arcmin2 * (
        10.0 ** (slope * (faint - 25.0)) - 10.0 ** (slope * (preset.galaxy_mag_bright - 25.0))
    )
    return area_arcmin2 * cumulative


def _star_range(preset: SimPreset) -> tuple[float, float, float]:
    r_depth = lsst_band_conditions("r", preset.pixel_scale_arcsec).gaussian_point_source_depth()
    return preset.star_mag_bright, r_depth + 0.5, r_depth


def _expected_stars(area_arcmin2: float, preset: SimPreset) -> float:
    bright, faint, depth = _star_range(preset)
    slope = preset.star_count_slope
    fraction = 10.0 ** (slope * (faint - depth)) - 10.0 ** (slope * (bright - depth))
    return area_arcmin2 / ARCMIN2_PER_DEG2 * preset.star_density_deg2 * fraction


def _star_offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """``mag_band - mag_r`` along the stellar locus, in LSST_BANDS order."""
    halo = rng.uniform(size=n) < 0.55
    t = np.where(halo, np.clip(rng.normal(0.12, 0.06, n), 0.0, 1.0), rng.uniform(0.25, 1.0, n))
    g_r = 0.25 + 1.2 * t
    u_g = np.minimum(0.8 + 1.9 * t, 2.7)
    r_i = 0.08 + 0.25 * t + 1.4 * t**3
    i_z = 0.03 + 0.12 * t + 0.7 * t**3
    z_y = 0.02 + 0.05 * t + 0.35 * t**3
    offsets = np.stack([u_g + g_r, g_r, np.zeros(n), -r_i, -r_i - i_z, -r_i - i_z - z_y], axis=1)
    return offsets + rng.normal(0.0, 0.03, offsets.shape)


def cell_density_factor(preset: SimPreset, tract: int, patch: int, seed: int) -> float:
    """Multiplier of the mean source counts of one cell: log-normal with ``preset.density_scatter``.

    Exactly 1 without scatter; otherwise drawn from its own stream, so the other draws of a cell do not move.
    """
    if preset.density_scatter == 0:
        return 1.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, tract, patch, STREAM_DENSITY]))
    return float(math.exp(rng.normal(0.0, preset.density_scatter)))


def draw_cell_sources(preset: SimPreset, tract: int, patch_x: int, patch_y: int, seed: int) -> Table:
    """Draw the sources of one tract cell.

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
    sources : `astropy.table.Table`
        One row per source: ``id`` (truth id, see `ids`), ``is_star``, ``x``, ``y`` (tract pixels),
        ``mag_<band>`` for every LSST band, ``size`` (half-light radius, arcsec, 0 for stars), ``e1``, ``e2``
        (reduced shear), ``bulge_fraction``, ``stamp_half`` (pixels); with ``preset.morphology`` also the
        Hubble-type columns of `.morphology.assign_morphology` and ``bright_galaxies_per_patch`` extra
        bright galaxies after the stars (drawn from a stream of their own).
    """
    patch = preset.patch_index(patch_x, patch_y)
    rng = np.random.default_rng(np.random.SeedSequence([seed, tract, patch, STREAM_CATALOG]))
    x_begin, y_begin, x_end, y_end = preset.cell_bbox(patch_x, patch_y)
    area_arcmin2 = (x_end - x_begin) * (y_end - y_begin) * (preset.pixel_scale_arcsec / 60.0) ** 2
    area_arcmin2 *= cell_density_factor(preset, tract, patch, seed)

    # Galaxies.
    n_gal = rng.poisson(_expected_galaxies(area_arcmin2, preset))
    mag_i = _galaxy_magnitudes(rng, n_gal, preset)
    red_fraction = np.clip(0.35 - 0.04 * (mag_i - 20.0), 0.08, 0.4)
    is_red = rng.uniform(size=n_gal) < red_fraction
    offsets = np.where(is_red[:, None], _RED_OFFSETS, _BLUE_OFFSETS)
    gal_mags = mag_i[:, None] + offsets + rng.normal(0.0, _COLOUR_SCATTER, (n_gal, len(LSST_BANDS)))
    gal_mags[:, LSST_BANDS.index("i")] = mag_i
    log_size = math.log10(0.55) - 0.09 * (mag_i - 22.0) - 0.1 * is_red + rng.normal(0.0, 0.18, n_gal)
    gal_size = np.clip(10.0**log_size, 0.04, 6.0)
    shape_sigma = np.where(is_red, 0.15, 0.22)
    gal_e = rng.normal(0.0, 1.0, (n_gal, 2)) * shape_sigma[:, None]
    modulus = np.hypot(gal_e[:, 0], gal_e[:, 1])
    too_elongated = modulus > 0.7
    gal_e[too_elongated] *= (0.7 * rng.uniform(size=too_elongated.sum()) / modulus[too_elongated])[:, None]
    bulge = np.where(is_red, rng.uniform(0.4, 0.95, n_gal), rng.uniform(0.0, 0.3, n_gal))

    # Stars: smooth counts plus the saturated ones.
    n_star = rng.poisson(_expected_stars(area_arcmin2, preset))
    bright, faint, _ = _star_range(preset)
    mag_r = np.concatenate(
        [
            _cumulative_power_law_draw(rng, n_star, preset.star_count_slope, bright, faint),
            rng.uniform(*preset.bright_star_mag_range, preset.bright_stars_per_patch),
        ]
    )
    n_all_stars = mag_r.size
    star_mags = mag_r[:, None] + _star_offsets(rng, n_all_stars)

    n_total = n_gal + n_all_stars
    # Keep bright stars clear of the cell edge so their cores land in this patch's inner region.
    x = rng.uniform(x_begin - 0.5, x_end - 0.5, n_total)
    y = rng.uniform(y_begin - 0.5, y_end - 0.5, n_total)
    margin = min(20.0, (x_end - x_begin) / 4.0)
    n_bright = preset.bright_stars_per_patch
    if n_bright:
        x[-n_bright:] = rng.uniform(x_begin + margin, x_end - margin, n_bright)
        y[-n_bright:] = rng.uniform(y_begin + margin, y_end - margin, n_bright)

    table = Table()
    table["id"] = pack_id(tract, patch, TRUTH_COUNTER_FLAG | np.arange(1, n_total + 1, dtype=np.int64))
    table["is_star"] = np.concatenate([np.zeros(n_gal, bool), np.ones(n_all_stars, bool)])
    table["x"] = x
    table["y"] = y
    mags = np.concatenate([gal_mags, star_mags])
    for column, band in enumerate(LSST_BANDS):
        table[f"mag_{band}"] = mags[:, column]
    table["size"] = np.concatenate([gal_size, np.zeros(n_all_stars)])
    table["e1"] = np.concatenate([gal_e[:, 0], np.zeros(n_all_stars)])
    table["e2"] = np.concatenate([gal_e[:, 1], np.zeros(n_all_stars)])
    table["bulge_fraction"] = np.concatenate([bulge, np.zeros(n_all_stars)])
    table["stamp_half"] = stamp_half_size(table["size"], table["e1"], table["e2"], preset)
    if preset.morphology:
        table = _with_morphology(table, preset, tract, patch, seed, (x_begin, y_begin, x_end, y_end))
    return table


def _with_morphology(
    table: Table, preset: SimPreset, tract: int, patch: int, seed: int, cell: tuple[int, int, int, int]
) -> Table:
    """The cell's sources plus the extra bright galaxies, every galaxy with a Hubble type."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, tract, patch, STREAM_MORPHOLOGY]))
    n_extra = preset.bright_galaxies_per_patch
    if n_extra:
        mag_i = bright_galaxy_magnitudes(rng, n_extra)
        extra = Table()
        extra["id"] = pack_id(
            tract,
            patch,
            TRUTH_COUNTER_FLAG | np.arange(len(table) + 1, len(table) + n_extra + 1, dtype=np.int64),
        )
        extra["is_star"] = np.zeros(n_extra, bool)
        x_begin, y_begin, x_end, y_end = cell
        extra["x"] = rng.uniform(x_begin - 0.5, x_end - 0.5, n_extra)
        extra["y"] = rng.uniform(y_begin - 0.5, y_end - 0.5, n_extra)
        for band in LSST_BANDS:
            extra[f"mag_{band}"] = mag_i
        log_size = math.log10(0.55) - 0.09 * (mag_i - 22.0) + rng.normal(0.0, 0.18, n_extra)
        extra["size"] = np.clip(10.0**log_size, 0.04, 6.0)
        extra["e1"] = np.zeros(n_extra)
        extra["e2"] = np.zeros(n_extra)
        extra["bulge_fraction"] = np.zeros(n_extra)
        extra["stamp_half"] = np.zeros(n_extra, dtype=np.int32)
        table = vstack([table, extra], join_type="exact", metadata_conflicts="silent")
    assign_morphology(table, rng, _RED_OFFSETS, _BLUE_OFFSETS, _COLOUR_SCATTER)
    # The stamps must hold the grown and lopsided profiles.
    reach = np.asarray(table["size"]) * (1.0 + np.asarray(table["morph_asymmetry"]))
    table["stamp_half"] = stamp_half_size(reach, table["e1"], table["e2"], preset)
    return table


def sources_near_patch(
    preset: SimPreset,
    tract: int,
    bbox: tuple[int, int, int, int],
    seed: int,
    reach: int = 0,
) -> Table:
    """Every source of the tract whose model stamp, grown by ``reach`` pixels, touches ``bbox``.

    Parameters
    ----------
    preset : `SimPreset`
        The preset.
    tract : `int`
        Tract id.
    bbox : `tuple` [`int`, `int`, `int`, `int`]
        ``(x_begin, y_begin, x_end, y_end)``, end exclusive, tract pixels.
    seed : `int`
        Seed of the tract's scene.
    reach : `int`
        Extra distance (e.g. the PSF kernel radius) over which a source still affects ``bbox``.

    Returns
    -------
    sources : `astropy.table.Table`
        Rows of `draw_cell_sources` from all cells involved, in cell order.
    """
    x_begin, y_begin, x_end, y_end = bbox
    tables = []
    for patch_x, patch_y in preset.patches():
        cx0, cy0, cx1, cy1 = preset.cell_bbox(patch_x, patch_y)
        # The largest stamp is bounded (stamp_half_size clips at 400 px): skip cells that cannot reach.
        limit = 400 + reach
        if cx1 + limit < x_begin or cx0 - limit > x_end or cy1 + limit < y_begin or cy0 - limit > y_end:
            continue
        cell = draw_cell_sources(preset, tract, patch_x, patch_y, seed)
        extent = cell["stamp_half"] + reach
        ix, iy = np.rint(cell["x"]), np.rint(cell["y"])
        touches = (
            (ix + extent >= x_begin)
            & (ix - extent < x_end)
            & (iy + extent >= y_begin)
            & (iy - extent < y_end)
        )
        tables.append(cell[touches])
    if not tables:
        return draw_cell_sources(preset, tract, 0, 0, seed)[:0]
    return vstack(tables, join_type="exact", metadata_conflicts="silent")


def band_fluxes(sources: Table, bands: tuple[str, ...]) -> np.ndarray:
    """``[N, C]`` fluxes (nJy) of the sources in ``bands``."""
    return np.stack([mag_to_njy(np.asarray(sources[f"mag_{b}"])) for b in bands], axis=1)
