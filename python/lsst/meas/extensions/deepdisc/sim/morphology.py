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
"""Galaxy morphology of the simulation: Hubble types with truth (presets with ``morphology=True``).

Every galaxy of such a preset gets one of `MORPHOLOGY_CLASSES`, drawn from a random stream of its own, and a
profile built from the type (`morphology_profile`):

``E``
    Bulge-dominated: de Vaucouleurs bulge-to-total 0.85-1, round (shape scatter 0.12), compact (0.8 x the
    size relation), red.
``S0``
    Bulge plus a smooth disc, B/T 0.45-0.7, flattened (scatter 0.25), red.
``Sab``
    Early spiral: B/T 0.2-0.4, 5-15% of the light in star-forming knots (galsim's ``RandomKnots``, which
    scatters point-like knots along the disc's exponential profile), intermediate colours.
``Sc``
    Late spiral: B/T 0.05-0.2, knots 15-30%, blue.
``Sdm``
    Bulgeless disc, B/T 0-0.05, knots 30-45%, 1.2 x larger, bluer.
``Im``
    Irregular: no bulge, 45-70% of the light in a few large clumps, and the smooth light off-centre by
    0.2-0.5 half-light radii (lopsided), bluest.

The types are ordered along the Hubble sequence, so "neighbouring types" (E/S0, Sab/Sc, Sdm/Im) differ by
one step of bulge fraction, clumpiness and colour, as they do in the sky; the fractions (E 12%, S0 15%,
Sab 22%, Sc 25%, Sdm 14%, Im 12%) make the sample imbalanced, like real ones.  Colours interpolate between
the red-sequence and blue-cloud offsets of `.catalog` (plus a bluer step for Sdm and Im), with the same
0.12 mag scatter per band.  A preset may add ``bright_galaxies_per_patch`` galaxies with ``17.5 < i < 22``
per cell, so that a training set holds enough resolved galaxies.

Truth: ``truth_patch`` gets ``morph_type`` (class name, empty for stars), ``knot_fraction`` and
``morph_asymmetry`` (offset of the smooth light, in half-light radii).
"""

from __future__ import annotations

__all__ = [
    "MORPHOLOGY_CLASSES",
    "assign_morphology",
    "bright_galaxy_magnitudes",
    "morphology_profile",
]

import galsim
import numpy as np
from astropy.table import Table

from .presets import LSST_BANDS

MORPHOLOGY_CLASSES: tuple[str, ...] = ("E", "S0", "Sab", "Sc", "Sdm", "Im")
"""Simulated Hubble types, in Hubble-sequence order (the class index is the position here)."""

# Per type: fraction, B/T range, knot fraction range, knot count range, shape scatter, size factor,
# red weight (1: red sequence, 0: blue cloud, < 0: bluer than the blue cloud), asymmetry range, knot sigma
# (half-light radii).
_TYPES = {
    "E": (0.12, (0.85, 1.0), (0.0, 0.0), (0, 0), 0.12, 0.8, 1.0, (0.0, 0.0), 0.0),
    "S0": (0.15, (0.45, 0.7), (0.0, 0.0), (0, 0), 0.25, 1.0, 0.85, (0.0, 0.0), 0.0),
    "Sab": (0.22, (0.2, 0.4), (0.05, 0.15), (20, 40), 0.22, 1.0, 0.5, (0.0, 0.0), 0.05),
    "Sc": (0.25, (0.05, 0.2), (0.15, 0.3), (30, 60), 0.22, 1.05, 0.15, (0.0, 0.0), 0.05),
    "Sdm": (0.14, (0.0, 0.05), (0.3, 0.45), (30, 60), 0.25, 1.2, -0.1, (0.0, 0.1), 0.08),
    "Im": (0.12, (0.0, 0.0), (0.45, 0.7), (6, 15), 0.2, 1.1, -0.25, (0.2, 0.5), 0.15),
}
_BRIGHT_RANGE = (17.5, 22.0)


def assign_morphology(
    sources: Table,
    rng: np.random.Generator,
    red_offsets: np.ndarray,
    blue_offsets: np.ndarray,
    colour_scatter: float,
) -> None:
    """Give every galaxy of ``sources`` a Hubble type and the structure and colour that go with it.

    Overwrites ``bulge_fraction``, ``e1``, ``e2``, ``size`` and the non-i ``mag_<band>`` of the galaxies and
    adds ``morph_type`` (class name, empty for stars), ``morph_index`` (position in `MORPHOLOGY_CLASSES`,
    -1 for stars), ``knot_fraction``, ``n_knots``, ``knot_sigma`` (clump size, half-light radii),
    ``morph_asymmetry``, ``asymmetry_angle`` and ``knot_seed``.  i-band magnitudes and positions are kept.

    Parameters
    ----------
    sources : `astropy.table.Table`
        Rows of `.catalog.draw_cell_sources` (changed in place).
    rng : `numpy.random.Generator`
        The morphology stream of the cell.
    red_offsets, blue_offsets : `numpy.ndarray`
        ``mag_band - mag_i`` of the red sequence and the blue cloud, in ``u g r i z y`` order.
    colour_scatter : `float`
        Per-band colour scatter (mag).
    """
    n = len(sources)
    galaxy = ~np.asarray(sources["is_star"], dtype=bool)
    fractions = np.array([_TYPES[name][0] for name in MORPHOLOGY_CLASSES])
    index = rng.choice(len(MORPHOLOGY_CLASSES), size=n, p=fractions / fractions.sum())
    index = np.where(galaxy, index, -1)
    bulge = np.zeros(n)
    knots = np.zeros(n)
    n_knots = np.zeros(n, dtype=np.int32)
    asymmetry = np.zeros(n)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    e = rng.normal(0.0, 1.0, (n, 2))
    size_factor = np.ones(n)
    red_weight = np.zeros(n)
    knot_sigma = np.zeros(n)
    uniform = rng.uniform(size=(n, 4))
    for k, name in enumerate(MORPHOLOGY_CLASSES):
        _, bt, kf, nk, shape_sigma, grow, red, asym, sigma = _TYPES[name]
        rows = index == k
        bulge[rows] = bt[0] + (bt[1] - bt[0]) * uniform[rows, 0]
        knots[rows] = kf[0] + (kf[1] - kf[0]) * uniform[rows, 1]
        n_knots[rows] = np.rint(nk[0] + (nk[1] - nk[0]) * uniform[rows, 2]).astype(np.int32)
        asymmetry[rows] = asym[0] + (asym[1] - asym[0]) * uniform[rows, 3]
        e[rows] *= shape_sigma
        size_factor[rows] = grow
        red_weight[rows] = red
        knot_sigma[rows] = sigma
    modulus = np.hypot(e[:, 0], e[:, 1])
    too_elongated = modulus > 0.7
    e[too_elongated] *= (0.7 * rng.uniform(size=too_elongated.sum()) / modulus[too_elongated])[:, None]
    offsets = red_weight[:, None] * red_offsets + (1.0 - red_weight[:, None]) * blue_offsets
    colours = offsets + rng.normal(0.0, colour_scatter, offsets.shape)
    knot_seed = rng.integers(1, 2**31 - 1, n)

    mag_i = np.asarray(sources["mag_i"], dtype=float)
    for column, band in enumerate(LSST_BANDS):
        if band != "i":
            sources[f"mag_{band}"] = np.where(galaxy, mag_i + colours[:, column], sources[f"mag_{band}"])
    sources["bulge_fraction"] = np.where(galaxy, bulge, sources["bulge_fraction"])
    sources["e1"] = np.where(galaxy, e[:, 0], sources["e1"])
    sources["e2"] = np.where(galaxy, e[:, 1], sources["e2"])
    sources["size"] = np.where(galaxy, np.clip(sources["size"] * size_factor, 0.04, 6.0), sources["size"])
    sources["morph_index"] = index.astype(np.int16)
    sources["morph_type"] = np.array([MORPHOLOGY_CLASSES[k] if k >= 0 else "" for k in index], dtype="U3")
    sources["knot_fraction"] = np.where(galaxy, knots, 0.0)
    sources["n_knots"] = np.where(galaxy, n_knots, 0).astype(np.int32)
    sources["morph_asymmetry"] = np.where(galaxy, asymmetry, 0.0)
    sources["asymmetry_angle"] = angle
    sources["knot_sigma"] = np.where(galaxy, knot_sigma, 0.0)
    sources["knot_seed"] = knot_seed.astype(np.int64)


def bright_galaxy_magnitudes(rng: np.random.Generator, n: int) -> np.ndarray:
    """i-band magnitudes of the extra bright galaxies of a morphology preset (uniform in 17.5-22)."""
    return rng.uniform(*_BRIGHT_RANGE, n)


def morphology_profile(row: Table.Row, gsparams: galsim.GSParams) -> galsim.GSObject:
    """The intrinsic galsim profile (unit flux, sheared) of a galaxy with a Hubble type.

    Parameters
    ----------
    row : `astropy.table.Row`
        A galaxy of a morphology preset (`assign_morphology` columns).
    gsparams : `galsim.GSParams`
        Accuracy parameters.

    Returns
    -------
    profile : `galsim.GSObject`
        Bulge, smooth disc and knots, sheared by ``(e1, e2)``; the smooth light of irregulars is shifted by
        ``morph_asymmetry`` half-light radii (arcsec units, like the profile).
    """
    hlr = float(row["size"])
    bulge_fraction = float(row["bulge_fraction"])
    knot_fraction = float(row["knot_fraction"])
    disc_fraction = max(0.0, 1.0 - bulge_fraction - knot_fraction)
    smooth = []
    if bulge_fraction > 0:
        bulge = galsim.DeVaucouleurs(half_light_radius=hlr, trunc=5.0 * hlr, gsparams=gsparams)
        smooth.append(bulge.withFlux(bulge_fraction))
    if disc_fraction > 0:
        smooth.append(galsim.Exponential(half_light_radius=hlr, gsparams=gsparams).withFlux(disc_fraction))
    components = []
    if smooth:
        body = galsim.Add(smooth) if len(smooth) > 1 else smooth[0]
        shift = float(row["morph_asymmetry"]) * hlr
        if shift > 0:
            angle = float(row["asymmetry_angle"])
            body = body.shift(shift * np.cos(angle), shift * np.sin(angle))
        components.append(body)
    if knot_fraction > 0 and int(row["n_knots"]) > 0:
        knots = galsim.RandomKnots(
            int(row["n_knots"]),
            half_light_radius=hlr,
            flux=knot_fraction,
            rng=galsim.BaseDeviate(int(row["knot_seed"])),
            gsparams=gsparams,
        )
        sigma = float(row["knot_sigma"]) * hlr
        components.append(galsim.Convolve(knots, galsim.Gaussian(sigma=sigma)) if sigma > 0 else knots)
    profile = galsim.Add(components) if len(components) > 1 else components[0]
    return profile.shear(g1=float(row["e1"]), g2=float(row["e2"]))
